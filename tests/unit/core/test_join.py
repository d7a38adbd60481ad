"""The join's decisions, arrival by arrival, without an app or a broker."""

from __future__ import annotations

import random

import pytest

from streamlearn.core.join import FEATURES_AGAIN, LABEL_WAITS, NOT_YET
from streamlearn.core.join import LABELLED as LABELLED_ALREADY
from streamlearn.core.join import (DuplicateLabel, Keep, Learn, Parked, Refuse, Skip, Waiting, Windows, on_features,
                                   on_label, on_parked_evicted, on_wait_over)
from streamlearn.core.messages import EXPIRED_EVENT, LATE_LABEL, UNKNOWN_EVENT, Example, FeatureEvent, Label

W = Windows(features_ttl=100, label_ttl=50)
NOW = 1000.0
X = {"a": 1.0}
SRC, OTHER = ["feedback", 3, 10], ["feedback", 3, 11]
EV = FeatureEvent("e1", "m", X)
LABEL = Label("e1", "m", True, ts=990.0)
LABELLED = Waiting(X, 950.0, SRC, True, 990.0)
RELEASED = Waiting(X, 950.0, SRC, True, 990.0, released=True)
PARKED = Parked("e1", "m", True, 990.0, SRC, b'{"event_id":"e1","label":true}', 980.0)


def example(features=X, origin=SRC) -> Example:
    return Example("e1", "m", features, True, 990.0, origin)


@pytest.mark.parametrize("waiting, parked, outcome", [
    (None, None, Keep(Waiting(X, NOW))),                                           # wait for the label
    (Waiting({"old": 1}, 900.0), None, Keep(Waiting(X, NOW))),                     # features again, no label yet
    (LABELLED, None, Skip(FEATURES_AGAIN)),                                        # joined already
    (RELEASED, PARKED, Learn(example())),                                          # a replay of a release: again
    (None, PARKED, Learn(example(), Waiting(X, NOW, SRC, True, 990.0, released=True), restamp=True)),
    (None, Parked("e1", "m", True, 0.0, SRC, None, NOW - 51), Keep(Waiting(X, NOW))),   # the parked label expired
], ids=["new", "again-unlabelled", "again-labelled", "again-released", "releases-parked", "parked-expired"])
def test_features_arrive(waiting, parked, outcome):
    assert on_features(EV, waiting, parked, W, NOW) == outcome


@pytest.mark.parametrize("label, origin, waiting, parked, outcome", [
    (LABEL, SRC, None, None, Keep(Parked("e1", "m", True, 990.0, SRC, b"v", NOW))),         # too early: park
    (LABEL, SRC, Waiting(X, 950.0), None, Learn(example(), LABELLED)),                       # the join
    (LABEL, SRC, Waiting(X, NOW - 101), None, EXPIRED_EVENT),                                # too late
    (LABEL, SRC, LABELLED, None, Learn(example())),                                          # a replay: again
    (LABEL, OTHER, LABELLED, None, DuplicateLabel()),                                        # a second label
    (LABEL, SRC, None, PARKED, Skip(LABEL_WAITS)),                                           # a replay, parked
    (LABEL, OTHER, None, PARKED, DuplicateLabel()),                                          # a second, parked
    (Label("e1", "m", True, {"b": 2.0}, 990.0), SRC, None, None,                             # brings features
     Learn(example({"b": 2.0}), Waiting({"b": 2.0}, NOW, SRC, True, 990.0), restamp=True)),
    (Label("e1", "m", True, {"b": 2.0}, 990.0), SRC, Waiting(X, 950.0), None,                # ... over waiting ones
     Learn(example({"b": 2.0}), Waiting({"b": 2.0}, 950.0, SRC, True, 990.0))),
], ids=["park", "join", "expired", "replay", "duplicate", "replay-parked", "duplicate-parked", "own-features",
        "own-features-over-waiting"])
def test_a_label_arrives(label, origin, waiting, parked, outcome):
    got = on_label(label, origin, waiting, parked, b"v", W, NOW)
    if outcome == EXPIRED_EVENT:
        assert isinstance(got, Refuse) and got.rejected.reason == EXPIRED_EVENT and got.rejected.event_id == "e1"
    else:
        assert got == outcome


@pytest.mark.parametrize("waiting, refused", [
    (None, True),                                           # its features never came
    (RELEASED, False),                                      # they came and released it
    (Waiting(X, 950.0, OTHER, False, 990.0), True),         # they came and joined another label
])
def test_a_parked_label_leaves(waiting, refused):
    rejected = on_parked_evicted(PARKED, waiting, W)
    assert (rejected is not None) == refused
    if refused:
        assert rejected.reason == UNKNOWN_EVENT and rejected.event_id == "e1"


def run(arrivals: list[tuple], windows: Windows = W) -> tuple[dict, list[Example], int]:
    """Carry out the join's outcomes on plain dicts, as the shell does on its tables."""
    pending: dict[str, Waiting] = {}
    parked: dict[str, Parked] = {}
    learned: list[Example] = []
    duplicates = 0
    for kind, eid, value, origin, now in arrivals:
        if kind == "features":
            outcome = on_features(FeatureEvent(eid, "m", value), pending.get(eid), parked.get(eid), windows, now)
        else:
            outcome = on_label(Label(eid, "m", value), origin, pending.get(eid), parked.get(eid), b"", windows, now)
        if isinstance(outcome, Keep):
            (parked if isinstance(outcome.entry, Parked) else pending)[eid] = outcome.entry
        elif isinstance(outcome, Learn):
            if outcome.entry is not None:
                pending[eid] = outcome.entry
            learned.append(outcome.example)
        elif isinstance(outcome, DuplicateLabel):
            duplicates += 1
    return pending, learned, duplicates


def test_any_order_with_replays_learns_each_event_from_its_first_label():
    """Features and labels in any order, each replayed at random (a crash before its commit), and a second
    label for some events: every event is learned, only ever from the first label that reached the join."""
    for seed in range(300):
        rng = random.Random(seed)
        arrivals, firsts = [], {}
        for i in range(20):
            eid = f"e{i}"
            mine = [("features", eid, {"x": i}, None), ("label", eid, i % 2 == 0, ["feedback", 0, i])]
            if rng.random() < 0.3:
                mine.append(("label", eid, i % 2 != 0, ["feedback", 1, i]))      # a second, different label
            for arrival in list(mine):
                if rng.random() < 0.3:
                    mine.append(arrival)                                        # a replay
            arrivals += mine
        rng.shuffle(arrivals)
        for kind, eid, value, origin in arrivals:
            if kind == "label":
                firsts.setdefault(eid, (value, origin))
        _, learned, duplicates = run([(*a, NOW) for a in arrivals])
        assert {ex.event_id for ex in learned} == set(firsts), seed
        for ex in learned:
            assert (ex.label, ex.origin) == firsts[ex.event_id], seed
            assert ex.features == {"x": int(ex.event_id[1:])}, seed
        # every arrival of a label other than the event's first is a duplicate, its replays too
        assert duplicates == sum(kind == "label" and origin != firsts[eid][1]
                                 for kind, eid, _, origin in arrivals), seed


def test_a_label_after_the_features_window_is_refused_and_a_parked_label_waits_its_own():
    _, learned, _ = run([("features", "e1", X, None, 0.0), ("label", "e1", True, SRC, 101.0),
                         ("label", "e2", True, SRC, 0.0), ("features", "e2", X, None, 49.0),
                         ("label", "e3", True, OTHER, 0.0), ("features", "e3", X, None, 51.0)])
    assert [ex.event_id for ex in learned] == ["e2"]


TICK = ["streamlearn.labels", 3, 77]   # the tick that gives a default label: its place on the labels topic


@pytest.mark.parametrize("waiting, outcome", [
    (Waiting(X, NOW - 30), Learn(Example("e1", "m", X, False, NOW, TICK),
                                 Waiting(X, NOW - 30, TICK, False, NOW, defaulted=True))),   # no label came
    (Waiting(X, NOW - 29), Skip(NOT_YET)),                  # features came again since: it waits on
    (LABELLED, Skip(LABELLED_ALREADY)),                     # the label came in time
    (None, Skip(LABELLED_ALREADY)),                         # evicted
], ids=["default", "not-yet", "labelled", "gone"])
def test_a_wait_is_over(waiting, outcome):
    assert on_wait_over("e1", "m", waiting, False, 30.0, TICK, NOW) == outcome


def test_a_label_after_the_default_is_refused_as_late_and_its_replay_too():
    defaulted = Waiting(X, NOW - 30, TICK, False, NOW, defaulted=True)
    for origin in (SRC, SRC, TICK):
        got = on_label(LABEL, origin, defaulted, None, b"v", W, NOW + 1)
        assert isinstance(got, Refuse) and got.rejected.reason == LATE_LABEL and got.rejected.event_id == "e1"
    assert on_features(EV, defaulted, None, W, NOW + 1) == Skip(FEATURES_AGAIN)   # features again: nothing
