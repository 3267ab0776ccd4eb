"""The application factory: settings, the Api and its blueprints, the layers in
front of Flask, and the management listener's app."""

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import Flask

from petsage import welcome
from petsage.api import DocumentEndpoint, PetSageApi
from petsage.config import check_tokens_differ, load_settings
from petsage.docs import init_docs
from petsage.errors import not_found
from petsage.features import FEATURES
from petsage.health import Health, HealthEndpoints, init_health
from petsage.health.openapi import TAG as HEALTH_TAG
from petsage.health.openapi import document_health
from petsage.json_provider import OrjsonProvider
from petsage.methods import PetSageFlask
from petsage.metrics import (
    Metrics,
    MetricsEndpoint,
    RequestMetrics,
    document_metrics,
)
from petsage.middleware.access import Access, ForwardedFor, PeerOnly
from petsage.middleware.request_ids import RequestIds
from petsage.middleware.routes import RouteNotingRequest
from petsage.middleware.security import SecurityHeaders

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

API_PREFIX = "/api/v1"
# The key under which the app holds the management listener's WSGI app, for the
# gunicorn hooks (``petsage.serving.server``) to serve it.
PROBE_APP = "petsage.probe_app"
# The config prefix of the management listener's Api, its document's name for
# `petsage openapi print --config-prefix MANAGEMENT_LISTENER`.
MANAGEMENT_API = "MANAGEMENT_LISTENER"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Create the PetSage app: defaults, then PETSAGE_* environment, then ``config``."""
    # Named for the package: its logger is "petsage", its root path the package.
    app = PetSageFlask("petsage")
    app.config.from_mapping(load_settings(os.environ))
    app.config.from_mapping(
        API_TITLE="PetSage Backend API",
        API_VERSION="1.0.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        # apispec replaces the tag list it builds from blueprint names with this one.
        API_SPEC_OPTIONS={
            "info": {
                "description": "Intelligent assistance for modern pet care.",
                "contact": {"name": "PetSage Backend developers"},
                # PetSage is not published under an open licence.
                "license": {"name": "Proprietary"},
            },
            # Relative: the API is where the document was fetched from.
            "servers": [{"url": "/", "description": "This PetSage instance"}],
            "tags": [
                welcome.TAG,
                HEALTH_TAG,
                *(feature.TAG for feature in FEATURES),
            ],
        },
    )
    if config is not None:
        app.config.from_mapping(config)
    check_tokens_differ(app.config)

    app.json = OrjsonProvider(app)
    app.logger.setLevel(app.config["LOG_LEVEL"])
    # Notes the matched route template for metrics (petsage.middleware.routes).
    app.request_class = RouteNotingRequest

    health = init_health(app)
    api = PetSageApi(app)
    management_api = init_management_api(app)
    app.wsgi_app = wrap_in_middleware(app, health, management_api)  # type: ignore[method-assign,assignment]
    api.register_blueprint(welcome.bp)
    for feature in FEATURES:
        api.register_blueprint(feature.bp, url_prefix=API_PREFIX)
    # After the features, whose blueprints may have registered checks.
    document_health(api.spec, health)
    document_health(management_api.spec, health)
    if app.config["DOCS"]:
        init_docs(app, openapi_url="/openapi.json")
    if app.config["METRICS"]:
        token_required = bool(app.config["HEALTH_TOKEN"])
        document_metrics(management_api.spec, token_required, management=True)
        if app.config["PUBLIC_METRICS"]:
            document_metrics(api.spec, token_required, management=False)
    return app


def init_management_api(app: Flask) -> PetSageApi:
    """The management listener's Api: its document describes the health endpoints and
    /metrics, all that listener answers; it adds no route to ``app``."""
    config = app.config
    info = config["API_SPEC_OPTIONS"]["info"]
    return PetSageApi(
        app,
        config_prefix=MANAGEMENT_API,
        spec_kwargs={
            "title": f"{config['API_TITLE']}, management listener",
            "version": config["API_VERSION"],
            "openapi_version": config["OPENAPI_VERSION"],
            "info": {
                **info,
                "description": "The health endpoints and metrics of a PetSage"
                " instance on its management listener (PETSAGE_MANAGEMENT_BIND), for"
                " the kubelet and Prometheus. Keep it off the internet.",
            },
            "servers": [
                {
                    "url": "/",
                    "description": "This PetSage instance's management listener",
                }
            ],
            "tags": [HEALTH_TAG],
        },
    )


def wrap_in_middleware(
    app: Flask, health: Health, management_api: PetSageApi
) -> "WSGIApplication":
    """The WSGI layers in front of Flask, outermost first; and the management app.

    The caller's address comes first, so every later layer and gunicorn's access log
    see the same: on the public port, behind a named proxy (PETSAGE_TRUSTED_PROXIES),
    the one it forwarded; on the management listener always the connection's peer,
    with every forwarding header dropped (``PeerOnly``). Then security headers
    and request ids, so every response carries them, errors included; metrics next,
    so every request is counted, probes included; then the health endpoints,
    answered before Flask's request machinery.

    The public port shows details only for the token: its callers may all arrive from
    one proxy's address. The management listener (PETSAGE_MANAGEMENT_BIND), kept off
    the internet and out of every proxy, also trusts a peer address in
    PETSAGE_TRUSTED_NETWORKS, always serves /metrics, and serves a document of its own
    (``management_api``'s).
    """
    config = app.config
    release_id = config["RELEASE_ID"]
    proxies = config["TRUSTED_PROXIES"]
    public_access = Access(config["HEALTH_TOKEN"])
    management_access = Access(config["HEALTH_TOKEN"], config["TRUSTED_NETWORKS"])
    public: WSGIApplication = HealthEndpoints(
        app.wsgi_app, health, release_id, public_access
    )
    management: WSGIApplication = HealthEndpoints(
        DocumentEndpoint(not_found, management_api),
        health,
        release_id,
        management_access,
    )
    if config["METRICS"]:
        metrics = Metrics(version=config["API_VERSION"], release_id=release_id)
        health.listeners.append(metrics.observe_cycle)
        metrics.watch_availability(health)
        management = MetricsEndpoint(management, metrics, health, management_access)
        if config["PUBLIC_METRICS"]:
            public = MetricsEndpoint(public, metrics, health, public_access)
        public = RequestMetrics(public, metrics)
    # No proxy belongs in front of the management listener: a forwarded address there
    # could only be the caller's own claim, to a trusted network.
    limit = config["MAX_BODY_BYTES"]
    management = PeerOnly(SecurityHeaders(RequestIds(management), limit))
    public = SecurityHeaders(RequestIds(public), limit)
    if proxies:
        # Only behind named proxies: every request would pass through it otherwise.
        public = ForwardedFor(public, proxies)
    app.extensions[PROBE_APP] = management
    return public
