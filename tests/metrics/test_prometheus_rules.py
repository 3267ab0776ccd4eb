"""The Prometheus rules in deploy/prometheus/: valid, unit-tested, documented.

``promtool check rules`` and ``promtool test rules`` (tests/prometheus/) are
Prometheus's own checks; the rest holds every alert to what an on-call engineer needs:
a summary, a description, a runbook section, and unit tests where it fires and where
it does not.
"""

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.support.gunicorn_process import REPO_ROOT
from tests.support.monitoring import RULE_TESTS, RULES, RUNBOOK, run_tool


def alerting_rules() -> dict[str, dict[str, Any]]:
    """The shipped alerting rules by name."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        rule["alert"]: rule
        for group in groups
        for rule in group["rules"]
        if "alert" in rule
    }


def test_promtool_finds_the_rules_valid() -> None:
    status, output = run_tool("promtool", "check", "rules", str(RULES))
    assert status == 0, output
    assert "SUCCESS" in output


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    status, output = run_tool("promtool", "test", "rules", str(RULE_TESTS))
    assert status == 0, output
    assert "SUCCESS" in output


def test_the_unit_tests_fail_when_an_alert_loses_its_for_duration(
    tmp_path: Path,
) -> None:
    """Without ``for:``, alerts fire at once, and the tests of the quiet cases fail."""
    rules = tmp_path / RULES.relative_to(REPO_ROOT)
    tests = tmp_path / RULE_TESTS.relative_to(REPO_ROOT)
    rules.parent.mkdir(parents=True)
    tests.parent.mkdir(parents=True)
    rules.write_text(re.sub(r"(?m)^ +for: .*\n", "", RULES.read_text()))
    shutil.copyfile(RULE_TESTS, tests)
    status, output = run_tool("promtool", "test", "rules", str(tests))
    assert status != 0
    assert "PetSageTargetDown stays quiet" in output
    assert "PetSageDrainingTooLong stays quiet" in output
    assert "PetSageCriticalCheckFailing fires" not in output


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_does_not() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert set(alerting_rules()) == fires == quiet


def test_every_alert_has_a_summary_a_description_and_a_runbook_section() -> None:
    sections = set(re.findall(r"(?m)^## (\w+)$", RUNBOOK.read_text()))
    for name, rule in alerting_rules().items():
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook"] == f"docs/runbook.md#{name.lower()}"
        assert name in sections, f"docs/runbook.md has no section {name}"
        assert rule["labels"]["severity"] in ("warning", "critical"), name


def test_the_monitoring_page_links_the_rules_and_the_runbook() -> None:
    monitoring = (REPO_ROOT / "docs" / "operators" / "monitoring.md").read_text()
    assert "deploy/prometheus/petsage-rules.yml" in monitoring
    assert "](../runbook.md)" in monitoring
    assert "deploy/prometheus/blackbox.yml" in monitoring
