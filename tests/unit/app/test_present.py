"""What ``streamlearn models`` prints for people, from the answers the workers really give."""

from __future__ import annotations

import random
from types import SimpleNamespace

from streamlearn.app import present
from streamlearn.models import get_spec, learn, new_model, set_challengers
from streamlearn.models.versions import ModelVersions, VersionSettings
from streamlearn.streams.commands import Commands
from streamlearn.models.blobs import Blobs

from tests.unit.fakes import DictStore
from tests.unit.models.test_versions import KEY


def answer(commands: Commands, live, command: str, **kwargs):
    """What the model's owner answers (``Commands._execute``'s result), and the model live after it."""
    cmd = SimpleNamespace(command=command, model=live.key, by="cli:ana", reason=kwargs.pop("reason", ""), **kwargs)
    result, new, _ = commands._execute(cmd, live)
    return result, new or live


def trained(live, n: int, seed: int = 1):
    rng = random.Random(seed)
    for _ in range(n):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)}
        learn(live, x, x["a"] + x["b"] > 0)
    return live


def test_each_models_action_prints_a_line_or_a_table_for_people():
    versions = ModelVersions(DictStore(), Blobs(KEY),
                             VersionSettings(snapshot_every_examples=0, gate=None, promotion=None))
    commands = Commands(versions, registry=None, restore=None, audit=None, answers=None, inputs=None)
    live = trained(new_model("demo-0", get_spec("logreg")), 40)
    set_challengers(live, [get_spec("gaussian_nb")])
    trained(live, 10, seed=2)

    result, live = answer(commands, live, "snapshot", version=None, spec=None, reason="before the sale")
    assert present.answer("snapshot", "demo-0", result).startswith("demo-0: snapshot v1 (50 learned, Accuracy 0.")
    assert present.answer("snapshot", "demo-0", result).endswith(", now v2")

    trained(live, 20, seed=3)
    result, live = answer(commands, live, "restore", version=1, spec=None)
    assert present.answer("restore", "demo-0", result) == "demo-0: restored v1 (was v2), now v3"
    result, live = answer(commands, live, "rollback", version=None, spec=None)
    assert present.answer("rollback", "demo-0", result) == "demo-0: rolled back to v2 (was v3), now v4"
    result, live = answer(commands, live, "pin", version=1, spec=None)
    assert present.answer("pin", "demo-0", result) == "demo-0: pinned v1 (kept until unpinned)"
    result, live = answer(commands, live, "promote", version=None, spec="gaussian_nb")
    assert present.answer("promote", "demo-0", result) == "demo-0: promoted gaussian_nb (was logreg v4), now v5"

    result, live = answer(commands, live, "status", version=None, spec=None)
    shown = present.answer("status", "demo-0", result).splitlines()
    assert shown[0].startswith(f"demo-0: gaussian_nb v5 (parent v4), {live.learned} learned, Accuracy 0.")
    assert shown[1].startswith("  challengers: logreg (Accuracy 0.")
    assert shown[2] == "  snapshots: 4 (latest v4)"

    result, live = answer(commands, live, "versions", version=None, spec=None)
    table = present.answer("versions", "demo-0", result).splitlines()
    assert table[0].split() == ["VERSION", "SPEC", "KIND", "LEARNED", "METRIC", "TAKEN", "(UTC)", "BY", "REASON"]
    assert [row.split()[:3] for row in table[1:]] == [
        ["v1", "logreg", "manual"], ["v2", "logreg", "replaced"], ["v3", "logreg", "replaced"],
        ["v4", "logreg", "replaced"], ["v5", "gaussian_nb", "live"]]
    assert "before the sale" in table[1] and "pinned" in table[1] and "cli:ana" in table[1]


def test_the_models_list_has_a_row_per_model_with_its_challengers():
    live = trained(new_model("demo-0", get_spec("logreg")), 30)
    set_challengers(live, [get_spec("gaussian_nb")])
    other = new_model("demo-1", get_spec("hoeffding_tree"))
    rows = present.models_table([{**live.describe(), "worker": "http://w0:6066"},
                                 {**other.describe(), "worker": "http://w1:6066"}]).splitlines()
    assert rows[0].split() == ["MODEL", "SPEC", "VERSION", "LEARNED", "METRIC", "CHALLENGERS", "WORKER"]
    assert rows[1].split()[:4] == ["demo-0", "logreg", "v1", "30"] and "gaussian_nb (Accuracy 0.0000)" in rows[1]
    assert rows[1].endswith("http://w0:6066")
    assert rows[2].split()[:4] == ["demo-1", "hoeffding_tree", "v1", "0"] and rows[2].endswith("http://w1:6066")


def test_watch_tells_version_changes_from_the_audit_trail_and_keeps_quiet_on_routine_snapshots():
    from streamlearn.app.watch import narrate
    from streamlearn.models.versions import Change

    said = [narrate(Change(*args, **kw).to_json()) for args, kw in [
        (("snapshot", "demo", 3, 4, "policy", "every 250 examples"), {}),
        (("auto_rollback", "demo", 9, 10, "quality-gate", "z 4.1 over 500 examples"), {"restored_version": 7}),
        (("auto_promote", "demo", 4, 5, "promotion-policy", "did better"), {"spec": "hoeffding_tree"}),
        (("restore", "demo", 5, 6, "cli:ana", "bad deploy"), {"restored_version": 2})]]
    assert said == [None,
                    "demo: the quality gate rolled it back to v7 (v9 -> v10): z 4.1 over 500 examples",
                    "demo: challenger hoeffding_tree promoted by the promotion policy (v4 -> v5): did better",
                    "demo: restored v2 (v5 -> v6), by cli:ana: bad deploy"]


def test_models_show_tells_a_keys_label_health_and_recent_alerts():
    status = {"spec": "logreg", "version": 3, "learned": 120, "metric": {"name": "Accuracy", "value": 0.9},
              "created_at": 0.0, "offset": 7, "challengers": [],
              "labels": {"predicted": 400, "labelled": 120, "coverage": 0.3, "delay_p50_seconds": 2.5,
                         "delay_p99_seconds": 31.0, "expired": 4, "unknown": 1, "since_last_label_seconds": 640.0,
                         "starving": True},
              "alerts": [{"kind": "label_starvation", "detail": "no label for model 'k' in 600s", "at": 60.0}]}
    lines = present.show("k", status).splitlines()
    assert "  labels: 120 of 400 predictions (30%); delay 2.5s p50, 31s p99; 4 expired, 1 unknown; STARVING: none " \
           "lately" in lines
    assert "  alert 1970-01-01 00:01:00 UTC: label_starvation: no label for model 'k' in 600s" in lines
    # with a default-label rule: the events that learned the default, and the labels that came after it
    status["labels"].update(defaulted=30, late=2, starving=False)
    assert "  labels: 120 of 400 predictions (30%); delay 2.5s p50, 31s p99; 4 expired, 1 unknown; 30 defaulted, " \
           "2 late" in present.show("k", status).splitlines()
