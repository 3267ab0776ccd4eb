"""Filesystems mounted for the length of a test (a small tmpfs, a read-only bind
mount); the test is skipped, with the reason, where mounting is refused."""

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted(*arguments: str) -> Iterator[None]:
    """``mount arguments...`` for the block; skip the test where mounting is refused."""
    target = arguments[-1]
    if shutil.which("mount") is None:
        pytest.skip(
            "no mount command on this machine (Debian: apt-get install -y mount)"
        )
    result = subprocess.run(
        ["mount", *arguments], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip() or result.returncode})")
    try:
        yield
    finally:
        # Lazy: detached at once even if a process still holds a file in it.
        subprocess.run(["umount", "-l", target], check=True)


@contextlib.contextmanager
def read_only_bind_mount(directory: Path) -> Iterator[None]:
    """``directory`` read-only for the block, for files opened from now on."""
    with mounted("--bind", str(directory), str(directory)):
        remount = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only here ({remount.stderr.strip()})")
        yield
