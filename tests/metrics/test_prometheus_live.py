"""The shipped rules in a real Prometheus, scraping two real PetSage instances.

Debian's ``prometheus`` runs on 127.0.0.1 with a storage directory of its own, scrapes
the management listeners of two gunicorn instances every second (one with a health
token, scraped with it) and evaluates ``deploy/prometheus/petsage-rules.yml`` every
second. The rules' ``for:`` durations are minutes, which a test cannot wait out, so
this test loads a copy whose every ``for:`` is 1 s; that those durations hold the
alerts back as intended is what the promtool unit tests show
(tests/metrics/test_prometheus_rules.py).
"""

import json
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support.fault_record import FaultRecorder
from tests.support.gunicorn_process import GunicornFactory
from tests.support.listeners import serving
from tests.support.management import Instance, free_port
from tests.support.monitoring import RULES, get_json, serving_process, tool

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

TOKEN = "prometheus-scrape-token"
ALERT = "PetSageCriticalCheckFailing"
WAIT = 20.0


def rules_for_a_test(directory: Path) -> Path:
    """A copy of the shipped rules, each ``for:`` shortened to 1 s."""
    shipped = RULES.read_text()
    shortened, count = re.subn(r"(?m)^( +for: ).+$", r"\g<1>1s", shipped)
    assert count >= 5, "the rules have lost their for: durations"
    path = directory / "rules.yml"
    path.write_text(shortened)
    return path


def scrape_config(rules: Path, with_token: int, without_token: int) -> dict[str, Any]:
    """Prometheus's config: both management listeners in the job ``petsage``."""
    return {
        "global": {
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "evaluation_interval": "1s",
        },
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "petsage",
                "authorization": {"credentials": TOKEN},
                "static_configs": [{"targets": [f"127.0.0.1:{with_token}"]}],
            },
            {
                # A scrape config per authorization; the rules expect one job name.
                "job_name": "petsage-without-token",
                "static_configs": [{"targets": [f"127.0.0.1:{without_token}"]}],
                "relabel_configs": [{"target_label": "job", "replacement": "petsage"}],
            },
        ],
    }


class PrometheusApi:
    """Prometheus's HTTP API on 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        self.port = port

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector ``expression`` evaluates to now."""
        answer = get_json(
            self.port, "/api/v1/query?" + urlencode({"query": expression})
        )
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def alerts(self, name: str) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts called ``name``."""
        answer = get_json(self.port, "/api/v1/alerts")
        assert answer["status"] == "success", answer
        return [
            alert
            for alert in answer["data"]["alerts"]
            if alert["labels"]["alertname"] == name
        ]


def wait_for(condition: Callable[[], bool], what: str) -> float:
    """Poll ``condition`` every 0.2 s until it holds: the seconds that took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > WAIT:
            raise AssertionError(f"not within {WAIT} s: {what}")
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.fixture
def prometheus_command() -> str:
    """Debian's prometheus; the test is skipped where it is not installed."""
    return tool("prometheus")


def start_prometheus(
    running: ExitStack,
    command: str,
    directory: Path,
    with_token: int,
    without_token: int,
) -> PrometheusApi:
    """Run Prometheus until ``running`` closes, scraping both management listeners."""
    config = directory / "prometheus.yml"
    config.write_text(
        json.dumps(
            scrape_config(rules_for_a_test(directory), with_token, without_token)
        )
    )
    port = free_port()
    running.enter_context(
        serving_process(
            [
                command,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            port,
            "/-/ready",
            directory / "prometheus.log",
        )
    )
    return PrometheusApi(port)


def scraped_jobs(prometheus: PrometheusApi) -> list[tuple[str, str]]:
    """(job, value of up) of every target Prometheus scrapes."""
    return sorted(
        (sample["metric"]["job"], sample["value"][1])
        for sample in prometheus.query("up")
    )


def guarded_and_healthy(
    start_gunicorn: GunicornFactory, database: int
) -> tuple[Instance, Instance]:
    """One instance with a token and a critical ``database``, and one with neither."""
    guarded = Instance(
        start_gunicorn,
        HEALTH_TOKEN=TOKEN,
        CRITICAL_DEPENDENCIES=f"db=tcp://127.0.0.1:{database}",
        CHECK_PERIOD="0.5",
    )
    return guarded, Instance(start_gunicorn)


def both_scraped_and_the_check_passing(prometheus: PrometheusApi) -> bool:
    """Whether both instances are scraped (``up`` 1) and the ``db`` check passes."""
    return (
        scraped_jobs(prometheus) == [("petsage", "1")] * 2
        and prometheus.query('petsage_health_check_status{check="db"} == 0') != []
    )


def firing(prometheus: PrometheusApi) -> bool:
    """Whether an ALERT alert is firing (not only pending)."""
    return any(alert["state"] == "firing" for alert in prometheus.alerts(ALERT))


def record_the_alert(
    fault_record: FaultRecorder, took_to_fire: float, took_to_resolve: float
) -> None:
    """The fault record's row: how soon the alert fired, and resolved."""
    fault_record(
        fault="critical dependency down, seen by Prometheus",
        injected="closed the TCP listener of one instance's critical dependency"
        " (PETSAGE_CHECK_PERIOD=0.5), reopened it on the same port once firing",
        load="none; Prometheus scraping both management listeners every 1 s",
        sent=0,
        failed=0,
        lost=0,
        recovery=f"{took_to_fire:.1f} s to firing (rules' for: 1 s),"
        f" {took_to_resolve:.1f} s from the dependency's return to resolved",
    )


@pytest.mark.fault
def test_a_failing_critical_dependency_fires_its_alert_and_resolves(
    prometheus_command: str,
    start_gunicorn: GunicornFactory,
    tmp_path: Path,
    fault_record: FaultRecorder,
) -> None:
    with ExitStack() as running:
        with serving(b"") as database:
            guarded, healthy = guarded_and_healthy(start_gunicorn, database.port)
            prometheus = start_prometheus(
                running,
                prometheus_command,
                tmp_path,
                guarded.management_port,
                healthy.management_port,
            )
            # Both scraped (the token accepted), the dependency reachable: no alert.
            wait_for(
                partial(both_scraped_and_the_check_passing, prometheus),
                "Prometheus scraping both instances, the check passing",
            )
            assert prometheus.alerts(ALERT) == []
        # The dependency's listener is closed: its port refuses connections.
        took_to_fire = wait_for(partial(firing, prometheus), f"{ALERT} firing")
        (alert,) = prometheus.alerts(ALERT)
        guarded_target = f"127.0.0.1:{guarded.management_port}"
        assert alert["labels"] == {
            "alertname": ALERT,
            "check": "db",
            "instance": guarded_target,
            "job": "petsage",
            "severity": "critical",
        }
        assert alert["annotations"]["runbook"] == (
            "docs/runbook.md#petsagecriticalcheckfailing"
        )
        assert guarded_target in alert["annotations"]["summary"]

        with serving(b"", port=database.port):
            took_to_resolve = wait_for(
                lambda: prometheus.alerts(ALERT) == [], f"{ALERT} resolved"
            )
    record_the_alert(fault_record, took_to_fire, took_to_resolve)
