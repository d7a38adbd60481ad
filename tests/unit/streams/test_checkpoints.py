"""Checkpoint blobs: exact round trips, compact trees, signatures checked before unpickling."""

from __future__ import annotations


import pytest

from streamlearn.models import blobs, learn
from streamlearn.models.blobs import Blobs
from tests.unit.fakes import Counted, trained

KEY = b"secret"


def test_checkpoints_table_refuses_too_large_and_invalid_blobs():
    from streamlearn.streams.checkpoints import Checkpoints, CheckpointTooLarge

    live, _ = trained("hoeffding_tree", 500)
    table, counted = {}, Counted()
    small = Checkpoints(table, Blobs(KEY), max_bytes=100, metrics=counted)
    with pytest.raises(CheckpointTooLarge, match="over the limit of 100"):
        small.write(live)
    assert table == {} and counted.events == [("refused", "too_large")]

    ok = Checkpoints(table, Blobs(KEY), max_bytes=1_000_000, metrics=counted)
    size = ok.write(live)
    assert counted.events[-1] == ("written", size) and ok.restore("m").learned == 500
    assert ok.restore("unknown") is None
    forged = Checkpoints(table, Blobs(b"wrong key"), max_bytes=1_000_000, metrics=counted)
    assert forged.restore("m") is None and counted.events[-1] == ("refused", "invalid")


def test_a_checkpoint_over_the_limit_sheds_its_largest_challenger_clearly_never_the_champion():
    from river import datasets

    from streamlearn.models import SPECS, learn, new_model, set_challengers
    from streamlearn.streams.checkpoints import Checkpoints

    live = new_model("m", SPECS["logreg"])
    set_challengers(live, [SPECS["gaussian_nb"], SPECS["arf"]])
    for x, y in datasets.Phishing():
        learn(live, x, y)
    alone = len(blobs.dump(new_model("m", SPECS["logreg"]), KEY, 0.0))
    limit = len(blobs.dump(live, KEY, 0.0)) - 1          # the forest does not fit, the rest does
    table, counted = {}, Counted()
    size = Checkpoints(table, Blobs(KEY), max_bytes=limit, metrics=counted).write(live)
    assert alone < size <= limit and counted.events == [("refused", "challenger_dropped"), ("written", size)]
    forest = live.challengers["arf"]
    assert forest.model is None and "over the limit" in forest.error and live.challengers["gaussian_nb"].error is None
    restored = Checkpoints(table, Blobs(KEY), max_bytes=limit, metrics=counted).restore("m")
    assert restored.learned == live.learned and restored.challengers["arf"].error == forest.error
    assert restored.challengers["gaussian_nb"].learned == live.learned
    learn(restored, {"a": 1.0}, True)                        # the shed challenger learns no more, the rest do
    assert restored.challengers["arf"].learned == forest.learned


def test_a_kept_model_is_still_valid_only_while_the_table_holds_this_workers_last_checkpoint():
    from streamlearn.streams.checkpoints import Checkpoints

    live, rest = trained("logreg", 50)
    table = {}
    mine, other = (Checkpoints(table, Blobs(KEY), max_bytes=1_000_000, metrics=Counted()) for _ in range(2))
    assert mine.unchanged("m")                      # never checkpointed by anyone
    mine.write(live)
    assert mine.unchanged("m") and not other.unchanged("m")
    learn(live, *rest[0])
    other.write(live)                               # another owner learned and checkpointed it in between
    assert not mine.unchanged("m") and other.unchanged("m")
