"""Alert episodes: a degradation opens once and ends once, with or without the quality gate."""

from __future__ import annotations

import random

from streamlearn.models import ModelVersions, VersionSettings, get_spec, new_model
from streamlearn.models.blobs import Blobs
from streamlearn.models.watch import DEGRADATION, RECOVERED, Watch
from tests.unit.fakes import DictStore

from .test_versions import KEY, rows, train


def errors(*phases: tuple[int, float], seed: int = 7) -> list[float]:
    """0/1 errors: ``n`` examples at error rate ``p``, phase after phase."""
    rng = random.Random(seed)
    return [1.0 if rng.random() < p else 0.0 for n, p in phases for _ in range(n)]


def watched(stream: list[float]) -> list[tuple[int, str]]:
    live, watch, seen = new_model("k", get_spec("logreg")), Watch(), []
    for i, e in enumerate(stream):
        live.learned = i
        alert = watch.observe(live, e)
        if alert is not None:
            seen.append((i, alert.kind))
    return seen


def test_a_rise_opens_one_episode_and_the_return_ends_it():
    seen = watched(errors((2000, 0.1), (1000, 0.5), (2000, 0.1)))
    assert [kind for _, kind in seen] == [DEGRADATION, RECOVERED], seen
    (opened, _), (ended, _) = seen
    assert 2000 <= opened < 2300 and 3000 <= ended < 3600, seen


def test_a_steady_error_never_alerts_and_a_lasting_rise_alerts_once():
    assert watched(errors((5000, 0.2))) == []
    seen = watched(errors((2000, 0.1), (3000, 0.6)))
    assert [kind for _, kind in seen] == [DEGRADATION], seen


def test_replacing_the_live_model_ends_the_episode():
    live, watch = new_model("k", get_spec("logreg")), Watch()
    for e in errors((2000, 0.1), (400, 0.6)):
        watch.observe(live, e)
    assert watch.episode is not None
    new = new_model("k", get_spec("logreg"))
    new.version = 7
    alert = watch.replaced(new, "auto_rollback")
    assert alert.kind == RECOVERED and alert.figures["of"] == DEGRADATION and "auto_rollback, now v7" in alert.detail
    assert watch.replaced(new, "restore") is None        # nothing open: nothing to say


def test_degradation_is_alerted_with_the_quality_gate_off_and_ends_after_good_labels_return():
    alerts = []
    versions = ModelVersions(DictStore(), Blobs(KEY), VersionSettings(snapshot_every_examples=0, gate=None),
                             on_alert=alerts.append)
    bad, good = new_model("bad", get_spec("logreg")), new_model("good", get_spec("logreg"))
    for (i, x, y, truth), (_, x2, y2, _) in zip(rows(6000, seed=3, flip=range(2000, 3000)), rows(6000, seed=4)):
        bad, _, _ = train(versions, bad, [(i, x, y, truth)])
        good, _, _ = train(versions, good, [(i, x2, y2, y2)])
        for alert in alerts:
            alert.figures.setdefault("at", i)
    assert not [a for a in alerts if a.model == "good"], alerts
    kinds = [(a.kind, a.figures["at"]) for a in alerts if a.model == "bad"]
    assert kinds[0][0] == DEGRADATION and 2000 <= kinds[0][1] < 3000, kinds
    assert kinds[-1][0] == RECOVERED and kinds[-1][1] >= 3000, kinds


def test_on_rivers_sea_stream_a_key_whose_labels_invert_alerts_within_1000_events_the_other_never():
    """Two keys learn River's SEA stream; after 2,000 events one key's labels are inverted."""
    from river.datasets import synth

    from streamlearn.models import learn

    alerts = []
    versions = ModelVersions(DictStore(), Blobs(KEY), VersionSettings(snapshot_every_examples=0, gate=None),
                             on_alert=alerts.append)
    keys = {"inverted": new_model("inverted", get_spec("logreg")), "steady": new_model("steady", get_spec("logreg"))}
    streams = {"inverted": synth.SEA(variant=0, seed=11).take(4000), "steady": synth.SEA(variant=0, seed=12).take(4000)}
    for i in range(4000):
        for key, live in keys.items():
            x, y = next(streams[key])
            if key == "inverted" and i >= 2000:
                y = not y
            scored = learn(live, {f"x{k}": v for k, v in x.items()}, y)
            versions.learned(live, {}, y, scored.y_pred)
            for alert in alerts:
                alert.figures.setdefault("at", i)
    assert not [a for a in alerts if a.model == "steady"], alerts
    first = next(a for a in alerts if a.model == "inverted")
    assert first.kind == DEGRADATION and 2000 <= first.figures["at"] < 3000, first
