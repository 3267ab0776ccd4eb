"""deploy/prometheus/blackbox.yml in Debian's prometheus-blackbox-exporter, probing a
real instance's public port from outside: ready, draining, ready again."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gunicorn_process import GunicornFactory
from tests.support.management import free_port
from tests.support.monitoring import (
    BLACKBOX_CONFIG,
    get_text,
    run_tool,
    serving_process,
    tool,
)

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

EXPORTER = "prometheus-blackbox-exporter"
PETSAGE = Path(sys.executable).with_name("petsage")


def test_the_exporter_accepts_the_modules() -> None:
    status, output = run_tool(
        EXPORTER, f"--config.file={BLACKBOX_CONFIG}", "--config.check"
    )
    assert status == 0, output


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[int]:
    """The exporter with PetSage's modules on a free 127.0.0.1 port: that port."""
    port = free_port()
    command = [
        tool(EXPORTER),
        f"--config.file={BLACKBOX_CONFIG}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with serving_process(command, port, "/-/healthy", tmp_path / "exporter.log"):
        yield port


def probe_success(exporter: int, module: str, target: str) -> float:
    """probe_success of one probe of ``target`` with ``module``."""
    query = urlencode({"module": module, "target": target})
    status, body = get_text(exporter, f"/probe?{query}")
    assert status == 200, body
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "probe_success":
                return sample.value
    raise AssertionError(f"no probe_success in:\n{body}")


def petsage(*args: str, state: Path) -> None:
    """Run the ``petsage`` command against the instances in ``state``."""
    subprocess.run(
        [str(PETSAGE), *args],
        env={**os.environ, "PETSAGE_STATE_DIR": str(state)},
        check=True,
        capture_output=True,
        timeout=30,
    )


def test_probes_succeed_while_ready_and_readyz_fails_while_draining(
    exporter: int, start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    server = start_gunicorn({"PETSAGE_STATE_DIR": str(state)})
    base = f"http://127.0.0.1:{server.port}"
    # Ready once its first check cycle is done, a moment after it first answers.
    deadline = time.monotonic() + 10
    while server.request("GET", "/readyz").status != 200:
        assert time.monotonic() < deadline, "the instance never became ready"
        time.sleep(0.05)
    assert probe_success(exporter, "petsage_readyz", f"{base}/readyz") == 1
    assert (
        probe_success(exporter, "petsage_smoke_test", f"{base}/api/v1/smoke-test") == 1
    )
    # A 200 with another body is no smoke test.
    assert probe_success(exporter, "petsage_smoke_test", f"{base}/readyz") == 0

    petsage("drain", "--instance", str(server.port), state=state)
    assert probe_success(exporter, "petsage_readyz", f"{base}/readyz") == 0
    # Draining, it still serves what it is sent.
    assert (
        probe_success(exporter, "petsage_smoke_test", f"{base}/api/v1/smoke-test") == 1
    )

    petsage("drain", "--cancel", "--instance", str(server.port), state=state)
    assert probe_success(exporter, "petsage_readyz", f"{base}/readyz") == 1
