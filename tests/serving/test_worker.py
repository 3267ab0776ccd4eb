"""PetSage's worker (``petsage.serving.worker``): a master that is gone stops its
workers from pretending.

The master is killed with SIGKILL while clients hold the instance: an idle keep-alive
connection per probe path and a request in flight (``tests.support.orphans``). The
tests wait for what must happen, bounded; how soon it happened is measured and
recorded, not asserted.
"""

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory, HttpResult
from tests.support.instances import LIVENESS, petsage
from tests.support.load import SMOKE_TEST
from tests.support.memory_cgroup import MemoryCgroup, memory_cgroup, remove
from tests.support.orphans import PROBES, OrphanedInstance, refuses
from tests.support.processes import answers, gone, wait_for_workers, wait_until

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

# Beyond the graceful timeout, for what must happen within it on a busy machine.
MARGIN = 10.0
# Room left in the memory cgroup over what the instance uses once it serves: less
# than a Python interpreter takes to start.
HEADROOM = 4 << 20


@pytest.fixture
def orphaned(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> Iterator[OrphanedInstance]:
    """An instance of 3 workers held by clients, whose master the test kills."""
    instance = OrphanedInstance(start_gunicorn, tmp_path)
    yield instance
    instance.close()


def both_refuse(orphaned: OrphanedInstance) -> bool:
    """Whether new connections to the public and management ports are refused."""
    return refuses(orphaned.port) and refuses(orphaned.management_port)


@pytest.mark.fault
def test_a_killed_masters_workers_refuse_connections_fail_probes_and_finish(
    orphaned: OrphanedInstance, fault_record: FaultRecorder
) -> None:
    killed = orphaned.kill_master()
    kept = {path: orphaned.probe_kept_alive(path) for path in PROBES}
    wait_until(lambda: both_refuse(orphaned), LIVENESS, "both listeners refusing")
    refused = time.monotonic() - killed
    holding = orphaned.workers_alive()
    held = orphaned.release()
    exited = wait_until(lambda: not orphaned.workers_alive(), 30 + MARGIN, "exits")
    answered = isinstance(held, HttpResult) and held.status == 200
    fault_record(
        fault="master killed (SIGKILL) while clients hold its workers",
        injected="SIGKILL to the master of 3 workers with a management listener",
        load="an idle keep-alive connection per probe (/livez, /readyz) and one"
        " request in flight, released after the listeners refused",
        sent=3,
        failed=sum(status == 200 for status in kept.values())
        + int(isinstance(held, HttpResult) and held.status != 200),
        lost=int(held is None or isinstance(held, Exception)),
        recovery=f"new connections refused on both ports {refused:.3f} s after the"
        f" kill; kept-alive probes answered {kept}; the request in flight answered"
        f" 200 once released, and every worker had exited {exited:.1f} s later",
    )
    assert set(kept.values()) <= {503, None}, kept
    assert holding, "a worker still held the request in flight"
    assert answered, held


def test_petsage_probe_and_drain_say_a_killed_master_is_gone(
    orphaned: OrphanedInstance,
) -> None:
    orphaned.kill_master()
    probed = petsage("probe", "/readyz", env=orphaned.state)
    drained = petsage("drain", env=orphaned.state)
    gone = f"the instance's master (pid {orphaned.master}) is gone"
    assert (probed.returncode, drained.returncode) == (1, 1)
    assert gone in probed.stderr, probed.stderr
    assert gone in drained.stderr, drained.stderr
    assert orphaned.workers_alive(), "its workers held the instance's lock meanwhile"


@pytest.mark.fault
def test_a_new_instance_serves_on_a_killed_masters_addresses_at_once(
    orphaned: OrphanedInstance,
    start_gunicorn: GunicornFactory,
    fault_record: FaultRecorder,
) -> None:
    killed = orphaned.kill_master()
    successor = orphaned.start_successor(start_gunicorn)
    smoke = successor.request("GET", SMOKE_TEST)
    serving = time.monotonic() - killed
    wait_until(
        lambda: answers(orphaned.management_port, "/readyz") == 200,
        LIVENESS,
        "the successor's management listener ready",
    )
    probed = petsage("probe", "/readyz", env=orphaned.state)
    holding = orphaned.workers_alive()
    held = orphaned.release()
    fault_record(
        fault="master killed (SIGKILL), a new instance started on its addresses",
        injected="SIGKILL to the master of 3 workers, one request in flight; a new"
        " instance with the same addresses and state directory started at once",
        load="the smoke test on the new instance, the request in flight released"
        " after it",
        sent=2,
        failed=int(smoke.status != 200)
        + int(not isinstance(held, HttpResult) or held.status != 200),
        lost=0,
        recovery=f"the new instance answered the smoke test {serving:.1f} s after"
        " the kill, while the old workers still finished their request",
    )
    assert smoke.status == 200
    assert probed.returncode == 0, probed.stderr
    assert holding, "the old workers still held the request in flight"
    assert isinstance(held, HttpResult) and held.status == 200, held


@pytest.mark.fault
def test_a_killed_masters_worker_that_overstays_the_graceful_timeout_is_ended(
    start_gunicorn: GunicornFactory, tmp_path: Path, fault_record: FaultRecorder
) -> None:
    graceful_timeout = 2
    orphaned = OrphanedInstance(
        start_gunicorn, tmp_path, GRACEFUL_TIMEOUT=str(graceful_timeout)
    )
    try:
        killed = orphaned.kill_master()
        wait_until(
            lambda: not orphaned.workers_alive(),
            graceful_timeout + MARGIN,
            "every worker gone, the one holding a request that never ends too",
        )
        ended = time.monotonic() - killed
    finally:
        orphaned.close()
    fault_record(
        fault="master killed (SIGKILL) while a request never ends",
        injected=f"SIGKILL to the master of 3 workers, graceful timeout"
        f" {graceful_timeout} s, one request in flight that is never released",
        load="the request in flight",
        sent=1,
        failed=0,
        lost=1,
        recovery=f"the last worker ended {ended:.1f} s after the kill, as its master"
        " would have ended it; its request unanswered",
    )


def oom_score_adj(pid: int) -> int:
    """The ``oom_score_adj`` of process ``pid``."""
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def resident_mib(pid: int) -> int:
    """The memory process ``pid`` has resident (its RSS), in MiB: what the OOM
    killer weighs, with its ``oom_score_adj``."""
    status = Path(f"/proc/{pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1]) >> 10


def test_each_worker_raises_its_oom_score_adj_500_over_its_masters(
    start_gunicorn: GunicornFactory,
) -> None:
    server = start_gunicorn({"PETSAGE_WORKERS": "3"})
    master = oom_score_adj(server.process.pid)
    workers = {oom_score_adj(pid) for pid in wait_for_workers(server, 3)}
    assert workers == {min(master + 500, 1000)}


@pytest.fixture
def memory() -> Iterator[MemoryCgroup]:
    """A memory cgroup of the test's own; removed once its processes are gone."""
    made = memory_cgroup(f"petsage-test-{os.getpid()}-{time.monotonic_ns()}")
    if isinstance(made, str):
        pytest.skip(made)
    yield made
    remove(made)


@pytest.mark.fault
def test_under_memory_pressure_the_oom_killer_takes_a_worker_not_the_master(
    memory: MemoryCgroup, start_gunicorn: GunicornFactory, fault_record: FaultRecorder
) -> None:
    server = start_gunicorn({"PETSAGE_WORKERS": "3"}, preexec_fn=memory.join)
    master, workers = server.process.pid, set(wait_for_workers(server, 3))
    sizes = {pid: resident_mib(pid) for pid in (master, *workers)}
    memory.limit(memory.usage() + HEADROOM)
    with memory.filled() as taken:
        wait_until(lambda: any(map(gone, sizes)), LIVENESS, "an OOM kill")
        killed = sorted(pid for pid in sizes if gone(pid))
        memory.limit(None)
    lifted = time.monotonic()
    assert not gone(master), f"the master was killed (resident MiB: {sizes})"
    replacements = set(wait_for_workers(server, 3)) - workers
    replaced = time.monotonic() - lifted
    fault_record(
        fault="memory pressure: the kernel's OOM killer in the instance's cgroup",
        injected=f"the instance in a memory cgroup limited to {HEADROOM >> 20} MiB"
        f" over what a master and 3 workers used once serving; another process"
        f" started in it (and took {taken} MiB more)",
        load="none",
        sent=1,
        failed=0,
        lost=0,
        recovery=f"the OOM killer took {len(killed)} worker(s), not the larger"
        f" master (resident: master {sizes[master]} MiB, workers"
        f" {sorted(sizes[pid] for pid in workers)} MiB); the master had replaced"
        f" it {replaced:.1f} s after the limit was lifted",
    )
    assert set(killed) <= workers
    assert replacements
    assert server.request("GET", SMOKE_TEST).status == 200
