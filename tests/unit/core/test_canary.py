"""A canary's decisions, without an app or a broker: which keys a step takes in, and when it widens or goes back."""

from __future__ import annotations

import pytest

from streamlearn.core.canary import Canary, Member, Window, judge, share_of, steps_from

KEYS = [f"k-{i}" for i in range(1000)]
RULES = dict(min_examples=100, z_threshold=3.0, min_discordant=30)


def canary(**kw) -> Canary:
    return Canary(**{"id": "c1", "spec": "tree", "pattern": "k-*", "steps": [0.1, 0.25, 0.5, 1.0], **kw})


def test_steps_start_at_the_share_and_end_at_all_keys():
    assert steps_from(0.1) == [0.1, 0.25, 0.5, 1.0]
    assert steps_from(0.3, [0.1, 0.5, 0.5]) == [0.3, 0.5, 1.0]
    assert steps_from(1.0) == [1.0]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            steps_from(bad)


def test_a_step_takes_in_its_share_of_the_matching_keys_and_keeps_the_earlier_ones():
    c = canary()
    taken: list[set[str]] = []
    for step in range(4):
        c.step = step
        taken.append(set(c.entering(KEYS + ["other-1", "other-2"])))
    assert all(a < b for a, b in zip(taken, taken[1:]))            # each step: the earlier keys and more
    assert taken[-1] == set(KEYS)                                   # 100%: every matching key, no other
    assert all(abs(len(t) / len(KEYS) - s) < 0.05 for t, s in zip(taken, c.steps))   # about its share
    assert share_of("c1", "k-1") == share_of("c1", "k-1") != share_of("c2", "k-1")   # per canary, stable
    c.members["k-1"] = Member(0, 3, "logreg")
    c.skipped["k-2"] = "no_such_challenger"
    assert {"k-1", "k-2"}.isdisjoint(c.entering(KEYS))             # tried once


def promoted(c: Canary, keys: list[str]) -> Canary:
    for k in keys:
        c.members[k] = Member(c.step, 2, "logreg")
    return c


def test_it_waits_for_every_key_then_widens_then_is_done():
    c = promoted(canary(), ["a", "b"])
    wait = judge(c, {"a": Window("tree", 150, 10, 30), "b": Window("tree", 50, 2, 5)}, **RULES)
    assert (wait.action, wait.waiting) == ("wait", ("b",))
    assert judge(c, {"a": Window("tree", 150, 10, 30)}, **RULES).waiting == ("b",)   # no answer: waits
    widen = judge(c, {"a": Window("tree", 150, 10, 30), "b": Window("tree", 120, 12, 10)}, **RULES)
    assert (widen.action, widen.replaced_better, widen.promoted_better) == ("widen", 22, 40)
    c.step = 3
    assert judge(c, {"a": Window("tree", 150, 10, 30), "b": Window("tree", 120, 12, 10)}, **RULES).action == "done"


def test_it_goes_back_when_the_replaced_champions_did_better_pooled_over_its_keys():
    c = promoted(canary(), ["a", "b"])
    # neither key alone is significant (z 2.4 and 2.3); together they are (z 3.3)
    windows = {"a": Window("tree", 60, 20, 8), "b": Window("tree", 60, 15, 5)}
    v = judge(c, windows, **RULES)
    assert v.action == "rollback" and v.z == pytest.approx((35 - 13) / 48 ** 0.5) and "z=3.2" in v.reason
    assert judge(c, {"a": Window("tree", 150, 12, 8), "b": Window("tree", 150, 10, 8)}, **RULES).action == "widen"
    # too few disagreements to say
    assert judge(c, {"a": Window("tree", 60, 9, 0), "b": Window("tree", 60, 9, 0)}, **RULES).action == "wait"


def test_a_key_taken_back_by_other_hands_sends_them_all_back():
    c = promoted(canary(), ["a", "b"])
    v = judge(c, {"a": Window("logreg", 10, 0, 0), "b": Window("tree", 150, 0, 9)}, **RULES)
    assert v.action == "rollback" and "a is no longer tree" in v.reason


def test_a_step_without_keys_passes_and_the_state_survives_json():
    c = canary()
    assert judge(c, {}, **RULES).action == "widen"
    c = promoted(c, ["a"])
    c.skipped["b"] = "no_such_challenger: ..."
    c.record(judge(c, {"a": Window("tree", 100, 1, 9)}, **RULES), at=5.0)
    assert Canary.from_json(c.to_json()) == c


def listing(spec: str, challengers=(), retired=None) -> dict:
    return {"spec": spec, "challengers": [{"spec": c, "retired_version": retired if c == "logreg" else None}
                                          for c in challengers]}


def test_keys_without_the_challenger_or_already_on_the_spec_are_skipped_without_a_command():
    c = canary(steps=[1.0])
    models = {"k-1": listing("logreg", ["tree"]), "k-2": listing("tree", ["logreg"], retired=3),
              "k-3": listing("logreg", []), "other": listing("logreg", ["tree"])}
    assert c.sort_out(models) == ["k-1"]
    assert c.skipped["k-2"].startswith("already_champion") and c.skipped["k-3"].startswith("no_such_challenger")


def test_a_promotion_left_unanswered_is_adopted_once_the_key_shows_the_spec_and_waited_for_until_then():
    c = canary(steps=[1.0])
    c.promoting = ["k-1", "k-2", "k-3"]          # saved before the commands, then the controller stopped
    assert judge(c, {}, **RULES).action == "wait"
    models = {"k-1": listing("tree", ["logreg"], retired=4),     # it ran: the replaced champion retired as v4
              "k-2": listing("logreg", ["tree"])}               # it did not: tried again; k-3's owner is silent
    assert c.sort_out(models) == ["k-2"]
    assert c.members == {"k-1": Member(0, 4, "logreg")} and c.promoting == ["k-3"] and not c.skipped
    assert judge(c, {"k-1": Window("tree", 500, 0, 50)}, **RULES).action == "wait"    # k-3 undecided
    c.promoting = []
    assert judge(c, {"k-1": Window("tree", 500, 0, 50)}, **RULES).action == "done"
