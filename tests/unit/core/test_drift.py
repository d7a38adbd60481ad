"""Input drift per key: the features that moved are named once per episode; steady inputs never alert."""

from __future__ import annotations

import random

import pytest
from river.datasets import synth

from streamlearn.core.drift import DriftBook, DriftSettings, FeatureDrift, distance


def stream(n: int, seed: int, shift_at: int | None = None, moves: str = "a"):
    """Two numeric features and a category; from ``shift_at`` on, feature ``moves`` changes distribution."""
    rng = random.Random(seed)
    for i in range(n):
        shifted = shift_at is not None and i >= shift_at
        a = rng.gauss(3.0 if shifted and moves == "a" else 0.0, 1.0)
        c = ("x" if rng.random() < (0.9 if shifted and moves == "c" else 0.5) else "y")
        yield {"a": a, "b": rng.gauss(10.0, 2.0), "c": c, "flag": True}


def episodes(events) -> list[tuple[int, str, list[str]]]:
    watch, seen = FeatureDrift(DriftSettings(window=500, quiet=2000)), []
    for i, x in enumerate(events):
        changed = watch.observe(x)
        if changed is not None:
            seen.append((i, *changed))
    return seen


def test_a_numeric_feature_that_shifts_is_named_once_and_the_episode_ends_when_quiet():
    seen = episodes(stream(8000, seed=1, shift_at=3000))
    assert [(kind, names) for _, kind, names in seen] == [("drift", ["a"]), ("recovered", ["a"])], seen
    assert 3000 <= seen[0][0] < 3200 and seen[1][0] >= seen[0][0] + 2000, seen


def test_a_category_whose_shares_shift_is_named():
    seen = episodes(stream(6000, seed=2, shift_at=3000, moves="c"))
    assert seen and seen[0][1:] == ("drift", ["c"]) and 3000 <= seen[0][0] < 4000, seen


def test_steady_inputs_never_alert():
    assert episodes(stream(10_000, seed=3)) == []


def test_shares_distance():
    assert distance({"x": 0.5, "y": 0.5}, {"x": 0.9, "y": 0.1}) == 0.4
    assert distance({"x": 1.0}, {"y": 1.0}) == 1.0


def test_the_book_keeps_a_watch_per_key_and_forgets_partitions_moved_away():
    book = DriftBook(DriftSettings(window=500, quiet=2000))
    shifted = [book.observe(1, "k", x) for x in stream(4000, seed=1, shift_at=3000)]
    steady = [book.observe(1, "other", x) for x in stream(4000, seed=5)]
    assert [c for c in shifted if c] == [("drift", ["a"])] and not any(steady)
    book.keep_partitions({2})                # partition 1 moved away: its keys start over if they come back
    assert not any(book.observe(1, "k", x) for x in stream(500, seed=6, shift_at=0))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_on_a_river_stream_whose_inputs_change_at_3000_the_drift_is_named_within_200_events(seed):
    """River's RandomRBF with other centroids from event 3,000 on (ConceptDriftStream): the inputs' shift is
    alerted once, naming features that moved; the same stream without the drift point never alerts."""
    def rbf(model: int, sample: int) -> synth.RandomRBF:
        return synth.RandomRBF(seed_model=model, seed_sample=sample, n_features=4, n_centroids=5)

    drifting = synth.ConceptDriftStream(stream=rbf(1, seed), drift_stream=rbf(7, seed + 1), position=3000,
                                        width=50, seed=3)
    for stream, alerted in ((drifting, True), (rbf(1, seed), False)):
        watch, seen = FeatureDrift(DriftSettings()), []
        for i, (x, _) in enumerate(stream.take(6000)):
            changed = watch.observe({f"x{k}": v for k, v in x.items()})
            if changed is not None:
                seen.append((i, *changed))
        if alerted:
            [(at, kind, names), *_] = seen
            assert kind == "drift" and 3000 <= at < 3200 and set(names) <= {"x0", "x1", "x2", "x3"} and names
            assert [k for _, k, _ in seen].count("drift") == 1, seen
        else:
            assert seen == []
