"""Reliability against real processes on 127.0.0.1, each scenario bounded in time.

Restarts and reloads behind a real HAProxy (``deploy/haproxy.cfg``), idle and slowloris
connections against gunicorn alone and through nginx (``deploy/nginx.conf``), a worker
killed with SIGKILL under load, and a soak of 10 s (one minute in the full form,
``PETSAGE_FAULT_FULL=1``).
Every test prints its figures (``pytest -s`` shows them) and records them in the fault
record (``docs/reliability.md``); the requirements are those of the issue, not timings.
"""

import contextlib
import csv
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import (
    REPO_ROOT,
    GunicornFactory,
    GunicornServer,
    complete_lines,
)
from tests.support.load import (
    SMOKE_TEST,
    SMOKE_TEST_BODY,
    ClientLoad,
    Tally,
    percentile,
)

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

DEPLOY = REPO_ROOT / "deploy"
HAPROXY_CONFIG = DEPLOY / "haproxy.cfg"
NGINX_CONFIG = DEPLOY / "nginx.conf"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")

needs_haproxy = pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy is not installed (Debian: apt-get install -y haproxy)",
)
needs_nginx = pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed (Debian: apt-get install -y nginx)",
)

# Long enough for HAProxy (inter 500ms, fall 2) to take a draining instance out of
# rotation before it closes its listener, short enough for a quick test.
DRAIN_DELAY = 3.0
# Requests a client waits for: an instance whose workers are rebooting holds new
# connections in its listen backlog for a second or two; that is latency, not loss.
CLIENT_TIMEOUT = 15.0
# Steady load between events, so that each event starts from a settled state.
SETTLE = 2.0


# Processes and sockets, read from /proc (Linux), so that no extra package is needed.


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports of 127.0.0.1 that nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``: a gunicorn master's workers."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name, in parentheses, may hold spaces: the fields follow it.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def rss_kib(pid: int) -> int:
    """The resident memory of ``pid`` in KiB (VmRSS)."""
    match = re.search(
        r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M
    )
    assert match, f"no VmRSS for {pid}"
    return int(match.group(1))


def tcp_connections(port: int) -> dict[int, int]:
    """Established IPv4 connections whose local port is ``port``: peer port -> inode."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if state == "01" and int(local.split(":")[1], 16) == port:
            found[int(remote.split(":")[1], 16)] = int(inode)
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets ``pid`` holds open."""
    inodes = set()
    directory = f"/proc/{pid}/fd"
    for fd in os.listdir(directory):
        with contextlib.suppress(OSError):
            target = os.readlink(f"{directory}/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` has stopped (SIGSTOP takes effect later)."""
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
            states.append(stat[stat.rindex(")") + 2])
    return all(state in "tT" for state in states)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until it holds; the seconds that took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def answers(port: int, path: str, timeout: float = 2.0) -> int | None:
    """The status ``path`` answers on a new connection, or None if it cannot."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def served_by(pid: int, connection: http.client.HTTPConnection, port: int) -> bool:
    """Whether process ``pid`` holds the server end of ``connection`` (kept alive)."""
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    inode = tcp_connections(port).get(client_port)
    return inode is not None and inode in socket_inodes(pid)


def wait_for_workers(server: GunicornServer, count: int = 2) -> list[int]:
    """The pids of the master's ``count`` workers, once each has answered a request.

    gunicorn reports it listens when its first worker boots; a test that measures how
    the workers share connections must not start before the last one accepts them.
    """
    master = server.process.pid
    answered: set[int] = set()

    def all_answered() -> bool:
        workers = children(master)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
        try:
            connection.request("GET", "/livez")
            response = connection.getresponse()
            response.read()
            answered.update(
                pid for pid in workers if served_by(pid, connection, server.port)
            )
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        return len(workers) == count and workers <= answered

    wait_until(all_answered, 20, f"{count} workers answering")
    return sorted(children(master))


# HAProxy, running deploy/haproxy.cfg itself.


class HAProxy:
    """HAProxy in the foreground with ``deploy/haproxy.cfg``, and its servers' states.

    The shipped file is loaded unchanged (HAProxy fills in its environment variables);
    a second file adds only a stats socket, so the test can see what HAProxy thinks of
    each instance. A thread records every change of state with its time.
    """

    def __init__(self, workdir: Path, port: int, instances: list[int]) -> None:
        assert HAPROXY is not None
        self.port = port
        self.stats_path = workdir / "haproxy.sock"
        self.log_path = workdir / "haproxy.log"
        extra = workdir / "stats.cfg"
        extra.write_text(f'global\n    stats socket "{self.stats_path}" mode 600\n')
        environment = {
            **os.environ,
            "PETSAGE_HAPROXY_BIND": f"127.0.0.1:{port}",
            **{
                f"PETSAGE_INSTANCE_{number}": f"127.0.0.1:{instance}"
                for number, instance in enumerate(instances, start=1)
            },
        }
        command = [HAPROXY, "-db", "-f", str(HAPROXY_CONFIG), "-f", str(extra)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        self.states: dict[str, str] = {}
        self.transitions: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def stat(self) -> dict[str, str]:
        """Each server's status as HAProxy reports it: UP, DOWN, 'UP 1/2', ..."""
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(2)
            client.connect(str(self.stats_path))
            client.sendall(b"show stat\n")
            chunks = []
            while chunk := client.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return {
            row["svname"]: row["status"]
            for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "petsage"
            and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            try:
                states = self.stat()
            except OSError:
                continue
            for name, status in states.items():
                if self.states.get(name) != status:
                    self.transitions.append((time.monotonic(), name, status))
            self.states = states

    def in_rotation(self, name: str) -> bool:
        """HAProxy sends ``name`` traffic and has no failed check pending."""
        return self.states.get(name) == "UP"

    def out_of_rotation(self, name: str) -> bool:
        """HAProxy sends ``name`` no new traffic."""
        return self.states.get(name, "").startswith("DOWN")

    def transitions_since(self, began: float) -> list[str]:
        """Each change of a server's state since ``began``, as +seconds, name, state."""
        return [
            f"+{at - began:.1f} s {name} {status}"
            for at, name, status in self.transitions
            if at >= began
        ]

    def log(self) -> str:
        """What HAProxy logged: one line per request (option httplog)."""
        return self.log_path.read_text(errors="replace")

    def failed_requests(self) -> list[str]:
        """Request log lines whose answer was not 200, for a failing test's message."""
        return [
            line
            for line in complete_lines(self.log())
            if " petsage petsage/" in line and not re.search(r"/\d+ 200 ", line)
        ]

    def start(self) -> None:
        """Wait until HAProxy answers on its stats socket, then watch its servers."""

        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"haproxy exited:\n{self.log()}")
            try:
                self.stat()
            except OSError:
                return False
            return True

        wait_until(up, 10, "HAProxy started")
        self._watcher.start()

    def stop(self) -> None:
        """Stop watching and stop HAProxy."""
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=5)
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def haproxy(workdir: Path, port: int, instances: list[int]) -> Iterator[HAProxy]:
    """HAProxy balancing ``instances`` on ``port``, stopped after."""
    proxy = HAProxy(workdir, port, instances)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


def workers_replaced(master: int, old: set[int], count: int) -> bool:
    """Whether ``master`` runs ``count`` workers, none of them one of ``old``."""
    current = children(master)
    return len(current) == count and not current & old


def start_draining_instance(
    start_gunicorn: GunicornFactory, port: int
) -> GunicornServer:
    """A gunicorn on 127.0.0.1:``port`` that drains for DRAIN_DELAY on SIGTERM."""
    return start_gunicorn(
        {
            "PETSAGE_BIND": f"127.0.0.1:{port}",
            "PETSAGE_SHUTDOWN_DELAY": str(DRAIN_DELAY),
        }
    )


@dataclass
class Timeline:
    """What happened since ``began``, and how each instance recovered."""

    began: float
    events: list[str] = field(default_factory=list)
    reloads: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)


def reload_behind_haproxy(
    proxy: HAProxy,
    name: str,
    server: GunicornServer,
    load: ClientLoad,
    timeline: Timeline,
) -> None:
    """SIGHUP: gunicorn starts new workers and stops the old ones; ``name`` back UP."""
    master = server.process.pid
    load.phase("SIGHUP")
    since = time.monotonic() - timeline.began
    server.process.send_signal(signal.SIGHUP)
    replaced = wait_until(
        partial(workers_replaced, master, children(master), 2),
        30,
        f"{name}'s workers replaced",
    )
    wait_until(partial(proxy.in_rotation, name), 15, f"{name} UP")
    timeline.events.append(
        f"+{since:.1f} s {name} SIGHUP: workers replaced in {replaced:.1f} s"
    )
    timeline.reloads.append(f"{name} {replaced:.1f} s")


def restart_behind_haproxy(
    proxy: HAProxy,
    name: str,
    server: GunicornServer,
    load: ClientLoad,
    timeline: Timeline,
    start: Callable[[], GunicornServer],
) -> GunicornServer:
    """SIGTERM: drain, stop, ``start`` a new instance on the same port: the new one."""
    load.phase("SIGTERM")
    terminated = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    out = wait_until(partial(proxy.out_of_rotation, name), 10, f"{name} DOWN")
    # The new instance binds the same port: the old one must be gone.
    server.process.wait(timeout=60)
    exited = time.monotonic() - terminated
    restarted = time.monotonic()
    new = start()
    wait_until(partial(proxy.in_rotation, name), 15, f"{name} UP")
    back = time.monotonic() - restarted
    timeline.events.append(
        f"+{terminated - timeline.began:.1f} s {name} SIGTERM: out of rotation "
        f"after {out:.1f} s, exited (code {server.process.returncode}) "
        f"after {exited:.1f} s; the new instance in rotation "
        f"{back:.1f} s after its start"
    )
    timeline.restarts.append(f"{name} out {out:.1f} s, new one in {back:.1f} s")
    return new


def record_reloads_and_restarts(
    fault_record: FaultRecorder,
    load: ClientLoad,
    timeline: Timeline,
    duration: float,
    transitions: list[str],
) -> None:
    """Print the events and each phase's figures; the fault record's two rows."""
    print(
        f"\nbehind HAProxy (deploy/haproxy.cfg: inter 500ms fall 2 rise 2, retries 0), "
        f"load for {duration:.0f} s, 4 client threads (2 keep-alive):"
    )
    for event in timeline.events:
        print(f"  {event}")
    print(f"  HAProxy's view: {'; '.join(transitions)}")
    for phase, tally in sorted(load.phases.items()):
        print(
            f"  {phase}: {tally.sent} requests sent, {len(tally.failed)} failed, "
            f"p99 {percentile(tally.latencies, 0.99) * 1000:.0f} ms"
        )
    through = "4 client threads through HAProxy (2 keep-alive), smoke test"
    fault_record(
        fault="reload (SIGHUP) behind HAProxy",
        injected="SIGHUP to each of 2 gunicorn masters in turn: all workers replaced",
        load=through,
        recovery="workers replaced: " + ", ".join(timeline.reloads),
        **load.phases["SIGHUP"].counts(),
    )
    fault_record(
        fault="restart (SIGTERM) behind HAProxy",
        injected=(
            f"SIGTERM to each of 2 instances in turn ({DRAIN_DELAY:.0f} s drain), "
            "a new instance started on its port"
        ),
        load=through,
        recovery="out of rotation, back in: " + "; ".join(timeline.restarts),
        **load.phases["SIGTERM"].counts(),
    )


@pytest.mark.fault
@needs_haproxy
def test_reloads_and_restarts_behind_haproxy_lose_no_request(
    start_gunicorn: GunicornFactory, tmp_path: Path, fault_record: FaultRecorder
) -> None:
    front, *ports = free_ports(3)
    names = ["petsage1", "petsage2"]  # the server names in deploy/haproxy.cfg
    servers = [start_draining_instance(start_gunicorn, port) for port in ports]
    with haproxy(tmp_path, front, ports) as proxy:
        for name in names:
            wait_until(partial(proxy.in_rotation, name), 10, f"{name} UP")
        load = ClientLoad(
            front, threads=4, keep_alive_threads=2, pause=0.01, timeout=CLIENT_TIMEOUT
        )
        timeline = Timeline(began=time.monotonic())
        with load:
            load.phase("steady")
            time.sleep(1.0)
            for index, name in enumerate(names):
                # (a) SIGHUP: gunicorn starts new workers and stops the old ones.
                reload_behind_haproxy(proxy, name, servers[index], load, timeline)
                time.sleep(SETTLE)
                # (b) SIGTERM: drain, stop, start a new instance on the same port.
                start = partial(start_draining_instance, start_gunicorn, ports[index])
                servers[index] = restart_behind_haproxy(
                    proxy, name, servers[index], load, timeline, start
                )
                time.sleep(SETTLE)
            load.phase("steady")
            time.sleep(1.0)
        duration = time.monotonic() - timeline.began
        transitions = proxy.transitions_since(timeline.began)
        unanswered = proxy.failed_requests()
    record_reloads_and_restarts(fault_record, load, timeline, duration, transitions)
    # HAProxy's own log names the instance and how each failed request ended.
    failures = "\n".join(load.failed[:20] + unanswered[:20])
    assert load.phases["SIGHUP"].sent > 100
    assert load.phases["SIGTERM"].sent > 100
    assert load.failed == [], failures
    assert unanswered == [], failures


# Idle and slowloris connections.

# A request head that never ends: after these bytes, one "a" a second, forever.
SLOWLORIS_HEAD = b"GET /livez HTTP/1.1\r\nHost: petsage\r\nX-Slowloris: "
IDLE_CONNECTIONS = 200
SLOWLORIS_CONNECTIONS = 50
HOLD_SECONDS = 12.0
PROBE_INTERVAL = 0.2
PROBE_TIMEOUT = 1.0  # kubelet's default timeoutSeconds


@dataclass
class HeldConnection:
    """One attacking connection, and how much of its head it has sent."""

    sock: socket.socket
    slow: bool
    sent: int = 0

    def closed_by_server(self) -> bool:
        """Whether the server closed, reset or answered (e.g. 408) this connection."""
        try:
            # Returns at once: b"" once closed, or the first byte of an answer.
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False  # open, and nothing to read: still held
        except OSError:
            pass  # reset
        return True

    def trickle(self) -> None:
        """Send the next byte of the endless head."""
        byte = SLOWLORIS_HEAD[self.sent : self.sent + 1] or b"a"
        with contextlib.suppress(OSError):  # noticed as closed at the next tick
            self.sock.send(byte)
            self.sent += 1


class SlowClients:
    """``idle`` silent connections and ``slow`` slowloris connections to a port.

    Every second each slowloris connection sends one more byte of a head that never
    ends. A connection the server closes (nginx times them out) is opened again at the
    next tick, as an attacker would, so about ``idle`` + ``slow`` stay open throughout.
    """

    def __init__(self, port: int, idle: int, slow: int) -> None:
        self.port = port
        self.idle = idle
        self.slow = slow
        self.reopened = 0
        self.not_opened = 0
        self.connections: list[HeldConnection] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, slow: bool) -> HeldConnection | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        except OSError:
            self.not_opened += 1
            return None
        # Non-blocking: a socket with a timeout would wait out the timeout in recv
        # instead of answering MSG_DONTWAIT at once.
        sock.setblocking(False)
        return HeldConnection(sock, slow)

    def _tick(self) -> None:
        kept = []
        for connection in self.connections:
            if connection.closed_by_server():
                connection.sock.close()
                self.reopened += 1
                replacement = self._open(connection.slow)
                if replacement is None:
                    continue
                connection = replacement
            if connection.slow:
                connection.trickle()
            kept.append(connection)
        self.connections = kept

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._tick()

    def __enter__(self) -> "SlowClients":
        opened = [self._open(slow=n >= self.idle) for n in range(self.idle + self.slow)]
        self.connections = [c for c in opened if c is not None]
        for connection in self.connections:
            if connection.slow:
                connection.trickle()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for connection in self.connections:
            connection.sock.close()


def probe_for(port: int, path: str, seconds: float) -> Tally:
    """Probe ``path`` every PROBE_INTERVAL for ``seconds``, as a kubelet would."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    while (started := time.monotonic()) < deadline:
        status = answers(port, path, timeout=PROBE_TIMEOUT)
        tally.sent += 1
        if status == 200:
            tally.latencies.append(time.monotonic() - started)
        else:
            at = seconds - (deadline - started)
            tally.failed.append(f"+{at:.1f} s: {status or 'no answer in 1 s'}")
            tally.lost += status is None
        time.sleep(max(0.0, started + PROBE_INTERVAL - time.monotonic()))
    return tally


def slow_client_figures(where: str, attack: SlowClients, probes: Tally) -> str:
    """One line for the output: what was held open and how the probes fared."""
    worst = (
        f"slowest answer {max(probes.latencies) * 1000:.0f} ms"
        if probes.latencies
        else "none answered"
    )
    return (
        f"\n{where}: {attack.idle} idle + {attack.slow} slowloris connections held "
        f"{HOLD_SECONDS:.0f} s ({attack.reopened} reopened after the server closed "
        f"them, {attack.not_opened} not opened); /livez probes with a "
        f"{PROBE_TIMEOUT:.0f} s timeout: {probes.sent} sent, {len(probes.failed)} "
        f"failed; {worst}"
    )


def record_slow_clients(
    fault_record: FaultRecorder,
    where: str,
    attack: SlowClients,
    probes: Tally,
    recovery: str,
) -> None:
    """The fault record's row for idle and slowloris connections held ``where``."""
    fault_record(
        fault=f"idle and slowloris clients, {where}",
        injected=(
            f"{attack.idle} idle + {attack.slow} slowloris connections held "
            f"{HOLD_SECONDS:.0f} s (reopened when closed)"
        ),
        load=(
            f"/livez probe every {PROBE_INTERVAL} s, {PROBE_TIMEOUT:.0f} s timeout "
            "(kubelet), new connection each"
        ),
        recovery=recovery,
        **probes.counts(),
    )


@pytest.mark.fault
def test_idle_and_slowloris_clients_against_gunicorn_alone(
    gunicorn: GunicornServer, fault_record: FaultRecorder
) -> None:
    """A measurement for the README, not a requirement: why nginx goes in front."""
    wait_for_workers(gunicorn)
    with SlowClients(gunicorn.port, IDLE_CONNECTIONS, SLOWLORIS_CONNECTIONS) as attack:
        probes = probe_for(gunicorn.port, "/livez", HOLD_SECONDS)
    print(slow_client_figures("gunicorn alone", attack, probes))
    # Once the attackers are gone, the threads they held are free again.
    freed = wait_until(
        lambda: answers(gunicorn.port, "/livez") == 200, 10, "/livez 200"
    )
    record_slow_clients(
        fault_record,
        "gunicorn alone",
        attack,
        probes,
        f"{freed * 1000:.0f} ms to /livez 200 once the connections closed",
    )


def render_nginx_config(listen: str, upstream: str) -> str:
    """deploy/nginx.conf with its two placeholders filled in, as envsubst would."""
    text = NGINX_CONFIG.read_text()
    for name, value in (
        ("PETSAGE_NGINX_LISTEN", listen),
        ("PETSAGE_UPSTREAM", upstream),
    ):
        text = text.replace("${" + name + "}", value)
    assert "${" not in text, "deploy/nginx.conf has a placeholder the test misses"
    return text


@contextlib.contextmanager
def nginx(upstream_port: int) -> Iterator[int]:
    """nginx running deploy/nginx.conf in front of 127.0.0.1:``upstream_port``."""
    assert NGINX is not None
    [port] = free_ports(1)
    # nginx's workers run as an unprivileged user when started as root: its prefix
    # (temporary files) must be theirs to enter.
    prefix = Path(tempfile.mkdtemp(prefix="petsage-nginx-"))
    prefix.chmod(0o755)
    config = prefix / "nginx.conf"
    config.write_text(
        render_nginx_config(f"127.0.0.1:{port}", f"127.0.0.1:{upstream_port}")
    )
    log_path = prefix / "nginx.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [NGINX, "-p", f"{prefix}/", "-e", "stderr", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def serving() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited:\n{log_path.read_text()}")
            return answers(port, "/livez") == 200

        wait_until(serving, 10, "nginx serving /livez")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.mark.fault
@needs_nginx
def test_idle_and_slowloris_clients_through_nginx_fail_no_probe(
    gunicorn: GunicornServer, fault_record: FaultRecorder
) -> None:
    with (
        nginx(gunicorn.port) as port,
        SlowClients(port, IDLE_CONNECTIONS, SLOWLORIS_CONNECTIONS) as attack,
    ):
        probes = probe_for(port, "/livez", HOLD_SECONDS)
    print(slow_client_figures("through nginx (deploy/nginx.conf)", attack, probes))
    record_slow_clients(
        fault_record,
        "through nginx",
        attack,
        probes,
        "none needed" if probes.failed == [] else "not measured",
    )
    assert len(attack.connections) > 0.9 * (IDLE_CONNECTIONS + SLOWLORIS_CONNECTIONS)
    assert probes.sent > HOLD_SECONDS / PROBE_INTERVAL / 2
    assert probes.failed == []


# A worker killed with SIGKILL.

# A bound for waiting on the new worker, never a measurement: load stretches how soon.
RECOVERY_BOUND = 60.0


def first_answer_from(
    pid: int, port: int, path: str, since: float, expect: Callable[[bytes], bool]
) -> float:
    """Seconds from ``since`` until ``path`` answers 200 from worker ``pid``.

    Each try is a new connection, kept open after the answer so that /proc tells
    which worker accepted it; the other worker answers some of them meanwhile.
    """
    while time.monotonic() - since < RECOVERY_BOUND:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if (
                response.status == 200
                and expect(body)
                and served_by(pid, connection, port)
            ):
                return time.monotonic() - since
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        time.sleep(0.02)
    raise AssertionError(f"{path} not answered by the new worker in {RECOVERY_BOUND} s")


def freeze_and_count_in_flight(worker: int, port: int) -> int:
    """SIGSTOP ``worker``; the connections to ``port`` it holds: requests in flight."""
    # Frozen first, so that the connections it holds can be counted: these are
    # the requests in flight on it, the only ones its death may lose.
    os.kill(worker, signal.SIGSTOP)
    wait_until(partial(stopped, worker), 5, f"worker {worker} stopped")
    return len(socket_inodes(worker) & set(tcp_connections(port).values()))


@dataclass(frozen=True)
class Replacement:
    """The worker forked after a kill, when, and when it first answered each path."""

    worker: int
    replaced: float
    ready: float
    smoke: float


def wait_for_a_new_worker_serving(
    server: GunicornServer, old: set[int], killed: float
) -> Replacement:
    """The master's new worker, once it has answered /readyz and the smoke test."""
    master = server.process.pid
    replaced = wait_until(
        lambda: len(children(master) - old) == 1,
        RECOVERY_BOUND,
        "a new worker",
    )
    [new_worker] = children(master) - old
    ready = first_answer_from(new_worker, server.port, "/readyz", killed, bool)
    smoke = first_answer_from(
        new_worker,
        server.port,
        SMOKE_TEST,
        killed,
        lambda body: json.loads(body) == SMOKE_TEST_BODY,
    )
    return Replacement(new_worker, replaced, ready, smoke)


def record_the_killed_worker(
    fault_record: FaultRecorder,
    victim: int,
    in_flight: int,
    new: Replacement,
    load: ClientLoad,
) -> None:
    """Print what killing ``victim`` cost and how soon it was replaced; record it."""
    print(
        f"\nworker {victim} killed (SIGKILL) under load with {in_flight} connection(s) "
        f"open on it; new worker {new.worker} forked after {new.replaced * 1000:.0f} "
        f"ms; from it /readyz 200 after {new.ready * 1000:.0f} ms, the smoke test 200 "
        f"after {new.smoke * 1000:.0f} ms; {load.sent} requests, "
        f"{len(load.failed)} failed"
        + "".join(f"\n  {failure}" for failure in load.failed)
    )
    fault_record(
        fault="worker killed",
        injected=(
            f"SIGKILL to 1 of 2 workers ({in_flight} connection(s) in flight on it)"
        ),
        load="4 client threads, smoke test, new connection per request",
        recovery=(
            f"new worker after {new.replaced * 1000:.0f} ms; /readyz 200 from it after "
            f"{new.ready * 1000:.0f} ms, smoke test after {new.smoke * 1000:.0f} ms"
        ),
        **load.total.counts(),
    )


@pytest.mark.fault
def test_a_killed_worker_is_replaced_and_serves_again(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    server = start_gunicorn({"PETSAGE_WORKERS": "2"})
    wait_until(lambda: answers(server.port, "/readyz") == 200, 10, "/readyz 200")
    master = server.process.pid
    victim, survivor = wait_for_workers(server)
    with ClientLoad(server.port, threads=4, pause=0.005) as load:
        load.phase("before the kill")
        time.sleep(1.0)
        in_flight = freeze_and_count_in_flight(victim, server.port)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        load.phase("after the kill")
        replacement = wait_for_a_new_worker_serving(server, {victim, survivor}, killed)
        time.sleep(0.5)
    record_the_killed_worker(fault_record, victim, in_flight, replacement, load)
    # The new worker answered both (first_answer_from fails otherwise); how soon is a
    # figure of the record, which load stretches, not a bound.
    assert len(load.failed) <= in_flight
    assert survivor in children(master)


# Soak.

# PETSAGE_FAULT_FULL=1 (``bash tests/faults/run``) selects the full form; the test
# suite and CI run the short one.
SOAK_SECONDS = 60.0 if os.environ.get("PETSAGE_FAULT_FULL") == "1" else 10.0
WARM_UP_SECONDS = 5.0


@pytest.mark.fault
def test_soak_of_steady_load(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    # The recommended configuration: the project's defaults, two workers.
    server = start_gunicorn({"PETSAGE_WORKERS": "2"})
    wait_until(lambda: answers(server.port, "/readyz") == 200, 10, "/readyz 200")
    master = server.process.pid
    workers = wait_for_workers(server)
    paths = (SMOKE_TEST, SMOKE_TEST, "/readyz", "/health", "/")
    # Paced, not flat out: a steady production-like rate that leaves the shared CPU
    # room for the workers' own threads (health checks) as in production.
    load = ClientLoad(
        server.port, threads=4, keep_alive_threads=2, paths=paths, pause=0.005
    )
    with load:
        # Memory the first requests allocate (imports, caches) is not growth.
        time.sleep(WARM_UP_SECONDS)
        before = {pid: rss_kib(pid) for pid in [master, *workers]}
        load.phase("soak")
        time.sleep(SOAK_SECONDS)
        after = {pid: rss_kib(pid) for pid in [master, *workers]}
    soak = load.phases["soak"]
    growth = ", ".join(
        f"{'master' if pid == master else 'worker'} {pid} {before[pid] / 1024:.1f} -> "
        f"{after[pid] / 1024:.1f} MiB ({after[pid] - before[pid]:+d} KiB)"
        for pid in before
    )
    print(
        f"\nsoak {SOAK_SECONDS:.0f} s (after {WARM_UP_SECONDS:.0f} s warm-up), 4 "
        f"threads (2 keep-alive): {soak.sent} requests "
        f"({soak.sent / SOAK_SECONDS:.0f}/s), {len(load.failed)} errors, p50 "
        f"{percentile(soak.latencies, 0.5) * 1000:.1f} ms, p99 "
        f"{percentile(soak.latencies, 0.99) * 1000:.1f} ms; RSS {growth}"
    )
    fault_record(
        fault="soak",
        injected=f"none: {SOAK_SECONDS:.0f} s of steady load on 2 workers",
        load=(
            f"4 client threads (2 keep-alive), {soak.sent / SOAK_SECONDS:.0f} "
            "requests/s over /, the smoke test, /readyz and /health"
        ),
        recovery="none needed",
        **soak.counts(),
    )
    assert load.failed == [], "\n".join(load.failed[:20])
    # The same workers throughout: none was killed for a timeout or crashed.
    assert sorted(children(master)) == workers
