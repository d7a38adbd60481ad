"""Checkpoints: a live model as signed, compressed bytes, and back.

Layout of a checkpoint blob::

    b"SLCK1" | 32-byte HMAC-SHA256 | 4-byte header length | header JSON | zstd(pickle(model)), level 1

The header carries the model key, spec, version, parent version, examples
learned, online metric, the training-topic offset the model covers and the
River version. The HMAC covers everything after it, so a blob is verified
*before* anything in it is unpickled; a blob that fails verification is
refused with :class:`CheckpointError` and never unpickled. Only blobs we
signed ourselves are ever unpickled: nothing from an input topic or HTTP.

Compression: zstd at level 1, through one compressor per thread; blobs
written with zlib (before) still load: the body's first bytes tell the two
apart. River's ``proba.Gaussian`` is pickled with its seed instead of its
``random.Random`` and gets a new generator on load (predictions and learning
do not change: tested). The loader interns the feature names of small
models (under 64 KB of pickle), as orjson does for the codec's. Why each of
these, with the figures: docs/checkpoints.md, "The blob's format".
"""

from __future__ import annotations

import copyreg
import gc
import hashlib
import hmac
import io
import pickle
import random
import struct
import sys
import threading
import zlib

import orjson
import zstandard
from dataclasses import dataclass
from typing import Any, Mapping

import river
from river import proba

from .specs import SPECS, Spec
from .state import Challenger, LiveModel, new_metric

MAGIC = b"SLCK1"
_HLEN = struct.Struct(">I")
_ZSTD = b"\x28\xb5\x2f\xfd"   # a zstd frame's magic number; a zlib stream starts with 0x78
_codecs = threading.local()     # zstd's (de)compressors are not thread-safe


class CheckpointError(ValueError):
    """A checkpoint blob we refuse: bad signature, wrong format, wrong River version."""


@dataclass(frozen=True)
class Header:
    model: str
    spec: str
    version: int
    parent_version: int | None
    learned: int
    offset: int
    metric: float
    created_at: float
    river_version: str
    warm_start: dict[str, Any] | None = None


def _rebuild_gaussian(state: dict[str, Any]) -> proba.Gaussian:
    g = proba.Gaussian.__new__(proba.Gaussian)
    g.__dict__.update(state)
    g._rng = random.Random(state["seed"])
    return g


def _reduce_gaussian(g: proba.Gaussian) -> tuple:
    return _rebuild_gaussian, ({k: v for k, v in g.__dict__.items() if k != "_rng"},)


class _Pickler(pickle.Pickler):
    # a dispatch table, not reducer_override: that is called for every object pickled
    # (a third of a small model's dump), this only for the types in it
    dispatch_table = {**copyreg.dispatch_table, proba.Gaussian: _reduce_gaussian}


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def dump(live: LiveModel, key: bytes, created_at: float) -> bytes:
    """Serialize, compress and sign a live model."""
    header = {
        "model": live.key, "spec": live.spec.name, "version": live.version,
        "parent_version": live.parent_version, "learned": live.learned, "offset": live.offset,
        "metric": live.metric.get(), "created_at": created_at, "river_version": river.__version__,
        "warm_start": live.warm_start,
    }
    hbytes = orjson.dumps(header)
    challengers = {name: (c.model, c.metric, c.learned, c.error, c.retired_version)
                   for name, c in live.challengers.items()}
    body = _HLEN.pack(len(hbytes)) + hbytes + _compress(_dumps((live.model, live.metric, live.recent, challengers, live.label_type)))
    return MAGIC + hmac.new(key, body, hashlib.sha256).digest() + body


def _compress(raw: bytes) -> bytes:
    compressor = getattr(_codecs, "compressor", None)
    if compressor is None:
        compressor = _codecs.compressor = zstandard.ZstdCompressor(level=1)
    return compressor.compress(raw)


def _decompress(packed: bytes) -> bytes:
    if not packed.startswith(_ZSTD):
        return zlib.decompress(packed)   # written before zstd
    decompressor = getattr(_codecs, "decompressor", None)
    if decompressor is None:
        decompressor = _codecs.decompressor = zstandard.ZstdDecompressor()
    return decompressor.decompress(packed)


def identity(blob: bytes) -> bytes:
    """What tells one checkpoint blob from every other: its HMAC (nothing is verified or unpickled)."""
    return blob[len(MAGIC):len(MAGIC) + 32]


def read_header(blob: bytes, key: bytes) -> Header:
    """Verify a blob and return its header (nothing is unpickled)."""
    body = _verified(blob, key)
    (n,) = _HLEN.unpack_from(body)
    return Header(**orjson.loads(body[4:4 + n]))


def load(blob: bytes, key: bytes, specs: Mapping[str, Spec] = SPECS) -> LiveModel:
    """Verify, then restore a live model from a blob (its spec must still be registered in ``specs``)."""
    body = _verified(blob, key)
    (n,) = _HLEN.unpack_from(body)
    header = Header(**orjson.loads(body[4:4 + n]))
    if header.river_version != river.__version__:
        raise CheckpointError(f"checkpoint of {header.model!r} was made with River {header.river_version}, "
                              f"this worker runs {river.__version__}: pickles do not cross River releases")
    raw = _decompress(body[4 + n:])
    model, metric, *rest = _unpickle(raw)
    intern = len(raw) < _INTERN_BELOW
    if intern:
        _intern_keys(model)
    if header.spec not in specs:
        raise CheckpointError(f"checkpoint of {header.model!r} is of spec {header.spec!r}, which is not "
                              f"registered (STREAMLEARN_SPECS)")
    spec = specs[header.spec]
    live = LiveModel(key=header.model, spec=spec, model=model, version=header.version,
                     parent_version=header.parent_version, learned=header.learned,
                     metric=metric if metric is not None else new_metric(spec), offset=header.offset,
                     warm_start=header.warm_start)
    if rest:   # checkpoints before exactly-once against producers have no recent event ids
        live.recent = rest[0]
    for name, (model, metric, learned, error, *retired) in (rest[1] if len(rest) > 1 else {}).items():
        if name in specs:   # a challenger whose spec is gone is dropped (set_challengers adds the rules' own)
            if intern:
                _intern_keys(model)
            live.challengers[name] = Challenger(specs[name], model, metric, learned, error, *retired)
    if len(rest) > 2:   # checkpoints before predictions kept the labels' type have none
        live.label_type = rest[2]
    return live


def _unpickle(raw: bytes) -> Any:
    """pickle.loads with the cyclic garbage collector paused.

    Unpickling a forest allocates some 100,000 objects, which sets off the
    collector's full passes over every object of the process: in a worker
    holding other models, that was most of a restore (an ARF checkpoint of
    155 KB: 1.06 s, against 0.2 s with the collector paused).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return pickle.loads(raw)
    finally:
        if enabled:
            gc.enable()


def _verified(blob: bytes, key: bytes) -> bytes:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 32 + 4:
        raise CheckpointError("not a streamlearn checkpoint")
    mac, body = blob[len(MAGIC):len(MAGIC) + 32], blob[len(MAGIC) + 32:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise CheckpointError("checkpoint signature does not verify (wrong signing key, or tampered with)")
    return body


# see the module's docstring: small models are interned, large ones are not
_INTERN_BELOW = 64 * 1024   # bytes of pickle


def _intern_keys(root: Any) -> None:
    """Intern every string dict key reachable from root, in place.

    Most of a restore's time is this walk (a forest: some 50,000 objects), so
    it tests exact types against a set instead of calling isinstance per value.
    """
    seen: set[int] = set()
    stack = [root]
    atoms, push = _ATOMS, stack.extend
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        kind = type(obj)
        if kind is dict or isinstance(obj, dict):
            if any(type(k) is str for k in obj):
                items = [(sys.intern(k) if type(k) is str else k, v) for k, v in obj.items()]
                dict.clear(obj)              # dict's own methods: Counter.update would count
                dict.update(obj, items)
            push([v for v in obj.values() if type(v) not in atoms])
        elif kind in _SEQUENCES or isinstance(obj, (list, tuple, set, frozenset)):
            push([v for v in obj if type(v) not in atoms])
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.append(obj.__dict__)
        elif hasattr(obj, "__slots__"):
            push([getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s)])


_ATOMS = frozenset({str, bytes, int, float, bool, type(None)})
_SEQUENCES = frozenset({list, tuple, set, frozenset})


class Blobs:
    """The one way a worker's models become blobs and back: under its signing key, with its registered specs.

    ``load`` raises :class:`CheckpointError` for a blob it refuses; what a
    refusal means is the caller's (a checkpoint: start the model fresh; a
    snapshot: the command fails; a template: start empty).
    """

    def __init__(self, key: bytes, specs: Mapping[str, Spec] = SPECS) -> None:
        self.key = key
        self.specs = specs

    def dump(self, live: LiveModel, created_at: float) -> bytes:
        return dump(live, self.key, created_at)

    def load(self, blob: bytes) -> LiveModel:
        return load(blob, self.key, self.specs)

    def header(self, blob: bytes) -> Header:
        return read_header(blob, self.key)

    def offset(self, blob: bytes) -> float:
        """The training offset a blob's model covers (-inf: a blob we refuse).

        Within a key, checkpoints only go forward: a model learns its partition of
        the training topic in order, and a version change (restore, rollback,
        promotion) keeps the offset where the model stopped. So of two checkpoints
        of a key, the one at the higher offset is the later state, whoever wrote
        it last: one written by a worker that lost the partition (cut off, it went
        on learning what it had fetched) is the same model at an earlier offset, or
        the same model further on (learned from the same training messages).
        """
        try:
            return self.header(blob).offset
        except CheckpointError:
            return float("-inf")
