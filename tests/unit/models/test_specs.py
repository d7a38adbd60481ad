"""models/specs.py and models/checks.py: the operator's own specs, and the contract suite every spec passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamlearn import models
from streamlearn.app.settings import Settings, SettingsError
from streamlearn.models import SPECS, blobs, checks, new_model

ROOT = Path(__file__).resolve().parents[3]
USER = "tests.unit.models.user_specs"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_builtin_spec_passes_the_contract_suite(name):
    results = checks.run(SPECS[name], examples=400)
    assert [r for r in results if not r.ok] == []
    names = [r.name for r in results]
    assert any(n.startswith("river: check_pickling") for n in names)           # River's checks ran
    assert names[-3:] == ["checkpoint round trip", "progressive validation equals River's",
                          "checkpoint under 900,000 bytes"]


def test_the_task_comes_from_the_estimator_not_the_name():
    registry = Settings.from_env({"STREAMLEARN_SPECS": f"fraud={USER}:fraud_pipeline, price={USER}:price_tree",
                                  "STREAMLEARN_SPEC_RULES": "fraud-*=fraud,price-*=price"}).registry
    assert registry["fraud"].task == models.CLASSIFICATION and registry["price"].task == models.REGRESSION
    assert registry["fraud"].source == f"{USER}:fraud_pipeline" and "logreg" in registry
    # a checkpoint of a user spec restores with the registry that knows it, and is refused without it
    live = new_model("fraud-1", registry["fraud"])
    for i in range(20):
        models.learn(live, {"a": float(i)}, i % 2 == 0)
    blob = blobs.dump(live, b"k", 0.0)
    assert blobs.load(blob, b"k", registry).spec.name == "fraud"
    with pytest.raises(blobs.CheckpointError, match="not registered"):
        blobs.load(blob, b"k")


@pytest.mark.parametrize("specs,says", [
    (f"bad={USER}:broken", "raised RuntimeError: the model registry is down"),
    (f"bad={USER}:not_a_model", "returned dict, not a River estimator"),
    ("bad=no_such_package.models:factory", "cannot import 'no_such_package.models'"),
    (f"bad={USER}:missing", "has no callable 'missing'"),
    (f"bad={USER}", "is not `package.module:factory`"),
    (f"logreg={USER}:fraud_pipeline", "registered already"),
])
def test_a_spec_that_cannot_be_served_is_refused_at_start_with_one_clear_error(specs, says):
    with pytest.raises(SettingsError, match="STREAMLEARN_SPECS") as refused:
        Settings.from_env({"STREAMLEARN_SPECS": specs})
    assert says in str(refused.value)
    worker = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "worker"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "STREAMLEARN_SPECS": specs,
                                                        "STREAMLEARN_DEV": "true"})
    assert worker.returncode == 2 and says in worker.stderr and "Traceback" not in worker.stderr


def test_specs_check_runs_the_suite_on_a_users_factory():
    run = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "specs", "check", f"{USER}:fraud_pipeline",
                          "--examples", "300"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "spec fraud_pipeline (classification" in run.stdout and "SERVABLE" in run.stdout
    assert "ok   river: check_pickling" in run.stdout and "ok   checkpoint round trip" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "specs", "check", f"{USER}:broken"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "the model registry is down" in bad.stderr
