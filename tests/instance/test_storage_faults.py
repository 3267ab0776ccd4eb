"""Health and drain need no writable storage: the state directory made full, made
read-only or deleted under a running instance, against real processes.

Each test runs a gunicorn of 5 workers with a management listener, its state
directory (PETSAGE_STATE_DIR) on a small tmpfs of the test's own, and a second
instance beside it (state elsewhere) so that HAProxy (``deploy/haproxy.cfg``) has
somewhere to send traffic when the first one stops. After the fault it checks that:

1. readiness on both ports answers 200 throughout (polled every 0.25 s);
2. ``petsage drain`` and ``petsage drain --cancel`` still work, and ``petsage probe``
   still finds the instance;
3. SIGTERM still drains it behind HAProxy, which loses no request;
4. the problem is logged once: one ERROR line for a directory that cannot be written
   however long it lasts, one WARNING line for a directory that was put back;
5. a deleted directory comes back with its record and its lock held.

A master writes to its directory only when something there must change, so a full
or read-only one is noticed at the next write: a reload (SIGHUP), which rewrites the
instance's record, is that write here. The tests mount file systems, so they need
root; where mounting is refused they are skipped with the reason. They assert no
duration: every wait has a generous liveness bound, and the times measured go to
the fault record.
"""

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from petsage.instance.directory import lock_held
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, GunicornServer
from tests.support.instances import petsage, readiness
from tests.support.load import ClientLoad
from tests.support.mounts import mounted, read_only_bind_mount
from tests.support.processes import children, free_ports, wait_until
from tests.support.proxies import (
    CLIENT_TIMEOUT,
    DRAIN_DELAY,
    HAProxy,
    haproxy,
    needs_haproxy,
)

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

WORKERS = 5
POLL_INTERVAL = 0.25
# How long readiness is polled with the fault in place: a minute in the full form.
POLL_SECONDS = 60.0 if os.environ.get("PETSAGE_FAULT_FULL") == "1" else 20.0
# Room for the instances' directories and little else: quick to fill.
STATE_SIZE = "1m"
# Liveness bounds, generous for a loaded machine: no test asserts a duration.
EVENT_BOUND = 30.0
EXIT_BOUND = 60.0
# Requests through HAProxy before the SIGTERM, and after the instance has exited.
REQUESTS_AROUND = 100
CANNOT_KEEP = "Instance directory: cannot keep"
REMADE = "Instance directory: remade"
LOAD = (
    f"/readyz every {POLL_INTERVAL} s on the public and management ports for"
    f" {POLL_SECONDS:.0f} s; then 4 client threads through HAProxy (smoke test, new"
    " connection per request) while the instance drained on SIGTERM and exited"
)


class ReadinessPolls:
    """A thread per port asking /readyz every POLL_INTERVAL, each on a new
    connection, and what each answered (None: no answer at all)."""

    def __init__(self, ports: list[int]) -> None:
        self.answers: dict[int, list[int | None]] = {port: [] for port in ports}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._poll, args=(port,), daemon=True)
            for port in ports
        ]

    def _poll(self, port: int) -> None:
        while not self._stop.is_set():
            self.answers[port].append(readiness(port, timeout=5.0))
            self._stop.wait(POLL_INTERVAL)

    @property
    def sent(self) -> int:
        """Polls made, on every port."""
        return sum(len(answers) for answers in self.answers.values())

    @property
    def failed(self) -> int:
        """Polls answered with another status than 200."""
        return sum(
            answer not in (200, None)
            for answers in self.answers.values()
            for answer in answers
        )

    @property
    def lost(self) -> int:
        """Polls that got no answer."""
        return sum(
            answer is None for answers in self.answers.values() for answer in answers
        )

    @property
    def statuses(self) -> dict[int, dict[str, int]]:
        """How often each answer came, by port: for a failing assertion's message."""
        return {
            port: {str(answer): answers.count(answer) for answer in set(answers)}
            for port, answers in self.answers.items()
        }

    def __enter__(self) -> "ReadinessPolls":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


def instance_directory_of(state: Path, pid: int) -> Path | None:
    """The directory the master ``pid`` keeps in ``state``, if there is one now."""
    for path in [*state.glob(f"petsage-{pid}-*"), state / f"petsage-{pid}"]:
        if path.is_dir():
            return path
    return None


def record_of(directory: Path) -> dict[str, Any] | None:
    """The instance record in ``directory``, or None while it is missing or partial."""
    try:
        record: dict[str, Any] = json.loads((directory / "instance.json").read_text())
    except (OSError, ValueError):
        return None
    return record


def is_directory(path: Path, inode: int) -> bool:
    """Whether ``path`` is still the directory whose inode is ``inode``."""
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def restored(state: Path, pid: int, removed_inode: int) -> bool:
    """Whether the master ``pid`` has a directory again (not the one deleted), with
    its record and its lock held."""
    directory = instance_directory_of(state, pid)
    if directory is None or is_directory(directory, removed_inode):
        return False
    record = record_of(directory)
    return (
        record is not None
        and record.get("pid") == pid
        and instance_lock_held(directory)
    )


def directory_lines(server: GunicornServer, level: str, start: str) -> list[str]:
    """The messages of the master's ``level`` log records that begin with ``start``."""
    return [
        record["message"]
        for record in server.log_records()
        if record.get("level") == level
        and str(record.get("message", "")).startswith(start)
    ]


def fill(directory: Path) -> int:
    """Write a file in ``directory`` until its file system has no byte left (ENOSPC);
    the bytes written."""
    written = 0
    descriptor = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        # Smaller and smaller writes, down to the last byte of the last page.
        for size in (65536, 4096, 1):
            chunk = b"\0" * size
            while True:
                try:
                    written += os.write(descriptor, chunk)
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
                    break
    finally:
        os.close(descriptor)
    return written


def within(condition: Callable[[], bool], bound: float) -> float | None:
    """The seconds until ``condition`` held, or None if it did not within ``bound``:
    a liveness bound, so that the test records what happened before it fails."""
    try:
        return wait_until(condition, bound, "")
    except AssertionError:
        return None


def both_answer(ports: list[int], status: int) -> bool:
    """Whether /readyz answers ``status`` on every one of ``ports``."""
    return all(readiness(port) == status for port in ports)


def start_instance(
    start_gunicorn: GunicornFactory,
    state: Path,
    port: int,
    management_port: int | None = None,
    workers: int = 2,
    env: dict[str, str] | None = None,
) -> GunicornServer:
    """A gunicorn on 127.0.0.1:``port`` keeping its state in ``state``, which drains
    for DRAIN_DELAY on SIGTERM, so that HAProxy takes it out of rotation first."""
    management = (
        {"PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{management_port}"}
        if management_port
        else {}
    )
    return start_gunicorn(
        {
            "PETSAGE_BIND": f"127.0.0.1:{port}",
            "PETSAGE_STATE_DIR": str(state),
            "PETSAGE_WORKERS": str(workers),
            "PETSAGE_SHUTDOWN_DELAY": str(DRAIN_DELAY),
            **management,
            **(env or {}),
        }
    )


def start_the_instance_and_a_bystander(
    stack: contextlib.ExitStack,
    start_gunicorn: GunicornFactory,
    tmp_path: Path,
    fault: str,
    ports: list[int],
) -> GunicornServer:
    """The instance on a tmpfs state and a bystander beside it, both ready to serve."""
    public, management, other = ports
    state = tmp_path / "state"
    state.mkdir()
    bystander_state = tmp_path / "bystander"
    bystander_state.mkdir()
    # A full state directory must stay full: the metrics of workers that a reload
    # retires would be folded and deleted, freeing room, so they go elsewhere.
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    extra = {"PROMETHEUS_MULTIPROC_DIR": str(metrics)} if fault == "full" else {}
    stack.enter_context(
        mounted("-t", "tmpfs", "-o", f"size={STATE_SIZE}", "tmpfs", str(state))
    )
    server = start_instance(start_gunicorn, state, public, management, WORKERS, extra)
    # Stopped while its state is still mounted, whatever happens.
    stack.callback(server.stop)
    bystander = start_instance(start_gunicorn, bystander_state, other)
    stack.callback(bystander.stop)
    master = server.process.pid
    wait_until(lambda: len(children(master)) == WORKERS, 20, "5 workers")
    wait_until(
        lambda: all(both_answer([public, management], 200) for _ in range(20)),
        20,
        "/readyz 200 on both ports from every worker",
    )
    return server


def haproxy_with_both_in_rotation(
    stack: contextlib.ExitStack, workdir: Path, port: int, instances: list[int]
) -> HAProxy:
    """HAProxy on ``port`` before ``instances``, stopped with ``stack``; both UP."""
    proxy = stack.enter_context(haproxy(workdir, port, instances))
    for name in ("petsage1", "petsage2"):
        wait_until(partial(proxy.in_rotation, name), 20, f"{name} UP")
    return proxy


@dataclass(frozen=True)
class FaultWindow:
    """What was injected, and when the master noticed it and put a deletion right."""

    injected: str
    noticed: float | None
    recovered: float | None


def inject(
    fault: str, stack: contextlib.ExitStack, state: Path, directory: Path, inode: int
) -> str:
    """Fill or write-protect ``state``, or delete ``directory``: what was injected."""
    if fault == "full":
        filled = fill(state)
        return (
            f"PETSAGE_STATE_DIR on a {STATE_SIZE} tmpfs filled to ENOSPC"
            f" ({filled} bytes) after the start; a reload (SIGHUP) to make"
            " the master rewrite its record"
        )
    if fault == "read-only":
        stack.enter_context(read_only_bind_mount(state))
        return (
            f"PETSAGE_STATE_DIR (a {STATE_SIZE} tmpfs) made read-only after"
            " the start (a read-only bind mount over it: the tmpfs itself"
            " cannot be remounted read-only while workers hold files open"
            " for writing); a reload (SIGHUP) to make the master rewrite its"
            " record"
        )
    # Once the master has put it back, the directory is another one.
    while is_directory(directory, inode):
        shutil.rmtree(directory, ignore_errors=True)
    return (
        "the instance's directory (lock, record, metrics) deleted with"
        " shutil.rmtree while running"
    )


def inject_and_wait_out_the_window(
    stack: contextlib.ExitStack, fault: str, server: GunicornServer, directory: Path
) -> FaultWindow:
    """Inject ``fault`` a second in, see the master notice it, wait out POLL_SECONDS."""
    state, master = directory.parent, server.process.pid
    removed_inode = directory.stat().st_ino
    time.sleep(1.0)
    injected_at = time.monotonic()
    injected = inject(fault, stack, state, directory, removed_inode)
    recovered: float | None = None
    if fault == "deleted":
        if within(partial(restored, state, master, removed_inode), EVENT_BOUND):
            recovered = time.monotonic() - injected_at
        noticed = within(
            lambda: bool(directory_lines(server, "WARNING", REMADE)),
            EVENT_BOUND,
        )
    else:
        server.process.send_signal(signal.SIGHUP)
        noticed = within(
            lambda: bool(directory_lines(server, "ERROR", CANNOT_KEEP)),
            EVENT_BOUND,
        )
    # The rest of the window: the master tries again about once a second.
    time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - injected_at)))
    return FaultWindow(injected, noticed, recovered)


@dataclass(frozen=True)
class Drain:
    """``petsage probe``, ``drain``, ``drain --cancel``; whether readiness followed."""

    probed: subprocess.CompletedProcess[str]
    drained: subprocess.CompletedProcess[str]
    seen: bool
    cancelled: subprocess.CompletedProcess[str]
    back: bool


def drain_and_cancel(state: Path, ports: list[int]) -> Drain:
    """Probe, drain and cancel the drain, found through the records in ``state``."""
    env = {"PETSAGE_STATE_DIR": str(state)}
    probed = petsage("probe", env=env)
    drained = petsage("drain", env=env)
    seen = drained.returncode == 0 and (
        within(partial(both_answer, ports, 503), EVENT_BOUND) is not None
    )
    cancelled = petsage("drain", "--cancel", env=env)
    back = cancelled.returncode == 0 and (
        within(partial(both_answer, ports, 200), EVENT_BOUND) is not None
    )
    return Drain(probed, drained, seen, cancelled, back)


def directory_problems_logged(server: GunicornServer) -> tuple[list[str], list[str]]:
    """The master's ERROR lines (cannot keep its directory) and WARNINGs (remade it)."""
    return (
        directory_lines(server, "ERROR", CANNOT_KEEP),
        directory_lines(server, "WARNING", REMADE),
    )


@dataclass(frozen=True)
class Termination:
    """SIGTERM under load behind HAProxy: when it left the rotation, how it exited."""

    load: ClientLoad
    out: float | None
    serving_when_out: bool
    code: int | None
    exited: float
    unanswered: list[str]
    log: str


def terminate_under_load(
    server: GunicornServer, proxy: HAProxy, front: int
) -> Termination:
    """SIGTERM the instance (back in rotation first) under load through HAProxy."""
    wait_until(partial(proxy.in_rotation, "petsage1"), EVENT_BOUND, "back UP")
    with ClientLoad(front, threads=4, pause=0.01, timeout=CLIENT_TIMEOUT) as load:
        load.wait_for_requests(REQUESTS_AROUND)
        terminated = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        out = within(partial(proxy.out_of_rotation, "petsage1"), EVENT_BOUND)
        serving_when_out = out is not None and server.process.poll() is None
        code: int | None = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = server.process.wait(timeout=EXIT_BOUND)
        exited = time.monotonic() - terminated
        load.wait_for_requests(load.sent + REQUESTS_AROUND)
    return Termination(
        load, out, serving_when_out, code, exited, proxy.failed_requests(), server.log()
    )


def record_the_storage_fault(
    fault_record: FaultRecorder,
    fault: str,
    polls: ReadinessPolls,
    window: FaultWindow,
    drain: Drain,
    sigterm: Termination,
    errors: list[str],
    warnings: list[str],
) -> None:
    """The fault record's row for a state directory ``fault``, printed too."""
    load = sigterm.load
    taken_out = "never" if sigterm.out is None else f"after {sigterm.out:.1f} s"
    stopped = (
        f"SIGTERM: out of HAProxy's rotation {taken_out}, exited (code {sigterm.code})"
        f" after {sigterm.exited:.1f} s"
    )
    if fault == "deleted":
        when = (
            f"not back within {EVENT_BOUND:.0f} s"
            if window.recovered is None
            else f"back {window.recovered:.1f} s after the deletion"
        )
        recovery = (
            f"directory, record and held lock {when} ({len(warnings)} WARNING);"
            f" {stopped}"
        )
    else:
        unaffected = polls.failed + polls.lost == 0 and drain.seen and drain.back
        verdict = "none needed" if unaffected else "readiness or draining failed"
        recovery = f"{verdict}: {len(errors)} ERROR line while it lasted; {stopped}"
    fault_record(
        fault=f"state directory {fault}",
        injected=window.injected,
        load=LOAD,
        sent=polls.sent + load.sent,
        failed=polls.failed + len(load.failed) - load.total.lost,
        lost=polls.lost + load.total.lost,
        recovery=recovery,
    )
    print(
        f"\n{fault}: {polls.sent} readiness polls ({polls.failed} not 200,"
        f" {polls.lost} unanswered); {load.sent} requests through HAProxy"
        f" ({len(load.failed)} failed); {recovery}"
    )


@pytest.mark.fault
@needs_haproxy
@pytest.mark.parametrize("fault", ["full", "read-only", "deleted"])
def test_health_and_drain_need_no_writable_storage(
    start_gunicorn: GunicornFactory,
    tmp_path: Path,
    fault_record: FaultRecorder,
    fault: str,
) -> None:
    front, public, management, other = free_ports(4)
    ports, state = [public, management], tmp_path / "state"
    with contextlib.ExitStack() as stack:
        server = start_the_instance_and_a_bystander(
            stack, start_gunicorn, tmp_path, fault, [public, management, other]
        )
        directory = instance_directory_of(state, server.process.pid)
        assert directory is not None, sorted(p.name for p in state.iterdir())
        proxy = haproxy_with_both_in_rotation(stack, tmp_path, front, [public, other])
        # 1. Readiness, polled from before the fault to well after it.
        with ReadinessPolls(ports) as polls:
            window = inject_and_wait_out_the_window(stack, fault, server, directory)
        # 2. Drain and cancel, found through the records in the state directory.
        drain = drain_and_cancel(state, ports)
        # 4. Each problem logged once, however long it lasted.
        errors, warnings = directory_problems_logged(server)
        # 3. SIGTERM behind HAProxy: out of rotation while serving, then it exits.
        sigterm = terminate_under_load(server, proxy, front)
    record_the_storage_fault(
        fault_record, fault, polls, window, drain, sigterm, errors, warnings
    )
    assert polls.failed == polls.lost == 0, polls.statuses
    assert all(len(answers) > 10 for answers in polls.answers.values()), polls.statuses
    assert drain.probed.returncode == 0, drain.probed.stderr
    assert drain.drained.returncode == 0, drain.drained.stderr
    assert drain.seen
    assert drain.cancelled.returncode == 0 and "cancelled" in drain.cancelled.stdout, (
        drain.cancelled.stdout + drain.cancelled.stderr
    )
    assert drain.back
    assert window.noticed is not None, "the master logged nothing about its directory"
    if fault == "deleted":
        assert window.recovered is not None, "the directory did not come back"
        assert warnings and len(warnings) == 1, warnings
        assert errors == [], errors
    else:
        assert len(errors) == 1, errors
        reason = "No space left on device" if fault == "full" else "Read-only"
        assert reason in errors[0], errors
    assert sigterm.serving_when_out, "the instance stopped before HAProxy took it out"
    assert "Draining: readiness fails now" in sigterm.log
    assert sigterm.code == 0, sigterm.log[-2000:]
    assert sigterm.load.failed == [], sigterm.load.failed[:10]
    assert sigterm.unanswered == [], sigterm.unanswered[:10]


def instance_lock_held(directory: Path) -> bool:
    """Whether a live master holds ``directory``'s instance lock."""
    return lock_held(str(directory)) is True
