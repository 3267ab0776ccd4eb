"""Workers leaving on purpose never make a serving instance stale, against real
gunicorn (petsage/health/shared.py): the checker process publishes whatever the
workers do.

Workers leave by the dozen while ``wrk`` loads the smoke test: recycled by
``--max-requests 5`` and added and removed by SIGTTIN and SIGTTOU, or all replaced by
a SIGHUP a second while a critical check takes 1.5 s. Throughout, /readyz is polled
on both ports as a strict kubelet polls it (every 0.25 s, 1 s timeout), and none may
answer 503 but for the slow check's own timeout. The quick form checks every 2 s, so
that an instance left without cycles would fail as stale within the run (after
11.2 s, 17.2 s with the slow check); the full form (PETSAGE_FAULT_FULL=1) adds the
default period and lasts the issue's 60 s.
"""

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import pytest

from bench.loadgen import WrkResult, run_wrk
from petsage.instance.memory import InstanceMemory
from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory
from tests.support.instances import LIVENESS, TOKEN, ReadinessPoller, readiness
from tests.support.listeners import answering
from tests.support.load import SMOKE_TEST
from tests.support.management import Instance
from tests.support.processes import children, wait_until
from tests.support.snapshots import Publications, instance_memory

pytestmark = [
    pytest.mark.slow,  # real processes: not in the fast tier
    pytest.mark.skipif(
        shutil.which("wrk") is None,
        reason="wrk is not installed (Debian: apt-get install -y wrk)",
    ),
]

FULL = os.environ.get("PETSAGE_FAULT_FULL") == "1"
# How long the load lasts: the 60 s in the full form.
LOAD_SECONDS = 60 if FULL else 20
# Check periods: the default's stale bound (31 s) is longer than the quick form.
PERIODS = ["2", "default"] if FULL else ["2"]
SIGNALS = 20
RELOADS = 20
# The slow critical check: 1.5 s, longer than a reload's second. Its timeout
# is 3 s here, not the 2 s: on a 2-core host at load 25 the answer took up to
# 2.15 s and failed the check itself (a true 503, but not this test's subject).
SLOW_CHECK = 1.5
CHECK_TIMEOUT = "3"


def period_setting(period: str) -> dict[str, str]:
    """PETSAGE_CHECK_PERIOD for ``period`` ("default": not set)."""
    return {} if period == "default" else {"PETSAGE_CHECK_PERIOD": period}


def ready_instance(start_gunicorn: GunicornFactory, env: dict[str, str]) -> Instance:
    """An instance with a management listener, once both ports answer /readyz 200
    (its first cycle is published) and all its workers run."""
    instance = Instance(start_gunicorn, env, HEALTH_TOKEN=TOKEN)
    workers = int(env["PETSAGE_WORKERS"])
    wait_until(
        lambda: (
            len(children(instance.server.process.pid)) == workers
            and readiness(instance.port) == 200
            and readiness(instance.management_port) == 200
        ),
        LIVENESS,
        "every worker, and /readyz 200 on both ports",
    )
    return instance


@dataclass
class Watch:
    """What watches an instance under load: the polls, its cycles, wrk's run."""

    poller: ReadinessPoller
    cycles: Publications
    wrk: Future[tuple[WrkResult, str]]


@contextmanager
def under_load(instance: Instance, seconds: int) -> Iterator[Watch]:
    """wrk -c10 on the smoke test for ``seconds``, /readyz polled on both ports
    every 0.25 s with a 1 s timeout, and the cycles the instance publishes, until the
    block ends (wrk's end awaited)."""
    ports = [instance.port, instance.management_port]
    url = f"http://127.0.0.1:{instance.port}{SMOKE_TEST}"
    with (
        ThreadPoolExecutor(1) as pool,
        Publications(instance.server) as cycles,
        ReadinessPoller(ports, timeout=1.0, token=TOKEN) as poller,
    ):
        yield Watch(poller, cycles, pool.submit(run_wrk, url, 10, seconds))


def record_watch(
    fault_record: FaultRecorder,
    fault: str,
    injected: str,
    instance: Instance,
    watch: Watch,
) -> None:
    """The fault record's row: the polls of both ports; wrk's figures, the polls of
    each port, and the cycles published, in the load and the recovery."""
    poller, wrk = watch.poller, watch.wrk.result()[0]
    ports = {"public": instance.port, "management": instance.management_port}
    by_port = ", ".join(
        f"{name} {poller.failed(port)} failed and {poller.lost(port)} lost"
        for name, port in ports.items()
    )
    checkers = len({document["checker"] for document in watch.cycles.seen})
    reasons = "; ".join(f"{count} x {why}" for why, count in poller.reasons.items())
    fault_record(
        fault=fault,
        injected=injected,
        load=f"wrk -c10 on the smoke test ({wrk.requests} requests, {wrk.non_2xx}"
        f" not 2xx, {wrk.socket_errors} socket errors); /readyz on both ports every"
        " 0.25 s, 1 s timeout, new connection each",
        sent=len(poller.polls),
        failed=poller.failed(),
        lost=poller.lost(),
        recovery=f"none needed: {by_port}{f' ({reasons})' if reasons else ''};"
        f" {len(watch.cycles.seen)} cycles by {checkers} checkers, at most"
        f" {watch.cycles.longest_gap:.1f} s apart",
    )
    print(f"\nlongest gap between cycles: {watch.cycles.longest_gap:.2f} s")


@pytest.mark.fault
@pytest.mark.parametrize("period", PERIODS)
def test_recycled_and_scaled_workers_never_make_the_instance_stale(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder, period: str
) -> None:
    instance = ready_instance(
        start_gunicorn,
        {
            "PETSAGE_WORKERS": "5",
            "GUNICORN_CMD_ARGS": "--max-requests 5",
            **period_setting(period),
        },
    )
    master = instance.server.process
    with under_load(instance, LOAD_SECONDS) as watch:
        started = time.monotonic()
        for sent in range(SIGNALS):
            # Paced over the load (the signals are the fault, not a wait for it).
            time.sleep(
                max(0.0, started + LOAD_SECONDS * sent / SIGNALS - time.monotonic())
            )
            master.send_signal(signal.SIGTTOU if sent % 2 else signal.SIGTTIN)
        watch.wrk.result()
    record_watch(
        fault_record,
        f"workers recycled by --max-requests 5 and scaled, check period {period}",
        f"gunicorn --max-requests 5 (5 workers); {SIGNALS} SIGTTIN and SIGTTOU in"
        f" turn over {LOAD_SECONDS} s",
        instance,
        watch,
    )
    # A poll lost (no answer within 1 s) waited for a worker to accept it: on a busy
    # host, as often before this fix as after; a stale instance answers 503 at once.
    assert watch.poller.polls and watch.poller.failed() == 0, watch.poller.reasons
    assert watch.wrk.result()[0].non_2xx == 0


def new_workers_after(memory: InstanceMemory, before: set[int], count: int) -> bool:
    """Whether ``count`` workers that were not in ``before`` have booted (their
    health threads beat in the instance's memory)."""
    return len({slot.pid for slot in memory.slots()} - before) >= count


def reload_and_wait(
    master: "subprocess.Popen[bytes]", memory: InstanceMemory, workers: int
) -> None:
    """SIGHUP, then wait for the reload's new workers, and for a second since the
    signal when they booted sooner: reloads about a second apart."""
    sent = time.monotonic()
    before = children(master.pid)
    master.send_signal(signal.SIGHUP)
    wait_until(
        partial(new_workers_after, memory, before, workers),
        LIVENESS,
        f"the reload's {workers} new workers",
    )
    time.sleep(max(0.0, sent + 1.0 - time.monotonic()))  # pacing, not a wait


@pytest.mark.fault
@pytest.mark.parametrize("period", PERIODS)
def test_reloads_a_second_apart_never_make_the_instance_stale(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder, period: str
) -> None:
    with answering({"/": (200, "text/plain", b"ok")}, delay=SLOW_CHECK) as port:
        instance = ready_instance(
            start_gunicorn,
            {
                "PETSAGE_WORKERS": "3",
                "PETSAGE_CRITICAL_DEPENDENCIES": f"catalog=http://127.0.0.1:{port}/",
                "PETSAGE_CHECK_TIMEOUT": CHECK_TIMEOUT,
                **period_setting(period),
            },
        )
        master = instance.server.process
        memory = instance_memory(instance.server)
        with under_load(instance, LOAD_SECONDS) as watch:
            for _ in range(RELOADS):
                reload_and_wait(master, memory, workers=3)
            watch.wrk.result()
    record_watch(
        fault_record,
        f"reloads a second apart, a critical check taking 1.5 s, check period {period}",
        f"{RELOADS} SIGHUPs (3 workers), each once the previous reload's workers"
        " ran and at least 1 s after it; a critical HTTP check answering in 1.5 s"
        f" (timeout {CHECK_TIMEOUT} s)",
        instance,
        watch,
    )
    # Nothing failed but, on an overloaded host, the slow check itself: a true
    # verdict, in the record with its reason.
    own_verdict = f"catalog failed: timed out after {CHECK_TIMEOUT} s"
    assert watch.poller.polls and set(watch.poller.reasons) <= {own_verdict}
    assert watch.wrk.result()[0].non_2xx == 0
