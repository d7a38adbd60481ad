"""Checkpoint blobs: exact round trips, compact trees, signatures checked before unpickling."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import pickle
import struct
import sys
import zlib

import pytest
import zstandard
from river.datasets import synth

from streamlearn.models import checkpoint, get_spec, learn, new_model, predict
from streamlearn.models.checkpoint import CheckpointError
from streamlearn.models.checkpoint import Blobs

KEY = b"secret"


def trained(spec: str, n: int):
    data = list(itertools.islice(synth.Agrawal(seed=3), n + 300))
    live = new_model("m", get_spec(spec))
    for x, y in data[:n]:
        learn(live, x, y)
    live.offset = 1234
    return live, data[n:]


@pytest.mark.parametrize("spec", ["logreg", "hoeffding_tree", "hoeffding_adaptive_tree", "arf"])
def test_restored_model_predicts_and_learns_exactly_like_the_live_one(spec):
    live, rest = trained(spec, 1500)
    restored = checkpoint.load(checkpoint.dump(live, KEY, 1.0), KEY)
    assert (restored.key, restored.spec.name, restored.learned, restored.offset) == ("m", spec, 1500, 1234)
    assert restored.metric.get() == live.metric.get()
    for x, y in rest:
        assert predict(restored, x).proba == predict(live, x).proba
        learn(live, x, y)
        learn(restored, x, y)


def test_a_checkpoint_written_with_zlib_before_zstd_still_loads_exactly():
    live, rest = trained("hoeffding_tree", 500)
    blob = checkpoint.dump(live, KEY, 1.0)
    body = blob[len(checkpoint.MAGIC) + 32:]
    (n,) = struct.unpack_from(">I", body)
    assert body[4 + n:].startswith(b"\x28\xb5\x2f\xfd")    # written as a zstd frame now
    old = body[:4 + n] + zlib.compress(zstandard.ZstdDecompressor().decompress(body[4 + n:]), 1)
    restored = checkpoint.load(checkpoint.MAGIC + hmac.new(KEY, old, hashlib.sha256).digest() + old, KEY)
    assert restored.learned == 500
    for x, _ in rest:
        assert predict(restored, x).proba == predict(live, x).proba


def feature_names_held(root) -> list[str]:
    """The string dict keys reachable from root that name one of Agrawal's features."""
    names = set(next(iter(synth.Agrawal(seed=3)))[0])
    seen, stack, out = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            out += [k for k in obj if type(k) is str and k in names]
            stack += obj.values()
        elif isinstance(obj, (list, tuple)):
            stack += obj
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.append(vars(obj))
    return out


def test_a_small_models_feature_names_come_back_interned_a_large_ones_as_unpickled():
    small = feature_names_held(checkpoint.load(checkpoint.dump(trained("logreg", 200)[0], KEY, 1.0), KEY).model)
    assert small and all(name is sys.intern(name) for name in small)
    live, _ = trained("arf", 2000)
    big = feature_names_held(checkpoint.load(checkpoint.dump(live, KEY, 1.0), KEY).model)
    assert big and not any(name is sys.intern(name) for name in big)


def test_trees_are_stored_without_the_gaussians_random_state():
    live, _ = trained("hoeffding_tree", 3000)
    blob = checkpoint.dump(live, KEY, 1.0)
    assert len(blob) * 10 < len(pickle.dumps(live.model))  # plain pickle is >10x larger
    header = checkpoint.read_header(blob, KEY)
    assert header.learned == 3000 and header.spec == "hoeffding_tree"


def test_a_blob_that_fails_verification_is_never_unpickled(monkeypatch):
    live, _ = trained("logreg", 10)
    blob = checkpoint.dump(live, KEY, 1.0)
    unpickled = []
    monkeypatch.setattr(checkpoint.pickle, "loads", lambda *a, **k: unpickled.append(1))
    with pytest.raises(CheckpointError, match="signature"):
        checkpoint.load(blob, b"another key")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CheckpointError, match="signature"):
        checkpoint.load(tampered, KEY)
    with pytest.raises(CheckpointError, match="not a streamlearn checkpoint"):
        checkpoint.load(pickle.dumps(live.model), KEY)
    assert unpickled == []


class Counted:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def checkpoint_written(self, size, seconds):
        self.events.append(("written", size))

    def checkpoint_refused(self, reason):
        self.events.append(("refused", reason))

    def checkpoint_restored(self, seconds):
        assert seconds >= 0
        self.events.append(("restored",))


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
    alone = len(checkpoint.dump(new_model("m", SPECS["logreg"]), KEY, 0.0))
    limit = len(checkpoint.dump(live, KEY, 0.0)) - 1          # the forest does not fit, the rest does
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
