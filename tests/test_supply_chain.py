"""Supply chain: bandit on PetSage's code, pip-audit on the pinned requirements."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gunicorn_process import REPO_ROOT

BIN = Path(sys.executable).parent


def test_bandit_finds_nothing_in_the_package() -> None:
    result = subprocess.run(
        [str(BIN / "bandit"), "-r", "petsage", "-q", "-f", "json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(result.stdout)
    assert report["results"] == [], json.dumps(report["results"], indent=2)
    assert result.returncode == 0


@pytest.mark.parametrize("requirements", ["requirements.txt", "requirements-test.txt"])
def test_pip_audit_finds_no_known_vulnerability(requirements: str) -> None:
    result = subprocess.run(
        [
            str(BIN / "pip-audit"),
            "--requirement",
            requirements,
            # Every pin is exact, so no resolution (and no install) is needed.
            "--no-deps",
            "--disable-pip",
            "--format",
            "json",
            "--progress-spinner",
            "off",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stdout or "{}")
    dependencies = report.get("dependencies", [])
    audited = [entry for entry in dependencies if "skip_reason" not in entry]
    if dependencies and not audited:
        pytest.skip(
            "the vulnerability service (PyPI's JSON API per version) is out of reach"
            f" from here, so nothing could be audited: {dependencies[0]['skip_reason']}"
        )
    vulnerable = {
        f"{entry['name']}=={entry['version']}": [v["id"] for v in entry["vulns"]]
        for entry in audited
        if entry["vulns"]
    }
    assert vulnerable == {}
    assert audited, result.stderr
    assert result.returncode == 0, result.stderr
