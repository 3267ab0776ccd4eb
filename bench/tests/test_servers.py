"""Candidates' command lines and the CPU arithmetic, without starting a server."""

from pathlib import Path

import pytest

from bench.servers import (
    FASTAPI,
    FASTAPI_AS_SHIPPED,
    PETSAGE,
    PETSAGE_MANAGEMENT,
    PETSAGE_METRICS_OFF,
    cpu_between,
    server_environment,
)


def test_cpu_between_counts_every_process_by_pid() -> None:
    used, changed = cpu_between({1: 1.0, 2: 2.0}, {1: 1.5, 2: 3.0})
    assert used == pytest.approx(1.5)
    assert changed is False


def test_a_replaced_worker_is_reported_and_never_makes_cpu_negative() -> None:
    # Worker 2 (10 s of CPU) died; worker 3 replaced it and used 0.2 s.
    used, changed = cpu_between({1: 1.0, 2: 10.0}, {1: 1.1, 3: 0.2})
    assert used == pytest.approx(0.3)
    assert changed is True


def test_settings_reach_the_shown_command() -> None:
    shown = PETSAGE_METRICS_OFF.shown_command(5, 4)
    assert "PETSAGE_METRICS=false" in shown
    assert shown.endswith("gunicorn -c gunicorn.conf.py wsgi:app")


def test_uvicorn_commands() -> None:
    assert FASTAPI.command(8000, 3)[1:3] == ["-m", "bench.apps.uvicorn_nodelay"]
    assert FASTAPI_AS_SHIPPED.command(8000, 3)[0].endswith("uvicorn")
    assert "--workers 3" in FASTAPI.shown_command(3, 4)


def test_illustrations_run_at_the_lowest_connection_count_only() -> None:
    assert FASTAPI_AS_SHIPPED.connection_counts([16, 64]) == [16]
    assert FASTAPI.connection_counts([16, 64]) == [16, 64]


def test_the_management_candidate_gets_a_management_listener(tmp_path: Path) -> None:
    environment = server_environment(PETSAGE_MANAGEMENT, 8000, 5, 4, tmp_path, 8001)
    assert environment["PETSAGE_MANAGEMENT_BIND"] == "127.0.0.1:8001"
    assert environment["PETSAGE_BIND"] == "127.0.0.1:8000"
    shown = PETSAGE_MANAGEMENT.shown_command(5, 4)
    assert "PETSAGE_MANAGEMENT_BIND=127.0.0.1:" in shown
    assert "PETSAGE_MANAGEMENT_BIND" not in server_environment(
        PETSAGE, 8000, 5, 4, tmp_path
    )
