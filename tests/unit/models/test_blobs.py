"""Checkpoint blobs: exact round trips, compact trees, signatures checked before unpickling."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct
import sys
import zlib

import pytest
import zstandard
from river.datasets import synth

from streamlearn.models import blobs, learn, predict
from streamlearn.models.blobs import CheckpointError

from tests.unit.fakes import trained

KEY = b"secret"


@pytest.mark.parametrize("spec", ["logreg", "hoeffding_tree", "hoeffding_adaptive_tree", "arf"])
def test_restored_model_predicts_and_learns_exactly_like_the_live_one(spec):
    live, rest = trained(spec, 1500)
    restored = blobs.load(blobs.dump(live, KEY, 1.0), KEY)
    assert (restored.key, restored.spec.name, restored.learned, restored.offset) == ("m", spec, 1500, 1234)
    assert restored.metric.get() == live.metric.get()
    for x, y in rest:
        assert predict(restored, x).proba == predict(live, x).proba
        learn(live, x, y)
        learn(restored, x, y)


def test_a_checkpoint_written_with_zlib_before_zstd_still_loads_exactly():
    live, rest = trained("hoeffding_tree", 500)
    blob = blobs.dump(live, KEY, 1.0)
    body = blob[len(blobs.MAGIC) + 32:]
    (n,) = struct.unpack_from(">I", body)
    assert body[4 + n:].startswith(b"\x28\xb5\x2f\xfd")    # written as a zstd frame now
    old = body[:4 + n] + zlib.compress(zstandard.ZstdDecompressor().decompress(body[4 + n:]), 1)
    restored = blobs.load(blobs.MAGIC + hmac.new(KEY, old, hashlib.sha256).digest() + old, KEY)
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
    small = feature_names_held(blobs.load(blobs.dump(trained("logreg", 200)[0], KEY, 1.0), KEY).model)
    assert small and all(name is sys.intern(name) for name in small)
    live, _ = trained("arf", 2000)
    big = feature_names_held(blobs.load(blobs.dump(live, KEY, 1.0), KEY).model)
    assert big and not any(name is sys.intern(name) for name in big)


def test_trees_are_stored_without_the_gaussians_random_state():
    live, _ = trained("hoeffding_tree", 3000)
    blob = blobs.dump(live, KEY, 1.0)
    assert len(blob) * 10 < len(pickle.dumps(live.model))  # plain pickle is >10x larger
    header = blobs.read_header(blob, KEY)
    assert header.learned == 3000 and header.spec == "hoeffding_tree"


def test_a_blob_that_fails_verification_is_never_unpickled(monkeypatch):
    live, _ = trained("logreg", 10)
    blob = blobs.dump(live, KEY, 1.0)
    unpickled = []
    monkeypatch.setattr(blobs.pickle, "loads", lambda *a, **k: unpickled.append(1))
    with pytest.raises(CheckpointError, match="signature"):
        blobs.load(blob, b"another key")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CheckpointError, match="signature"):
        blobs.load(tampered, KEY)
    with pytest.raises(CheckpointError, match="not a streamlearn checkpoint"):
        blobs.load(pickle.dumps(live.model), KEY)
    assert unpickled == []


