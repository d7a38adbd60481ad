"""The files users run: compose stack, CLI entry point, README's settings table."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from streamlearn.app.cli import main, parser
from streamlearn.app.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


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
    m.models_evicted.labels("cap").inc()
    m.changelog_restored.labels("pending").inc()
    m.alerted("degradation")
    m.label_joined(1.0)
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


def test_kafka_clean_removes_the_folders_of_brokers_no_longer_running_and_nothing_else(tmp_path):
    """`scripts/kafka clean` (also run by every start): a dead broker's folder goes, a running one's stays."""
    import os
    import subprocess
    import sys

    def broker_folder(port: int, pid: int, size: int = 0) -> Path:
        folder = tmp_path / f"broker-{port}"
        (folder / "logs").mkdir(parents=True)
        (folder / "kafka.pid").write_text(str(pid))
        (folder / "logs" / "segment").write_bytes(b"x" * size)
        return folder

    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    dead = broker_folder(1, int(dead_pid), size=2_000_000)
    kept = broker_folder(2, int(dead_pid))
    (kept / "kept").touch()                          # KAFKA_KEEP_DATA=1 at its stop: `clean` removes it too
    pretend_broker = subprocess.Popen(["sleep", "60"])   # not a Kafka broker: its folder counts as dead
    reused = broker_folder(3, pretend_broker.pid)
    running_broker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka"])
    running = broker_folder(4, running_broker.pid)
    env = {**os.environ, "KAFKA_HOME_DIR": str(tmp_path), "KAFKA_PORT": "5"}
    try:
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "kafka"), "clean"], env=env,
                             capture_output=True, text=True, check=True).stdout
    finally:
        for proc in (pretend_broker, running_broker):
            proc.kill()
            proc.wait()
    assert "removed 3 folders" in out and "2.0 MB freed" in out, out
    assert not dead.exists() and not kept.exists() and not reused.exists()
    assert running.exists()


def test_version_and_a_reader_gone_away(capsys, monkeypatch):
    """``--version`` names what runs; a closed pipe (``streamlearn settings | head``) ends quietly, exit 0."""
    import streamlearn
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"streamlearn {streamlearn.__version__} (River ")
    assert f'version = "{streamlearn.__version__}"' in (ROOT / "pyproject.toml").read_text()

    class GoneAway:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise ValueError("no file")
    monkeypatch.setenv("STREAMLEARN_DEV", "true")
    monkeypatch.setattr("sys.stdout", GoneAway())
    assert main(["settings"]) == 0
    assert capsys.readouterr().err == ""


def test_prometheus_loads_the_shipped_alert_rules_and_they_fire_as_written():
    """``promtool`` (Prometheus's own checker, installed with it by scripts/setup): the compose stack's
    Prometheus config with its rule file, and the rules' unit tests (tests/unit/prometheus/alerts_test.yml)."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup installs Debian's prometheus package, which has it"
    checked = subprocess.run([promtool, "check", "config", "deploy/prometheus/prometheus.yml"], cwd=ROOT,
                             capture_output=True, text=True)
    assert checked.returncode == 0 and "14 rules found" in checked.stdout + checked.stderr, checked
    tested = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=ROOT / "tests/unit/prometheus",
                            capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["prometheus"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in compose["volumes"]


def test_every_dashboard_query_is_valid_promql_and_follows_the_worker_and_model_filters(tmp_path):
    """Each panel's query parses (promtool checks it as a recording rule) and is scoped by the dashboard's
    worker filter, and the per-model series by its model filter too."""
    import json
    import re
    import shutil
    import subprocess

    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/streamlearn.json").read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["instance", "model"]
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Checkpoints", "Model evictions and recovery"} <= titles
    for expr in exprs:
        for selector in re.findall(r"(streamlearn_\w+)(\{[^}]*\})?", expr):
            assert 'instance=~"$instance"' in selector[1], expr
            if selector[0] in ("streamlearn_model_metric", "streamlearn_model_version", "streamlearn_challenger_metric"):
                assert 'model=~"$model"' in selector[1], expr
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e.replace("$instance", ".*").replace("$model", ".*")}
        for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    checked = subprocess.run([shutil.which("promtool") or "promtool", "check", "rules", str(tmp_path / "queries.yml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
