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
    """The ids pytest collects with ``options``, in one process (none: exit 5)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", *options],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 5), result.stdout + result.stderr
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


def test_the_feature_pipelines_tier_adds_the_slow_tests_that_walk_the_routes() -> None:
    """``routes`` marks slow tests only (the fast tier has the rest already); the
    pipeline's ``-m "not slow or routes"`` then holds schemathesis on both listeners
    and the security and method rules on real gunicorns."""
    assert collected("-m", "routes and not slow") == []
    walked = {test.split("::")[0] for test in collected("-m", "routes")}
    assert walked >= {
        "tests/openapi/test_listeners.py",
        "tests/openapi/test_security.py",
        "tests/app/test_methods.py",
    }
