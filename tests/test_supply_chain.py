"""Supply chain: bandit on PetSage's code, pip-audit on the pinned requirements.

pip-audit asks a vulnerability service about every pin. A pin found vulnerable fails
the audit; a service that could not be asked (no route, a proxy or TLS error, an
answer that is not one) skips it, saying why. The tests after the audit itself run
pip-audit against stand-ins on 127.0.0.1 to show both.
"""

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.gunicorn_process import REPO_ROOT
from tests.support.listeners import Route, answering, refusing

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

BIN = Path(sys.executable).parent
# Every pin is exact, so no resolution (and no install) is needed.
PIP_AUDIT = (
    "--no-deps",
    "--disable-pip",
    "--format",
    "json",
    "--progress-spinner",
    "off",
)
# What pip-audit writes to stderr, instead of a report, when the service gave no usable
# answer: an exception of requests or urllib3 (refused, unresolved, proxy, TLS, timeout,
# an answer that is not JSON), pip-audit's ServiceError (an error status) or its
# ConnectionError's messages.
UNREACHABLE = re.compile(
    r"requests\.exceptions\.\w+|urllib3\.exceptions\.\w+|ssl\.SSL\w*Error"
    r"|pip_audit\._service\.interface\.ServiceError"
    r"|Could not connect to \w+'s vulnerability feed|PyPI is not redirecting properly"
)


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


def pip_audit(
    requirements: str | Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run pip-audit on a requirements file, with a JSON report, in the project root."""
    return subprocess.run(
        [BIN / "pip-audit", "--requirement", requirements, *PIP_AUDIT, *options],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@dataclass(frozen=True)
class Audit:
    """What one pip-audit run established."""

    # Each vulnerable pin (name==version) and its vulnerabilities' ids.
    vulnerable: dict[str, list[str]]
    # Why the service could not be asked about every pin; empty if it was.
    unaudited: str = ""


def read_audit(result: subprocess.CompletedProcess[str]) -> Audit:
    """Read a pip-audit run (``--format json``); fail on an error that does not come
    from the vulnerability service."""
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = None
    if not isinstance(report, dict) or "dependencies" not in report:
        # pip-audit stopped before its report: its traceback or error is on stderr.
        causes = [
            line for line in result.stderr.splitlines() if UNREACHABLE.search(line)
        ]
        assert causes, f"pip-audit failed (exit {result.returncode}):\n{result.stderr}"
        return Audit(vulnerable={}, unaudited=causes[-1].strip())
    dependencies = report["dependencies"]
    vulnerable = {
        f"{entry['name']}=={entry['version']}": [vuln["id"] for vuln in entry["vulns"]]
        for entry in dependencies
        if entry.get("vulns")
    }
    # The PyPI service answers 404 for a version it does not know: the pin is
    # skipped, with the reason, and not audited.
    skipped = [entry["skip_reason"] for entry in dependencies if "skip_reason" in entry]
    if skipped:
        unaudited = f"{len(skipped)} of {len(dependencies)} pins, e.g. {skipped[0]}"
        return Audit(vulnerable, unaudited)
    if not vulnerable:
        assert dependencies, f"pip-audit audited nothing:\n{result.stderr}"
        assert result.returncode == 0, result.stderr
    return Audit(vulnerable)


def assert_no_known_vulnerability(result: subprocess.CompletedProcess[str]) -> None:
    """Fail on any pin found vulnerable; otherwise skip, saying why, if the service
    could not be asked about every pin."""
    audit = read_audit(result)
    assert audit.vulnerable == {}, json.dumps(audit.vulnerable, indent=2)
    if audit.unaudited:
        pytest.skip(
            "the vulnerability service could not be asked from here, so not every pin"
            f" was audited: {audit.unaudited}"
        )


@pytest.mark.parametrize("requirements", ["requirements.txt", "requirements-test.txt"])
def test_pip_audit_finds_no_known_vulnerability(requirements: str) -> None:
    assert_no_known_vulnerability(pip_audit(requirements))


# The stand-ins' pin and OSV's record of a real vulnerability of it (CVE-2019-10906,
# a sandbox escape fixed in Jinja2 2.10.1), in the shape api.osv.dev answers.
PIN = "jinja2==2.10"
OSV_RECORD = {
    "vulns": [
        {
            "schema_version": "1.6.0",
            "id": "GHSA-462w-v97r-4m45",
            "aliases": ["CVE-2019-10906"],
            "summary": "Jinja2 sandbox escape via string formatting",
            "published": "2019-04-10T14:30:24Z",
            "affected": [
                {
                    "package": {"name": "jinja2", "ecosystem": "PyPI"},
                    "ranges": [
                        {
                            "type": "ECOSYSTEM",
                            "events": [{"introduced": "0"}, {"fixed": "2.10.1"}],
                        }
                    ],
                }
            ],
        }
    ]
}


@pytest.fixture
def pinned(tmp_path: Path) -> Path:
    """A requirements file holding the stand-ins' pin."""
    path = tmp_path / "requirements.txt"
    path.write_text(f"{PIN}\n")
    return path


def without_proxies() -> dict[str, str]:
    """This environment without proxy settings, which would catch 127.0.0.1 too."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.lower().endswith("_proxy")
    }


def audit_against(
    url: str, requirements: Path, cache: Path
) -> subprocess.CompletedProcess[str]:
    """pip-audit asking an OSV service at ``url`` (with a cache of its own)."""
    return pip_audit(
        requirements,
        "--vulnerability-service",
        "osv",
        "--osv-url",
        url,
        "--cache-dir",
        str(cache),
        "--timeout",
        "10",
        env=without_proxies(),
    )


def audit_with_answer(
    route: Route, pinned: Path, tmp_path: Path, tls: ssl.SSLContext | None = None
) -> subprocess.CompletedProcess[str]:
    """pip-audit on the pin, against a stand-in OSV service that answers ``route``."""
    scheme = "http" if tls is None else "https"
    with answering({"/v1/query": route}, tls=tls) as port:
        return audit_against(
            f"{scheme}://127.0.0.1:{port}/v1/query", pinned, tmp_path / "cache"
        )


def test_a_known_vulnerability_fails_the_audit(pinned: Path, tmp_path: Path) -> None:
    answer = (200, "application/json", json.dumps(OSV_RECORD).encode())
    result = audit_with_answer(answer, pinned, tmp_path)
    assert result.returncode == 1, result.stderr
    # pip-audit names a vulnerability by its CVE id where it has one.
    assert read_audit(result) == Audit({PIN: ["CVE-2019-10906"]})
    with pytest.raises(AssertionError, match="CVE-2019-10906"):
        assert_no_known_vulnerability(result)


def test_an_answer_of_no_vulnerability_passes_the_audit(
    pinned: Path, tmp_path: Path
) -> None:
    result = audit_with_answer((200, "application/json", b"{}"), pinned, tmp_path)
    assert read_audit(result) == Audit({})
    assert_no_known_vulnerability(result)


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        ((200, "text/html", b"<html>Sign in to the network</html>"), "JSONDecodeError"),
        ((404, "text/plain", b"not here"), "ServiceError"),
        ((503, "text/plain", b"down"), "ServiceError"),
    ],
    ids=["not-json", "404", "503"],
)
def test_an_answer_that_is_no_answer_skips_the_audit(
    answer: Route, cause: str, pinned: Path, tmp_path: Path
) -> None:
    result = audit_with_answer(answer, pinned, tmp_path)
    assert cause in read_audit(result).unaudited
    with pytest.raises(pytest.skip.Exception, match=cause):
        assert_no_known_vulnerability(result)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
def test_a_self_signed_certificate_skips_the_audit(
    pinned: Path, tmp_path: Path
) -> None:
    key, certificate = tmp_path / "key.pem", tmp_path / "certificate.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=x"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(certificate)),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate, key)
    answer = (200, "application/json", b"{}")
    result = audit_with_answer(answer, pinned, tmp_path, tls=tls)
    with pytest.raises(pytest.skip.Exception, match=r"SSLError.*self-signed"):
        assert_no_known_vulnerability(result)


def test_a_proxy_that_refuses_skips_the_audit(tmp_path: Path) -> None:
    """The audit itself (PyPI's service), through a proxy that refuses connections."""
    with refusing() as port:
        proxy = f"http://127.0.0.1:{port}"
        env = {**without_proxies(), "HTTPS_PROXY": proxy, "https_proxy": proxy}
        # A cache of its own, so that no answer can come from an earlier audit.
        result = pip_audit("requirements.txt", "--cache-dir", str(tmp_path), env=env)
    with pytest.raises(pytest.skip.Exception, match="ProxyError"):
        assert_no_known_vulnerability(result)


def test_pins_the_service_does_not_know_skip_the_audit() -> None:
    """PyPI's 404 for every version (a mirror or a stand-in that has none of them)."""
    report = {
        "dependencies": [
            {
                "name": "flask",
                "skip_reason": "Dependency not found on PyPI and could not be"
                " audited: flask (3.1.3)",
            }
        ],
        "fixes": [],
    }
    result = subprocess.CompletedProcess[str]([], 0, json.dumps(report), "")
    with pytest.raises(pytest.skip.Exception, match=r"1 of 1 pins, e\.g\. Dep"):
        assert_no_known_vulnerability(result)


def test_a_vulnerability_fails_even_when_other_pins_were_not_audited() -> None:
    report = {
        "dependencies": [
            {"name": "flask", "skip_reason": "Dependency not found on PyPI"},
            {
                "name": "jinja2",
                "version": "2.10",
                "vulns": [{"id": "GHSA-462w-v97r-4m45", "fix_versions": ["2.10.1"]}],
            },
        ],
        "fixes": [],
    }
    result = subprocess.CompletedProcess[str]([], 1, json.dumps(report), "")
    with pytest.raises(AssertionError, match="GHSA-462w-v97r-4m45"):
        assert_no_known_vulnerability(result)


def test_another_pip_audit_error_fails_the_audit(tmp_path: Path) -> None:
    result = pip_audit(tmp_path / "missing.txt", env=without_proxies())
    with pytest.raises(AssertionError, match="invalid requirements input"):
        read_audit(result)
