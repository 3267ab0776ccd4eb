"""What a worker's watchdog (petsage.health.machinery) watches besides its health
state: the locks PetSage owns on the request path, and its log writer threads.

A thread that logs takes its handler's lock, then the log queue's (and, when the
queue is full, the dropped lines' count); a metric's sample takes
prometheus_client's lock of the process's values. Only handlers whose stream is
PetSage's own log output are watched: their lock is held for a put on a queue,
never for a write, so a log nobody reads never holds one. A handler writing to a
stream that can block (another logging set-up) could hold its lock for as long as
its reader stalls, which is not a wedge a new worker would mend.
"""

import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import values

from petsage.health.machinery import Machinery
from petsage.serving.log_output import LogOutput, outputs

STREAMS = {1: "stdout", 2: "stderr"}


def watch_own_machinery(machinery: Machinery) -> None:
    """Have ``machinery`` watch PetSage's locks and threads in this process."""
    for handler in log_handlers():
        if isinstance(handler, logging.StreamHandler) and isinstance(
            handler.stream, LogOutput
        ):
            handler_lock = handler.lock
            if handler_lock is not None:
                name = handler.get_name() or STREAMS.get(handler.stream.fd, "log")
                machinery.watch_lock(f"petsage.logging.{name}", handler_lock)
    for fd, output in outputs().items():
        stream = STREAMS.get(fd, f"fd{fd}")
        for guarded, lock in output.locks().items():
            machinery.watch_lock(f"petsage.log_{guarded}.{stream}", lock)
        machinery.watch_thread(f"petsage-log-writer.{stream}", writer_of(output))
    lock = value_lock()
    if lock is not None:
        machinery.watch_lock("prometheus_client.values", lock)


def writer_of(output: LogOutput) -> Callable[[], threading.Thread | None]:
    """The function that gives ``output``'s writer thread, once it started."""
    return lambda: output.writer


def log_handlers() -> list[logging.Handler]:
    """Every handler of this process's loggers, each once."""
    loggers: list[Any] = [
        logging.getLogger(),
        *logging.Logger.manager.loggerDict.values(),
    ]
    found: dict[int, logging.Handler] = {}
    for each in loggers:
        for handler in getattr(each, "handlers", ()):
            found.setdefault(id(handler), handler)
    return list(found.values())


def value_lock() -> Any:
    """The lock prometheus_client's multiprocess values of this process share (every
    ``inc``, ``set`` and ``observe`` takes it), or None where metrics are not kept
    per process. It is a variable of the factory that made the class, so it is read
    from the class's ``inc``."""
    for cls in inspect.getmro(values.ValueClass):
        method = cls.__dict__.get("inc")
        if method is not None and method.__closure__:
            lock = inspect.getclosurevars(method).nonlocals.get("lock")
            if lock is not None:
                return lock
    return None
