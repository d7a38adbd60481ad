"""The files users run: compose stack, CLI entry point, README's settings table."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from streamlearn.app.cli import main, parser
from streamlearn.app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_parses_and_passes_only_real_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "worker-1", "worker-2", "producer"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4")
    known = set(Settings.env_names())
    for name, service in services.items():
        for var in (service.get("environment") or {}):
            if var.startswith("STREAMLEARN_"):
                assert var in known, f"{name} sets unknown setting {var}"
    assert services["worker-1"]["build"] == "." and (ROOT / "Dockerfile").exists()


def test_console_script_and_readme_document_every_setting():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"streamlearn": "streamlearn.app.cli:main"}
    readme = (ROOT / "README.md").read_text()
    for var in Settings.env_names():
        assert f"`{var}`" in readme, f"README does not document {var}"
    assert "scripts/test" in readme and "scripts/demo" in readme


def test_cli_refuses_bad_settings_and_commands(capsys, monkeypatch):
    monkeypatch.setenv("STREAMLEARN_DEFAULT_SPEC", "nope")
    assert main(["settings"]) == 2
    assert "unknown model spec 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(["frobnicate"])


def test_dashboard_and_prometheus_config_use_metrics_the_workers_export():
    import json
    import re

    from streamlearn.app.metrics import Metrics, StateCollector
    from streamlearn.models import get_spec, new_model, set_challengers

    live = new_model("k", get_spec("logreg"))
    set_challengers(live, [get_spec("gaussian_nb")])
    m = Metrics()
    m.registry.register(StateCollector(lambda: [live], lambda: [("t", 0, 1)], 10))
    for reason in ("x",):
        m.deadletter(reason)
    m.error("predict")
    m.consumed("t")
    m.checkpoint_refused("too_large")
    m.snapshot_written("auto", 100, 0.01)
    m.version_changed("auto_rollback")
    m.command_answered("restore", "ok")
    m.agent_crashed("predict")
    exported = set(re.findall(r"^(streamlearn_\w+)", m.exposition().decode(), re.M))
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/streamlearn.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"streamlearn_\w+", target["expr"])}
    assert used and used <= exported, used - exported
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert {t.split(":")[0] for t in targets} <= set(compose)
    assert {"prometheus", "grafana"} <= set(compose)
