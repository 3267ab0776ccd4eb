"""Reliability against real processes on 127.0.0.1, each scenario bounded in time.

Restarts and reloads behind a real HAProxy (``deploy/haproxy.cfg``), idle and slowloris
connections against gunicorn alone and through nginx (``deploy/nginx.conf``), a worker
killed with SIGKILL under load, and a soak of 10 s (one minute in the full form,
``PETSAGE_FAULT_FULL=1``).
Every test prints its figures (``pytest -s`` shows them) and records them in the fault
record (``docs/reliability.md``); the requirements are those of the issue, not timings.
"""

import contextlib
import http.client
import json
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, GunicornServer
from tests.support.load import (
    SMOKE_TEST,
    SMOKE_TEST_BODY,
    ClientLoad,
    Tally,
    percentile,
)
from tests.support.processes import (
    answers,
    children,
    free_ports,
    served_by,
    socket_inodes,
    tcp_connections,
    wait_for_workers,
    wait_until,
)
from tests.support.proxies import (
    CLIENT_TIMEOUT,
    DRAIN_DELAY,
    HAProxy,
    haproxy,
    needs_haproxy,
    needs_nginx,
    nginx,
)
from tests.support.slow_clients import (
    PROBE_INTERVAL,
    PROBE_TIMEOUT,
    SlowClients,
    probe_for,
)

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

# Steady load between events, so that each event starts from a settled state.
SETTLE = 2.0


# Processes, read from /proc (Linux), so that no extra package is needed.


def rss_kib(pid: int) -> int:
    """The resident memory of ``pid`` in KiB (VmRSS)."""
    match = re.search(
        r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M
    )
    assert match, f"no VmRSS for {pid}"
    return int(match.group(1))


def stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` has stopped (SIGSTOP takes effect later)."""
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
            states.append(stat[stat.rindex(")") + 2])
    return all(state in "tT" for state in states)


# Reloads and restarts behind HAProxy (tests/support/proxies.py).


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

IDLE_CONNECTIONS = 200
SLOWLORIS_CONNECTIONS = 50
HOLD_SECONDS = 12.0


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
