"""The management listener's socket: opened once by the master, served by every worker.

Real gunicorn on loopback. A worker's exit drops nothing queued on it, a stuck worker
takes no connection it cannot answer, a second instance on the same address stops with
one line, IPv6 works, slow clients cost neither threads nor probes, every error is
problem JSON, and a SIGUSR2 upgrade hands the socket to the new master.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from petsage.config import ConfigError, load_settings
from tests.support.apps.gil import HOLD_SECONDS
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import REPO_ROOT, GunicornFactory, GunicornServer
from tests.support.load import ClientLoad, Tally
from tests.support.management import free_port
from tests.support.processes import answers, children, wait_for_workers, wait_until
from tests.support.slow_clients import SlowClients, probe_for

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

WORKERS = 2
# The scenario: probes for 12 s while --max-requests 25 replaces workers.
RESTART_SECONDS = 12.0
PAUSE = 0.02  # between one client thread's requests: about the rate
TRICKLING_CLIENTS = 300
SECURITY_HEADERS = (
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Content-Security-Policy",
)


def management_bind(port: int) -> dict[str, str]:
    """The environment for a management listener on 127.0.0.1:``port``."""
    return {"PETSAGE_MANAGEMENT_BIND": f"127.0.0.1:{port}"}


def wait_until_ready(port: int) -> None:
    """Wait until the management listener on ``port`` answers /readyz 200."""
    wait_until(lambda: answers(port, "/readyz") == 200, 20, "/readyz 200")


def thread_count(pid: int) -> int:
    """The threads of process ``pid`` (/proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Threads:\s+(\d+)", status, re.M)
    assert match, f"no thread count for {pid}"
    return int(match.group(1))


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (exists and is no zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def raw_answer(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` to 127.0.0.1:``port`` and read the answer until the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def head_and_body(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, header fields (lower-case names) and body of a whole answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_problem(answer: bytes, status: int) -> None:
    """``answer`` is problem JSON for ``status`` with PetSage's security headers."""
    code, headers, body = head_and_body(answer)
    assert code == status, answer[:300]
    assert headers["content-type"] == "application/problem+json"
    for name in SECURITY_HEADERS:
        assert name.lower() in headers, name
    assert json.loads(body)["status"] == status


class TestSetting:
    def test_an_ipv6_address_in_brackets_is_accepted(self) -> None:
        settings = load_settings({"PETSAGE_MANAGEMENT_BIND": "[::1]:8001"})
        assert settings["MANAGEMENT_BIND"] == "[::1]:8001"

    @pytest.mark.parametrize(
        "value", ["::1:8001", "[::1:8001", "[nope]:8001", "127.0.0.1:0", "8001"]
    )
    def test_an_address_it_cannot_listen_on_is_refused(self, value: str) -> None:
        with pytest.raises(ConfigError, match="PETSAGE_MANAGEMENT_BIND"):
            load_settings({"PETSAGE_MANAGEMENT_BIND": value})


@pytest.mark.fault
def test_worker_restarts_drop_no_management_request(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    port = free_port()
    server = start_gunicorn(management_bind(port), args=["--max-requests", "25"])
    wait_until_ready(port)
    master = server.process.pid
    workers = children(master)
    with (
        ClientLoad(server.port, threads=2, pause=PAUSE) as requests,
        ClientLoad(port, threads=2, paths=("/livez",), pause=PAUSE) as probes,
    ):
        deadline = time.monotonic() + RESTART_SECONDS
        while time.monotonic() < deadline:
            workers |= children(master)
            time.sleep(0.05)
    replaced = len(workers) - WORKERS
    print(
        f"\n{replaced} workers replaced; smoke test: {requests.total.counts()}, "
        f"management: {probes.total.counts()}"
    )
    fault_record(
        fault="workers replaced, management listener",
        injected=f"--max-requests 25: {replaced} workers replaced",
        load=(
            f"2 threads on the smoke test and 2 on management /livez for "
            f"{RESTART_SECONDS:.0f} s, {PAUSE * 1000:.0f} ms apart, new connection"
            " per request"
        ),
        recovery="none needed",
        **probes.total.counts(),
    )
    assert replaced >= 5, "the load did not replace workers"
    assert probes.failed == []


@pytest.mark.fault
def test_a_worker_holding_the_gil_takes_no_management_connection(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    port = free_port()
    server = start_gunicorn(management_bind(port), app="tests.support.apps.gil:app")
    wait_for_workers(server, WORKERS)
    wait_until_ready(port)
    held: dict[str, float] = {}

    def hold() -> None:
        held.update(json.loads(server.request("GET", "/hold-gil", timeout=30).body))

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.5)  # the request reaches a worker, which stops running Python
    probes = Tally()
    while holder.is_alive():  # probe as long as the worker is stuck
        window = probe_for(port, "/readyz", 0.5)
        probes.sent += window.sent
        probes.failed += window.failed
        probes.lost += window.lost
    holder.join(timeout=30)
    print(f"\nGIL held {held.get('held', 0):.1f} s; /readyz: {probes.counts()}")
    fault_record(
        fault="a worker holding the GIL, management listener",
        injected=f"a request holding one of {WORKERS} workers' GIL for "
        f"{held.get('held', 0):.1f} s (one C call)",
        load="management /readyz every 0.2 s meanwhile, 1 s timeout",
        recovery="none needed",
        **probes.counts(),
    )
    assert held.get("held", 0) >= HOLD_SECONDS - 0.5, "the GIL was not held"
    assert probes.failed == []


def test_a_second_instance_on_the_same_address_stops_with_one_line(
    start_gunicorn: GunicornFactory,
) -> None:
    port = free_port()
    first = start_gunicorn(management_bind(port))
    second = subprocess.Popen(
        [sys.executable, "-m", "gunicorn"],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "PETSAGE_BIND": "127.0.0.1:0",
            "PETSAGE_SHUTDOWN_DELAY": "0",
            **management_bind(port),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = second.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)
        pytest.fail("the second instance started on the same management address")
    assert second.returncode != 0
    assert output.strip().splitlines() == [
        f"petsage: PETSAGE_MANAGEMENT_BIND='127.0.0.1:{port}' cannot be listened on:"
        " Address already in use (another PetSage instance, or another program,"
        " listens there)"
    ]
    assert answers(port, "/livez") == 200
    assert first.request("GET", "/livez").status == 200


def ipv6_port() -> int | None:
    """A free port on ::1, or None when this host has no IPv6 loopback."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
            port: int = sock.getsockname()[1]
            return port
    except OSError:
        return None


def test_an_ipv6_management_address_answers(start_gunicorn: GunicornFactory) -> None:
    port = ipv6_port()
    if port is None:
        pytest.skip("this host has no IPv6 loopback")
    start_gunicorn({"PETSAGE_MANAGEMENT_BIND": f"[::1]:{port}"})

    def ready() -> bool:
        try:
            with socket.create_connection(("::1", port), timeout=2) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: petsage\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    wait_until(ready, 20, "/readyz 200 on [::1]")


@pytest.mark.fault
def test_trickling_clients_leave_probes_answered_and_threads_bounded(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    port = free_port()
    server = start_gunicorn(management_bind(port))
    workers = wait_for_workers(server, WORKERS)
    wait_until_ready(port)
    before = {pid: thread_count(pid) for pid in workers}
    most = dict(before)
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.1):
            for pid in workers:
                most[pid] = max(most[pid], thread_count(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with SlowClients(port, idle=0, slow=TRICKLING_CLIENTS) as attack:
            time.sleep(1.0)  # every client has started its head
            probes = probe_for(port, "/readyz", 6.0)
            held = len(attack.connections)
    finally:
        sampling.set()
        sampler.join()
    print(
        f"\nthreads per worker before {before}, most during {most}; "
        f"{held} slow clients held, {attack.reopened} cut off and reopened; "
        f"/readyz: {probes.counts()}"
    )
    fault_record(
        fault="trickling clients, management listener",
        injected=f"{TRICKLING_CLIENTS} clients each sending its request head one "
        "byte a second",
        load="management /readyz every 0.2 s, 1 s timeout",
        recovery=f"none needed; {attack.reopened} slow clients cut off (408)",
        **probes.counts(),
    )
    assert probes.failed == []
    assert held >= TRICKLING_CLIENTS * 0.9, "the slow clients were not held open"
    assert attack.reopened > 0, "no slow client was cut off"
    for pid in workers:
        assert most[pid] <= before[pid] + 2, (pid, before[pid], most[pid])


def test_a_head_trickled_past_the_deadline_gets_a_408_problem(
    start_gunicorn: GunicornFactory,
) -> None:
    port = free_port()
    start_gunicorn(management_bind(port))
    wait_until_ready(port)
    head = b"GET /livez HTTP/1.1\r\nX-Slow: " + b"a" * 20
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Blocking, without a timeout: a socket with one would wait for an answer
        # in each recv below, MSG_DONTWAIT or not, and send no more bytes.
        sock.settimeout(None)
        started = time.monotonic()
        answer = b""
        # One byte every 0.5 s: each read is quick, the head never ends.
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sent += 1
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(4096, socket.MSG_DONTWAIT)
            if answer:
                break
            time.sleep(0.5)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                answer += chunk
        waited = time.monotonic() - started
    print(f"\n408 after {waited:.1f} s, {sent} of {len(head)} bytes of the head sent")
    assert_problem(answer, 408)
    # Cut off while it still trickled (in 25 s at the least): by a deadline on the
    # whole head, which each quick read alone would never reach.
    assert sent < len(head), f"answered only once all {sent} bytes were sent"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"GET /livez HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    ],
    ids=["bad request line", "head too large", "bad header field"],
)
def test_a_bad_request_gets_problem_json_with_security_headers(
    start_gunicorn: GunicornFactory, request_bytes: bytes, status: int
) -> None:
    port = free_port()
    start_gunicorn(management_bind(port))
    wait_until_ready(port)
    assert_problem(raw_answer(port, request_bytes), status)
    assert answers(port, "/livez") == 200


def test_a_reload_keeps_the_socket_and_drops_nothing(
    start_gunicorn: GunicornFactory,
) -> None:
    port = free_port()
    server = start_gunicorn(management_bind(port))
    old_workers = set(wait_for_workers(server, WORKERS))
    wait_until_ready(port)
    with ClientLoad(port, threads=2, paths=("/livez",)) as probes:
        server.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: (
                len(children(server.process.pid) - old_workers) == WORKERS
                and not children(server.process.pid) & old_workers
            ),
            30,
            "the workers replaced",
        )
        time.sleep(0.5)
    assert server.process.poll() is None, server.log()[-2000:]
    assert "cannot be listened on" not in server.log()
    assert probes.sent > 0
    assert probes.failed == []


def new_master_of(old_master: int, old_workers: set[int]) -> int | None:
    """The master a SIGUSR2 upgrade of ``old_master`` started, once it has workers."""
    for pid in children(old_master) - old_workers:
        if len(children(pid)) >= WORKERS:
            return pid
    return None


def stop_master(pid: int) -> None:
    """SIGTERM a master this test does not own as a child, and wait until it ends."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid), 40, f"master {pid} stopped")


@pytest.mark.fault
def test_a_sigusr2_upgrade_hands_the_socket_to_the_new_master(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    port = free_port()
    server: GunicornServer = start_gunicorn(management_bind(port))
    old_master = server.process.pid
    old_workers = set(wait_for_workers(server, WORKERS))
    wait_until_ready(port)
    new_master: int | None = None
    try:
        with ClientLoad(port, threads=2, paths=("/livez",)) as probes:
            probes.phase("upgrade")
            os.kill(old_master, signal.SIGUSR2)
            wait_until(
                lambda: new_master_of(old_master, old_workers) is not None,
                30,
                "a new master with its workers",
            )
            new_master = new_master_of(old_master, old_workers)
            time.sleep(1.0)  # the new workers serve beside the old ones
            probes.phase("old master stopped")
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(40)
            time.sleep(2.0)  # only the new master's workers answer now
        assert new_master is not None
        new_workers = children(new_master)
        assert answers(port, "/livez") == 200
    finally:
        if new_master is not None:
            stop_master(new_master)
    after = probes.phases["old master stopped"]
    print(f"\nnew workers {sorted(new_workers)}; management: {probes.total.counts()}")
    fault_record(
        fault="SIGUSR2 upgrade, management listener",
        injected="SIGUSR2 to the master, then SIGTERM to the old master",
        load="2 threads on management /livez, new connection per request",
        recovery="none needed",
        **probes.total.counts(),
    )
    assert "cannot be listened on" not in server.log()
    assert len(new_workers) == WORKERS
    assert after.sent > 0
    assert probes.failed == []
