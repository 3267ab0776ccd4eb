"""/metrics on a real instance: clean for ``promtool check metrics``, and with what
multiprocess mode leaves out: every process's memory, CPU and file descriptors,
worker restarts, the Python and gunicorn versions (petsage/metrics/process.py)."""

import os
import platform
import signal
import time
from collections.abc import Callable
from importlib import metadata

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory
from tests.support.management import Instance
from tests.support.monitoring import run_tool
from tests.support.processes import checkers, children

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

PROCESS_SERIES = (
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
)


def scrape(instance: Instance) -> dict[str, list[Sample]]:
    """The samples of the instance's /metrics, by sample name."""
    answer = instance.management("/metrics")
    assert answer.status == 200
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def processes(
    samples: dict[str, list[Sample]], name: str
) -> dict[tuple[str, int], float]:
    """``name``'s value by (role, pid)."""
    return {
        (sample.labels["role"], int(sample.labels["pid"])): sample.value
        for sample in samples[name]
    }


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    """Poll ``condition`` until it holds: the seconds that took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_promtool_finds_nothing_to_fault_in_the_metrics(
    start_gunicorn: GunicornFactory,
) -> None:
    instance = Instance(start_gunicorn)
    instance.public("/api/v1/smoke-test")
    instance.public("/no-such-page")
    exposition = instance.management("/metrics").body
    assert b"petsage_http_requests_total" in exposition
    assert b"process_resident_memory_bytes" in exposition
    status, output = run_tool("promtool", "check", "metrics", stdin=exposition)
    assert (status, output) == (0, "")


def test_metrics_describe_the_master_and_every_worker(
    start_gunicorn: GunicornFactory,
) -> None:
    instance = Instance(start_gunicorn)
    master = instance.server.process.pid
    # gunicorn forks its workers a random fraction of a second apart.
    wait_for(lambda: len(children(master)) == 2, "both workers running")
    workers = children(master)
    samples = scrape(instance)
    expected = {
        ("master", master),
        *(("worker", pid) for pid in workers),
        *(("checker", pid) for pid in checkers(master)),
    }
    for name in PROCESS_SERIES:
        assert set(processes(samples, name)) == expected, name
    memory = processes(samples, "process_resident_memory_bytes")
    assert all(value > 10_000_000 for value in memory.values())
    open_files = processes(samples, "process_open_fds")
    # The master holds its listeners, each worker its heartbeat file and metrics files.
    limits = processes(samples, "process_max_fds")
    assert all(3 < open_files[key] < limits[key] for key in expected), (
        open_files,
        limits,
    )
    cpu = processes(samples, "process_cpu_seconds_total")
    # A worker forked a moment ago may not have used a clock tick yet; the master has.
    assert cpu[("master", master)] > 0
    assert all(value >= 0 for value in cpu.values())
    (python,) = samples["python_info"]
    assert python.labels["version"] == platform.python_version()
    (gunicorn,) = samples["petsage_gunicorn_info"]
    assert gunicorn.labels == {"version": metadata.version("gunicorn")}
    assert gunicorn.value == 1


def restarts(instance: Instance) -> float:
    """petsage_worker_restarts_total as the instance reports it."""
    (sample,) = scrape(instance)["petsage_worker_restarts_total"]
    return sample.value


@pytest.mark.fault
def test_the_master_counts_a_killed_worker_as_a_restart(
    start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    instance = Instance(start_gunicorn)
    master = instance.server.process.pid
    assert restarts(instance) == 0
    wait_for(lambda: len(children(master)) == 2, "both workers running")
    killed, survivor = sorted(children(master))
    os.kill(killed, signal.SIGKILL)
    took = wait_for(
        lambda: restarts(instance) == 1 and len(children(master)) == 2,
        "the restart counted and a new worker running",
    )
    workers = {
        pid
        for role, pid in processes(scrape(instance), "process_resident_memory_bytes")
        if role == "worker"
    }
    assert survivor in workers and killed not in workers and len(workers) == 2
    fault_record(
        fault="worker killed, restart counted",
        injected="SIGKILL to one of 2 workers",
        load="none; /metrics scraped every 50 ms",
        sent=0,
        failed=0,
        lost=0,
        recovery=f"{took:.1f} s to petsage_worker_restarts_total 1 and 2 workers",
    )
