"""Snapshots, restores, rollbacks and the quality gate, with River alone (no Kafka)."""

from __future__ import annotations

import random

import pytest

from streamlearn.models import get_spec, learn, new_model, predict
from streamlearn.models.versions import (AUTO, MANUAL, REPLACED, ModelVersions, VersionError, VersionSettings)
from streamlearn.models.blobs import Blobs
from tests.unit.fakes import DictStore

KEY = b"test-signing-key"


def rows(n, seed=1, flip=range(0), change_at=None):
    """x, y (as the labels say), truth: a linear concept; labels flipped in ``flip``; a new concept from change_at."""
    rng = random.Random(seed)
    for i in range(n):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)}
        truth = x["a"] + x["b"] > 0
        if change_at is not None and i >= change_at:
            truth = x["a"] - x["b"] > 0
        yield i, x, (not truth) if i in flip else truth, truth


def train(versions, live, data):
    """Progressive validation as the learn agent runs it; returns the live model, correctness per row, changes."""
    correct, changes = [], []
    for i, x, y, truth in data:
        scored = learn(live, x, y)
        correct.append(scored.y_pred == truth)
        new, changed = versions.learned(live, x, y, scored.y_pred)
        changes += [(i, c) for c in changed]
        live = new or live
    return live, correct, changes


def probe(live, n=50):
    return [predict(live, x).proba for _, x, _, _ in rows(n, seed=99)]


def test_snapshot_restore_rollback_and_numbering():
    store = DictStore()
    versions = ModelVersions(store, Blobs(KEY), VersionSettings(snapshot_every_examples=0, gate=None))
    live = new_model("m", get_spec("logreg"))
    live, _, _ = train(versions, live, rows(300))
    at_snapshot = probe(live)
    info, changes = versions.snapshot(live, reason="before the experiment")
    assert (info.version, info.kind, info.learned, live.version, live.parent_version) == (1, MANUAL, 300, 2, 1)
    assert [(c.action, c.from_version, c.to_version) for c in changes] == [("snapshot", 1, 2)]

    live, _, _ = train(versions, live, rows(300, seed=2, flip=range(300)))   # bad labels
    assert probe(live) != at_snapshot
    new, replaced, changes = versions.restore(live, 1, reason="undo the bad labels")
    assert (replaced.version, replaced.kind, replaced.learned) == (2, REPLACED, 600)
    assert (new.version, new.parent_version, new.learned) == (3, 1, 300)
    assert probe(new) == at_snapshot          # identical to the model the snapshot froze
    assert (changes[0].action, changes[0].from_version, changes[0].to_version,
            changes[0].restored_version) == ("restore", 2, 3, 1)

    # rollback: the previous version that differs from the live model: the one the restore replaced
    back, _, changes = versions.rollback(new)
    assert changes[0].restored_version == 2 and back.learned == 600 and back.version == 4
    assert [s.version for s in store.indexes["m"].snapshots] == [1, 2, 3]


def test_bad_commands_change_nothing():
    store = DictStore()
    versions = ModelVersions(store, Blobs(KEY), VersionSettings(snapshot_every_examples=0, gate=None))
    live = new_model("m", get_spec("logreg"))
    with pytest.raises(VersionError) as err:
        versions.rollback(live)
    assert err.value.reason == "no_earlier_version"
    live, _, _ = train(versions, live, rows(50))
    versions.snapshot(live)
    with pytest.raises(VersionError) as err:
        versions.restore(live, 7)
    assert err.value.reason == "unknown_version"
    store.blobs[("m", 1)] = store.blobs[("m", 1)][:-1] + b"x"          # tampered with
    before = store.indexes["m"].to_json(), live.version
    with pytest.raises(VersionError) as err:
        versions.restore(live, 1)
    assert err.value.reason == "bad_snapshot"
    assert (store.indexes["m"].to_json(), live.version) == before


def test_retention_keeps_last_k_automatic_and_every_manual_or_pinned():
    store = DictStore()
    versions = ModelVersions(store, Blobs(KEY), VersionSettings(snapshot_every_examples=10, keep_auto=3, gate=None))
    live = new_model("m", get_spec("logreg"))
    live, _, _ = train(versions, live, rows(25))
    versions.snapshot(live, kind=MANUAL)                 # v3
    versions.pin("m", 1, True)
    live, _, _ = train(versions, live, rows(60, seed=3))
    index = store.indexes["m"]
    kinds = {s.version: (s.kind, s.pinned) for s in index.snapshots}
    assert kinds[1] == (AUTO, True) and kinds[3] == (MANUAL, False)
    autos = [v for v, (k, p) in kinds.items() if k == AUTO and not p]
    assert len(autos) == 3 and autos == sorted(autos)[-3:]
    assert set(store.blobs) == {("m", v) for v in kinds}


def run_gate(data, spec="logreg", gate=True):
    settings = VersionSettings(snapshot_every_examples=250) if gate else VersionSettings(
        snapshot_every_examples=250, gate=None)
    versions = ModelVersions(DictStore(), Blobs(KEY), settings)
    return train(versions, new_model("m", get_spec(spec)), data)


@pytest.mark.parametrize("spec", ["logreg", "hoeffding_adaptive_tree"])
def test_gate_rolls_back_a_burst_of_flipped_labels(spec):
    burst = range(4000, 4800)
    _, correct, changes = run_gate(rows(7000, flip=burst), spec)
    _, unguarded, _ = run_gate(rows(7000, flip=burst), spec, gate=False)
    rollbacks = [(i, c) for i, c in changes if c.action == "auto_rollback"]
    assert len(rollbacks) == 1, rollbacks
    at, change = rollbacks[0]
    assert burst.stop <= at < burst.stop + 300 and change.by == "quality-gate" and "ADWIN" in change.reason
    after = slice(at + 1, at + 201)
    before = slice(burst.start - 200, burst.start)
    # recovers at once: as good as before the burst, and better than without the gate
    assert sum(correct[after]) >= sum(correct[before]) - 10
    assert sum(correct[after]) > sum(unguarded[after]) + 20


@pytest.mark.parametrize("spec", ["logreg", "hoeffding_adaptive_tree", "arf"])
def test_gate_lets_a_lasting_concept_change_be_learned(spec):
    _, correct, changes = run_gate(rows(8000, change_at=4000), spec)
    assert [c for _, c in changes if c.action == "auto_rollback"] == []
    assert sum(correct[-1000:]) / 1000 > 0.9       # the model adapted to the new concept


def test_time_policy_snapshots_only_models_that_learned_since():
    now = [1000.0]
    store = DictStore()
    versions = ModelVersions(store, Blobs(KEY), VersionSettings(snapshot_every_examples=0, snapshot_every_seconds=30,
                                                         gate=None), clock=lambda: now[0])
    live = new_model("m", get_spec("logreg"))
    assert not versions.due_by_time(live)              # learned nothing yet
    live, _, _ = train(versions, live, rows(10))
    now[0] += 29
    assert not versions.due_by_time(live)
    now[0] += 2
    assert versions.due_by_time(live)
    info, _ = versions.snapshot(live, kind=AUTO, by="policy", reason="every 30s")
    assert info.size > 100 and info.created_at == now[0] and info.metric is not None
    now[0] += 60
    assert not versions.due_by_time(live)              # nothing learned since that snapshot


@pytest.mark.parametrize("labels", [(0, 1), (False, True)], ids=["int", "bool"])
def test_predictions_answer_in_the_labels_type_through_a_promotion_a_rollback_and_a_checkpoint(labels):
    """River's logistic regression answers True/False whatever it learned, its trees the classes they saw:
    a consumer gets the labels' own type (and ``proba``'s keys in it) whichever model answers."""
    from streamlearn.models import blobs
    from streamlearn.models.state import set_challengers

    store = DictStore()
    versions = ModelVersions(store, Blobs(KEY), VersionSettings(snapshot_every_examples=0, gate=None))
    live = new_model("m", get_spec("logreg"))
    set_challengers(live, [get_spec("hoeffding_tree")])
    rng = random.Random(1)
    for i in range(300):
        x = {"a": rng.gauss(0, 1)}
        learn(live, x, labels[x["a"] > 0], f"e{i}")
    want = type(labels[0])

    def answers(model) -> None:
        for a in (-2.0, 2.0):
            p = predict(model, {"a": a})
            assert type(p.label) is want and {type(k) for k in p.proba} == {want}, (model.spec.name, p)
        assert predict(model, {"a": 2.0}).label == labels[1]

    answers(live)                                                      # logreg
    tree, _, _ = versions.promote(live, "hoeffding_tree")
    answers(tree)                                                      # the promoted tree
    back, _, _ = versions.rollback(tree)
    answers(back)                                                      # logreg again, from its snapshot
    answers(blobs.load(blobs.dump(tree, KEY, 0.0), KEY))     # a restored checkpoint


def test_the_gate_raises_a_degradation_alert_for_the_key_whose_labels_went_bad_and_none_for_the_other():
    """Two keys learn the same concept; from example 2,000 one key's labels are inverted: a degradation alert
    for it within 1,000 examples (whether or not a rollback follows), none for the other."""
    alerts = []
    versions = ModelVersions(DictStore(), Blobs(KEY), VersionSettings(snapshot_every_examples=250),
                             on_alert=alerts.append)
    bad, good = new_model("bad", get_spec("logreg")), new_model("good", get_spec("logreg"))
    flipped = range(2000, 3000)
    for (i, x, y, truth), (_, x2, y2, _) in zip(rows(3000, seed=3, flip=flipped), rows(3000, seed=4)):
        bad, _, _ = train(versions, bad, [(i, x, y, truth)])
        good, _, _ = train(versions, good, [(i, x2, y2, y2)])
        for alert in alerts:
            alert.figures.setdefault("at", i)
    mine = [a for a in alerts if a.model == "bad"]
    assert mine and all(a.kind in ("degradation", "recovered") and a.spec == "logreg" for a in mine), alerts
    assert mine[0].kind == "degradation"
    first = mine[0]
    assert 2000 <= first.figures["at"] < 3000 and first.figures["after"] > first.figures["before"], first
    assert "rose from" in first.detail and "(ADWIN, after" in first.detail
    assert not [a for a in alerts if a.model == "good"], alerts
