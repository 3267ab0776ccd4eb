"""The watchdog over PetSage's own locks and threads: what it finds wedged, and
what it never waits on."""

import threading
from collections.abc import Iterator

import pytest

from petsage.health.machinery import TRY_FOR, Machinery


@pytest.fixture
def held_lock() -> Iterator[threading.Lock]:
    """A lock another thread holds until the test ends."""
    lock = threading.Lock()
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            done.wait(60)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    taken.wait(10)
    yield lock
    done.set()
    thread.join(10)


def test_a_lock_it_can_take_is_not_a_wedge() -> None:
    machinery = Machinery(wedged_after=0.0)
    machinery.watch_lock("free", threading.RLock())
    assert machinery.look() is False
    assert machinery.problem is None


def test_a_lock_held_past_the_bound_is_named(held_lock: threading.Lock) -> None:
    machinery = Machinery(wedged_after=0.0)
    machinery.watch_lock("petsage.example", held_lock)
    assert machinery.look() is True
    assert machinery.problem == "lock petsage.example held for 0 s"


def test_a_lock_held_within_the_bound_is_not_a_wedge_yet(
    held_lock: threading.Lock,
) -> None:
    machinery = Machinery(wedged_after=3600.0)
    machinery.watch_lock("petsage.example", held_lock)
    assert machinery.look() is False


def test_a_look_never_waits_for_a_held_lock_for_good(
    held_lock: threading.Lock,
) -> None:
    # The health thread beats between looks: one look never waits on a lock.
    machinery = Machinery(wedged_after=0.0)
    for index in range(50):
        machinery.watch_lock(f"held {index}", held_lock)
    looked = threading.Thread(target=machinery.look, daemon=True)
    looked.start()
    looked.join(timeout=50 * TRY_FOR + 30)
    assert not looked.is_alive()


def test_a_watched_thread_that_died_is_named() -> None:
    thread = threading.Thread(target=lambda: None)
    machinery = Machinery()
    machinery.watch_thread("petsage-log-writer.stdout", lambda: thread)
    thread.start()
    thread.join()
    assert machinery.look() is True
    assert machinery.problem == "thread petsage-log-writer.stdout dead"


def test_a_watched_thread_not_started_yet_is_not_a_wedge() -> None:
    machinery = Machinery()
    machinery.watch_thread("petsage-log-writer.stdout", lambda: None)
    assert machinery.look() is False
