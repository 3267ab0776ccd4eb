"""Each listener's document describes exactly what that listener answers.

schemathesis, run as a contract tester runs it (its command line, every check, its
example, coverage and fuzzing phases), against each listener of a real gunicorn with
the document that listener serves: the public port and the management listener, in
the default configuration (/metrics on the management listener only) and with
PETSAGE_PUBLIC_METRICS=true (on both). An operation a document lists but its listener
does not serve fails the run: schemathesis sends methods the document does not
declare and expects 405, not 404.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gunicorn_process import GunicornFactory
from tests.support.management import Instance

# Real processes: not in the fast tier. Every operation of the documents: the
# feature pipeline runs it with new features.
pytestmark = [pytest.mark.slow, pytest.mark.routes]

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Settings without the PETSAGE_ prefix, by the configuration's name.
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "defaults": {},
    "public metrics": {"PUBLIC_METRICS": "true"},
}
# Far longer than a run takes on a busy machine.
RUN_TIMEOUT = 600


# schemathesis reads it from its working folder. gunicorn refuses a request line over
# its limit with a 414 problem before PetSage reads it: invalid query parameters
# generated long enough (a paged list's) are rejected so, as well as by a 422.
CONFIG = """[checks.negative_data_rejection]
expected-statuses = [
  "400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429",
  "5xx",
]
"""


def schemathesis_run(port: int, folder: Path) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` against the document served on 127.0.0.1:``port``."""
    (folder / "schemathesis.toml").write_text(CONFIG)
    return subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "20",
            # Timing depends on the machine, not on the contract.
            "--suppress-health-check",
            "all",
            "--generation-database",
            "none",
            "--no-color",
        ],
        # schemathesis keeps a cache of failures in its working folder.
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
def test_schemathesis_finds_nothing_on_either_listener(
    configuration: str, start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    settings = CONFIGURATIONS[configuration]
    environ = {f"PETSAGE_{name}": value for name, value in settings.items()}
    instance = Instance(start_gunicorn, environ)
    for listener, port in (
        ("public port", instance.port),
        ("management listener", instance.management_port),
    ):
        result = schemathesis_run(port, tmp_path)
        assert result.returncode == 0, f"the {listener}:\n{result.stdout}"
