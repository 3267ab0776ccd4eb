"""The fast tier (``pytest -m "not slow"``, docs/contributors/tests.md): the unit and
in-process tests of every module, plus one real gunicorn answering the smoke test."""

import subprocess
import sys

import pytest

from tests.support.gunicorn_process import REPO_ROOT

pytestmark = pytest.mark.slow  # it collects the whole suite
FAST_TIER = ("-m", "not slow")
REAL_GUNICORN_SMOKE = "tests/serving/test_gunicorn.py::test_get_smoke_test_over_http"


def collected(*options: str) -> list[str]:
    """The ids pytest collects with ``options``, in one process."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", *options],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_the_fast_tier_holds_every_module_and_one_real_gunicorn_smoke() -> None:
    fast = collected(*FAST_TIER)
    assert REAL_GUNICORN_SMOKE in fast
    # No fault test, container test or other real-process test but the smoke.
    slow = set(collected("-m", "slow or fault or container"))
    assert slow & set(fast) == set()
    assert {test.split("::")[0] for test in fast} >= {
        "tests/features/test_smoke_test.py",
        "tests/health/test_endpoints.py",
        "tests/config/test_config.py",
        "tests/openapi/test_openapi.py",
    }
