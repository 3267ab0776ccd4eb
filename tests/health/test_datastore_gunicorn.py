"""PostgreSQL and Redis dependencies of a real gunicorn instance, against real servers.

What the servers see (one PetSage connection per instance, however many workers,
cycles, leader changes, reloads and restarts) and each fault of a datastore, as the
instance's probes and health document show it. The servers: tests/support/datastores.py.
"""

import json
import os
import signal
import threading
import time
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.datastores import (
    PETSAGE_PASSWORD,
    PostgresServer,
    RedisServer,
    wait_for,
)
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, GunicornServer
from tests.support.instances import AUTH, TOKEN, readiness
from tests.support.processes import children
from tests.support.snapshots import first_cycle_begun_after, next_cycle, published

pytestmark = pytest.mark.slow  # real servers and gunicorn: not in the fast tier

# Bounds on waiting for what must happen: far longer than it takes on a busy machine.
BOUND = 60.0
PERIOD = 0.2
TIMEOUT = 1.0
WORKERS = 5
# /readyz polled meanwhile: on a new connection each, with a kubelet's 1 s timeout.
POLL_EVERY = 0.05
POLL_LOAD = "1 client polling /readyz every 50 ms, new connection each, 1 s timeout"

Store = PostgresServer | RedisServer


@pytest.fixture(params=["postgresql", "redis"])
def store(request: pytest.FixtureRequest) -> Store:
    """Each datastore in turn, running."""
    fixture = "postgres" if request.param == "postgresql" else "redis"
    server: Store = request.getfixturevalue(fixture)
    return server


def kind(store: Store) -> str:
    """The datastore's name, for the fault record."""
    return "PostgreSQL" if isinstance(store, PostgresServer) else "Redis"


def settings(
    critical: str = "", optional: str = "", workers: int = WORKERS
) -> dict[str, str]:
    """An instance checking these dependencies every PERIOD, details for TOKEN."""
    return {
        "PETSAGE_WORKERS": str(workers),
        "PETSAGE_CRITICAL_DEPENDENCIES": critical,
        "PETSAGE_OPTIONAL_DEPENDENCIES": optional,
        "PETSAGE_CHECK_PERIOD": str(PERIOD),
        "PETSAGE_CHECK_TIMEOUT": str(TIMEOUT),
        "PETSAGE_HEALTH_TOKEN": TOKEN,
        "PETSAGE_PUBLIC_METRICS": "true",
    }


def checks(server: GunicornServer) -> dict[str, Any]:
    """The health document's checks, as the token holder reads them."""
    document = json.loads(server.request("GET", "/health", headers=AUTH).body)
    # The IETF document lists each key's observations: one here.
    return {key: entry for key, [entry] in document.get("checks", {}).items()}


def store_check(server: GunicornServer) -> dict[str, Any]:
    """The ``store`` dependency's entry in the health document."""
    entry: dict[str, Any] = checks(server)["store:responseTime"]
    return entry


def wait_for_check(
    server: GunicornServer, status: str, output: str | None = None
) -> dict[str, Any]:
    """Wait until the ``store`` check has ``status`` (and ``output``, its start)."""

    seen: list[dict[str, Any]] = []

    def matches() -> bool:
        entry = store_check(server)
        seen[:] = [entry]
        # "time": a result of a run, not the "not run" before the first cycle.
        if entry.get("status") != status or "time" not in entry:
            return False
        return output is None or entry.get("output", "").startswith(output)

    try:
        wait_for(matches, BOUND, f"store {status} {output or ''}")
    except AssertionError as error:
        raise AssertionError(f"{error}; last seen: {seen}") from None
    return seen[0]


def settle(store: Store, count: int = 1) -> list[int]:
    """Wait until the server lists ``count`` PetSage connections; their ids."""
    wait_for(
        lambda: len(store.petsage_connections()) == count,
        BOUND,
        f"{count} PetSage connection(s) listed by the server",
    )
    return store.petsage_connections()


def cycles_later(server: GunicornServer, cycles: int) -> dict[str, Any]:
    """The instance's snapshot ``cycles`` published cycles from now."""
    document = published(server)
    assert document is not None
    for _ in range(cycles):
        document = next_cycle(server, document)
    return document


class ReadinessPolls:
    """A thread polling /readyz, as a kubelet does, until the block ends."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[int | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.answers.append(readiness(self.port, timeout=1.0))
            self._stop.wait(POLL_EVERY)

    def __enter__(self) -> "ReadinessPolls":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(BOUND)

    def counts(self) -> dict[str, int]:
        """sent, failed (an answer but 200) and lost (none within 1 s)."""
        answered = [answer for answer in self.answers if answer is not None]
        return {
            "sent": len(self.answers),
            "failed": sum(answer != 200 for answer in answered),
            "lost": self.answers.count(None),
        }


def optional_store(
    start_gunicorn: GunicornFactory, url: str, workers: int = 3
) -> GunicornServer:
    """An instance with the datastore ``url`` as its optional dependency ``store``:
    its failure makes health warn, and /readyz stays 200. Returned once ready."""
    server = start_gunicorn(settings(optional=f"store={url}", workers=workers))
    wait_for(lambda: readiness(server.port) == 200, BOUND, "/readyz 200")
    return server


def test_health_shows_both_datastores_to_the_token_holder(
    start_gunicorn: GunicornFactory, postgres: PostgresServer, redis: RedisServer
) -> None:
    server = start_gunicorn(
        settings(critical=f"db={postgres.url()},cache={redis.url()}")
    )
    wait_for(lambda: server.request("GET", "/readyz").status == 200, BOUND, "ready")
    found = checks(server)
    db, cache = found["db:responseTime"], found["cache:responseTime"]
    assert db["status"] == cache["status"] == "pass"
    assert db["componentType"] == cache["componentType"] == "datastore"
    assert db["observedUnit"] == cache["observedUnit"] == "ms"
    assert db["output"].startswith("PostgreSQL 15.") and "primary" in db["output"]
    assert cache["output"].startswith("Redis 7.") and "role master" in cache["output"]
    assert db["links"]["about"] == f"postgresql://127.0.0.1:{postgres.port}/petsage"
    assert cache["links"]["about"] == f"redis://127.0.0.1:{redis.port}/0"
    public = json.loads(server.request("GET", "/health").body)
    assert "checks" not in public


def test_one_connection_per_instance_across_cycles_a_leader_kill_and_a_reload(
    start_gunicorn: GunicornFactory, postgres: PostgresServer, redis: RedisServer
) -> None:
    server = start_gunicorn(
        settings(critical=f"db={postgres.url()},cache={redis.url()}")
    )
    wait_for(lambda: len(children(server.process.pid)) == WORKERS, BOUND, "workers")
    wait_for(lambda: published(server) is not None, BOUND, "a first cycle")
    cycles_later(server, 10)
    counts = {"cycles": (len(settle(postgres)), len(settle(redis)))}
    document = published(server)
    assert document is not None
    os.kill(document["leader"], signal.SIGKILL)
    wait_for(
        lambda: (published(server) or {}).get("leader") != document["leader"],
        BOUND,
        "another leader publishing",
    )
    cycles_later(server, 10)
    counts["leader killed"] = (len(settle(postgres)), len(settle(redis)))
    before = children(server.process.pid)
    server.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: (
            not children(server.process.pid) & before
            and len(children(server.process.pid)) == WORKERS
        ),
        BOUND,
        "every worker replaced",
    )
    wait_for(
        lambda: (published(server) or {}).get("leader") in children(server.process.pid),
        BOUND,
        "a new worker leading",
    )
    cycles_later(server, 10)
    counts["reloaded"] = (len(settle(postgres)), len(settle(redis)))
    print(f"\nPetSage connections (PostgreSQL, Redis), {WORKERS} workers: {counts}")
    assert counts == {key: (1, 1) for key in counts}
    assert store_check_ok(server)


def store_check_ok(server: GunicornServer) -> bool:
    """Whether both datastore checks pass."""
    found = checks(server)
    return all(
        entry["status"] == "pass"
        for key, entry in found.items()
        if key in ("db:responseTime", "cache:responseTime")
    )


def test_no_connection_leaks_over_100_cycles_with_the_servers_restarted(
    start_gunicorn: GunicornFactory, postgres: PostgresServer, redis: RedisServer
) -> None:
    server = start_gunicorn(
        settings(critical=f"db={postgres.url()},cache={redis.url()}")
    )
    wait_for(lambda: redis.pings() >= 1, BOUND, "a first cycle")
    wait_for(lambda: redis.pings() >= 50, BOUND, "50 cycles")
    before_restart = redis.pings()
    postgres.restart()
    redis.restart()
    wait_for(lambda: redis.pings() >= 100 - before_restart, BOUND, "100 cycles")
    wait_for(lambda: store_check_ok(server), BOUND, "both checks passing again")
    cycles = before_restart + redis.pings()
    client_backends = postgres.query(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND application_name <> 'tests'"
    )[0][0]
    print(
        f"\n{cycles} cycles, both servers restarted after {before_restart}:"
        f" {client_backends} PostgreSQL client backend(s),"
        f" {len(redis.petsage_connections())} Redis client(s) named petsage"
    )
    assert client_backends == 1
    assert len(settle(postgres)) == len(settle(redis)) == 1


@pytest.mark.fault
def test_a_stopped_datastore_fails_connection_refused_then_passes_again(
    start_gunicorn: GunicornFactory, store: Store, fault_record: FaultRecorder
) -> None:
    server = optional_store(start_gunicorn, store.url())
    wait_for_check(server, "pass")
    with ReadinessPolls(server.port) as polls:
        store.stop()
        failed = wait_for_check(server, "warn")
        stopped_at = time.monotonic()
        store.start()
        wait_for_check(server, "pass")
        recovered = time.monotonic() - stopped_at
    refused = (
        "OperationalError: Connection refused"
        if isinstance(store, PostgresServer)
        else "ConnectionRefusedError: Connection refused"
    )
    fault_record(
        fault=f"{kind(store)} stopped (optional dependency)",
        injected=f"{kind(store)} stopped (SIGINT), started again on its port",
        load=POLL_LOAD,
        recovery=f"check failed '{failed['output']}'; passed again"
        f" {recovered:.1f} s after the restart began",
        **polls.counts(),
    )
    assert failed["output"] == refused
    assert polls.counts()["failed"] == polls.counts()["lost"] == 0
    assert len(settle(store)) == 1


@pytest.mark.fault
def test_a_wrong_password_fails_and_appears_nowhere(
    start_gunicorn: GunicornFactory, store: Store, fault_record: FaultRecorder
) -> None:
    wrong = "wr0ng/pass#word,1"
    server = optional_store(start_gunicorn, store.url(password=wrong))
    with ReadinessPolls(server.port) as polls:
        failed = wait_for_check(server, "warn")
        wait_for(lambda: "health check store warns" in server.log(), BOUND, "logged")
        seen = {
            "health document": server.request("GET", "/health", headers=AUTH).body,
            "verbose readiness": server.request(
                "GET", "/readyz?verbose", headers=AUTH
            ).body,
            "metrics": server.request("GET", "/metrics", headers=AUTH).body,
        }
    seen["log"] = server.log().encode()
    encoded = quote(wrong, safe="")
    leaks = [
        where
        for where, text in seen.items()
        if wrong.encode() in text or encoded.encode() in text
    ]
    fault_record(
        fault=f"{kind(store)} wrong password",
        injected=f"PetSage started with a wrong {kind(store)} password",
        load=POLL_LOAD,
        recovery=f"check failed '{failed['output']}'; the password in none of the"
        " health document, verbose probe, metrics, log",
        **polls.counts(),
    )
    assert "password authentication failed" in failed["output"] or (
        "invalid username-password pair" in failed["output"]
    )
    assert leaks == []
    assert polls.counts()["failed"] == polls.counts()["lost"] == 0


@pytest.mark.fault
def test_a_frozen_datastore_times_out_and_probes_answer_at_once(
    start_gunicorn: GunicornFactory, store: Store, fault_record: FaultRecorder
) -> None:
    server = optional_store(start_gunicorn, store.url())
    wait_for_check(server, "pass")
    settle(store)
    with ReadinessPolls(server.port) as polls:
        store.freeze()
        try:
            failed = wait_for_check(server, "warn")
            # Several cycles frozen: a hanging run is not started again.
            cycles_later(server, 5)
            frozen_polls = polls.counts()
        finally:
            store.thaw()
        wait_for_check(server, "pass")
    listed = settle(store)
    fault_record(
        fault=f"{kind(store)} frozen (SIGSTOP)",
        injected=f"SIGSTOP to every {kind(store)} process for 5+ check cycles,"
        " then SIGCONT",
        load=POLL_LOAD,
        recovery=f"check failed '{failed['output']}'; passed again after SIGCONT;"
        f" {len(listed)} PetSage connection(s) listed after",
        **polls.counts(),
    )
    # The refresher's "timed out after 1 s", or the driver's own at the same moment.
    assert failed["output"].startswith("timed out")
    # The probes answered from the snapshot while the server was frozen.
    assert frozen_polls["sent"] > 0 and frozen_polls["lost"] == 0
    assert polls.counts()["failed"] == polls.counts()["lost"] == 0
    assert len(listed) == 1


@pytest.mark.fault
def test_a_restarted_datastore_passes_at_the_next_cycle_over_a_new_connection(
    start_gunicorn: GunicornFactory, store: Store, fault_record: FaultRecorder
) -> None:
    server = optional_store(start_gunicorn, store.url())
    wait_for_check(server, "pass")
    settle(store)
    with ReadinessPolls(server.port) as polls:
        store.restart()
        after = first_cycle_begun_after(server, time.monotonic())
    result = after["results"]["store"]
    fault_record(
        fault=f"{kind(store)} restarted",
        injected=f"{kind(store)} stopped and started again between two cycles",
        load=POLL_LOAD,
        recovery=f"the first cycle begun after the restart: {result['status']},"
        " over a new connection (the reused one failed, retried in the same run)",
        **polls.counts(),
    )
    assert result["status"] == "pass"
    assert len(settle(store)) == 1
    assert polls.counts()["failed"] == polls.counts()["lost"] == 0


@pytest.mark.fault
def test_exhausted_postgresql_connections_fail_with_the_servers_reason(
    start_gunicorn: GunicornFactory,
    postgres: PostgresServer,
    fault_record: FaultRecorder,
) -> None:
    others = []
    try:
        # Every slot but the superuser's reserved ones, taken by another role.
        while True:
            try:
                others.append(postgres.admin(user="other"))
            except Exception:
                break
        # PetSage started meanwhile (as after a failover, a leader change or any
        # reconnect): it needs a new connection. An established one keeps working.
        server = optional_store(start_gunicorn, postgres.url())
        with ReadinessPolls(server.port) as polls:
            failed = wait_for_check(server, "warn", "OperationalError: FATAL")
            for connection in others:
                connection.close()
            wait_for_check(server, "pass")
    finally:
        for connection in others:
            connection.close()
    fault_record(
        fault="PostgreSQL max_connections exhausted",
        injected=f"{len(others)} connections of another role took every slot"
        f" (max_connections {postgres.max_connections}), then PetSage started",
        load=POLL_LOAD,
        recovery=f"check failed '{failed['output']}'; passed again once the"
        " others closed",
        **polls.counts(),
    )
    assert failed["output"] == (
        "OperationalError: FATAL: remaining connection slots are reserved for"
        " non-replication superuser connections"
    )
    assert len(settle(postgres)) == 1
    assert polls.counts()["failed"] == polls.counts()["lost"] == 0


@pytest.mark.fault
def test_a_redis_requirepass_change_fails_until_the_secret_follows(
    start_gunicorn: GunicornFactory,
    redis: RedisServer,
    fault_record: FaultRecorder,
    tmp_path: Any,
) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(PETSAGE_PASSWORD + "\n")
    url = f"redis://127.0.0.1:{redis.port}/0?password_file={secret}"
    server = optional_store(start_gunicorn, url)
    wait_for_check(server, "pass")
    with ReadinessPolls(server.port) as polls:
        with redis.admin() as admin:
            admin.config_set("requirepass", "rotated-password")
        failed = wait_for_check(server, "warn")
        changed_at = time.monotonic()
        # The Secret follows (the kubelet rewrites the mounted file): no restart.
        secret.write_text("rotated-password\n")
        wait_for_check(server, "pass")
        recovered = time.monotonic() - changed_at
    fault_record(
        fault="Redis requirepass changed while running",
        injected="CONFIG SET requirepass to a new password; later the password file"
        " (the mounted Secret) rewritten with it",
        load=POLL_LOAD,
        recovery=f"check failed '{failed['output']}' at the next cycle; passed"
        f" {recovered:.1f} s after the file changed, no restart",
        **polls.counts(),
    )
    assert failed["output"].startswith(
        "AuthenticationError: invalid username-password pair"
    )
    assert len(settle(redis)) == 1
    assert polls.counts()["failed"] == polls.counts()["lost"] == 0
