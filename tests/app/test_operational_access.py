"""Operational data (/metrics, check details, ?verbose) stays off the public port.

Real gunicorn, and the real nginx of deploy/nginx.conf, on loopback. An "outside"
client connects from 127.0.0.2 (still loopback), so that its address differs from the
address nginx forwards from (127.0.0.1) and the access log can tell them apart.
"""

import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from petsage.config import ConfigError, load_settings
from tests.support.gunicorn_process import GunicornFactory, HttpResult
from tests.support.logs import access_records, wait_for_log
from tests.support.management import Instance, free_port, get
from tests.support.processes import free_ports, wait_until
from tests.support.proxies import haproxy, needs_haproxy, needs_nginx, nginx

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OUTSIDE = "127.0.0.2"
SMOKE_TEST = "/api/v1/smoke-test"
# What a caller may send to claim another address than its connection's.
FORWARDED = [
    {"X-Forwarded-For": "10.1.2.3"},
    {"Forwarded": "for=10.1.2.3"},
    {"X-Real-IP": "10.1.2.3"},
    {"X-Forwarded-For": "10.1.2.3", "Forwarded": 'for="10.1.2.3";proto=http'},
]


def metric_names(result: HttpResult) -> set[str]:
    """The metric families of a Prometheus text answer."""
    assert result.status == 200, result.body
    return {
        family.name for family in text_string_to_metric_families(result.body.decode())
    }


def shows_details(result: HttpResult) -> bool:
    """Whether a health answer carries check details (``checks`` or verbose text)."""
    assert result.status in (200, 503), result.body
    if result.headers["Content-Type"].startswith("text/plain"):
        return True
    return b'"checks"' in result.body or b'"output"' in result.body


class TestDefaultStart:
    def test_public_metrics_are_absent(self, start_gunicorn: GunicornFactory) -> None:
        instance = Instance(start_gunicorn)
        refused = instance.public("/metrics")
        assert refused.status == 404
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert b"petsage_" not in refused.body

    def test_the_management_listener_serves_metrics(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        instance = Instance(start_gunicorn)
        assert instance.public(SMOKE_TEST).status == 200
        names = metric_names(instance.management("/metrics"))
        assert {"petsage_http_requests", "petsage_build_info"} <= names

    def test_the_old_name_probe_bind_still_opens_it(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        port = free_port()
        server = start_gunicorn({"PETSAGE_PROBE_BIND": f"127.0.0.1:{port}"})
        assert "petsage_build_info" in metric_names(get(port, "/metrics"))
        assert server.request("GET", "/metrics").status == 404


class TestPublicPort:
    def test_a_trusted_network_sees_no_details_without_the_token(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        instance = Instance(
            start_gunicorn, TRUSTED_NETWORKS="127.0.0.0/8", HEALTH_TOKEN=TOKEN
        )
        for path in ("/readyz?verbose", "/livez?verbose", "/health"):
            assert not shows_details(instance.public(path)), path
        assert instance.public("/metrics").status == 404

    def test_the_token_shows_details(self, start_gunicorn: GunicornFactory) -> None:
        instance = Instance(
            start_gunicorn, TRUSTED_NETWORKS="127.0.0.0/8", HEALTH_TOKEN=TOKEN
        )
        verbose = instance.public("/livez?verbose", headers=AUTH)
        assert verbose.headers["Content-Type"].startswith("text/plain")
        assert b"livez check passed" in verbose.body
        assert b'"checks"' in instance.public("/health", headers=AUTH).body

    def test_opting_in_serves_public_metrics_to_the_token_only(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        instance = Instance(
            start_gunicorn,
            PUBLIC_METRICS="true",
            TRUSTED_NETWORKS="127.0.0.0/8",
            HEALTH_TOKEN=TOKEN,
        )
        assert instance.public("/metrics").status == 401
        assert "petsage_build_info" in metric_names(
            instance.public("/metrics", headers=AUTH)
        )

    def test_opting_in_without_a_token_serves_everybody(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        instance = Instance(start_gunicorn, PUBLIC_METRICS="true")
        assert "petsage_build_info" in metric_names(instance.public("/metrics"))


class TestManagementListener:
    def test_a_trusted_network_needs_no_token(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        instance = Instance(
            start_gunicorn, TRUSTED_NETWORKS="127.0.0.0/8", HEALTH_TOKEN=TOKEN
        )
        assert "petsage_build_info" in metric_names(instance.management("/metrics"))
        assert shows_details(instance.management("/readyz?verbose"))
        assert shows_details(instance.management("/health"))

    def test_other_callers_need_the_token(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        instance = Instance(
            start_gunicorn, TRUSTED_NETWORKS="10.0.0.0/8", HEALTH_TOKEN=TOKEN
        )
        refused = instance.management("/metrics")
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert not shows_details(instance.management("/health"))
        metric_names(instance.management("/metrics", headers=AUTH))
        assert shows_details(instance.management("/health", headers=AUTH))

    @pytest.mark.parametrize("forwarded", FORWARDED, ids=lambda h: ",".join(h))
    def test_a_forwarded_address_is_never_trusted(
        self, start_gunicorn: GunicornFactory, forwarded: dict[str, str]
    ) -> None:
        # The case: the caller connects from the address named a proxy and
        # claims one in the trusted network. No proxy belongs in front of this
        # listener, so the claim can only be the caller's own.
        instance = Instance(
            start_gunicorn,
            TRUSTED_PROXIES="127.0.0.1",
            TRUSTED_NETWORKS="10.0.0.0/8",
            HEALTH_TOKEN=TOKEN,
        )
        refused = instance.management("/metrics", headers=forwarded)
        assert refused.status == 401, refused.body
        for path in ("/readyz?verbose", "/livez?verbose", "/health"):
            assert not shows_details(instance.management(path, headers=forwarded))
        # The token still opens it, header or not.
        with_token = {**forwarded, **AUTH}
        metric_names(instance.management("/metrics", headers=with_token))
        assert shows_details(instance.management("/readyz?verbose", headers=with_token))
        # The public port gives nothing more for the header either.
        assert not shows_details(instance.public("/readyz?verbose", headers=forwarded))
        assert instance.public("/metrics", headers=forwarded).status == 404

    def test_a_proxy_protocol_header_is_never_trusted(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        # gunicorn's PROXY protocol is an operator's choice for the public port (behind
        # HAProxy's send-proxy, from --proxy-allow-from); the management listener must
        # not let a caller from there claim a trusted address with it either.
        instance = Instance(
            start_gunicorn,
            args=["--proxy-protocol", "auto", "--proxy-allow-from", "127.0.0.1"],
            TRUSTED_NETWORKS="10.0.0.0/8",
            HEALTH_TOKEN=TOKEN,
        )
        port = instance.management_port
        claim = f"PROXY TCP4 10.1.2.3 127.0.0.1 40000 {port}\r\n".encode()
        request = b"GET /metrics HTTP/1.1\r\nHost: petsage\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(claim + request)
            status_line = connection.makefile("rb").readline()
        assert status_line.split()[1] in (b"400", b"401"), status_line

    def test_trust_comes_from_the_peer_address(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        instance = Instance(
            start_gunicorn, TRUSTED_NETWORKS="127.0.0.2", TRUSTED_PROXIES="127.0.0.1"
        )
        outside = {"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7"}
        # A caller in the trusted network stays trusted whatever it claims...
        for headers in ({}, outside):
            assert (
                instance.management("/metrics", headers, source=OUTSIDE).status == 200
            )
        # ...and one outside it (here, the named proxy's address) stays outside.
        for headers in (
            {},
            {"X-Forwarded-For": OUTSIDE},
            {"Forwarded": "for=127.0.0.2"},
        ):
            assert instance.management("/metrics", headers).status == 403, headers


@needs_nginx
class TestBehindNginx:
    def test_an_outside_client_gets_neither_metrics_nor_details(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        # The case: the trusted network holds nginx's own address. PetSage
        # even opts in to public metrics here, so that nginx's own rule is what holds.
        instance = Instance(
            start_gunicorn, TRUSTED_NETWORKS="127.0.0.0/8", PUBLIC_METRICS="true"
        )
        with nginx(instance.port) as port:
            for path in ("/metrics", "/%6detrics", "//metrics"):
                assert get(port, path, source=OUTSIDE).status == 404, path
            refused = get(port, "/readyz?verbose", source=OUTSIDE)
            assert refused.status == 401
            assert refused.headers["WWW-Authenticate"] == 'Bearer realm="petsage"'
            # Past nginx's own rules, PetSage still shows only the status.
            for path in ("/health", "/readyz?%76erbose", "/livez/process?%76erbose"):
                assert not shows_details(get(port, path, source=OUTSIDE)), path

    def test_the_access_log_names_the_client_behind_a_named_proxy(
        self, start_gunicorn: GunicornFactory
    ) -> None:
        instance = Instance(start_gunicorn, TRUSTED_PROXIES="127.0.0.1")
        with nginx(instance.port) as port:
            # A client's own X-Forwarded-For is kept before the entry nginx appends,
            # which is the only one PetSage reads.
            spoofed = {"X-Forwarded-For": "198.51.100.1", "X-Request-ID": "via-nginx"}
            assert get(port, SMOKE_TEST, headers=spoofed, source=OUTSIDE).status == 200
        wait_for_log(instance.server, "via-nginx")
        [record] = access_records(instance.server, SMOKE_TEST)
        assert record["remote_addr"] == OUTSIDE


@needs_haproxy
def test_haproxy_refuses_operational_data_and_forwards_the_client(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    instance = Instance(
        start_gunicorn,
        TRUSTED_NETWORKS="127.0.0.0/8",
        TRUSTED_PROXIES="127.0.0.1",
        PUBLIC_METRICS="true",
    )
    [port] = free_ports(1)
    with haproxy(tmp_path, port, [instance.port, instance.port]) as proxy:
        wait_until(lambda: proxy.in_rotation("petsage1"), 10, "petsage1 UP")
        for path in ("/metrics", "/%6detrics", "/metrics?x=1"):
            assert get(port, path, source=OUTSIDE).status == 404, path
        refused = get(port, "/livez/process?verbose", source=OUTSIDE)
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="petsage"'
        assert not shows_details(get(port, "/health", source=OUTSIDE))
        logged = {"X-Request-ID": "via-haproxy", "X-Forwarded-For": "198.51.100.1"}
        assert get(port, SMOKE_TEST, headers=logged, source=OUTSIDE).status == 200
    wait_for_log(instance.server, "via-haproxy")
    [record] = access_records(instance.server, SMOKE_TEST)
    assert record["remote_addr"] == OUTSIDE


def test_both_names_of_the_management_bind_must_agree() -> None:
    same = {
        "PETSAGE_MANAGEMENT_BIND": "0.0.0.0:8001",
        "PETSAGE_PROBE_BIND": "0.0.0.0:8001",
    }
    assert load_settings(same)["MANAGEMENT_BIND"] == "0.0.0.0:8001"
    assert load_settings({"PETSAGE_PROBE_BIND": "0.0.0.0:8001"})["MANAGEMENT_BIND"] == (
        "0.0.0.0:8001"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings({**same, "PETSAGE_PROBE_BIND": "0.0.0.0:8002"})
    assert "\n" not in str(caught.value)
    assert "PETSAGE_MANAGEMENT_BIND" in str(caught.value)
