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
