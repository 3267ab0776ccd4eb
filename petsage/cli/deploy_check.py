"""``petsage smoke``: prove a deployed release is up, ready and keeps its contract.

A pipeline runs it after a deploy: it waits until ``/readyz`` answers 200, then checks
``/livez``, ``/health``, ``/api/v1/smoke-test`` and ``/openapi.json`` against the
service's own OpenAPI document, and answers with an exit code. Pointed at PetSage's
management listener instead of the public port, it says so (the listener's 404s carry
a ``PetSage-Listener`` header) rather than fail check after check.
"""

import http.client
import json
import ssl
import time

# Only to write the JUnit report; nothing here parses XML.
import xml.etree.ElementTree as ElementTree  # nosec B405
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from petsage.cli.contract import response_errors
from petsage.wire import LISTENER_HEADER, MANAGEMENT_LISTENER

PASSED, FAILED, NOT_READY = 0, 1, 2
SMOKE_TEST_BODY = {"status": "ok", "message": "PetSage smoke test successful!"}
FIRST_POLL_DELAY = 0.25
LONGEST_POLL_DELAY = 5.0
# /readyz answers worth waiting out: PetSage starting or draining (503), a proxy or
# gateway in front of it whose backend is not up yet (502, 504) or that sheds load.
NOT_READY_YET = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Answer:
    """One HTTP response, read whole."""

    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """One check: its name, whether it passed, and what was expected and what came."""

    name: str
    passed: bool
    detail: str
    seconds: float


@dataclass
class SmokeReport:
    """Every check of one run, and the exit code they add up to."""

    url: str
    outcomes: list[Outcome] = field(default_factory=list)
    exit_code: int = PASSED


class Service:
    """A PetSage instance at ``url``; every request has a timeout."""

    def __init__(self, url: str, request_timeout: float, token: str | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        try:
            port = parts.port  # urlsplit checks the port only when asked for it
        except ValueError:
            port = 0
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"not a port from 1 to 65535 in {url!r}")
        self.url = url.rstrip("/")
        self.parts = parts
        self.prefix = parts.path.rstrip("/")
        self.request_timeout = request_timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Set by the first answer that names PetSage's management listener.
        self.reached_management_listener = False

    def get(self, path: str, timeout: float | None = None) -> Answer:
        """GET ``path``; raises OSError when the service cannot be reached."""
        limit = self.request_timeout if timeout is None else timeout
        host, port = self.parts.hostname or "", self.parts.port
        connection: http.client.HTTPConnection
        if self.parts.scheme == "https":
            context = ssl.create_default_context()
            connection = http.client.HTTPSConnection(
                host, port, timeout=limit, context=context
            )
        else:
            connection = http.client.HTTPConnection(host, port, timeout=limit)
        try:
            connection.request("GET", self.prefix + path, headers=self.headers)
            response = connection.getresponse()
            body = response.read(10_000_000)
            if response.getheader(LISTENER_HEADER) == MANAGEMENT_LISTENER:
                self.reached_management_listener = True
            return Answer(response.status, response.getheader("Content-Type", ""), body)
        except http.client.HTTPException as error:
            raise OSError(f"bad HTTP answer: {type(error).__name__}") from error
        finally:
            connection.close()


def describe(error: OSError) -> str:
    """A connection error in a few words."""
    if isinstance(error, TimeoutError):
        return "no answer within the request timeout"
    return error.strerror or str(error) or type(error).__name__


def wait_until_ready(service: Service, timeout: float) -> tuple[Outcome, int]:
    """Poll /readyz with backoff until it answers 200 or ``timeout`` passes.

    It asks at least once, however short ``timeout``. Only a refused or silent
    connection and a status in ``NOT_READY_YET`` are worth waiting out; any other
    answer (a 404 from a wrong base URL) ends the wait at once. Returns the outcome
    and the exit code it means.
    """
    started = time.monotonic()
    deadline = started + timeout
    delay = FIRST_POLL_DELAY
    request_timeout = service.request_timeout
    while True:
        try:
            answer = service.get("/readyz", timeout=request_timeout)
            if answer.status == 200:
                waited = time.monotonic() - started
                detail = f"/readyz answered 200 after {waited:.1f} s"
                return Outcome("readiness", True, detail, waited), PASSED
            last = f"/readyz answered {answer.status} {excerpt(answer.body)}"
            if answer.status not in NOT_READY_YET:
                detail = (
                    f"expected /readyz to answer 200, got {answer.status}"
                    f" {excerpt(answer.body)}; waiting does not change that answer:"
                    f" is {service.url} the service's base URL?"
                )
                return (
                    Outcome("readiness", False, detail, time.monotonic() - started),
                    FAILED,
                )
        except OSError as error:
            last = f"/readyz: {describe(error)}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, LONGEST_POLL_DELAY)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        request_timeout = min(service.request_timeout, remaining)
    detail = f"expected /readyz to answer 200 within {timeout:g} s; last: {last}"
    return Outcome("readiness", False, detail, time.monotonic() - started), NOT_READY


def timed(name: str, check: Callable[[], list[str]]) -> Outcome:
    """Run ``check``; it passes when it returns no problem."""
    started = time.monotonic()
    try:
        problems = check()
    except OSError as error:
        problems = [f"request failed: {describe(error)}"]
    seconds = time.monotonic() - started
    if problems:
        return Outcome(name, False, "; ".join(problems), seconds)
    return Outcome(name, True, "as documented", seconds)


def excerpt(body: bytes) -> str:
    """The start of a body, for a report."""
    return body[:200].decode(errors="replace").strip()


def expect_status(answer: Answer, path: str, expected: int = 200) -> list[str]:
    """A problem unless ``answer`` has the expected status."""
    if answer.status == expected:
        return []
    got = f"{answer.status} {excerpt(answer.body)}"
    return [f"expected {path} to answer {expected}, got {got}"]


def run_smoke(
    url: str,
    timeout: float = 60.0,
    expect_release: str | None = None,
    token: str | None = None,
    request_timeout: float = 5.0,
) -> SmokeReport:
    """Wait until the service at ``url`` is ready, then check its contract."""
    service = Service(url, request_timeout, token)
    report = SmokeReport(service.url)
    readiness, exit_code = wait_until_ready(service, timeout)
    report.outcomes.append(readiness)
    if service.reached_management_listener:
        return wrong_listener(report)
    if not readiness.passed:
        report.exit_code = exit_code
        return report

    document: dict[str, Any] = {}

    def check_document() -> list[str]:
        answer = service.get("/openapi.json")
        problems = expect_status(answer, "/openapi.json")
        if problems:
            return problems
        try:
            parsed = json.loads(answer.body)
        except ValueError:
            return ["/openapi.json is not JSON"]
        if not isinstance(parsed, dict) or "paths" not in parsed:
            return ["/openapi.json is not an OpenAPI document"]
        document.update(parsed)
        return []

    def check_endpoint(
        path: str, body_check: Callable[[Any], list[str]] | None = None
    ) -> Callable[[], list[str]]:
        def check() -> list[str]:
            if not document:
                return ["no OpenAPI document to check against"]
            answer = service.get(path)
            problems = expect_status(answer, path)
            problems += response_errors(
                document, path, answer.status, answer.content_type, answer.body
            )
            if not problems and body_check is not None:
                problems += body_check(json.loads(answer.body))
            return problems

        return check

    def exact_body(body: Any) -> list[str]:
        if body == SMOKE_TEST_BODY:
            return []
        return [f"expected body {json.dumps(SMOKE_TEST_BODY)}, got {json.dumps(body)}"]

    def release(body: Any) -> list[str]:
        if body.get("releaseId") == expect_release:
            return []
        return [f"expected releaseId {expect_release!r}, got {body.get('releaseId')!r}"]

    checks = [
        ("openapi", check_document),
        ("liveness", check_endpoint("/livez")),
        ("health", check_endpoint("/health")),
    ]
    if expect_release is not None:
        checks.append(("release", check_endpoint("/health", release)))
    checks.append(("smoke-test", check_endpoint("/api/v1/smoke-test", exact_body)))
    for name, check in checks:
        report.outcomes.append(timed(name, check))
        if service.reached_management_listener:
            return wrong_listener(report)
    if not all(outcome.passed for outcome in report.outcomes):
        report.exit_code = FAILED
    return report


def wrong_listener(report: SmokeReport) -> SmokeReport:
    """End ``report`` at its last check, the first to reach PetSage's management
    listener: it fails saying so, and no further check runs, since there each could
    only fail without saying why."""
    last = report.outcomes.pop()
    detail = (
        f"{report.url} is PetSage's management listener (PETSAGE_MANAGEMENT_BIND),"
        " which serves probes and metrics, not the API: point petsage smoke at the"
        " public port (PETSAGE_BIND)"
    )
    report.outcomes.append(Outcome(last.name, False, detail, last.seconds))
    report.exit_code = FAILED
    return report


def render_text(report: SmokeReport) -> str:
    """A report for people."""
    lines = [
        f"{'PASS' if o.passed else 'FAIL'}  {o.name:<11} {o.detail}"
        for o in report.outcomes
    ]
    failed = sum(not outcome.passed for outcome in report.outcomes)
    verdict = "passed" if report.exit_code == PASSED else "FAILED"
    lines.append(
        f"petsage smoke {verdict}: {len(report.outcomes) - failed} passed,"
        f" {failed} failed, against {report.url}"
    )
    return "\n".join(lines) + "\n"


def render_json(report: SmokeReport) -> str:
    """A report for programs."""
    return (
        json.dumps(
            {
                "url": report.url,
                "passed": report.exit_code == PASSED,
                "exitCode": report.exit_code,
                "checks": [asdict(outcome) for outcome in report.outcomes],
            },
            indent=2,
        )
        + "\n"
    )


def render_junit(report: SmokeReport) -> str:
    """A JUnit XML report, which CI systems display as tests."""
    failures = sum(not outcome.passed for outcome in report.outcomes)
    total = sum(outcome.seconds for outcome in report.outcomes)
    suites = ElementTree.Element("testsuites")
    suite = ElementTree.SubElement(
        suites,
        "testsuite",
        name="petsage smoke",
        tests=str(len(report.outcomes)),
        failures=str(failures),
        errors="0",
        time=f"{total:.3f}",
    )
    ElementTree.SubElement(
        ElementTree.SubElement(suite, "properties"),
        "property",
        name="url",
        value=report.url,
    )
    for outcome in report.outcomes:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname="petsage.smoke",
            name=outcome.name,
            time=f"{outcome.seconds:.3f}",
        )
        if not outcome.passed:
            failure = ElementTree.SubElement(case, "failure", message=outcome.detail)
            failure.text = outcome.detail
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


RENDERERS = {"text": render_text, "json": render_json, "junit": render_junit}
