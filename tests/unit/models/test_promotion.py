"""Promotion of challengers, with River alone: the policy, the version change, and rollback undoing it."""

from __future__ import annotations

import copy
import itertools

import pytest
from river import datasets

from streamlearn.models import SPECS, blobs, learn, new_model, predict, set_challengers
from streamlearn.models.promotion import PromotionPolicy, PromotionSettings, backfill
from streamlearn.models.state import Challenger
from streamlearn.models.versions import REPLACED, ModelVersions, VersionError, VersionSettings
from streamlearn.models.blobs import Blobs

from tests.unit.fakes import DictStore

from .test_versions import KEY


def tree_wins(n: int):
    """A stream where a Hoeffding tree beats logistic regression by far (Agrawal's function 2: thresholds)."""
    return list(itertools.islice(datasets.synth.Agrawal(classification_function=2, seed=42), n))


def champion(*challengers: str, spec: str = "logreg"):
    live = new_model("k", SPECS[spec])
    set_challengers(live, [SPECS[c] for c in challengers])
    return live


def feed(versions: ModelVersions, live, data):
    """As the learn agent does: learn, then the versions' hooks; the live model and the changes, by example."""
    changes = []
    for i, (x, y) in enumerate(data):
        scored = learn(live, x, y)
        new, changed = versions.learned(live, x, y, scored.y_pred, scored.shadow)
        changes += [(i, c) for c in changed]
        live = new or live
    return live, changes


def versions_with(promotion: PromotionSettings | None = PromotionSettings(), gate=None) -> ModelVersions:
    return ModelVersions(DictStore(), Blobs(KEY), VersionSettings(snapshot_every_examples=0, gate=gate,
                                                           promotion=promotion))


# ---- the policy --------------------------------------------------------------

def challengers_of(learned: int) -> dict[str, Challenger]:
    return {"b": Challenger(SPECS["gaussian_nb"], SPECS["gaussian_nb"].build(), learned=learned)}


@pytest.mark.parametrize("learned", [999, 1000])
def test_the_policy_promotes_a_significantly_better_challenger_once_it_learned_enough(learned):
    policy = PromotionPolicy(PromotionSettings(window=100, z_threshold=3.0, min_discordant=30, min_examples=1000),
                             is_classifier=True)
    verdicts = [policy.observe(True, False, {"b": True}, challengers_of(learned)) for _ in range(29)]
    assert verdicts == [None] * 29                     # fewer disagreements than min_discordant
    verdict = policy.observe(True, False, {"b": True}, challengers_of(learned))
    if learned < 1000:
        assert verdict is None
    else:
        assert verdict.spec == "b" and verdict.z == pytest.approx(30 ** 0.5)
        assert "better on 30, worse on 0" in verdict.reason


def test_the_policy_does_not_promote_an_equal_or_worse_challenger():
    policy = PromotionPolicy(PromotionSettings(window=200, min_examples=0), is_classifier=True)
    for i in range(400):   # equal: each better half of the time
        assert policy.observe(True, i % 2 == 0, {"b": i % 2 == 1}, challengers_of(5000)) is None
    for _ in range(400):   # worse
        assert policy.observe(True, True, {"b": False}, challengers_of(5000)) is None
    assert policy.z_of("b") < 0


def test_the_policy_scores_regressors_by_absolute_error_over_a_sliding_window():
    policy = PromotionPolicy(PromotionSettings(window=50, min_discordant=10, min_examples=0), is_classifier=False)
    for _ in range(200):    # the champion was better for long: that slides out of the window
        assert policy.observe(1.0, 1.1, {"b": 1.5}, challengers_of(1)) is None
    verdicts = [policy.observe(1.0, 1.5, {"b": 1.1}, challengers_of(1)) for _ in range(50)]
    assert verdicts[-1] is not None and "mean absolute error 0.100 vs 0.500" in verdicts[-1].reason


# ---- the version change ------------------------------------------------------

def test_promote_snapshots_the_champion_swaps_in_the_challenger_and_rollback_undoes_it():
    data = tree_wins(3000)
    versions, live = versions_with(promotion=None), champion("hoeffding_tree", "gaussian_nb")
    live, _ = feed(versions, live, data[:2000])
    tree, old = copy.deepcopy(live.challengers["hoeffding_tree"]), copy.deepcopy(live)
    new, replaced, changes = versions.promote(live, "hoeffding_tree", by="alice", reason="it wins")

    assert (replaced.kind, replaced.spec, replaced.learned, replaced.version) == (REPLACED, "logreg", 2000, 1)
    assert (new.spec.name, new.version, new.parent_version, new.learned) == ("hoeffding_tree", 2, 1, 2000)
    assert new.metric.get() == tree.metric.get() and new.offset == old.offset and new.recent is live.recent
    assert predict(new, data[0][0]).proba == tree.model.predict_proba_one(data[0][0])  # the challenger's model
    assert set(new.challengers) == {"gaussian_nb", "logreg"}
    retired = new.challengers["logreg"]
    assert (retired.retired_version, retired.learned, retired.metric.get()) == (1, 2000, old.metric.get())
    [change] = changes
    assert (change.action, change.spec, change.from_version, change.to_version, change.by, change.reason) == (
        "promote", "hoeffding_tree", 1, 2, "alice", "it wins")

    new, _ = feed(versions, new, data[2000:])     # all three keep learning every example
    assert new.learned == new.challengers["logreg"].learned == new.challengers["gaussian_nb"].learned == 3000

    back, replaced2, changes = versions.rollback(new, by="bob")
    assert (changes[0].action, changes[0].restored_version, replaced2.spec) == ("rollback", 1, "hoeffding_tree")
    assert back.spec.name == "logreg" and back.learned == 2000    # the snapshot, as it was at the promotion
    assert predict(back, data[0][0]).proba == predict(old, data[0][0]).proba
    assert set(back.challengers) == {"gaussian_nb", "hoeffding_tree"}
    assert back.challengers["hoeffding_tree"].learned == 3000      # the promoted model goes on as a challenger
    assert back.challengers["hoeffding_tree"].retired_version == replaced2.version
    assert back.offset == new.offset and back.recent is new.recent


def test_bad_promotions_are_refused_clearly_and_change_nothing():
    versions, live = versions_with(), champion("gaussian_nb")
    feed(versions, live, tree_wins(10))
    with pytest.raises(VersionError) as no_such:
        versions.promote(live, "hoeffding_tree")
    assert no_such.value.reason == "no_such_challenger" and "challengers: gaussian_nb" in no_such.value.detail
    with pytest.raises(VersionError) as already:
        versions.promote(live, "logreg")
    assert already.value.reason == "already_champion"
    live.challengers["gaussian_nb"].error = "ValueError: broken"
    with pytest.raises(VersionError) as failed:
        versions.promote(live, "gaussian_nb")
    assert failed.value.reason == "challenger_failed" and "broken" in failed.value.detail
    assert versions.index("k").snapshots == [] and live.version == 1 and live.spec.name == "logreg"


def test_a_tree_challenger_is_promoted_automatically_on_a_stream_where_trees_win_and_only_once():
    versions, live = versions_with(), champion("hoeffding_tree")
    live, changes = feed(versions, live, tree_wins(6000))
    [(at, change)] = changes
    assert change.action == "auto_promote" and change.spec == "hoeffding_tree" and change.by == "promotion-policy"
    assert 999 <= at < 3000 and "z=" in change.reason     # not before the tree learned 1,000 examples
    assert live.spec.name == "hoeffding_tree" and live.learned == 6000
    assert live.challengers["logreg"].retired_version == 1            # and logreg does not win its place back


def test_no_automatic_promotion_when_the_challenger_is_not_better_or_the_policy_is_off():
    _, changes = feed(versions_with(), champion("gaussian_nb", spec="logreg"), list(datasets.Phishing()))
    assert [c for _, c in changes if c.action == "auto_promote"] == []   # logreg wins on phishing
    _, changes = feed(versions_with(promotion=None), champion("hoeffding_tree"), tree_wins(4000))
    assert changes == []


def test_without_automatic_promotion_the_windows_are_kept_for_a_canary_and_a_rollback_by_spec_keeps_learning():
    versions, live = versions_with(promotion=None), champion("hoeffding_tree")
    live, _ = feed(versions, live, tree_wins(300))
    live, _, _ = versions.promote(live, "hoeffding_tree", by="canary:c1")
    live, changes = feed(versions, live, tree_wins(500)[300:])
    assert changes == []                                   # nothing promoted back: the policy is off
    window = versions.policy(live).windows(["logreg", "knn"])["logreg"]   # the replaced champion against the tree
    assert window["examples"] == 200 and window["champion_better"] > window["challenger_better"]
    logreg = SPECS["logreg"].build()
    for x, y in tree_wins(500):
        logreg.learn_one(x, y)
    back, _, changes = versions.promote(live, "logreg", by="canary:c1", action="rollback")
    assert (back.spec.name, back.learned, [c.action for c in changes]) == ("logreg", 500, ["rollback"])
    probes = [x for x, _ in tree_wins(520)[500:]]           # it learned every example as a challenger
    assert [back.model.predict_proba_one(x) for x in probes] == [logreg.predict_proba_one(x) for x in probes]


def test_a_retired_champion_stays_a_challenger_through_its_checkpoint_and_the_rules():
    versions, live = versions_with(promotion=None), champion("hoeffding_tree")
    live, _ = feed(versions, live, tree_wins(300))
    new, _, _ = versions.promote(live, "hoeffding_tree")
    restored = blobs.load(blobs.dump(new, KEY, 0.0), KEY)
    assert restored.challengers["logreg"].retired_version == 1
    # the rules name only the tree, now the champion: the retired logreg is kept all the same
    assert set_challengers(restored, [SPECS["hoeffding_tree"]]) == [] and list(restored.challengers) == ["logreg"]


# ---- backfill: a challenger taught its key's history at once -------------------

def test_a_backfilled_tree_equals_river_trained_on_the_history_and_may_be_promoted_on_the_next_example():
    """A logreg champion learned 4,000 examples where trees win; a tree backfilled from them equals River's tree
    trained in process on the same examples in the same order, its metric is progressive, and the promotion
    policy, its window filled from the history's pairs, promotes it at the next example."""
    data = tree_wins(4001)
    versions, live = versions_with(), champion()
    answers = {}
    for i, (x, y) in enumerate(data[:4000]):
        answers[f"e{i}"] = predict(live, x).label          # what the champion answered, then learned
        learn(live, x, y)
    history = [(f"e{i}", x, y) for i, (x, y) in enumerate(data[:4000])]
    tree, pairs = Challenger(SPECS["hoeffding_tree"], SPECS["hoeffding_tree"].build()), []
    backfill(tree, history[:1000], answers, True, pairs)
    backfill(tree, history[1000:], answers, True, pairs)             # in steps, as the worker does
    reference, correct, scored = SPECS["hoeffding_tree"].build(), 0, 0
    for _, x, y in history:
        y_pred = reference.predict_one(x)
        if y_pred is not None:                # no prediction yet: not scored (as the live models are)
            correct, scored = correct + (y_pred == y), scored + 1
        reference.learn_one(x, y)
    assert tree.learned == 4000 and tree.error is None and len(pairs) == 4000
    assert tree.metric.get() == pytest.approx(correct / scored)
    probes = [x for x, _ in data[:50]]
    assert [tree.model.predict_proba_one(x) for x in probes] == [reference.predict_proba_one(x) for x in probes]
    live.challengers["hoeffding_tree"] = tree
    versions.policy(live).seed("hoeffding_tree", pairs)
    x, y = data[4000]
    scored = learn(live, x, y)
    new, [change] = versions.learned(live, x, y, scored.y_pred, scored.shadow)
    assert change.action == "auto_promote" and change.spec == "hoeffding_tree" and new.learned == 4001


def test_backfill_stops_at_an_example_the_challenger_fails_on():
    class Fussy:
        def predict_one(self, x):
            return None

        def learn_one(self, x, y):
            if x["a"] > 1:
                raise ValueError("no")

    c, pairs = Challenger(SPECS["gaussian_nb"], Fussy()), []
    backfill(c, [("e0", {"a": 0}, True), ("e1", {"a": 2}, True), ("e2", {"a": 0}, True)], {"e0": True}, True, pairs)
    assert c.learned == 1 and c.error == "ValueError: no" and pairs == [(1.0, 0.0)]
