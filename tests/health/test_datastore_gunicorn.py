"""PostgreSQL and Redis dependencies of a real gunicorn instance, against real servers.

What the servers see (at most one PetSage connection per dependency per instance,
however many workers, cycles, checker restarts, reloads and restarts; a new PostgreSQL
login at each cycle) and each fault of a datastore, as the instance's probes and
health document show it. The servers: tests/support/datastores.py.
"""

import json
import os
import signal
import threading
import time
from typing import Any
from urllib.parse import quote

import pytest

from petsage.health.refresher import JITTER
from tests.support.datastores import (
    PETSAGE_PASSWORD,
    PostgresServer,
    RedisServer,
    wait_for,
)
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, GunicornServer
from tests.support.instances import AUTH, TOKEN, readiness
from tests.support.processes import checkers, children, wait_until
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


def connections_listed(server: GunicornServer, store: Store) -> int:
    """The PetSage connections the server lists: Redis's held one, once settled;
    the most PostgreSQL listed at once over 3 cycles (each run's own, none between
    runs)."""
    if isinstance(store, RedisServer):
        return len(settle(store))
    with store.counting_connections() as listed:
        cycles_later(server, 3)
    return listed.most


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

    def ready_after_unready(self) -> int:
        """Answers of 200 after the first answer of another status."""
        statuses = [answer for answer in self.answers if answer is not None]
        unready = [index for index, status in enumerate(statuses) if status != 200]
        return statuses[unready[0] :].count(200) if unready else 0

    def counts(self) -> dict[str, int]:
        """sent, failed (an answer but 200) and lost (none within 1 s)."""
        answered = [answer for answer in self.answers if answer is not None]
        return {
            "sent": len(self.answers),
            "failed": sum(answer != 200 for answer in answered),
            "lost": self.answers.count(None),
        }


def places_showing(server: GunicornServer, *secrets: str) -> list[str]:
    """Where any of ``secrets``, as given or percent-encoded, shows to the token
    holder: the health document, the verbose probes, the metrics, the log."""
    seen = {
        where: server.request("GET", path, headers=AUTH).body
        for where, path in (
            ("health document", "/health?verbose"),
            ("verbose readiness", "/readyz?verbose"),
            ("verbose liveness", "/livez?verbose"),
            ("metrics", "/metrics"),
        )
    }
    seen["log"] = server.log().encode()
    forms = [
        form.encode() for secret in secrets for form in (secret, quote(secret, safe=""))
    ]
    return [where for where, text in seen.items() if any(f in text for f in forms)]


def critical_store(start_gunicorn: GunicornFactory, url: str) -> GunicornServer:
    """An instance with the datastore ``url`` as its critical dependency ``store``,
    returned once ready and two cycles past its first."""
    server = start_gunicorn(settings(critical=f"store={url}"))
    wait_for(lambda: readiness(server.port) == 200, BOUND, "/readyz 200")
    cycles_later(server, 2)
    return server


def refused_at_the_next_cycle(
    server: GunicornServer, moment: float, reason: str
) -> tuple[float, str]:
    """Check that the first cycle begun after ``moment`` (monotonic) failed the check
    ``store`` for ``reason`` (its output's start) and that /readyz answers 503 naming
    it: the seconds from ``moment`` to that cycle's end, and the line of
    ``/readyz?verbose``."""
    cycle = first_cycle_begun_after(server, moment)
    result = cycle["results"]["store"]
    assert result["status"] == "fail" and result["output"].startswith(reason), result
    found: list[str] = []

    def unready() -> bool:
        answer = server.request("GET", "/readyz?verbose", headers=AUTH)
        found[:] = [
            line
            for line in answer.body.decode().splitlines()
            if line.startswith(f"[-]store failed: {reason}")
        ]
        return answer.status == 503 and bool(found)

    wait_until(unready, BOUND, f"/readyz 503: store failed: {reason}")
    return cycle["completed_at"] - moment, found[0]


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


def test_at_most_one_connection_per_instance_across_a_checker_kill_and_a_reload(
    start_gunicorn: GunicornFactory, postgres: PostgresServer, redis: RedisServer
) -> None:
    server = start_gunicorn(
        settings(critical=f"db={postgres.url()},cache={redis.url()}")
    )
    wait_for(lambda: len(children(server.process.pid)) == WORKERS, BOUND, "workers")
    wait_for(lambda: published(server) is not None, BOUND, "a first cycle")
    with postgres.counting_connections() as listed:
        cycles_later(server, 10)
        counts = {"cycles": len(settle(redis))}
        document = published(server)
        assert document is not None
        os.kill(document["checker"], signal.SIGKILL)
        wait_for(
            lambda: (published(server) or {}).get("checker") != document["checker"],
            BOUND,
            "another checker publishing",
        )
        cycles_later(server, 10)
        counts["checker killed"] = len(settle(redis))
        before = children(server.process.pid)
        server.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: (
                not children(server.process.pid) & before
                and (published(server) or {}).get("checker")
                in checkers(server.process.pid)
            ),
            BOUND,
            "every worker replaced, a checker publishing",
        )
        cycles_later(server, 10)
        counts["reloaded"] = len(settle(redis))
    print(
        f"\n{WORKERS} workers: PetSage's Redis connections {counts}; at most"
        f" {listed.most} PostgreSQL connection(s) at once in {listed.samples} reads"
    )
    assert counts == {key: 1 for key in counts}
    assert listed.samples > 0 and listed.most <= 1
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
    listed = connections_listed(server, postgres), connections_listed(server, redis)
    client_backends = postgres.query(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND application_name <> 'tests'"
    )[0][0]
    print(
        f"\n{cycles} cycles, both servers restarted after {before_restart}: at"
        f" most {listed[0]} PostgreSQL connection(s) at once, {client_backends}"
        f" client backend(s) at the end; {listed[1]} Redis client(s) named PetSage's"
    )
    assert client_backends <= 1
    assert listed[0] <= 1 and listed[1] == 1


@pytest.mark.fault
def test_a_stopped_datastore_fails_connection_refused_then_passes_again(
    start_gunicorn: GunicornFactory, store: Store, fault_record: FaultRecorder
) -> None:
    refused = (
        "OperationalError: Connection refused"
        if isinstance(store, PostgresServer)
        else "ConnectionRefusedError: Connection refused"
    )
    server = optional_store(start_gunicorn, store.url())
    wait_for_check(server, "pass")
    with ReadinessPolls(server.port) as polls:
        store.stop()
        # A PostgreSQL login while it shuts down fails "the database system is
        # shutting down" first: the stopped server's answer is the refusal.
        failed = wait_for_check(server, "warn", refused)
        stopped_at = time.monotonic()
        store.start()
        wait_for_check(server, "pass")
        recovered = time.monotonic() - stopped_at
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
    assert connections_listed(server, store) <= 1


@pytest.mark.fault
def test_a_wrong_password_fails_and_appears_nowhere(
    start_gunicorn: GunicornFactory, store: Store, fault_record: FaultRecorder
) -> None:
    wrong = "wr0ng/pass#word,1"
    server = optional_store(start_gunicorn, store.url(password=wrong))
    with ReadinessPolls(server.port) as polls:
        failed = wait_for_check(server, "warn")
        wait_for(lambda: "health check store warns" in server.log(), BOUND, "logged")
        leaks = places_showing(server, wrong)
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
    listed = connections_listed(server, store)
    fault_record(
        fault=f"{kind(store)} frozen (SIGSTOP)",
        injected=f"SIGSTOP to every {kind(store)} process for 5+ check cycles,"
        " then SIGCONT",
        load=POLL_LOAD,
        recovery=f"check failed '{failed['output']}'; passed again after SIGCONT;"
        f" at most {listed} PetSage connection(s) listed at once after",
        **polls.counts(),
    )
    # The refresher's "timed out after 1 s", or the driver's own at the same moment.
    assert failed["output"].startswith("timed out")
    # The probes answered from the snapshot while the server was frozen.
    assert frozen_polls["sent"] > 0 and frozen_polls["lost"] == 0
    assert polls.counts()["failed"] == polls.counts()["lost"] == 0
    assert listed <= 1


@pytest.mark.fault
def test_a_restarted_datastore_passes_at_the_next_cycle_over_a_new_connection(
    start_gunicorn: GunicornFactory, store: Store, fault_record: FaultRecorder
) -> None:
    server = optional_store(start_gunicorn, store.url())
    wait_for_check(server, "pass")
    with ReadinessPolls(server.port) as polls:
        store.restart()
        after = first_cycle_begun_after(server, time.monotonic())
    result = after["results"]["store"]
    how = (
        "over the new connection each run makes"
        if isinstance(store, PostgresServer)
        else "over a new connection (the reused one failed, retried in the same run)"
    )
    fault_record(
        fault=f"{kind(store)} restarted",
        injected=f"{kind(store)} stopped and started again between two cycles",
        load=POLL_LOAD,
        recovery=f"the first cycle begun after the restart: {result['status']}, {how}",
        **polls.counts(),
    )
    assert result["status"] == "pass"
    assert connections_listed(server, store) <= 1
    assert polls.counts()["failed"] == polls.counts()["lost"] == 0


@pytest.mark.fault
def test_exhausted_postgresql_connections_fail_with_the_servers_reason(
    start_gunicorn: GunicornFactory,
    postgres: PostgresServer,
    fault_record: FaultRecorder,
) -> None:
    # Every slot but the superuser's reserved ones, taken by another role; PetSage
    # started meanwhile.
    with postgres.every_slot_taken() as others:
        server = optional_store(start_gunicorn, postgres.url())
        with ReadinessPolls(server.port) as polls:
            failed = wait_for_check(server, "warn", "OperationalError: FATAL")
            held = len(others)
    with ReadinessPolls(server.port) as polls_after:
        wait_for_check(server, "pass")
    counts = {
        key: polls.counts()[key] + polls_after.counts()[key] for key in polls.counts()
    }
    fault_record(
        fault="PostgreSQL max_connections exhausted",
        injected=f"{held} connections of another role took every slot"
        f" (max_connections {postgres.max_connections}), then PetSage started",
        load=POLL_LOAD,
        recovery=f"check failed '{failed['output']}'; passed again once the"
        " others closed",
        **counts,
    )
    assert failed["output"] == (
        "OperationalError: FATAL: remaining connection slots are reserved for"
        " non-replication superuser connections"
    )
    assert connections_listed(server, postgres) <= 1
    assert counts["failed"] == counts["lost"] == 0


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


# The probes of a critical dependency's fault: once /readyz has answered 503, a 200
# before the fault ends is an answer a load balancer must not get.
CRITICAL_POLL_LOAD = f"{POLL_LOAD}; failed: a 200 after the first 503"
# What the docs promise for a login refused: the first cycle begun after it fails,
# at most the period (jittered) after the cycle under way, within the check's timeout.
REFUSED_BOUND = (
    f"bound: the cycle under way + period {PERIOD * (1 + JITTER):g} s"
    f" + timeout {TIMEOUT:g} s"
)


def test_each_cycle_logs_in_anew_over_at_most_one_connection(
    start_gunicorn: GunicornFactory, postgres: PostgresServer
) -> None:
    server = critical_store(start_gunicorn, postgres.url())
    before = postgres.logins()
    with postgres.counting_connections() as listed:
        cycles_later(server, 21)
    logins = postgres.logins() - before
    print(
        f"\n21 cycles, {WORKERS} workers: {logins} PetSage logins; at most"
        f" {listed.most} PetSage connection(s) listed at once in {listed.samples}"
        " reads of pg_stat_activity"
    )
    # One login a cycle (the first may have logged in before ``before`` was read).
    assert logins >= 20
    assert listed.samples > 0 and listed.most <= 1


@pytest.mark.fault
def test_a_stopped_postmaster_fails_readiness_though_established_backends_answer(
    start_gunicorn: GunicornFactory,
    postgres: PostgresServer,
    fault_record: FaultRecorder,
) -> None:
    server = critical_store(start_gunicorn, postgres.url())
    with ReadinessPolls(server.port) as polls:
        postgres.stop_postmaster()
        try:
            took, line = refused_at_the_next_cycle(
                server, time.monotonic(), "timed out"
            )
            cycles_later(server, 5)  # the fault lasting: no 200 meanwhile
        finally:
            postgres.thaw()
    recovered = wait_until(lambda: readiness(server.port) == 200, BOUND, "ready")
    leaks = places_showing(server, PETSAGE_PASSWORD)
    fault_record(
        fault="PostgreSQL postmaster stopped (critical dependency)",
        injected="SIGSTOP to the postmaster alone, after the check's first cycles,"
        " for 5+ cycles, then SIGCONT",
        load=CRITICAL_POLL_LOAD,
        recovery=f"the first cycle begun after the SIGSTOP failed, ending {took:.2f} s"
        f" after it ({REFUSED_BOUND}); /readyz 503 '{line}'; 200 again"
        f" {recovered:.2f} s after the SIGCONT; the password in no output",
        sent=polls.counts()["sent"],
        failed=polls.ready_after_unready(),
        lost=polls.counts()["lost"],
    )
    assert polls.ready_after_unready() == polls.counts()["lost"] == 0
    assert leaks == []


@pytest.mark.fault
def test_a_password_changed_on_the_server_fails_readiness_until_the_file_follows(
    start_gunicorn: GunicornFactory,
    postgres: PostgresServer,
    fault_record: FaultRecorder,
    tmp_path: Any,
) -> None:
    secret, rotated = tmp_path / "db-password", "r0tated/pw#2,y"
    secret.write_text(PETSAGE_PASSWORD + "\n")
    url = postgres.url(password=None, password_file=str(secret))
    server = critical_store(start_gunicorn, url)
    with ReadinessPolls(server.port) as polls:
        postgres.change_password(rotated)
        took, line = refused_at_the_next_cycle(
            server,
            time.monotonic(),
            "OperationalError: FATAL: password authentication failed for user",
        )
        cycles_later(server, 5)
    # The Secret follows (the kubelet rewrites the mounted file): no restart.
    secret.write_text(rotated + "\n")
    recovered = wait_until(lambda: readiness(server.port) == 200, BOUND, "ready")
    leaks = places_showing(server, PETSAGE_PASSWORD, rotated)
    fault_record(
        fault="PostgreSQL password changed while running (critical dependency)",
        injected="ALTER ROLE ... PASSWORD after the check's first cycles; 5+ cycles"
        " later the password file (the mounted Secret) rewritten with it",
        load=CRITICAL_POLL_LOAD,
        recovery=f"the first cycle begun after the ALTER ROLE failed, ending"
        f" {took:.2f} s after it ({REFUSED_BOUND}); /readyz 503 '{line}'; 200 again"
        f" {recovered:.2f} s after the file changed, no restart; neither password"
        " in any output",
        sent=polls.counts()["sent"],
        failed=polls.ready_after_unready(),
        lost=polls.counts()["lost"],
    )
    assert polls.ready_after_unready() == polls.counts()["lost"] == 0
    assert leaks == []


@pytest.mark.fault
def test_every_connection_slot_taken_fails_readiness_after_the_first_cycle(
    start_gunicorn: GunicornFactory,
    postgres: PostgresServer,
    fault_record: FaultRecorder,
) -> None:
    server = critical_store(start_gunicorn, postgres.url())
    with postgres.every_slot_taken() as others:
        with ReadinessPolls(server.port) as polls:
            took, line = refused_at_the_next_cycle(
                server,
                time.monotonic(),
                "OperationalError: FATAL: remaining connection slots are",
            )
            cycles_later(server, 5)
        held = len(others)
    recovered = wait_until(lambda: readiness(server.port) == 200, BOUND, "ready")
    leaks = places_showing(server, PETSAGE_PASSWORD)
    fault_record(
        fault="PostgreSQL connection slots all taken (critical dependency)",
        injected=f"after the check's first cycles, {held} connections of another"
        f" role took every slot but the superuser's reserved ones (max_connections"
        f" {postgres.max_connections}), each freed slot taken again, for 5+ cycles",
        load=CRITICAL_POLL_LOAD,
        recovery=f"the first cycle begun after the last slot was taken failed,"
        f" ending {took:.2f} s after it ({REFUSED_BOUND}); /readyz 503 '{line}';"
        f" 200 again {recovered:.2f} s after the others closed; the password in no"
        " output",
        sent=polls.counts()["sent"],
        failed=polls.ready_after_unready(),
        lost=polls.counts()["lost"],
    )
    assert polls.ready_after_unready() == polls.counts()["lost"] == 0
    assert leaks == []
