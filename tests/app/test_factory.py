"""create_app: defaults, then the environment, then explicit overrides."""

import pytest

from petsage import create_app
from petsage.config import ConfigError


def test_app_is_not_in_testing_mode_by_default() -> None:
    assert not create_app().testing


def test_explicit_overrides_apply() -> None:
    assert create_app({"TESTING": True}).testing


def test_environment_overrides_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSAGE_LOG_LEVEL", "warning")
    app = create_app()
    assert app.config["LOG_LEVEL"] == "WARNING"
    assert app.logger.level == 30


def test_explicit_override_beats_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PETSAGE_LOG_LEVEL", "WARNING")
    assert create_app({"LOG_LEVEL": "ERROR"}).config["LOG_LEVEL"] == "ERROR"


def test_bad_setting_stops_the_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSAGE_THREADS", "lots")
    with pytest.raises(ConfigError, match="PETSAGE_THREADS"):
        create_app()


def test_features_are_registered_under_api_v1() -> None:
    rules = {rule.rule: rule.endpoint for rule in create_app().url_map.iter_rules()}
    assert rules["/api/v1/smoke-test"] == "smoke_test.smoke_test"
