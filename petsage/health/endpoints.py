"""The health endpoints, answered in front of Flask: /livez, /readyz and /health.

Probes arrive constantly from every load balancer and kubelet, so they are answered by
this small WSGI layer from in-memory state, before Flask's request machinery runs, and
they keep answering whatever the application's own routes are doing.
"""

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    InternalServerError,
    MethodNotAllowed,
    NotFound,
)

from petsage.errors import problem_response
from petsage.health.checks import Check, Status
from petsage.health.refresher import FAILURE_PERIOD_FACTOR, CheckResult
from petsage.health.state import Health, Item, Verdict
from petsage.methods import ROUTE_METHODS, allow
from petsage.middleware.access import Access
from petsage.middleware.routes import ROUTE_KEY

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

HEALTH_MEDIA_TYPE = "application/health+json"
VERBOSE_MEDIA_TYPE = "text/plain; charset=utf-8"
SERVICE_ID = "petsage-backend"
# The health document's "version" is the API's public major version.
PUBLIC_VERSION = "1"


class HealthEndpoints:
    """WSGI middleware that answers the health endpoints and passes the rest on."""

    def __init__(
        self,
        app: "WSGIApplication",
        health: Health,
        release_id: str,
        access: Access,
    ) -> None:
        self.app = app
        self.health = health
        self.release_id = release_id
        self.access = access
        retry = health.refresher.period * FAILURE_PERIOD_FACTOR
        self._retry_after = str(max(1, math.ceil(retry)))
        self._probes: dict[str, tuple[str, Callable[[], Verdict]]] = {
            "/livez": ("livez", health.liveness),
            "/readyz": ("readyz", health.readiness),
        }

    def __call__(
        self, environ: "WSGIEnvironment", start_response: "StartResponse"
    ) -> Iterable[bytes]:
        if not self.health.started:
            self.health.start()
        path: str = environ.get("PATH_INFO", "")
        if path in self._probes or path == "/health":
            environ[ROUTE_KEY] = path
        elif path.startswith(("/livez/", "/readyz/")):
            environ[ROUTE_KEY] = path[: path.index("/", 1)] + "/<check>"
        else:
            return self.app(environ, start_response)
        try:
            return self._answer(path, environ, start_response)
        except UnknownItems as unknown:
            return problem_response(unknown.error, unknown.members())(
                environ, start_response
            )
        except HTTPException as error:
            return problem_response(error)(environ, start_response)
        except Exception:
            logger.exception("health endpoint %s failed", path)
            return problem_response(InternalServerError())(environ, start_response)

    def _answer(
        self, path: str, environ: "WSGIEnvironment", start_response: "StartResponse"
    ) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ROUTE_METHODS:
            raise MethodNotAllowed(valid_methods=list(ROUTE_METHODS))
        query = environ.get("QUERY_STRING", "")
        authorized = self.access.allows(environ)
        if path == "/health":
            parse_query(query, accepted=())
            status, body = self._health_document(authorized)
            return self._respond(environ, start_response, status, body)
        probe, slash, check_name = path.removeprefix("/").partition("/")
        name, verdict_of = self._probes["/" + probe]
        verdict = verdict_of()
        if slash:
            verdict = Verdict((item_named(verdict, check_name, name),))
        options = parse_query(
            query, accepted=() if slash else verdict.names, probe=name
        )
        if options.excluded:
            verdict = Verdict(
                tuple(i for i in verdict.items if i.name not in options.excluded)
            )
        if options.verbose and authorized:
            text = verbose_text(name, verdict, options.excluded)
            return self._respond(
                environ, start_response, verdict.status, text, VERBOSE_MEDIA_TYPE
            )
        document: dict[str, Any] = {"status": verdict.status}
        if authorized and verdict.status != "pass":
            document["output"] = verdict.output
        return self._respond(environ, start_response, verdict.status, dump(document))

    def _health_document(self, authorized: bool) -> tuple[Status, bytes]:
        health = self.health
        verdict = Verdict(health.liveness().items + health.readiness().items)
        document: dict[str, Any] = {
            "status": verdict.status,
            "version": PUBLIC_VERSION,
            "releaseId": self.release_id,
            "serviceId": SERVICE_ID,
            "description": "PetSage Backend API",
        }
        if authorized:
            if verdict.status != "pass":
                document["output"] = verdict.output
            snapshot = health.snapshot
            results = snapshot.results if snapshot else {}
            document["checks"] = {
                check.key: [check_document(check, results.get(check.name))]
                for check in health.checks
            }
        return verdict.status, dump(document)

    def _respond(
        self,
        environ: "WSGIEnvironment",
        start_response: "StartResponse",
        status: Status,
        body: bytes,
        content_type: str = HEALTH_MEDIA_TYPE,
    ) -> Iterable[bytes]:
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        if status == "fail":
            headers.append(("Retry-After", self._retry_after))
        method = environ.get("REQUEST_METHOD")
        # A probe answers OPTIONS with its verdict, as GET (petsage.methods).
        if method == "OPTIONS":
            headers.append(("Allow", allow(ROUTE_METHODS)))
        start_response(
            "503 Service Unavailable" if status == "fail" else "200 OK", headers
        )
        return [] if method == "HEAD" else [body]


def dump(document: dict[str, Any]) -> bytes:
    """A JSON body."""
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True)
class ProbeOptions:
    """What the query asks of a probe."""

    verbose: bool = False
    excluded: frozenset[str] = frozenset()


NO_OPTIONS = ProbeOptions()


class UnknownItems(Exception):
    """A probe item named that the probe does not have: the 404 of /readyz/<item> or
    the 400 of ?exclude=<item>, a problem that lists the items the probe has.

    kube-apiserver answers an unknown item with a bare 404 and an unknown
    ``exclude`` with its verdict (warning only in ``?verbose``'s text); here both
    are problems that say what exists, so that a typo is fixed from the answer
    alone, and an ``exclude`` that names nothing fails instead of probing something
    else than the caller meant. The members are ``unknown`` and ``known``.
    """

    def __init__(
        self,
        error: HTTPException,
        unknown: "list[str]",
        items: "frozenset[str] | tuple[str, ...]",
    ) -> None:
        super().__init__(error.description)
        self.error = error
        self.unknown = unknown
        self.known = sorted(items)

    def members(self) -> dict[str, list[str]]:
        """The problem's extension members: what was asked for, and what exists."""
        return {"unknown": self.unknown, "known": self.known}


def quoted(names: "Iterable[str]") -> str:
    """Names as a list for a sentence, each in quotes."""
    return ", ".join(f"'{name}'" for name in names)


def parse_query(
    query: str, accepted: "tuple[str, ...] | frozenset[str]", probe: str = ""
) -> ProbeOptions:
    """``?verbose`` and ``?exclude=<item>`` (repeatable); anything else is a 400.

    Strict, so that a typo such as ``?exlude=db`` fails loudly instead of probing
    something other than what the operator meant. ``accepted`` are the items that
    may be excluded (of ``probe``); with none, ``exclude`` is not accepted either. An
    item it does not have is a 400 problem naming it and listing those it has.
    """
    if not query:
        return NO_OPTIONS
    params = parse_qs(query, keep_blank_values=True)
    names = {"verbose", "exclude"} if accepted else {"verbose"}
    if set(params) - names:
        raise BadRequest(f"This endpoint accepts only {' and '.join(sorted(names))}.")
    verbose = params.get("verbose", [])
    if len(verbose) > 1 or (verbose and verbose[0] not in ("", "true")):
        raise BadRequest("verbose takes no value, or true.")
    asked = params.get("exclude", [])
    unknown = [name for name in dict.fromkeys(asked) if name not in accepted]
    if unknown:
        raise UnknownItems(
            BadRequest(
                f"exclude names {'an item' if len(unknown) == 1 else 'items'}"
                f" /{probe} does not have: {quoted(unknown)}; its items are"
                f" {', '.join(sorted(accepted))}."
            ),
            unknown,
            accepted,
        )
    return ProbeOptions(bool(verbose), frozenset(asked))


def item_named(verdict: Verdict, name: str, probe: str) -> Item:
    """The item called ``name``; a 404 problem listing the items when the probe has
    none by that name."""
    for item in verdict.items:
        if item.name == name:
            return item
    raise UnknownItems(
        NotFound(
            f"/{probe} has no item '{name}'; its items are"
            f" {', '.join(sorted(verdict.names))}."
        ),
        [name],
        verdict.names,
    )


# bandit reads a "pass" key as a password; it is a health status.
VERBOSE_WORDS: dict[Status, str] = {"pass": "ok", "warn": "warn", "fail": "failed"}  # nosec
# kube-apiserver has only [+] (healthy) and [-]; a warning marked [+] would read as
# healthy to anyone scanning for [-], so it gets a mark of its own.
VERBOSE_MARKS: dict[Status, str] = {"pass": "+", "warn": "!", "fail": "-"}  # nosec


def verbose_text(probe: str, verdict: Verdict, excluded: frozenset[str]) -> bytes:
    """The kube-apiserver's ``?verbose`` text, with ``[!]`` marking a warning."""
    lines = []
    for item in verdict.items:
        mark = VERBOSE_MARKS[item.status]
        state = VERBOSE_WORDS[item.status]
        lines.append(
            f"[{mark}]{item.name} {state}"
            + (f": {item.output}" if item.status != "pass" else "")
        )
    lines.extend(f"[+]{name} excluded: ok" for name in sorted(excluded))
    lines.append(f"{probe} check {'failed' if verdict.status == 'fail' else 'passed'}")
    return ("\n".join(lines) + "\n").encode()


def check_document(check: Check, result: CheckResult | None) -> dict[str, Any]:
    """One check in the IETF health document's ``checks`` member."""
    document: dict[str, Any] = {
        "componentId": check.name,
        "componentType": check.component_type,
        "critical": check.critical,
    }
    if check.target:
        document["links"] = {"about": check.target}
    if result is None:
        document.update(status="fail" if check.critical else "warn", output="not run")
        return document
    if result.value is not None:
        document["observedValue"] = result.value
    if result.unit is not None:
        document["observedUnit"] = result.unit
    document.update(
        status=result.status,
        time=result.time,
        durationMs=result.duration_ms,
        consecutiveFailures=result.consecutive_failures,
    )
    if result.output:
        document["output"] = result.output
    return document
