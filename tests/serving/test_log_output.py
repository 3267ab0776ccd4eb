"""Logging never holds up serving: a log nobody reads costs log lines, counted, never a
request, a probe or a stop (petsage.serving.log_output)."""

import contextlib
import fcntl
import logging
import logging.config
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from petsage.metrics.log_lines import NAME, dropped_log_lines
from petsage.serving.log_output import LogOutput, output_to
from petsage.serving.logs import STDERR, STDOUT, logging_config
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, GunicornServer
from tests.support.instances import LIVENESS, readiness
from tests.support.load import ClientLoad
from tests.support.logs import LogPipe
from tests.support.management import get
from tests.support.metrics_files import samples
from tests.support.ports import free_ports
from tests.support.processes import wait_until
from tests.support.snapshots import first_cycle_begun_after

FULL = os.environ.get("PETSAGE_FAULT_FULL") == "1"
# The quick form sends as many requests and probes as the run did; the full
# form keeps the log unread for 60 s.
REQUESTS = 400
PROBES = 48  # 24 of /livez and 24 of /readyz on each port
UNREAD_SECONDS = 60.0 if FULL else 0.0
BUFFER_LINES = 50
CHECK_PERIOD = 2
LOGGERS = ("petsage", "gunicorn.error", "gunicorn.access", "")


def full_pipe() -> tuple[int, int]:
    """A pipe of one page, filled: its next write blocks until it is read. The read
    end does not block."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"#" * fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096))
    os.set_blocking(read_end, False)
    return read_end, write_end


def read_lines(read_end: int, until: Callable[[list[str]], bool]) -> list[str]:
    """Read the pipe until ``until`` holds for its whole lines, the filler left out."""
    read = b""

    def lines() -> list[str]:
        return read.decode().lstrip("#").split("\n")[:-1]

    def enough() -> bool:
        nonlocal read
        with contextlib.suppress(BlockingIOError):
            read += os.read(read_end, 65536)
        return until(lines())

    wait_until(enough, LIVENESS, "the lines written")
    return lines()


def dropped_here() -> float:
    """This process's count of dropped log lines."""
    [family] = dropped_log_lines().collect()
    return next(
        sample.value for sample in family.samples if sample.name == NAME + "_total"
    )


def reported(lines: list[str]) -> int:
    """The dropped lines that ``lines`` say were dropped."""
    return sum(
        int(line.split("dropped ")[1].split()[0])
        for line in lines
        if " log lines in " in line
    )


def test_a_full_pipe_costs_lines_counted_never_a_wait_and_keeps_their_order() -> None:
    read_end, write_end = full_pipe()
    output, before = LogOutput(write_end, write_end, capacity=10), dropped_here()
    for number in range(100):
        output.write(f"line {number}\n")  # each returns although nothing is written
    assert not output.wait_until_written(0.1)  # nor does exit wait forever
    lines = read_lines(read_end, lambda lines: reported(lines) > 0)
    written = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    assert written == sorted(written) and len(written) + reported(lines) == 100
    assert dropped_here() - before == reported(lines)
    assert output.wait_until_written(LIVENESS)
    os.close(read_end)
    os.close(write_end)


def test_a_forked_child_writes_its_own_lines_from_its_own_thread() -> None:
    read_end, write_end = full_pipe()
    output = LogOutput(write_end, write_end, capacity=10)
    output.write("parent, before the fork\n")
    child = os.fork()
    if child == 0:
        output.write("child\n")
        os._exit(0 if output.wait_until_written(LIVENESS) else 1)
    lines = read_lines(read_end, lambda lines: len(lines) == 2)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
    assert sorted(lines) == ["child", "parent, before the fork"]
    assert output.wait_until_written(LIVENESS)
    os.close(read_end)
    os.close(write_end)


@pytest.fixture
def loggers_restored() -> Iterator[None]:
    """Put back the handlers, levels and propagation that dictConfig replaces."""
    loggers = [logging.getLogger(name or None) for name in LOGGERS]
    saved = [(each.handlers[:], each.propagate, each.level) for each in loggers]
    yield
    for each, (handlers, propagate, level) in zip(loggers, saved, strict=True):
        each.handlers, each.propagate = handlers, propagate
        each.setLevel(level)


@pytest.mark.usefixtures("loggers_restored")
def test_application_gunicorn_error_and_access_records_share_one_output() -> None:
    logging.config.dictConfig(logging_config("json", "INFO", 10))
    output = output_to(STDOUT, STDERR, 10)
    for name in LOGGERS:
        [handler] = logging.getLogger(name or None).handlers
        assert isinstance(handler, logging.StreamHandler)
        assert handler.stream is output, name


@dataclass
class UnreadLog:
    """An instance (2 workers, a management listener) whose stdout and stderr go to a
    pipe the test can stop reading."""

    server: GunicornServer
    management_port: int
    pipe: LogPipe

    def dropped_metric(self) -> float:
        """petsage_log_lines_dropped_total, scraped from the management listener."""
        body = get(self.management_port, "/metrics").body
        return samples(body)[(NAME + "_total",)]

    def reports(self) -> list[dict[str, Any]]:
        """The records saying how many lines were dropped (on stderr)."""
        return [record for record in self.pipe.records() if "dropped_lines" in record]

    def dropped_reported(self) -> int:
        """The lines the instance said it dropped."""
        return sum(record["dropped_lines"] for record in self.reports())


@pytest.fixture
def unread_log(start_gunicorn: GunicornFactory) -> Iterator[UnreadLog]:
    """The instance, logging at DEBUG (gunicorn's error log then has lines for every
    request too, its checker one a cycle), each process holding BUFFER_LINES lines,
    checks every CHECK_PERIOD s; ready on both ports; stopped while read."""
    pipe = LogPipe()
    port, management_port = free_ports(2)
    try:
        server = start_gunicorn(
            {
                "PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{management_port}",
                "PETSAGE_LOG_BUFFER_LINES": str(BUFFER_LINES),
                "PETSAGE_LOG_LEVEL": "DEBUG",
                "PETSAGE_CHECK_PERIOD": str(CHECK_PERIOD),
            },
            args=["-b", f"127.0.0.1:{port}"],
            output=pipe.write_end,
        )
        # Its log is the pipe's: wait for the checker's first cycle here.
        wait_until(
            lambda: readiness(port) == readiness(management_port) == 200,
            LIVENESS,
            "ready on both ports",
        )
        yield UnreadLog(server, management_port, pipe)
        pipe.resume()
        server.stop()
    finally:
        pipe.close()


def probes(port: int) -> ClientLoad:
    """A strict prober: /livez and /readyz in turn, every 0.25 s each, 1 s timeout."""
    return ClientLoad(port, 2, paths=("/livez", "/readyz"), pause=0.25, timeout=1.0)


def load_both_ports(instance: UnreadLog) -> tuple[ClientLoad, ...]:
    """4 client threads on the smoke test (2 s timeout) and a strict prober on each
    port, until each has sent its share (REQUESTS, PROBES, PROBES) and the log has
    been unread UNREAD_SECONDS, or one fails; their tallies."""
    unread = time.monotonic()
    with (
        ClientLoad(instance.server.port, threads=4, timeout=2.0) as requests,
        probes(instance.server.port) as public,
        probes(instance.management_port) as management,
    ):
        loads = (requests, public, management)

        def done() -> bool:
            shares = zip(loads, (REQUESTS, PROBES, PROBES), strict=True)
            sent = all(load.sent >= share for load, share in shares)
            held = time.monotonic() - unread >= UNREAD_SECONDS
            return any(load.failed for load in loads) or (sent and held)

        wait_until(done, UNREAD_SECONDS + LIVENESS, "the requests and probes sent")
    return loads


@pytest.mark.slow
@pytest.mark.fault
def test_a_log_nobody_reads_costs_lines_never_requests_or_probes(
    unread_log: UnreadLog, fault_record: FaultRecorder
) -> None:
    unread_log.pipe.stall()
    stalled = time.monotonic()
    loads = load_both_ports(unread_log)
    # The checker logs a line a cycle, to the same unread pipe, and publishes on.
    first_cycle_begun_after(unread_log.server, stalled)
    failed, sent = [len(load.failed) for load in loads], [load.sent for load in loads]
    assert failed == [0, 0, 0], (
        f"failed {failed} of {sent}: smoke test, public probes, management probes:"
        f" {[load.failed for load in loads]}"
    )
    during = unread_log.dropped_metric()  # still unread
    unread_log.pipe.resume()
    wait_until(
        lambda: unread_log.dropped_reported() == unread_log.dropped_metric(),
        LIVENESS,
        "every dropped line reported on stderr",
    )
    assert during > 0
    fault_record(
        fault="stdout and stderr to a pipe nobody reads",
        injected=f"gunicorn's stdout and stderr on one pipe (4 KiB) left unread"
        f" {'for 60 s' if FULL else 'while the load below was sent'}; 2 workers,"
        f" PETSAGE_LOG_BUFFER_LINES={BUFFER_LINES}, PETSAGE_LOG_LEVEL=DEBUG",
        load=f"4 client threads on the smoke test ({sent[0]:,}), new connection each,"
        " 2 s timeout; /livez and /readyz every 0.25 s on the public and management"
        f" ports ({sent[1]} and {sent[2]} probes), 1 s timeout",
        sent=sum(sent),
        failed=0,
        lost=0,
        recovery=f"none needed: {int(during):,} lines dropped and counted while"
        f" unread; {len(unread_log.reports())} 'dropped N log lines' line(s) on"
        " stderr once read, adding up to the metric",
    )


@pytest.mark.slow
@pytest.mark.fault
def test_an_instance_whose_log_nobody_reads_still_stops(
    unread_log: UnreadLog, fault_record: FaultRecorder
) -> None:
    server = unread_log.server
    unread_log.pipe.stall()
    with ClientLoad(server.port, threads=2, timeout=2.0) as requests:
        wait_until(
            lambda: requests.sent >= REQUESTS // 2 or bool(requests.failed),
            LIVENESS,
            "the requests sent",
        )
    stopped = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=LIVENESS)
    took = time.monotonic() - stopped
    fault_record(
        fault="stopping while nothing reads the log",
        injected="SIGTERM to the master (2 workers) with stdout and stderr on a pipe"
        " left unread",
        load=f"{requests.sent} smoke-test requests before, the log unread",
        **requests.total.counts(),
        recovery=f"exited (code {code}) {took:.1f} s after SIGTERM, the log still"
        " unread",
    )
    assert requests.failed == [] and code == 0
