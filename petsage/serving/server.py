"""PetSage inside gunicorn: drain on SIGTERM, the checker process, quiet probe logs.

``gunicorn.conf.py`` wires these in; nothing here runs outside gunicorn.
"""

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

import gunicorn.systemd
import gunicorn.util
from flask import Flask
from gunicorn.glogging import Logger

from petsage.app import PROBE_APP
from petsage.health import EXTENSION, health_of
from petsage.health.shared import REPLACE_AFTER
from petsage.health.state import Drain
from petsage.instance.directory import OwnInstance
from petsage.instance.memory import InstanceMemory
from petsage.metrics.storage import RETIREMENT
from petsage.middleware.security import problem_error_bytes
from petsage.serving.logs import AccessAtoms, JsonAccessLines
from petsage.serving.management_socket import (
    IN_USE,
    listening_sockets,
    listening_url,
    overlaps,
)
from petsage.serving.probe_listener import start_probe_listener
from petsage.serving.supervisor import PAUSE, CheckerSupervisor
from petsage.serving.watched import watch_own_machinery

logger = logging.getLogger(__name__)

PROBE_PATHS = ("/livez", "/readyz")


class AddressInUseError(RuntimeError):
    """An address gunicorn is to listen on is taken; its message is one line."""


def refuse_addresses_in_use(
    arbiter: Any, petsage_bind: str, management_bind: str = ""
) -> None:
    """Raise ``AddressInUseError`` when an address gunicorn is about to bind is taken.

    gunicorn itself tries five times, a second apart, logging two lines a try and
    never naming the setting. Called as the master starts, before gunicorn binds, this
    binds each TCP address once the way gunicorn does (SO_REUSEADDR), and lets it go
    at once. Where gunicorn binds nothing it checks nothing: sockets inherited from
    systemd or from the master of a SIGUSR2 upgrade. ``petsage_bind`` is
    PETSAGE_BIND's value, which gunicorn's ``-b``/``--bind`` (command line or
    GUNICORN_CMD_ARGS) overrides.

    The management listener's socket (``management_bind``, PETSAGE_MANAGEMENT_BIND)
    is open by then: an address it holds is refused naming both settings, even with
    --reuse-port (the workers' binds would fail). Other addresses are not checked
    with --reuse-port (every worker binds its own, and may share it).
    """
    cfg = arbiter.cfg
    inherited = arbiter.master_pid or gunicorn.systemd.listen_fds(
        unset_environment=False
    )
    if arbiter.LISTENERS or inherited:
        return
    named_by_petsage_bind = cfg.bind == [petsage_bind]
    for bind, address in zip(cfg.bind, cfg.address, strict=True):
        if isinstance(address, tuple) and overlaps(address) and in_use(address):
            public = (
                f"PETSAGE_BIND={bind!r}"
                if named_by_petsage_bind
                else f"gunicorn's -b/--bind {bind!r} (which overrides PETSAGE_BIND)"
            )
            raise AddressInUseError(
                f"PETSAGE_MANAGEMENT_BIND={management_bind!r} and {public} name the"
                f" same address (port {address[1]}): the management listener needs"
                " an address of its own; give either another port"
            )
    if cfg.reuse_port:
        return
    for bind, address in zip(cfg.bind, cfg.address, strict=True):
        if isinstance(address, tuple) and in_use(address):
            if named_by_petsage_bind:
                raise AddressInUseError(
                    f"PETSAGE_BIND={bind!r} cannot be listened on: Address already in"
                    f" use ({IN_USE}); choose another with PETSAGE_BIND, or with"
                    " gunicorn's -b/--bind, which overrides it"
                )
            raise AddressInUseError(
                f"gunicorn's -b/--bind {bind!r} (which overrides PETSAGE_BIND) cannot"
                f" be listened on: Address already in use ({IN_USE})"
            )


def in_use(address: tuple[str, int]) -> bool:
    """Whether another socket listens on ``address`` (HOST, PORT), so that gunicorn's
    bind would fail."""
    family = socket.AF_INET6 if gunicorn.util.is_ipv6(address[0]) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def drain_before_stopping(arbiter: Any, drain: Drain, delay: float) -> None:
    """Make the master's first SIGTERM drain for ``delay`` seconds before stopping.

    gunicorn closes its listeners as soon as it handles SIGTERM, so connections a load
    balancer still sends are reset rather than answered. Instead, the first SIGTERM
    begins the drain (readiness 503 in every worker while they keep serving)
    and schedules the real SIGTERM for when the delay, counted from when draining
    began (``petsage drain`` may have begun it earlier), has passed. A second SIGTERM
    stops at once, gracefully; SIGINT and SIGQUIT keep their quick shutdown.
    """
    graceful_stop = arbiter.handle_term
    draining = threading.Event()

    def handle_term() -> None:
        if draining.is_set():
            graceful_stop()
            return
        if upgraded_by(arbiter):
            # The new master of a SIGUSR2 upgrade accepts on these same sockets: the
            # old one stops without draining, so probes of the shared port never
            # hear the old instance's 503 and nothing is refused.
            arbiter.log.info(
                "Stopping without a drain: the new master (pid %s) serves the same"
                " listeners",
                arbiter.reexec_pid,
            )
            graceful_stop()
            return
        draining.set()
        # A drain ``petsage drain`` began before this SIGTERM, if any.
        earlier = drain.began()
        # In the memory the master shares with its workers: no storage can fail it.
        began = drain.begin(Drain.SHUTDOWN)
        # Time already spent draining (``petsage drain`` before the SIGTERM), on the
        # monotonic clock: a wall-clock step lengthens or cuts no drain. A marker
        # from before a reboot (a later monotonic time) counts as none spent.
        spent = min(max(time.monotonic() - began, 0.0), delay)
        remaining = delay - spent
        since = (
            f", after {spent:.1f} s of draining by {DrainLog.COMMAND}"
            if earlier is not None
            else ""
        )
        if remaining <= 0:
            if since:
                arbiter.log.info("Stopping on SIGTERM%s", since)
            graceful_stop()
            return
        arbiter.log.info(
            "Draining: readiness fails now; shutting down in %.1f s (SIGTERM%s)",
            remaining,
            since,
        )
        timer = threading.Timer(remaining, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()

    arbiter.handle_term = handle_term


def upgraded_by(arbiter: Any) -> bool:
    """Whether a new master from a SIGUSR2 upgrade of this one is running."""
    child = getattr(arbiter, "reexec_pid", 0)
    if not child:
        return False
    try:
        os.kill(child, 0)
    except OSError:
        return False
    return True


def record_listeners(arbiter: Any, instance: OwnInstance) -> None:
    """Write down the addresses gunicorn really bound, for ``petsage drain`` and probe.

    They may come from PETSAGE_BIND, ``-b``, GUNICORN_CMD_ARGS or a config override;
    the master's listeners tell for sure. With ``--reuse-port`` the master binds
    nothing (each worker binds its own socket), so the configured addresses tell.
    """
    listeners = [str(listener) for listener in arbiter.LISTENERS]
    instance.mark_listening(listeners or map(address_text, arbiter.cfg.address))


def announce_management_listener(arbiter: Any) -> None:
    """Log where the management listener listens, as gunicorn logs ``Listening at:``
    for the public port: once at start, and again after a reload that moved it."""
    url = listening_url()
    if url is not None and url != getattr(arbiter, "petsage_management_url", None):
        arbiter.log.info("Management listener at: %s", url)
    arbiter.petsage_management_url = url


def assign_health_slot(arbiter: Any, worker: Any, memory: InstanceMemory) -> None:
    """Give a worker about to be forked its own slot in the instance's memory."""
    taken = {getattr(other, "petsage_slot", None) for other in arbiter.WORKERS.values()}
    worker.petsage_slot = memory.assign_slot(
        {slot for slot in taken if slot is not None}
    )


def release_health_slot(worker: Any, memory: InstanceMemory) -> None:
    """Empty an exited worker's slot, for the next worker forked."""
    slot = getattr(worker, "petsage_slot", None)
    if slot is not None:
        memory.clear_slot(slot)


class DrainLog:
    """Log each drain an operator begins or cancels, one line per instance.

    ``petsage drain`` writes the drain state into the instance's memory from a
    process of its own, and a drain file comes and goes with no PetSage process
    involved: neither can write to the instance's log. The master notices them. It is
    one per instance (every worker seeing the change would log it once per worker),
    it stays for the instance's life (workers come and go), it wakes at least once
    a second whatever the workers do, and its log is the instance's, where SIGTERM's
    drain line goes. A change is logged within a pass of gunicorn's loop; a drain
    begun and cancelled within one pass leaves no line. The shutdown drain is not
    watched here: the master begins it itself, on SIGTERM, and logs it then.
    """

    COMMAND = "petsage drain"
    CANCEL = "petsage drain --cancel"

    def __init__(self, log: Any, memory: InstanceMemory, marker: str | None) -> None:
        self.log = log
        self.memory = memory
        self.marker = marker or None
        self.file_cause = f"the drain file {self.marker}"
        # What the last pass saw: the manual drain's start, the drain file.
        self.manual: float | None = None
        self.marked = False

    def note_changes(self) -> None:
        """Log what ended and what began since the last pass, in that order, each
        line saying what still drains."""
        state = self.memory.drain_state()
        manual = state.manual
        marked = self.marker is not None and os.path.exists(self.marker)
        shutdown = state.shutdown is not None
        command_ended = self.manual is not None and manual != self.manual
        file_ended = self.marked and not marked
        by_command = self.manual is not None and not command_ended
        by_file = self.marked and not file_ended
        if command_ended:
            removed = f", which removed {self.file_cause} too" if file_ended else ""
            self._cancelled(f"by {self.CANCEL}{removed}", shutdown, by_command, by_file)
        elif file_ended:
            how = f"by removing {self.file_cause}"
            self._cancelled(how, shutdown, by_command, by_file)
        if manual is not None and manual != self.manual:
            self._begun(self.COMMAND, shutdown or by_file)
            by_command = True
        if marked and not self.marked:
            self._begun(self.file_cause, shutdown or by_command)
        self.manual, self.marked = manual, marked

    def _begun(self, cause: str, already: bool) -> None:
        self.log.info(
            "Draining begun by %s: %s",
            cause,
            "readiness already failed"
            if already
            else "readiness fails now; requests are still served",
        )

    def _cancelled(
        self, how: str, shutdown: bool, by_command: bool, by_file: bool
    ) -> None:
        causes = (
            ("SIGTERM", shutdown),
            (self.COMMAND, by_command),
            (self.file_cause, by_file),
        )
        still = [cause for cause, active in causes if active]
        self.log.info(
            "Draining cancelled %s: %s",
            how,
            f"still draining ({', '.join(still)})"
            if still
            else "readiness follows the checks again",
        )


class InstanceKeeper:
    """What the master does about once a second, beside gunicorn's own loop: put
    back what vanished of the instance's directory, keep the instance's checker
    process running (petsage.serving.supervisor), replace a worker whose health
    thread has been silent for REPLACE_AFTER leases, and log the drains operators
    begin and cancel (DrainLog).

    That worker fails its own liveness from one lease on; the master stops it
    gracefully (SIGTERM: requests in flight are answered), and kills it if it has
    not exited a graceful timeout later.

    Silence is what the master itself saw: how long a worker's heartbeat has not
    changed while the master was running. A pause of the whole instance (a frozen
    cgroup, ``docker pause``, a stalled VM) stops the master too, and on resume it
    counts from then, instead of finding every worker silent at once. And it
    replaces one worker a lease at most.
    """

    # A pass of gunicorn's loop comes at least once a second; a longer gap means the
    # master did not run.
    PAUSE = PAUSE

    def __init__(self, arbiter: Any, instance: OwnInstance) -> None:
        self.arbiter = arbiter
        self.instance = instance
        # Workers being replaced: pid -> when they were told to stop (monotonic).
        self.replacing: dict[int, float] = {}
        # Each worker's last heartbeat seen, and when the master saw it change.
        self.seen: dict[int, tuple[float, float]] = {}
        self.last_pass = time.monotonic()
        self.last_replaced = float("-inf")
        self.drain_log = DrainLog(
            arbiter.log, instance.memory, instance.record.drain_file
        )
        self.checker = CheckerSupervisor(
            arbiter, instance.memory, forget_worker_metrics
        )

    def install(self) -> None:
        """Start the checker process; run after each pass of gunicorn's loop (it
        wakes at least once a second); stop the checker on a reload (for one of the
        new code) and when the master stops (``reload_checker``, ``stop_checker``)."""
        self.arbiter.petsage_keeper = self
        self.checker.start()
        murder_workers = self.arbiter.murder_workers

        def murder_then_keep() -> None:
            murder_workers()
            self.keep()

        self.arbiter.murder_workers = murder_then_keep

    def keep(self) -> None:
        """One pass: log drains, repair the directory, keep the checker running,
        replace wedged workers."""
        try:
            self.drain_log.note_changes()
            self.instance.repair()
            self.checker.keep()
            self.replace_wedged_workers()
        except Exception:
            self.arbiter.log.exception("Instance upkeep failed")

    def replace_wedged_workers(self) -> None:
        """Stop a worker whose health thread is silent; kill one that ignores it."""
        arbiter = self.arbiter
        memory = self.instance.memory
        now = time.monotonic()
        paused = now - self.last_pass > self.PAUSE
        self.last_pass = now
        workers = arbiter.WORKERS
        for gone in set(self.replacing) - set(workers):
            del self.replacing[gone]
        for gone in set(self.seen) - set(workers):
            del self.seen[gone]
        for pid, worker in list(workers.items()):
            told = self.replacing.get(pid)
            if told is not None:
                if now - told > arbiter.cfg.graceful_timeout:
                    arbiter.kill_worker(pid, signal.SIGKILL)
                continue
            index = getattr(worker, "petsage_slot", None)
            slot = None if index is None else memory.read_slot(index)
            if slot is None or slot.pid != pid:
                continue  # still booting, or no slot
            beat, since = self.seen.get(pid, (slot.beat, now))
            if slot.beat != beat or paused:
                beat, since = slot.beat, now
            self.seen[pid] = (beat, since)
            silent = now - since
            if (
                silent > REPLACE_AFTER * slot.lease
                and now - self.last_replaced > slot.lease
            ):
                arbiter.log.error(
                    "Worker %d: its health thread has not beaten for %.0f s (stuck,"
                    " or stopped by its watchdog: its /livez says why); replacing"
                    " the worker",
                    pid,
                    silent,
                )
                self.replacing[pid] = now
                self.last_replaced = now
                arbiter.kill_worker(pid, signal.SIGTERM)


def reload_checker(arbiter: Any) -> None:
    """On a reload: start a checker of the reloaded code (the current one publishes
    until it has run a cycle)."""
    keeper: InstanceKeeper | None = getattr(arbiter, "petsage_keeper", None)
    if keeper is not None:
        keeper.checker.reload()


def stop_checker(arbiter: Any) -> None:
    """As the master stops: stop the checker process."""
    keeper: InstanceKeeper | None = getattr(arbiter, "petsage_keeper", None)
    if keeper is not None:
        keeper.checker.stop()


def address_text(address: tuple[str, int] | str) -> str:
    """gunicorn's parsed address as HOST:PORT, [V6]:PORT or unix:PATH."""
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def answer_gunicorn_errors_with_problems() -> None:
    """Make the errors gunicorn answers itself (a bad request line, headers over its
    limits) problem JSON like PetSage's, instead of its HTML page.

    gunicorn writes them through ``gunicorn.util.write_error`` and offers no setting
    for it, so PetSage replaces that one function, in the master before it forks.
    """

    def write_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
        # ``mesg`` may quote the request; the problem says nothing of it.
        gunicorn.util.write_nonblock(sock, problem_error_bytes(status_int, reason))

    gunicorn.util.write_error = write_problem


def forget_worker_metrics(pid: int) -> None:
    """Drop a dead worker's live gauges and fold its counts into the archive.

    Storage stays bounded however many workers come and go: a small constant number of
    files per live worker, plus one archive file per metric kind
    (petsage.metrics.storage). A failure is logged once and never stops the master.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        RETIREMENT.retire(directory, pid)


def dispose_database_engines() -> None:
    """Close the database connections of this process (the master), if it ever made
    an engine: a forked worker must never talk over its parent's connection.

    Looked up, not imported: a master that never used a database loads no SQLAlchemy.
    """
    engine = sys.modules.get("petsage.db.engine")
    if engine is not None:
        engine.dispose_engines()


def close_listeners_in_forked_children(worker: Any) -> None:
    """Make every process this worker forks close the sockets the instance listens
    on, first thing after the fork.

    A check may fork without exec (``os.fork``, multiprocessing's fork start
    method). Its child gets a copy of every descriptor, the public listeners and the
    management listener among them, and keeps them after the worker and the master
    are gone: the kernel then queues connections that nobody will accept, and a new
    instance cannot bind the addresses, for as long as the child lives (one that
    ignores SIGTERM outlives any stop). Closed in the child (``os.register_at_fork``),
    they are the worker's and the master's alone; the child keeps every other
    descriptor it may need. A program started with exec (``subprocess``) inherits
    none of them anyway: they are close-on-exec. Registered in each worker after it
    is forked, never in the master, whose own forks are the workers.
    """

    def close_listeners() -> None:
        for listener in [*worker.sockets, *listening_sockets()]:
            with contextlib.suppress(OSError):
                listener.close()

    os.register_at_fork(after_in_child=close_listeners)


def start_worker_services(
    worker: Any, management_bind: str, instance: OwnInstance
) -> None:
    """Answer probes from the instance's shared snapshot and drain state (loaded
    now, before the worker serves; the checker process publishes it), watch
    PetSage's own locks and threads in it (petsage.serving.watched), and open the
    probe listener when ``management_bind`` is set.

    Another application served with this config (a benchmark baseline) has no health
    state, and is left alone.
    """
    app = worker.wsgi
    if isinstance(app, Flask) and EXTENSION in app.extensions:
        health = health_of(app)
        health.drain.marker = instance.record.drain_file or None
        health.share(
            instance.memory, getattr(worker, "petsage_slot", None), worker.ppid
        )
        if health.machinery is not None:
            watch_own_machinery(health.machinery)
        if management_bind:
            # Closed with the worker's other listening sockets when it stops
            # accepting (petsage.serving.worker).
            worker.management_listener = start_probe_listener(
                management_bind, app.extensions[PROBE_APP], worker.cfg
            )


class ProbeQuietLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, leaving successful liveness and readiness probes unlogged.

    Probes arrive every few seconds from every load balancer and kubelet; a failing
    probe, and every other request, is still logged.
    """

    _atoms: AccessAtoms | None = None

    def __init__(self, cfg: Any) -> None:
        self._json_lines = JsonAccessLines()
        super().__init__(cfg)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Log the request unless it is a probe that succeeded.

        The record is gunicorn's (same message, same atoms as its arguments), made
        for a fraction of the cost: only the atoms the record uses (AccessAtoms), no
        search of the stack for the caller's file and line, which no access record
        shows, and, where the access log is PetSage's JSON lines, written directly
        (JsonAccessLines).
        """
        status = getattr(resp, "status_code", None)
        path = environ.get("PATH_INFO", "")
        if (
            status is not None
            and status < 400
            and (path in PROBE_PATHS or path.startswith(("/livez/", "/readyz/")))
        ):
            return
        access_log = self.access_log
        if not self.access_log_enabled or not access_log.isEnabledFor(logging.INFO):
            return
        log_format = self.cfg.access_log_format
        atoms = self._atoms
        if atoms is None or atoms.log_format != log_format:
            atoms = self._atoms = AccessAtoms(log_format)
        try:
            safe_atoms = atoms(resp, req, environ, request_time, self)
            handler = self._json_lines.handler(access_log)
            if handler is not None:
                self._json_lines.write(handler, log_format % safe_atoms, safe_atoms)
                return
            access_log.handle(
                access_log.makeRecord(
                    access_log.name,
                    logging.INFO,
                    "(unknown file)",
                    0,
                    log_format,
                    (safe_atoms,),
                    None,
                )
            )
        except Exception:
            self.error(traceback.format_exc())
