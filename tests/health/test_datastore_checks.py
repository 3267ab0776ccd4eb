"""The PostgreSQL and Redis checks against real servers (tests/support/datastores.py).

Each test runs a check as the refresher does, on the calling thread; how an instance's
workers share one connection is tests/health/test_datastore_gunicorn.py's.
"""

import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from petsage.health.checks import Check, CheckFailed
from petsage.health.dependencies import dependency_check, parse_dependencies
from petsage.health.dependencies.datastores import HeldProbe
from tests.support.datastores import (
    PETSAGE_PASSWORD,
    PostgresServer,
    RedisServer,
    wait_for,
)

pytestmark = pytest.mark.slow  # real servers: not in the fast tier

# The checks' own timeout: far longer than a run takes even on a loaded machine, so
# that only a fault (a frozen server) makes a run time out.
TIMEOUT = 10.0
# Far longer than any run takes: a bound for waiting, never a measurement.
BOUND = 30.0


MADE: list[Check] = []


def check_of(url: str, timeout: float = TIMEOUT) -> Check:
    """The check PetSage makes of a dependency configured with ``url``."""
    [dependency] = parse_dependencies(f"store={url}")
    check = dependency_check(dependency, critical=True, timeout=timeout)
    MADE.append(check)
    return check


@pytest.fixture(autouse=True)
def close_connections() -> Iterator[None]:
    """Close the connections of the checks a test made, as a process's end does."""
    yield
    while MADE:
        probe = MADE.pop().run
        if isinstance(probe, HeldProbe):  # PostgreSQL's closes its own at each run
            probe.close()


def passes(check: Check) -> bool:
    """Whether a run of ``check`` passes (a failed one raises CheckFailed)."""
    try:
        return check.run().status == "pass"
    except CheckFailed:
        return False


def failure_of(check: Check) -> str:
    """The output of a run of ``check`` that must fail."""
    with pytest.raises(CheckFailed) as failed:
        check.run()
    return str(failed.value)


def run_bounded(check: Check) -> tuple[str, bool]:
    """Run ``check`` on a thread of its own, as the refresher does: its outcome and
    whether it ended by itself within BOUND."""
    outcome: list[str] = []

    def run() -> None:
        try:
            outcome.append(f"pass: {check.run()}")
        except CheckFailed as failed:
            outcome.append(str(failed))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND)
    return (outcome[0] if outcome else "still running"), not thread.is_alive()


class TestPostgreSQL:
    def test_select_1_passes_with_the_round_trip_version_and_role(
        self, postgres: PostgresServer
    ) -> None:
        observation = check_of(postgres.url()).run()
        assert observation.status == "pass" and observation.unit == "ms"
        assert isinstance(observation.value, float) and observation.value > 0
        assert observation.output.startswith("PostgreSQL 15.")
        assert observation.output.endswith(", primary")

    def test_the_check_is_a_datastore_shown_without_credentials(
        self, postgres: PostgresServer
    ) -> None:
        check = check_of(postgres.url())
        assert check.component_type == "datastore"
        assert check.target == f"postgresql://127.0.0.1:{postgres.port}/petsage"

    def test_each_run_logs_in_anew_and_leaves_no_connection(
        self, postgres: PostgresServer
    ) -> None:
        check = check_of(postgres.url())
        before = postgres.logins()
        for _ in range(20):
            check.run()
            # Closed, and its backend gone, before the run returned.
            assert postgres.petsage_backends() == []
        assert postgres.logins() - before == 20

    def test_a_unix_socket_host_and_sslmode_are_libpq_syntax(
        self, postgres: PostgresServer
    ) -> None:
        directory = quote(str(postgres.socket_directory), safe="")
        url = f"postgresql://admin@{directory}:{postgres.port}/postgres?sslmode=disable"
        assert check_of(url).run().status == "pass"
        query_host = (
            f"postgres:///postgres?host={postgres.socket_directory}"
            f"&port={postgres.port}&user=admin"
        )
        assert check_of(query_host).run().status == "pass"

    def test_sslmode_require_fails_with_libpqs_reason(
        self, postgres: PostgresServer
    ) -> None:
        output = failure_of(check_of(postgres.url(sslmode="require")))
        assert (
            output
            == "OperationalError: server does not support SSL, but SSL was required"
        )

    def test_the_password_can_come_from_a_file(
        self, postgres: PostgresServer, tmp_path: Path
    ) -> None:
        secret = tmp_path / "password"
        secret.write_text(PETSAGE_PASSWORD + "\n")  # as `echo` or kubectl writes it
        url = postgres.url(password=None, password_file=str(secret))
        assert check_of(url).run().status == "pass"

    def test_a_wrong_password_fails_and_never_shows_it(
        self, postgres: PostgresServer
    ) -> None:
        wrong = "wrong/pass#word"
        output = failure_of(check_of(postgres.url(password=wrong)))
        assert output == (
            'OperationalError: FATAL: password authentication failed for user "petsage"'
        )
        assert wrong not in output and quote(wrong, safe="") not in output

    def test_a_stopped_server_fails_connection_refused(
        self, postgres: PostgresServer
    ) -> None:
        check = check_of(postgres.url())
        check.run()
        postgres.stop()
        assert failure_of(check) == "OperationalError: Connection refused"

    def test_a_restarted_server_passes_at_the_next_run_over_a_new_connection(
        self, postgres: PostgresServer
    ) -> None:
        check = check_of(postgres.url())
        check.run()
        postgres.restart()
        assert check.run().status == "pass"
        assert postgres.petsage_backends() == []

    @pytest.mark.parametrize("frozen", ["every process", "the postmaster"])
    def test_a_frozen_server_fails_timed_out_and_the_run_ends(
        self, postgres: PostgresServer, frozen: str
    ) -> None:
        check = check_of(postgres.url())
        check.run()
        if frozen == "every process":
            postgres.freeze()
        else:
            postgres.stop_postmaster()
        try:
            # A new connection to the frozen server: libpq's connect timeout.
            assert run_bounded(check) == ("timed out", True)
        finally:
            postgres.thaw()
        assert check.run().status == "pass"
        # The connections that waited in the listen queue end once it answers.
        wait_for(lambda: postgres.petsage_backends() == [], BOUND, "no backend")

    def test_a_password_changed_on_the_server_fails_until_the_file_follows(
        self, postgres: PostgresServer, tmp_path: Path
    ) -> None:
        secret = tmp_path / "password"
        secret.write_text(PETSAGE_PASSWORD)
        check = check_of(postgres.url(password=None, password_file=str(secret)))
        check.run()
        postgres.change_password("rotated-password")
        output = failure_of(check)
        assert output == (
            'OperationalError: FATAL: password authentication failed for user "petsage"'
        )
        secret.write_text("rotated-password")  # the Secret rotated too: no restart
        assert check.run().status == "pass"

    def test_exhausted_connections_fail_with_the_servers_reason(
        self, postgres: PostgresServer
    ) -> None:
        check = check_of(postgres.url())
        assert check.run().status == "pass"
        with postgres.every_slot_taken():
            output = failure_of(check)
        assert output == (
            "OperationalError: FATAL: remaining connection slots are reserved for"
            " non-replication superuser connections"
        )
        wait_for(lambda: passes(check), BOUND, "the check passing")


class TestRedis:
    def test_ping_passes_with_the_round_trip_version_and_role(
        self, redis: RedisServer
    ) -> None:
        observation = check_of(redis.url()).run()
        assert observation.status == "pass" and observation.unit == "ms"
        assert isinstance(observation.value, float) and observation.value > 0
        assert observation.output.startswith("Redis 7.")
        assert observation.output.endswith(", role master")

    def test_one_connection_is_reused_and_named_petsage(
        self, redis: RedisServer
    ) -> None:
        check = check_of(redis.url())
        check.run()
        [client] = redis.petsage_clients()
        for _ in range(20):
            check.run()
        assert redis.petsage_clients() == [client]

    @pytest.mark.parametrize("scheme", ["redis", "unix"])
    def test_an_acl_user_logs_in_over_tcp_or_a_unix_socket(
        self, redis: RedisServer, scheme: str
    ) -> None:
        secret = quote(PETSAGE_PASSWORD, safe="")
        url = (
            redis.url(user="petsage")
            if scheme == "redis"
            else f"unix://petsage:{secret}@{redis.socket_path}?db=0"
        )
        assert check_of(url).run().status == "pass"

    def test_the_password_can_come_from_a_file(
        self, redis: RedisServer, tmp_path: Path
    ) -> None:
        secret = tmp_path / "password"
        secret.write_text(PETSAGE_PASSWORD + "\n")
        url = f"redis://127.0.0.1:{redis.port}/0?password_file={secret}"
        assert check_of(url).run().status == "pass"

    def test_a_wrong_password_fails_and_never_shows_it(
        self, redis: RedisServer
    ) -> None:
        wrong = "wrong/pass#word"
        output = failure_of(check_of(redis.url(password=wrong)))
        assert output.startswith("AuthenticationError: invalid username-password pair")
        assert wrong not in output and quote(wrong, safe="") not in output

    def test_no_password_fails_with_the_servers_reason(
        self, redis: RedisServer
    ) -> None:
        output = failure_of(check_of(redis.url(password=None)))
        assert output.startswith("AuthenticationError: ")

    def test_a_stopped_server_fails_connection_refused(
        self, redis: RedisServer
    ) -> None:
        check = check_of(redis.url())
        check.run()
        redis.stop()
        assert failure_of(check) == "ConnectionRefusedError: Connection refused"

    def test_a_restarted_server_passes_at_the_next_run_over_a_new_connection(
        self, redis: RedisServer
    ) -> None:
        check = check_of(redis.url())
        check.run()
        redis.restart()
        # Every connection is new after a restart: one, the check's.
        assert check.run().status == "pass"
        assert len(redis.petsage_clients()) == 1

    def test_a_frozen_server_fails_timed_out_and_the_run_ends(
        self, redis: RedisServer
    ) -> None:
        check = check_of(redis.url())
        check.run()
        redis.freeze()
        try:
            assert run_bounded(check) == ("timed out", True)
        finally:
            redis.thaw()
        assert check.run().status == "pass"
        wait_for(lambda: len(redis.petsage_clients()) == 1, BOUND, "1 client")

    def test_a_requirepass_change_fails_until_the_password_file_follows(
        self, redis: RedisServer, tmp_path: Path
    ) -> None:
        secret = tmp_path / "password"
        secret.write_text(PETSAGE_PASSWORD)
        check = check_of(f"redis://127.0.0.1:{redis.port}/0?password_file={secret}")
        check.run()
        [client] = redis.petsage_clients()
        with redis.admin() as admin:
            admin.config_set("requirepass", "rotated-password")
        output = failure_of(check)
        assert output.startswith("AuthenticationError: invalid username-password pair")
        # The Secret rotated too (kubelet rewrites the mounted file): no restart.
        secret.write_text("rotated-password")
        assert check.run().status == "pass"
        assert len(redis.petsage_clients()) == 1
        assert redis.petsage_clients() != [client]  # the failed one was closed
