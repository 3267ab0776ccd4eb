"""The master's hooks, in this process: what the drain log says of each change."""

import logging
from pathlib import Path

import pytest

from petsage.health.state import Drain
from petsage.instance.memory import InstanceMemory
from petsage.serving.server import DrainLog

READY = "readiness follows the checks again"
FAILING = "readiness fails now; requests are still served"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """Where the instance's drain file would be (PETSAGE_DRAIN_FILE)."""
    return tmp_path / "petsage.drain"


def test_a_cancel_that_also_removed_the_drain_file_is_one_line(
    marker: Path, caplog: pytest.LogCaptureFixture
) -> None:
    memory = InstanceMemory.create("drain-log")
    drain_log = DrainLog(logging.getLogger("test"), memory, str(marker))
    drain = Drain(memory, str(marker))
    with caplog.at_level(logging.INFO):
        drain.begin(Drain.MANUAL)
        marker.touch()
        drain_log.note_changes()
        drain_log.note_changes()  # nothing changed: nothing said
        drain.end()  # petsage drain --cancel removes the file too
        drain_log.note_changes()
    assert caplog.messages == [
        f"Draining begun by petsage drain: {FAILING}",
        f"Draining begun by the drain file {marker}: readiness already failed",
        "Draining cancelled by petsage drain --cancel, which removed the drain file"
        f" {marker} too: {READY}",
    ]


def test_a_cancel_says_what_still_drains(
    marker: Path, caplog: pytest.LogCaptureFixture
) -> None:
    memory = InstanceMemory.create("drain-log")
    drain_log = DrainLog(logging.getLogger("test"), memory, str(marker))
    marker.touch()
    drain_log.note_changes()
    with caplog.at_level(logging.INFO):
        Drain(memory).begin(Drain.MANUAL)
        drain_log.note_changes()
        Drain(memory).end()
        drain_log.note_changes()
    assert caplog.messages == [
        "Draining begun by petsage drain: readiness already failed",
        "Draining cancelled by petsage drain --cancel: still draining (the drain"
        f" file {marker})",
    ]
