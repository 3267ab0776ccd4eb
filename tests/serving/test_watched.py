"""What a worker's watchdog watches: PetSage's log handlers' locks, never a
handler's that may block on its stream, and prometheus_client's values' lock."""

import io
import logging
import os
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import values

from petsage.health.machinery import Machinery
from petsage.metrics.storage import StorageState, degradable_value_class
from petsage.serving.log_output import LogOutput
from petsage.serving.watched import value_lock, watch_own_machinery


@pytest.fixture
def handlers() -> Iterator[tuple[logging.Handler, logging.Handler]]:
    """A handler on PetSage's log output, and one on a plain stream, in use."""
    read, write = os.pipe()
    queued = logging.StreamHandler(LogOutput(write, write, 10))
    queued.set_name("queued")
    plain = logging.StreamHandler(io.StringIO())
    plain.set_name("plain")
    logger = logging.getLogger("tests.serving.watched")
    logger.addHandler(queued)
    logger.addHandler(plain)
    yield queued, plain
    logger.removeHandler(queued)
    logger.removeHandler(plain)
    os.close(read)


def test_only_handlers_on_petsages_log_output_are_watched(
    handlers: tuple[logging.Handler, logging.Handler],
) -> None:
    machinery = Machinery()
    watch_own_machinery(machinery)
    assert "petsage.logging.queued" in machinery.watched
    assert "petsage.logging.plain" not in machinery.watched


def test_the_values_lock_is_the_one_every_sample_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(values, "ValueClass", degradable_value_class(StorageState()))
    lock = value_lock()
    assert lock is not None
    closed = threading.Event()

    def close_files() -> None:
        values.ValueClass.close_all_files()  # takes the lock, as inc and set do
        closed.set()

    with lock:
        threading.Thread(target=close_files, daemon=True).start()
        assert not closed.wait(0.2)
    assert closed.wait(30)


def test_without_metrics_per_process_no_values_lock_is_watched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)
    assert value_lock() is None
