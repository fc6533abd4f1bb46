"""deploy/monitoring: the alert rules pass ``promtool check rules`` and their own unit tests
(``promtool test rules``), and every metric and label the dashboard and the rules name is one
the gateway exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from lmaas.telemetry.metrics import Metrics

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

# A metric name in PromQL (recording rules' names have colons and are left out).
_METRIC = re.compile(r"\b(lmaas_[a-z0-9_]+)\b")
_RECORDED = re.compile(r"\b(lmaas:[a-z0-9_:]+)")
_SELECTOR = re.compile(r"\b(lmaas_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def exported() -> dict[str, set[str]]:
    """Every sample name the gateway's registry exposes, with its label names (each labelled
    metric given one child, so that it shows its samples)."""
    metrics = Metrics()
    for attr in vars(metrics).values():
        if isinstance(attr, MetricWrapperBase) and attr._labelnames:
            attr.labels(*["x"] * len(attr._labelnames))
    names: dict[str, set[str]] = {}
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", ())]
    for var in data["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def check_names(exprs: list[str], recorded: set[str] | None = None) -> None:
    """Every metric an expression names is exported, with the labels it matches or groups
    by; a recording rule it names is one of ``recorded``."""
    names = exported()
    for expr in exprs:
        used = set(_METRIC.findall(expr))
        rules_used = set(_RECORDED.findall(expr))
        assert used or rules_used, expr
        assert rules_used <= (recorded or set()), f"{expr!r}: no rule records {rules_used}"
        unknown = used - names.keys()
        assert not unknown, f"{expr!r} names metrics the gateway does not export: {unknown}"
        for name, matchers in _SELECTOR.findall(expr):
            labels = set(_MATCHER.findall(matchers))
            assert labels <= names[name], f"{expr!r}: {name} has no label {labels - names[name]}"
        available = set().union(*(names[n] for n in used)) | ({"model"} if rules_used else set())
        for group in _GROUPING.findall(expr):
            labels = {x.strip() for x in group.split(",") if x.strip()}
            assert labels <= available, f"{expr!r} groups by unknown labels {labels - available}"


def test_the_alert_rules_pass_promtool() -> None:
    tool = promtool()
    done = subprocess.run(
        [tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_fires_in_its_promtool_unit_test() -> None:
    tool = promtool()
    done = subprocess.run(
        [tool, "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=MONITORING,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "alerts_test.yml").read_text()))
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts == tested
    required = {  # what the issue asks the rules to watch
        "LmaasHighErrorRate",
        "LmaasTimeToFirstTokenP99High",
        "LmaasWorkerRestarting",
        "LmaasQueueSaturated",
    }
    assert required <= alerts


def test_the_rules_name_only_exported_metrics_and_labels() -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    check_names([r["expr"] for r in rules()], recorded)


def test_the_dashboard_names_only_exported_metrics_and_labels() -> None:
    exprs = dashboard_exprs()
    check_names(exprs)
    shown = {name for e in exprs for name in _METRIC.findall(e)}
    for wanted in (
        "lmaas_kv_cache_usage_ratio",
        "lmaas_preemptions_total",
        "lmaas_request_finish_reasons_total",
        "lmaas_request_prompt_tokens_bucket",
        "lmaas_request_generation_tokens_bucket",
        "lmaas_key_requests_total",
        "lmaas_time_to_first_token_seconds_bucket",
    ):
        assert wanted in shown


def test_the_checks_catch_a_misspelt_metric_or_label() -> None:
    with pytest.raises(AssertionError, match="does not export"):
        check_names(["rate(lmaas_request_total[5m])"])
    with pytest.raises(AssertionError, match="has no label"):
        check_names(['lmaas_kv_cache_usage_ratio{replica_id="0"}'])
    with pytest.raises(AssertionError, match="unknown labels"):
        check_names(["sum by (endpoint) (lmaas_kv_cache_usage_ratio)"])
    with pytest.raises(AssertionError, match="no rule records"):
        check_names(["lmaas:error_ratio > 0.1"], {"lmaas:request_error_ratio:rate5m"})


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert data["uid"] and data["title"] and data["schemaVersion"] >= 30
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel.get("targets", ()):
            assert target["datasource"]["uid"] == "${datasource}"
