"""A key's input health on its owner: drift alerts (when asked for) name the features, once per episode."""

from __future__ import annotations

from types import SimpleNamespace

from streamlearn.core.drift import DriftBook, DriftSettings
from streamlearn.core.labels import LabelBook, LabelSettings
from streamlearn.models import get_spec, new_model
from streamlearn.streams.health import InputHealth
from tests.unit.core.test_drift import stream
from tests.unit.fakes import AlertsKept


def test_drift_alerts_name_the_features_and_end_with_recovered_only_when_asked_for():
    live = new_model("k", get_spec("logreg"))
    sink = AlertsKept()
    alerts = sink.kept
    watched = InputHealth(LabelBook(LabelSettings(), lambda: 0.0), SimpleNamespace(), sink,
                          DriftBook(DriftSettings(window=500, quiet=2000)))
    for x in stream(8000, seed=1, shift_at=3000):
        watched.predicted(3, "k", x, lambda key: live)
    assert [(a.kind, a.model, a.spec, a.figures.get("features")) for a in alerts] == [
        ("drift", "k", "logreg", ["a"]), ("recovered", "k", "logreg", ["a"])]
    assert "changed distribution: a" in alerts[0].detail and alerts[1].figures["of"] == "drift"
    assert watched.labels("k").predicted == 8000
    assert [a["kind"] for a in watched.describe("k", 0.0)["alerts"]] == ["drift", "recovered"]

    quiet = AlertsKept()
    off = InputHealth(LabelBook(LabelSettings(), lambda: 0.0), SimpleNamespace(), quiet)   # the default
    for x in stream(8000, seed=1, shift_at=3000):
        off.predicted(3, "k", x, lambda key: live)
    assert quiet.kept == []
