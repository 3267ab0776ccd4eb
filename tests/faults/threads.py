"""Freeze one thread of a running process while its other threads keep running.

SIGSTOP stops a whole process; a wedged worker thread is one thread. This module
stops one thread with Linux ptrace (through libc, with ctypes): ``PTRACE_SEIZE``
attaches to the thread without stopping it, ``PTRACE_INTERRUPT`` puts just that
thread into a ptrace-stop, and ``os.waitpid(tid, __WALL)`` returns once it really
is stopped. ``PTRACE_DETACH`` lets it run again.

Threads are found by the name the service gives them with ``prctl(PR_SET_NAME)``
(at most 15 bytes), as ``/proc/PID/task/TID/comm`` shows it:

    with frozen_thread(worker_pid, "petsage-health") as tid:
        ...  # the worker's other threads run; thread tid does not

Two rules come with ptrace. Every request must come from the OS thread that
attached, so one thread enters and leaves ``frozen_thread``. And the kernel must
let this process trace the other: root (``CAP_SYS_PTRACE``) may trace anything,
another user only its descendants under Yama's ``ptrace_scope`` 1. When it refuses
(EPERM), the test is skipped with the cause.

A Python thread frozen while it holds the GIL would stop every Python thread of
its process, not just itself. So ``frozen_thread`` keeps a thread frozen only when
it stopped in a system call that was waiting (a sleep, a read, a wait for a lock:
where CPython lets go of the GIL), and otherwise lets it go and tries again a
moment later. On x86-64 it tells a waiting call from a quick one by the call's
interrupted return value; elsewhere any system call passes.
"""

import contextlib
import ctypes
import errno
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PTRACE_DETACH = 17
PTRACE_GETREGSET = 0x4204
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for threads too, not only for child processes
NT_PRSTATUS = 1  # PTRACE_GETREGSET: the general registers
X86_64_REGISTERS, X86_64_RAX = 27, 10  # struct user_regs_struct, and where rax is
# What a system call interrupted while waiting returns: -EINTR, or -ERESTARTSYS,
# -ERESTARTNOINTR, -ERESTARTNOHAND and -ERESTART_RESTARTBLOCK, which the kernel
# turns into a restart of the call once the thread runs again.
INTERRUPTED_CALL = frozenset({-errno.EINTR, -512, -513, -514, -516})
CAP_SYS_PTRACE = 19
NAME_BYTES = 15  # prctl(PR_SET_NAME) keeps the first 15 bytes of a name
YAMA_SCOPE = Path("/proc/sys/kernel/yama/ptrace_scope")
# How long frozen_thread tries to catch the thread in a waiting system call, and how
# long it lets the thread run between tries: a liveness bound, not a measurement.
FREEZE_TIMEOUT = 30.0
RETRY_PAUSE = 0.002

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long


def ptrace(request: int, tid: int, data: int = 0) -> None:
    """Make one ptrace request about thread ``tid``; raise ``OSError`` on failure."""
    if _ptrace(request, tid, None, data) == -1:
        number = ctypes.get_errno()
        raise OSError(number, f"ptrace({request:#x}, {tid}): {os.strerror(number)}")


def thread_ids(pid: int, name: str) -> list[int]:
    """The ids of the threads of process ``pid`` whose OS name is ``name``.

    Raises ``ProcessLookupError`` when there is no process ``pid``, and
    ``ValueError`` for a name longer than an OS thread name can be.
    """
    wanted = name.encode()
    if len(wanted) > NAME_BYTES:
        raise ValueError(f"{name!r} is longer than a thread name ({NAME_BYTES} bytes)")
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None
    found = []
    for task in tasks:
        try:
            comm = (task / "comm").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended while we were listing
        if comm.removesuffix(b"\n") == wanted:
            found.append(int(task.name))
    return sorted(found)


def stopped_in_system_call(pid: int, tid: int) -> bool:
    """Whether the stopped thread ``tid`` of ``pid`` stopped inside a system call.

    ``/proc/PID/task/TID/syscall`` starts with the call's number then, and with
    -1 when the thread was stopped while running its own code.
    """
    fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
    return bool(fields) and fields[0] not in ("-1", "running")


def _return_register(tid: int) -> int | None:
    """The return-value register of the stopped thread ``tid``, on x86-64 only."""
    if platform.machine() != "x86_64":
        return None
    registers = (ctypes.c_ulonglong * X86_64_REGISTERS)()
    vector = (ctypes.c_void_p * 2)(
        ctypes.addressof(registers), ctypes.sizeof(registers)
    )
    if _ptrace(PTRACE_GETREGSET, tid, NT_PRSTATUS, ctypes.addressof(vector)) == -1:
        return None
    return ctypes.c_longlong(registers[X86_64_RAX]).value


def stopped_in_blocking_call(pid: int, tid: int) -> bool:
    """Whether the stopped thread ``tid`` of ``pid`` stopped while a system call
    of it was waiting (a sleep, a read, a wait for a lock), not in a quick one.

    CPython lets go of the GIL around calls that wait, but not around every call
    (``clock_gettime`` may be a real system call, a mutex unlock may be one).
    On x86-64 the stop tells them apart: a call it interrupted while waiting
    returns -EINTR or one of the kernel's restart codes. Elsewhere any system
    call counts.
    """
    if not stopped_in_system_call(pid, tid):
        return False
    returned = _return_register(tid)
    return returned is None or returned in INTERRUPTED_CALL


def _status(path: Path) -> dict[str, str]:
    """The fields of a ``/proc`` status file, empty when it cannot be read."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def refusal_cause(pid: int, tid: int) -> str:
    """Why the kernel may have refused (EPERM) to let this process trace ``tid``."""
    target = _status(Path(f"/proc/{pid}/task/{tid}/status"))
    if target.get("TracerPid", "0") != "0":
        return f"the thread is already traced by process {target['TracerPid']}"
    owner = target.get("Uid", "?").split()[0]
    capabilities = int(_status(Path("/proc/self/status")).get("CapEff", "0"), 16)
    has = "has" if capabilities & (1 << CAP_SYS_PTRACE) else "lacks"
    capable = (
        f"this process (uid {os.geteuid()}) {has} CAP_SYS_PTRACE, "
        f"the thread's owner is uid {owner}"
    )
    try:
        scope = YAMA_SCOPE.read_text().strip()
    except OSError:
        return (
            f"{capable}; there is no Yama ptrace_scope, so look at seccomp "
            f"(a container's profile may forbid ptrace)"
        )
    meaning = {
        "0": "any process of the same user may be traced",
        "1": "without CAP_SYS_PTRACE, only a descendant may be traced",
        "2": "only a process with CAP_SYS_PTRACE may trace",
        "3": "nothing may be traced at all",
    }.get(scope, "an unknown setting")
    return f"{capable}; {YAMA_SCOPE} is {scope}: {meaning}"


def _seize(pid: int, tid: int) -> None:
    """Attach to ``tid`` without stopping it; skip the test when that is refused."""
    try:
        ptrace(PTRACE_SEIZE, tid)
    except PermissionError:
        pytest.skip(
            f"ptrace refused to attach to thread {tid} of process {pid} (EPERM): "
            f"{refusal_cause(pid, tid)}"
        )
    except ProcessLookupError:
        raise ProcessLookupError(f"thread {tid} of process {pid} has ended") from None


def _stop(tid: int) -> int:
    """Stop the attached thread ``tid`` and wait until it is stopped.

    Returns the signal to give back on release: 0, or the signal whose delivery
    the thread stopped at instead, should one have come first.
    """
    ptrace(PTRACE_INTERRUPT, tid)
    _, status = os.waitpid(tid, WALL)
    if not os.WIFSTOPPED(status):
        raise ProcessLookupError(f"thread {tid} ended before it stopped")
    if status >> 16 == PTRACE_EVENT_STOP:
        return 0
    return os.WSTOPSIG(status)


def _release(pid: int, tid: int, signal: int) -> None:
    """Detach from ``tid`` so it runs again; nothing to do when it has ended."""
    try:
        ptrace(PTRACE_DETACH, tid, signal)
    except ProcessLookupError:
        # The thread is no longer in its ptrace-stop, so it is dying (SIGKILL) or
        # dead. An ended traced thread waits for its tracer to collect it, and its
        # process's exit waits for that: collect it, unless it is the main thread,
        # whose exit status belongs to the process's parent.
        if tid != pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(tid, WALL)


@contextlib.contextmanager
def frozen_thread(pid: int, name: str) -> Iterator[int]:
    """Freeze the one thread of process ``pid`` named ``name``, yielding its id.

    The thread is released on leaving, however the block ends; a process that
    died meanwhile is fine. Raises ``LookupError`` unless exactly one thread has
    the name. The thread is kept frozen only once it stopped in a system call that
    was waiting (see the module's docstring); ``TimeoutError`` when that does not
    happen within ``FREEZE_TIMEOUT``, as with a thread that computes without pause.
    """
    if pid == os.getpid():
        raise ValueError("a process cannot trace its own threads")
    tids = thread_ids(pid, name)
    if len(tids) != 1:
        raise LookupError(
            f"process {pid} has {len(tids)} threads named {name!r} ({tids}), not one"
        )
    [tid] = tids
    deadline = time.monotonic() + FREEZE_TIMEOUT
    _seize(pid, tid)
    signal = 0
    try:
        while True:
            signal = _stop(tid)
            if stopped_in_blocking_call(pid, tid):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"thread {tid} ({name!r}) of process {pid} never stopped in a "
                    f"waiting system call in {FREEZE_TIMEOUT:.0f} s: does it hold "
                    f"the GIL?"
                )
            _release(pid, tid, signal)
            signal = 0
            time.sleep(RETRY_PAUSE)
            _seize(pid, tid)
        yield tid
    finally:
        _release(pid, tid, signal)
