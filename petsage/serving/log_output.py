"""Log lines written out without ever holding up the thread that logs them.

When nothing reads a process's stdout (a log shipper or ``docker logs`` backing up),
a write to it blocks once the pipe is full, and with ``logging``'s handler lock held
every other thread that logs waits behind it: request threads and probes on both
ports stop until the reader comes back. Here a thread that logs only puts the line
in a bounded queue of its process, and a thread of the process writes the queue out;
when the queue is full, the line is dropped and counted
(``petsage_log_lines_dropped_total``), and once writing goes on, one line on stderr
says how many were dropped. A stalled reader costs log lines, never a request.

The queue holds formatted lines, not records (as ``logging.handlers.QueueHandler``
would): a record is formatted where it is logged, inside its request, and the access
log's direct path (JsonAccessLines, in petsage.serving.logs) writes lines. A process
writes its lines in the order they were logged, in writes of at most ``PIPE_BUF``
bytes cut at line ends, so that lines of the master and of its workers sharing one
pipe never interleave.
"""

import atexit
import contextlib
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable

from petsage.metrics.log_lines import dropped_log_lines

# How long a process exiting waits for its queued lines to be written: never forever
# on a pipe nobody reads.
EXIT_FLUSH = 2.0
# How long the writer, once it has caught up, lets lines gather before writing again.
GATHER = 0.01
# While the writer never catches up (a reader slower than the log), how often the
# dropped lines are reported.
REPORT_EVERY = 10.0
DROPPED = (
    "Writing the log resumed: dropped %d log lines in %.1f s, while nothing read the"
    " log fast enough (petsage_log_lines_dropped_total)"
)

logger = logging.getLogger(__name__)


class LogOutput:
    """A text stream for ``logging.StreamHandler`` that queues what it is given, and
    writes it to file descriptor ``fd`` from a thread of its own.

    The thread starts with the first line a process writes, so each gunicorn worker
    starts its own after the fork; the child's queue starts empty (what the parent
    had queued is the parent's to write). When ``capacity`` lines wait, more are
    dropped and counted. Once the thread has caught up with the lines logged since
    (or every REPORT_EVERY seconds while it never does), one line to ``report_fd``,
    formatted by ``report_format``, says how many were dropped.
    """

    def __init__(self, fd: int, report_fd: int, capacity: int) -> None:
        self.fd = fd
        self.report_fd = report_fd
        self.capacity = capacity
        self.report_format: Callable[[logging.LogRecord], str] = (
            logging.Formatter().format
        )
        self._restart()
        os.register_at_fork(after_in_child=self._restart)
        atexit.register(self.wait_until_written, EXIT_FLUSH)

    def _restart(self) -> None:
        self._lines: queue.Queue[str] = queue.Queue(self.capacity)
        self._writer: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._dropped = 0
        self._dropping_since = 0.0
        self._reported = time.monotonic()

    @property
    def writer(self) -> threading.Thread | None:
        """The thread writing this process's lines, once it logged one."""
        return self._writer

    def locks(self) -> dict[str, threading.Lock]:
        """The locks a thread that logs takes here, by what they guard: the queue,
        the count of dropped lines (the writer thread holds neither while it
        writes)."""
        return {"queue": self._lines.mutex, "drops": self._drop_lock}

    def set_capacity(self, capacity: int) -> None:
        """Hold at most ``capacity`` lines from now on."""
        self.capacity = self._lines.maxsize = capacity

    def write(self, text: str) -> int:
        """Queue ``text``, or drop it when the queue is full; never block."""
        if self._writer is None:
            self._start()
        try:
            self._lines.put_nowait(text)
        except queue.Full:
            self._drop(1)
        return len(text)

    def flush(self) -> None:
        """Nothing to do: the writer thread writes as lines come."""

    def fileno(self) -> int:
        """The file descriptor written to."""
        return self.fd

    def wait_until_written(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for this process's queued lines to be
        written; whether they were."""
        lines = self._lines
        with lines.all_tasks_done:
            return lines.all_tasks_done.wait_for(
                lambda: not lines.unfinished_tasks, timeout
            )

    def _start(self) -> None:
        with self._start_lock:
            if self._writer is None:
                writer = threading.Thread(
                    target=self._write_lines, name="petsage-log-writer", daemon=True
                )
                writer.start()
                self._writer = writer

    def _drop(self, lines: int) -> None:
        with self._drop_lock:
            if not self._dropped:
                self._dropping_since = time.monotonic()
            self._dropped += lines
        dropped_log_lines().inc(lines)

    def _write_lines(self) -> None:
        lines = self._lines
        carried: bytes | None = None
        while True:
            batch, carried = self._next_batch(carried)
            try:
                write_all(self.fd, b"".join(batch))
            except OSError:
                self._drop(len(batch))
            else:
                caught_up = carried is None and lines.empty()
                if self._dropped and (
                    caught_up or time.monotonic() - self._reported >= REPORT_EVERY
                ):
                    self._report_drops()
            for _ in batch:
                lines.task_done()
            if carried is None and lines.empty():
                # Let lines gather before the next write: a thread that logs then
                # finds the writer asleep, not waiting on the queue, and wakes
                # nobody, and one write carries many lines.
                time.sleep(GATHER)

    def _next_batch(self, carried: bytes | None) -> tuple[list[bytes], bytes | None]:
        """The next lines to write at once (a line carried over from the last batch
        first, then what waits, up to PIPE_BUF bytes), and the line left over."""
        lines = self._lines
        first = carried if carried is not None else encode(lines.get())
        batch, size = [first], len(first)
        while size < select.PIPE_BUF:
            try:
                data = encode(lines.get_nowait())
            except queue.Empty:
                break
            if size + len(data) > select.PIPE_BUF:
                return batch, data
            batch.append(data)
            size += len(data)
        return batch, None

    def _report_drops(self) -> None:
        with self._drop_lock:
            dropped, since = self._dropped, self._dropping_since
            self._dropped = 0
        self._reported = time.monotonic()
        record = logger.makeRecord(
            logger.name,
            logging.WARNING,
            __file__,
            0,
            DROPPED,
            (dropped, self._reported - since),
            None,
            extra={"dropped_lines": dropped},
        )
        try:
            text = self.report_format(record)
        except Exception:  # a handler's formatter must not stop the writer thread
            text = record.getMessage()
        # Lost with the line if it cannot be written: the lines stay counted.
        with contextlib.suppress(OSError):
            write_all(self.report_fd, encode(text + "\n"))


def encode(text: str) -> bytes:
    """``text`` as bytes for the log, whatever it holds."""
    return text.encode("utf-8", "backslashreplace")


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, waiting while it is full (also a descriptor
    another process made non-blocking)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            writable = select.poll()
            writable.register(fd, select.POLLOUT)
            writable.poll()


_OUTPUTS: dict[int, LogOutput] = {}


def outputs() -> dict[int, LogOutput]:
    """The process's LogOutputs, by the descriptor each writes to."""
    return dict(_OUTPUTS)


def output_to(fd: int, report_fd: int, capacity: int) -> LogOutput:
    """The process's one LogOutput on ``fd``, holding ``capacity`` lines from now on.

    One per descriptor, whichever logging set-up uses it (gunicorn applies its logging
    again on every reload): one queue and one writer thread keep its lines in order.
    """
    output = _OUTPUTS.get(fd)
    if output is None:
        output = _OUTPUTS[fd] = LogOutput(fd, report_fd, capacity)
    output.set_capacity(capacity)
    return output
