"""Health of a gunicorn instance: one worker runs the checks, every worker answers.

A load balancer asks the instance, and gets whichever worker the kernel picks; checks
must not multiply by the worker count; a new worker must not make a serving instance
unready. So, within the instance's private directory (petsage/instance.py):

- **One leader.** Every worker has a thread blocked on an exclusive ``flock`` of
  ``health.lock``; the worker that holds it runs the checks (CheckRefresher). The
  kernel releases the lock when that process ends, however it ends (SIGKILL, timeout,
  ``max_requests``, a reload), and one of the blocked workers has it at once. The new
  leader carries on with the last published results (consecutive failures, logged
  transitions) and the published time of the next cycle, so a change of leader
  neither repeats a cycle nor logs a transition twice.
- **One snapshot.** The leader writes each cycle's results to ``health.json`` (write,
  then rename: a reader sees the old file or the new one, never half of one).
- **A copy in every worker.** A thread stats the file every FOLLOW_INTERVAL seconds
  and reloads it when it changed; probes read the copy in memory and do no I/O. A
  worker loads the file before it serves, so a new, respawned or reloaded worker
  answers from the instance's current results at once.
"""

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from petsage.health.checks import SEVERITY
from petsage.health.refresher import CheckRefresher, CheckResult, Snapshot
from petsage.instance import HEALTH_LOCK, HEALTH_SNAPSHOT

logger = logging.getLogger(__name__)

# How often a worker looks for a newer snapshot: one stat(2) of a file on tmpfs. It
# bounds how long workers may disagree after a cycle changes the answer.
FOLLOW_INTERVAL = 0.1


@dataclass(frozen=True)
class Published:
    """A snapshot as the instance's leader published it."""

    snapshot: Snapshot
    leader: int
    # When the leader meant to run its next cycle (monotonic clock), for the next
    # leader to keep the cadence.
    next_cycle_at: float | None


def encode(published: Published) -> bytes:
    """The snapshot file's content."""
    snapshot = published.snapshot
    document = {
        "leader": published.leader,
        # For people reading the file; ages are computed from completed_at.
        "completed": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "completed_at": snapshot.completed_at,
        "next_cycle_at": published.next_cycle_at,
        "results": {name: asdict(result) for name, result in snapshot.results.items()},
    }
    return json.dumps(document, separators=(",", ":")).encode()


def decode(content: bytes) -> Published:
    """A snapshot file's content as a Published; ValueError when it is not one."""
    try:
        document = json.loads(content)
        results = {
            name: CheckResult(**fields) for name, fields in document["results"].items()
        }
        completed_at = float(document["completed_at"])
        next_cycle_at = document["next_cycle_at"]
        leader = int(document["leader"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"not a health snapshot: {error!r}") from None
    if any(result.status not in SEVERITY for result in results.values()):
        raise ValueError("not a health snapshot: unknown status")
    return Published(
        Snapshot(results, completed_at),
        leader,
        None if next_cycle_at is None else float(next_cycle_at),
    )


FileSignature = tuple[int, int, int]


class InstanceHealth:
    """This worker's part in its instance's health.

    It keeps a copy of the instance's snapshot, kept fresh by a follower thread, and
    bids to lead: the worker holding the lock runs ``refresher`` on its bidding
    thread and publishes each cycle. ``adopted`` is called with each snapshot this
    worker starts answering from.
    """

    def __init__(
        self,
        directory: str,
        refresher: CheckRefresher,
        adopted: Callable[[Snapshot], None],
    ) -> None:
        self.path = os.path.join(directory, HEALTH_SNAPSHOT)
        self.lock_path = os.path.join(directory, HEALTH_LOCK)
        self.refresher = refresher
        self.published: Published | None = None
        self.leading = False
        # When the follower last looked at the file (monotonic clock).
        self.followed_at = time.monotonic()
        self._adopted = adopted
        self._lock = threading.Lock()
        self._signature: FileSignature | None = None
        self._threads: list[threading.Thread] = []
        # The problem last logged, by what failed: "reading" or "writing".
        self._problems: dict[str, str] = {}

    @property
    def snapshot(self) -> Snapshot | None:
        """The instance's latest snapshot as this worker knows it.

        Until the instance's first cycle reaches this worker, a probe looks at the file
        itself (one stat), so a worker that booted before the leader published answers
        from the first cycle at once, not up to one follow interval later.
        """
        if self.published is None and self._threads:
            self.follow()
        published = self.published
        return published.snapshot if published else None

    @property
    def alive(self) -> bool:
        """Whether this worker still follows the snapshot and still bids or leads."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def start(self) -> None:
        """Load the instance's snapshot now, then follow it and bid to lead.

        Call it before the worker serves, so that its first answer is the instance's.
        Raises OSError when the lock file cannot be opened.
        """
        descriptor = os.open(
            self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        self.follow()
        self._threads = [
            threading.Thread(
                target=self._follow_forever,
                name="petsage-health-follower",
                daemon=True,
            ),
            threading.Thread(
                target=self._lead_when_chosen,
                args=(descriptor,),
                name="petsage-health-leader",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()

    def follow(self) -> None:
        """Load the snapshot file if it changed since this worker last read it."""
        self.followed_at = time.monotonic()
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return  # no cycle has completed in this instance yet
        except OSError as error:
            self._report("reading", f"cannot read {self.path}: {error.strerror}")
            return
        signature = (status.st_ino, status.st_mtime_ns, status.st_size)
        if signature == self._signature:
            return
        try:
            with open(self.path, "rb") as source:
                published = decode(source.read())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            self._report("reading", f"cannot read {self.path}: {error}")
            return
        self._signature = signature
        self._recovered("reading")
        self._adopt(published)

    def publish(self, snapshot: Snapshot) -> None:
        """Share a cycle the leader completed with every worker, this one first."""
        published = Published(snapshot, os.getpid(), self.refresher.next_cycle_at)
        temporary = self.path + ".new"
        try:
            with open(temporary, "wb") as out:
                out.write(encode(published))
            os.replace(temporary, self.path)
        except OSError as error:
            # The other workers' copies age until the file can be written again,
            # and readiness fails there as stale: logged once, and its end too.
            self._report("writing", f"cannot write {self.path}: {error.strerror}")
        else:
            self._recovered("writing")
        self._adopt(published)

    def _adopt(self, published: Published) -> None:
        with self._lock:
            current = self.published
            if (
                current is not None
                and current.snapshot.completed_at >= published.snapshot.completed_at
            ):
                return
            self.published = published
        self._adopted(published.snapshot)

    def _follow_forever(self) -> None:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            try:
                self.follow()
            except Exception:
                # A listener's failure (metrics) must not end the following.
                logger.exception("Health snapshot: following failed")

    def _lead_when_chosen(self, descriptor: int) -> None:
        try:
            # Blocks until no other worker of the instance holds the lock.
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            self.leading = True
            logger.info(
                "This worker (pid %d) now runs the instance's health checks",
                os.getpid(),
            )
            self._take_over()
            self.refresher.run()
        finally:
            # Whatever ended the cycles, another worker must be able to lead.
            self.leading = False
            os.close(descriptor)

    def _take_over(self) -> None:
        """Carry on from the last published cycle, as if this worker had run it."""
        self.follow()
        published = self.published
        if published is None:
            return
        refresher = self.refresher
        refresher.snapshot = published.snapshot
        # Checks that changed with a reload (new code) run at once.
        names = {check.name for check in refresher.checks}
        if names == set(published.snapshot.results):
            refresher.next_cycle_at = published.next_cycle_at

    def _report(self, action: str, problem: str) -> None:
        if self._problems.get(action) != problem:
            self._problems[action] = problem
            logger.error("Health snapshot: %s", problem)

    def _recovered(self, action: str) -> None:
        if self._problems.pop(action, None) is not None:
            logger.info("Health snapshot: %s %s works again", action, self.path)
