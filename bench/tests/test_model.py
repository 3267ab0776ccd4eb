"""Medians, ratios and the targets' verdicts, on made-up measurements."""

from dataclasses import replace

import pytest

from bench.apps import SMOKE_TEST_PATH
from bench.model import (
    BARE_WSGI_MICRO,
    MANAGEMENT_READYZ_LIMIT,
    METRICS_ONLY,
    UNLOGGED_PATH,
    Launch,
    LoadRun,
    Target,
    access_line_us,
    pooled_cpu,
    request_metrics_us,
    summarize,
    summarize_launches,
    targets,
)


def run(candidate: str, path: str, cpu_us: float, round_number: int = 0) -> LoadRun:
    """A wrk run of 1000 requests that cost ``cpu_us`` each."""
    return LoadRun(
        round=round_number,
        candidate=candidate,
        path=path,
        connections=16,
        requests=1000,
        duration_s=1.0,
        requests_per_s=1000.0,
        p50_ms=1.0,
        p99_ms=cpu_us / 100,
        non_2xx=0,
        socket_errors=0,
        cpu_s=cpu_us * 1000 / 1e6,
        workers_replaced=False,
    )


def test_summary_takes_medians_and_keeps_the_spread() -> None:
    runs = [
        run("bare_flask", SMOKE_TEST_PATH, cpu, n) for n, cpu in enumerate([3, 1, 2])
    ]
    summary = summarize(runs)[("bare_flask", SMOKE_TEST_PATH, 16)]
    assert summary.rounds == 3
    assert summary.cpu_us == pytest.approx(2.0)
    assert (summary.cpu_us_min, summary.cpu_us_max) == pytest.approx((1.0, 3.0))


def test_verdicts_give_the_margin() -> None:
    assert Target("g", "w", 0.6, 0.75).verdict == "PASS, 20% under the limit"
    assert Target("g", "w", 0.825, 0.75).verdict == "MISS by 10%"
    assert Target("g", "w", None, 0.75).passed is None


def test_targets_are_ratios_against_the_baselines() -> None:
    runs = [
        run("petsage", "/livez", 150),
        run("petsage", "/readyz", 300),
        run("petsage", SMOKE_TEST_PATH, 330),
        run("bare_flask", SMOKE_TEST_PATH, 300),
        run("bare_wsgi", SMOKE_TEST_PATH, 200),
        run("fastapi", SMOKE_TEST_PATH, 200),
    ]
    launches = summarize_launches(
        [
            Launch(0, "petsage", 0.3, 36.0),
            Launch(0, "bare_flask", 0.2, 30.0),
            Launch(0, "fastapi", 1.0, 40.0),
        ]
    )
    found = {
        f"{t.group}: {t.what}": t
        for t in targets(
            summarize(runs), pooled_cpu(runs), launches, [16], ["/livez", "/readyz"]
        )
    }
    livez = found["CPU per request (16 connections): /livez / bare Flask"]
    assert livez.ratio == pytest.approx(0.5)
    assert livez.passed is True
    readyz = found["CPU per request (16 connections): /readyz / bare WSGI"]
    assert readyz.ratio == pytest.approx(1.5)
    assert readyz.passed is False
    assert found["RSS per worker: PetSage / FastAPI (uvicorn defaults)"].passed is False
    startup = found["Start-up to first 200: PetSage / bare Flask"]
    assert startup.ratio == pytest.approx(1.5)
    assert startup.passed is True
    off = found[
        "CPU per request (16 connections): /api/v1/smoke-test / bare Flask, metrics off"
    ]
    assert off.ratio is None
    assert off.verdict == "n/a (not measured)"


def test_the_management_listeners_readyz_is_held_to_the_bare_wsgi_floor() -> None:
    runs = [
        run("petsage_management", "/readyz", 170),
        run("bare_wsgi_close", "/livez", 200),
        run("bare_wsgi", SMOKE_TEST_PATH, 100),
    ]
    [found] = [
        t
        for t in targets(summarize(runs), pooled_cpu(runs), {}, [16], [])
        if "management" in t.what
    ]
    assert found.what == (
        "/readyz on the management listener / bare WSGI, a connection per request"
    )
    assert found.ratio == pytest.approx(0.85)
    assert (found.limit, found.passed) == (MANAGEMENT_READYZ_LIMIT, True)


def test_a_run_whose_workers_changed_is_left_out() -> None:
    broken = replace(run("bare_flask", SMOKE_TEST_PATH, 9999, 1), workers_replaced=True)
    runs = [run("bare_flask", SMOKE_TEST_PATH, 300), broken]
    summary = summarize(runs)[("bare_flask", SMOKE_TEST_PATH, 16)]
    assert summary.rounds == 1
    assert summary.cpu_us == pytest.approx(300.0)
    assert pooled_cpu(runs)[("bare_flask", SMOKE_TEST_PATH)] == pytest.approx(300.0)


def test_observability_targets_are_figures_and_a_ratio() -> None:
    runs = [
        run("petsage", SMOKE_TEST_PATH, 330),
        run("bare_flask", SMOKE_TEST_PATH, 300),
        run("bare_wsgi", SMOKE_TEST_PATH, 220),
        run("bare_wsgi", UNLOGGED_PATH, 200),
    ]
    micro = [
        {"name": BARE_WSGI_MICRO, "median_us": 0.5},
        {"name": METRICS_ONLY, "median_us": 12.5},
    ]
    found = {
        t.what: t
        for t in targets(summarize(runs), pooled_cpu(runs), {}, [16], [], micro)
        if t.group == "Observability (issue 14)"
    }
    access, metrics, smoke = found.values()
    assert access.ratio == pytest.approx(20.0)
    assert (access.unit, access.passed) == ("us", True)
    assert "minus /livez" in access.what
    assert metrics.ratio == pytest.approx(12.0)
    assert (metrics.unit, metrics.passed) == ("us", False)
    assert metrics.verdict == "MISS by 20%"
    assert smoke.ratio == pytest.approx(1.1)
    assert (smoke.unit, smoke.limit, smoke.passed) == ("", 1.1, True)


def test_observability_figures_are_missing_without_their_measurements() -> None:
    runs = [run("bare_wsgi", SMOKE_TEST_PATH, 220)]
    assert access_line_us(pooled_cpu(runs)) is None
    assert request_metrics_us([{"name": BARE_WSGI_MICRO, "median_us": 0.5}]) is None
    found = targets(summarize(runs), pooled_cpu(runs), {}, [16], [])
    observability = [t for t in found if t.group == "Observability (issue 14)"]
    assert len(observability) == 3
    assert all(t.passed is None for t in observability)
