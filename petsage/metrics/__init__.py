"""Prometheus metrics: requests, their duration, health, readiness, and the build.

Under gunicorn every worker is a process of its own, so prometheus_client runs in its
multiprocess mode: ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh
directory before anything imports prometheus_client, and a scrape of any worker sums
the files of all of them. Without that variable (tests, ``flask run``) the metrics live
in the process. The files are petsage.metrics.storage's concern: a storage failure
degrades metrics, never a request, and dead workers' files are folded into an archive.
"""

import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from apispec import APISpec
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Forbidden, Unauthorized

from petsage.errors import problem_response
from petsage.health.checks import SEVERITY
from petsage.health.openapi import TAG as HEALTH_TAG
from petsage.health.openapi import TOKEN_REQUIRED, add_path
from petsage.health.refresher import Snapshot
from petsage.health.state import Health
from petsage.methods import other_method_response
from petsage.metrics.log_lines import dropped_log_lines
from petsage.metrics.process import (
    InstanceProcessCollector,
    RuntimeCollector,
    WorkerRestartsCollector,
)
from petsage.metrics.storage import (
    STORAGE,
    DegradedCollector,
    install,
    shared_exposition,
)
from petsage.middleware.access import Access
from petsage.middleware.routes import ROUTE_KEY

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
if MULTIPROCESS:
    install()
# On /metrics from a worker whose metrics storage failed (petsage_metrics_degraded 1).
DEGRADED_HEADER = ("PetSage-Metrics", "degraded")
# Methods outside this set share one label value, so label values stay bounded.
METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """The metrics of one PetSage app, and the recording of them."""

    def __init__(self, version: str, release_id: str) -> None:
        # A registry of its own: several apps in one process (tests) never collide.
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        registry.register(DegradedCollector())
        # What multiprocess mode leaves out, read when scraped: every process of the
        # instance, its master's count of worker exits, and the versions it runs on
        # (petsage.metrics.process).
        self.scrape_time: tuple[Collector, ...] = (
            InstanceProcessCollector(),
            WorkerRestartsCollector(),
            RuntimeCollector(),
        )
        for collector in self.scrape_time:
            registry.register(collector)
        # Made now, so that the worker's scrapes show it from 0 (a counter that
        # appears at its first drop would hide that drop from increase()).
        registry.register(dropped_log_lines())
        self.requests = Counter(
            "petsage_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "petsage_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "petsage_http_requests_in_flight",
            "HTTP requests being answered now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.check_status = Gauge(
            "petsage_health_check_status",
            "Latest status of each health check in the instance's last cycle:"
            " 0 pass, 1 warn, 2 fail.",
            ["check"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.check_duration = Gauge(
            "petsage_health_check_duration_seconds",
            "How long each health check took in the instance's last cycle.",
            ["check"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        Gauge(
            "petsage_build_info",
            "The running build: always 1, labelled with version and releaseId.",
            ["version", "release_id"],
            registry=registry,
            multiprocess_mode="livemax",
        ).labels(version, release_id).set(1)

    def observe_cycle(self, snapshot: Snapshot) -> None:
        """Record a check cycle's results and this worker's availability after it.

        Every worker records the instance's shared snapshot as soon as it has it, so
        the gauges' maximum over live workers is the instance's last cycle (for the
        0.1 s a new cycle takes to reach every worker, the worse of the two), and a
        worker's exit, or the checker's, leaves them in place.
        """
        for name, result in snapshot.results.items():
            self.check_status.labels(name).set(SEVERITY[result.status])
            self.check_duration.labels(name).set(result.duration_ms / 1000)

    def watch_availability(self, health: Health) -> None:
        """Serve ``petsage_ready`` and ``petsage_draining`` as ``health`` answers them
        when scraped (``AvailabilityCollector``)."""
        collector = AvailabilityCollector(health)
        self.scrape_time = (*self.scrape_time, collector)
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format, summed over all workers."""
        if MULTIPROCESS:
            return shared_exposition(
                os.environ["PROMETHEUS_MULTIPROC_DIR"], self.scrape_time
            )
        return generate_latest(self.registry)


class AvailabilityCollector(Collector):
    """``petsage_ready`` and ``petsage_draining``, read when scraped.

    Readiness is the instance's (its shared snapshot and drain marker), and the
    worker that answers a scrape reads it as it would answer ``/readyz`` then. Values
    stored per worker would disagree with the probes: a worker that has just started
    holds its gauge's initial 0 until it records one, and a drain begun by
    ``petsage drain`` reaches stored values only at the next check cycle.
    """

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> Iterable[Metric]:
        """Both gauges, from this moment's readiness and drain marker."""
        ready = GaugeMetricFamily(
            "petsage_ready",
            "1 while the instance answers /readyz with 200 (ready for traffic),"
            " else 0.",
            value=1 if self.health.readiness().status != "fail" else 0,
        )
        draining = GaugeMetricFamily(
            "petsage_draining",
            "1 once draining has begun, else 0.",
            value=1 if self.health.drain.active() else 0,
        )
        return [ready, draining]


class RequestMetrics:
    """WSGI middleware: records every request.

    A labelled child is looked up by its labels (``.labels()``: validation, a lock, a
    dict) each time it is asked for; here each (route, method, status) asks once, and
    the request counter's and duration histogram's children are kept. Route templates,
    methods and statuses are bounded, and so is the cache.
    """

    def __init__(self, app: "WSGIApplication", metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.children: dict[
            tuple[str, str, str], tuple[Callable[[], None], Callable[[float], None]]
        ] = {}
        self.in_flight_inc = metrics.in_flight.inc
        self.in_flight_dec = metrics.in_flight.dec

    def __call__(
        self, environ: "WSGIEnvironment", start_response: "StartResponse"
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        status = "500"

        def recording_start(
            line: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            nonlocal status
            status = line[:3]
            return start_response(line, headers, exc_info)

        self.in_flight_inc()
        try:
            return self.app(environ, recording_start)
        finally:
            self.in_flight_dec()
            method = environ.get("REQUEST_METHOD", "")
            # Normalised before the cache: a client's invented methods add no keys.
            method = method if method in METHODS else "other"
            key = (environ.get(ROUTE_KEY) or UNMATCHED, method, status)
            children = self.children.get(key)
            if children is None:
                children = self.children[key] = self._children(*key)
            count, observe = children
            count()
            observe(time.perf_counter() - started)

    def _children(
        self, route: str, method: str, status: str
    ) -> tuple[Callable[[], None], Callable[[float], None]]:
        """The request counter's and duration histogram's children for these labels."""
        metrics = self.metrics
        return (
            metrics.requests.labels(route, method, status).inc,
            metrics.duration.labels(route, method).observe,
        )


class MetricsEndpoint:
    """WSGI middleware: answers GET /metrics for ``access``, and passes the rest on.

    The management listener always has it; the public port only with
    PETSAGE_PUBLIC_METRICS, so that operational data is not public by default.
    """

    def __init__(
        self, app: "WSGIApplication", metrics: Metrics, health: Health, access: Access
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.health = health
        self.access = access

    def __call__(
        self, environ: "WSGIEnvironment", start_response: "StartResponse"
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == METRICS_PATH:
            environ[ROUTE_KEY] = METRICS_PATH
            return self._scrape(environ, start_response)
        return self.app(environ, start_response)

    def _scrape(
        self, environ: "WSGIEnvironment", start_response: "StartResponse"
    ) -> Iterable[bytes]:
        answer = other_method_response(environ)
        if answer is not None:
            return answer(environ, start_response)
        if self.access.restricted and not self.access.allows(environ):
            error: Any = (
                Unauthorized(
                    www_authenticate=WWWAuthenticate("bearer", {"realm": "petsage"})
                )
                if self.access.has_token
                else Forbidden()
            )
            return problem_response(error)(environ, start_response)
        body = self.metrics.exposition()
        headers = [
            ("Content-Type", CONTENT_TYPE_LATEST),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        if STORAGE.failed:
            headers.append(DEGRADED_HEADER)
        start_response("200 OK", headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def document_metrics(spec: APISpec, token_required: bool, management: bool) -> None:
    """Add GET /metrics to ``spec``, the document of the listener that serves it: the
    management listener's, or the public port's with PETSAGE_PUBLIC_METRICS.

    ``token_required`` when a health token is set.
    """
    text = {"text/plain": {"schema": {"type": "string"}, "example": METRICS_EXAMPLE}}
    if management:
        who = (
            " The management listener (PETSAGE_MANAGEMENT_BIND) always serves it; with"
            " PETSAGE_HEALTH_TOKEN or PETSAGE_TRUSTED_NETWORKS set, only to the token"
            " or to connections from those networks (a forwarded address never"
            " counts): 401 without the token when one is set, else 403."
        )
    else:
        who = (
            " Served on the public port because PETSAGE_PUBLIC_METRICS is true; with"
            " PETSAGE_HEALTH_TOKEN set, only to the token (401 without it). The"
            " management listener (PETSAGE_MANAGEMENT_BIND) serves it too."
        )
    add_path(
        spec,
        METRICS_PATH,
        {
            "tags": [HEALTH_TAG["name"]],
            "operationId": "getMetrics",
            "summary": "Metrics for Prometheus",
            "description": "Requests by route template, method and status; request"
            " durations; requests in flight; each health check's status and"
            " duration; readiness, draining and the build, summed over all"
            " gunicorn workers." + who + " Security: the health token when"
            " PETSAGE_HEALTH_TOKEN is set (this document then says so), none"
            " otherwise.",
            # OpenAPI cannot express trust by address: that stays in the text.
            "security": TOKEN_REQUIRED if token_required else [],
            "responses": {
                "200": {
                    "description": "The Prometheus text format.",
                    "content": text,
                },
                "401": "UNAUTHORIZED",
                # Only the management listener answers it (trusted networks); the
                # public port's document keeps it too, as 1.0.0's had it.
                "403": "FORBIDDEN",
                "default": "DEFAULT_ERROR",
            },
        },
    )


METRICS_EXAMPLE = (
    "# HELP petsage_http_requests_total HTTP requests answered, by route template,"
    " method and status.\n"
    "# TYPE petsage_http_requests_total counter\n"
    'petsage_http_requests_total{method="GET",route="/api/v1/smoke-test",'
    'status="200"} 42.0\n'
)
