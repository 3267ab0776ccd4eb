"""A check that blocks until released: a dependency that hangs, in process."""

import threading

from petsage.health import Check, Observation


def blocking_check(name: str, release: threading.Event, timeout: float) -> Check:
    """A check whose runs wait (at most a minute) until ``release`` is set."""

    def run() -> Observation:
        release.wait(60)
        return Observation()

    return Check(name, run, component=name, measurement="x", timeout=timeout)
