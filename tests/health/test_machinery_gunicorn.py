"""Both sides of liveness in a real gunicorn (petsage.health.machinery): a worker
wedged on a lock PetSage owns fails its /livez naming the lock and is replaced; a
worker whose every request waits on a stopped dependency stays live."""

import contextlib
import json
import socket
import tempfile
import threading
import time
from collections import Counter
from http.client import HTTPException
from pathlib import Path

import pytest

from petsage.health.machinery import WEDGED_AFTER
from petsage.health.shared import LEASE, REPLACE_AFTER
from tests.support.apps.wedging import WEDGED_LOCK
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, http_request
from tests.support.instances import AUTH, TOKEN
from tests.support.management import Instance
from tests.support.processes import children, wait_for_workers, wait_until

pytestmark = pytest.mark.slow  # real gunicorn: not in the fast tier

APP = "tests.support.apps.wedging:app"
WORKERS, THREADS = 2, 2
GRACEFUL = 3
# The documented bound: the lock out of reach for WEDGED_AFTER, the heartbeat silent
# for REPLACE_AFTER leases, a pass of the master's loop (1 s), the graceful timeout.
REPLACED_WITHIN = WEDGED_AFTER + REPLACE_AFTER * LEASE + 1 + GRACEFUL
# Waits are bounded far beyond it, for a busy machine; the figures are printed.
SLACK = 60.0
# Probes as a strict kubelet sends them, for longer than a wedge takes to be acted on.
POLL_EVERY, POLL_TIMEOUT = 0.25, 1.0
POLLS = int((WEDGED_AFTER + REPLACE_AFTER * LEASE + 2) / POLL_EVERY)


def start(start_gunicorn: GunicornFactory) -> tuple[Instance, list[int]]:
    """The test app, 2 workers of 2 threads, management listener on; its workers."""
    instance = Instance(
        start_gunicorn,
        args=[APP],
        WORKERS=str(WORKERS),
        THREADS=str(THREADS),
        HEALTH_TOKEN=TOKEN,
        GRACEFUL_TIMEOUT=str(GRACEFUL),
    )
    return instance, wait_for_workers(instance.server, WORKERS)


def names_the_lock(instance: Instance) -> bool:
    """Whether the worker that answers /livez on the management port fails it,
    naming the wedged lock."""
    answer = instance.management("/livez?verbose", AUTH)
    expected = f"[-]machinery failed: lock {WEDGED_LOCK} held for "
    return answer.status == 503 and expected in answer.body.decode()


@pytest.mark.fault
def test_a_worker_wedged_on_a_lock_of_petsages_fails_livez_and_is_replaced(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    instance, workers = start(start_gunicorn)
    master = instance.server.process.pid
    wedged = json.loads(instance.public("/wedge").body)["pid"]
    named = wait_until(
        lambda: names_the_lock(instance),
        WEDGED_AFTER + SLACK,
        f"the wedged worker's /livez naming {WEDGED_LOCK}",
    )
    replaced = wait_until(
        lambda: wedged not in (now := children(master)) and len(now) == WORKERS,
        REPLACED_WITHIN + SLACK,
        "a new worker in place of the wedged one",
    )
    replaced += named
    served = [instance.public("/").status for _ in range(20)]
    print(f"\n/livez named the lock {named:.1f} s, replaced {replaced:.1f} s after")
    fault_record(
        fault=f"a lock of PetSage's held for good ({WORKERS} workers)",
        injected=f"a thread of one worker holds {WEDGED_LOCK} and never lets it go",
        load="/livez?verbose on the management port; 20 requests once replaced",
        sent=len(served),
        failed=sum(status != 200 for status in served),
        lost=0,
        recovery=f"/livez named the lock after {named:.1f} s (bound"
        f" {WEDGED_AFTER:.0f} s); worker replaced after {replaced:.1f} s (bound"
        f" {REPLACED_WITHIN:.0f} s)",
    )
    assert served == [200] * 20
    assert wedged not in children(master) and workers != sorted(children(master))


def occupy_every_thread(
    instance: Instance, dependency: int, started: Path
) -> list[threading.Thread]:
    """Requests waiting on the dependency in every thread of every worker (4 times
    as many requests as threads, so that each worker gets at least its share)."""
    path = f"/upstream?port={dependency}&started={started}"

    def ask() -> None:
        # Answered with an error once the dependency is closed, at the end.
        with contextlib.suppress(OSError, HTTPException):
            http_request(instance.port, "GET", path, timeout=SLACK * 2)

    requests = [
        threading.Thread(target=ask, daemon=True) for _ in range(4 * WORKERS * THREADS)
    ]
    for request in requests:
        request.start()
    return requests


def waiting_by_worker(started: Path) -> Counter[str]:
    """How many requests wait on the dependency in each worker (by pid)."""
    return Counter(path.name.split("-")[0] for path in started.iterdir())


@pytest.mark.fault
def test_requests_waiting_on_a_stopped_dependency_never_fail_livez(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    # A server that never accepts: the kernel takes connections, nobody answers.
    with (
        socket.create_server(("127.0.0.1", 0), backlog=128) as dependency,
        tempfile.TemporaryDirectory() as folder,
    ):
        instance, workers = start(start_gunicorn)
        requests = occupy_every_thread(
            instance, dependency.getsockname()[1], Path(folder)
        )
        wait_until(
            lambda: (
                waiting_by_worker(Path(folder))
                == Counter({str(pid): THREADS for pid in workers})
            ),
            SLACK,
            "every thread of every worker waiting on the dependency",
        )
        statuses = []
        for _ in range(POLLS):
            statuses.append(livez(instance.management_port))
            time.sleep(POLL_EVERY)
        still_waiting = sum(request.is_alive() for request in requests)
        after = sorted(children(instance.server.process.pid))
    for request in requests:
        request.join(SLACK)
    fault_record(
        fault="every request waits on a stopped dependency",
        injected=f"{len(requests)} requests to a server that never answers, every"
        f" thread of {WORKERS} workers ({THREADS} each) waiting",
        load=f"/livez on the management port every {POLL_EVERY} s, 1 s timeout",
        sent=len(statuses),
        failed=sum(status not in (200, None) for status in statuses),
        lost=statuses.count(None),
        recovery=f"none needed: no worker replaced, {still_waiting} still waiting",
    )
    assert statuses == [200] * POLLS
    assert after == workers and still_waiting == len(requests)


def livez(port: int) -> int | None:
    """/livez on a new connection with the kubelet's 1 s timeout; None if lost."""
    try:
        return http_request(port, "GET", "/livez", timeout=POLL_TIMEOUT).status
    except (OSError, HTTPException):
        return None
