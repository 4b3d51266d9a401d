"""Monitoring: the alert rules pass promtool (syntax and a rule unit test), and a real
Prometheus scraping the local stack's exporter and a real Dask scheduler sees every
metric the rules and the Grafana dashboard name."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from riverlake import lake
from riverlake.ops.stack import free_port
from riverlake.settings import get_settings
from riverlake.sources.base import Bad, quarantine
from tests.conftest import ROOT
from tests.deploy.conftest import tool

pytestmark = pytest.mark.deploy

MON = ROOT / "deploy" / "kubernetes" / "base" / "monitoring"
METRIC = re.compile(r"\b((?:riverlake|dask)_[a-z_]+)\b")


def rule_groups() -> dict:
    return {"groups": yaml.safe_load((MON / "prometheusrule.yaml").read_text())["spec"]["groups"]}


def dashboard() -> dict:
    return json.loads((MON / "riverlake-dashboard.json").read_text())


def named_metrics() -> set[str]:
    exprs = [r["expr"] for g in rule_groups()["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    return {m for e in exprs for m in METRIC.findall(e)}


def test_promtool_accepts_the_rules_and_the_stale_table_alert_fires(tmp_path):
    promtool = tool("promtool")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    res = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 8 rules found" in res.stdout
    unit = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'riverlake_table_freshness_seconds{table="flights"}',
                 "values": "90000+60x30"},
                {"series": 'riverlake_table_expected_interval_seconds{table="flights"}',
                 "values": "86400x30"},
                {"series": 'riverlake_table_freshness_seconds{table="weather"}',
                 "values": "10x30"},
                {"series": 'riverlake_table_expected_interval_seconds{table="weather"}',
                 "values": "86400x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "RiverlakeTableStale", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "RiverlakeTableStale", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "table": "flights"},
                     "exp_annotations": {
                         "summary": "Table flights is stale",
                         "description": "No commit to flights for 1d 1h 20m 0s."}}]},
            ],
        }],
    }  # fmt: skip
    (tmp_path / "unit.yaml").write_text(yaml.safe_dump(unit))
    res = subprocess.run([promtool, "test", "rules", str(tmp_path / "unit.yaml")],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_dashboard_is_grafana_json_with_prometheus_targets():
    d = dashboard()
    assert d["uid"] == "riverlake-platform" and d["schemaVersion"] >= 36
    assert len(d["panels"]) == 10
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert all(t["expr"] for p in d["panels"] for t in p["targets"])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_prometheus_scrapes_every_metric_the_rules_and_dashboard_name(stack_env, tmp_path):
    from distributed import Client, LocalCluster
    from prefect import flow

    prometheus = tool("prometheus")
    settings = get_settings()
    # Something to report: a table, a quarantined record, a finished flow run.
    lake.write_table("metrics_probe", pd.DataFrame({"x": range(7)}), settings=settings)
    quarantine("probe", [Bad("probe.csv", "unreadable csv file: test", b"\x00")], "b1", settings)

    @flow(name="metrics-probe")
    def probe() -> int:
        return 1

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: str(settings.prefect_api_url)}):
        assert probe() == 1  # a real run on the stack's Prefect server
    with LocalCluster(n_workers=1, processes=False, dashboard_address="127.0.0.1:0") as lc, \
            Client(lc) as client:  # fmt: skip
        client.submit(sum, [1, 2]).result()
        dask = {f"127.0.0.1:{lc.scheduler.http_server.port}"}
        dask |= {f"127.0.0.1:{w['services']['dashboard']}"
                 for w in client.scheduler_info()["workers"].values()}  # fmt: skip
        port = free_port()
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "riverlake", "static_configs": [
                    {"targets": [f"127.0.0.1:{stack_env['RIVERLAKE_METRICS_PORT']}"]}]},
                {"job_name": "dask", "static_configs": [{"targets": sorted(dask)}]},
            ],
        }  # fmt: skip
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            want = named_metrics()
            assert len(want) == 13
            api = f"http://127.0.0.1:{port}/api/v1"
            deadline, seen = time.monotonic() + 90, set()
            while time.monotonic() < deadline:
                try:
                    seen = set(_get(f"{api}/label/__name__/values")["data"])
                except OSError:
                    seen = set()
                if want <= seen:
                    break
                time.sleep(1)
            assert sorted(want - seen) == []
            targets = _get(f"{api}/targets")["data"]["activeTargets"]
            assert {(t["labels"]["job"], t["health"]) for t in targets} == {
                ("riverlake", "up"), ("dask", "up")}  # fmt: skip
            q = _get(f"{api}/query?query=riverlake_table_rows%7Btable%3D%22metrics_probe%22%7D")
            assert [float(r["value"][1]) for r in q["data"]["result"]] == [7.0]
            q = _get(f"{api}/query?query=riverlake_quarantined_rows%7Bsource%3D%22probe%22%7D")
            assert [float(r["value"][1]) for r in q["data"]["result"]] == [1.0]
            q = _get(f"{api}/query?query=max(dask_scheduler_workers)")
            assert [float(r["value"][1]) for r in q["data"]["result"]] == [1.0]
        finally:
            proc.terminate()
            proc.wait(30)


def test_the_metric_names_parsed_are_real():
    assert {"riverlake_table_freshness_seconds", "dask_scheduler_workers",
            "dask_worker_spill_bytes_total"} <= named_metrics()  # fmt: skip
    assert not any(Path(m).suffix for m in named_metrics())
