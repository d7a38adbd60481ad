"""The one codec: bytes in, validated messages out, and back to bytes (commands: ``commands.py``).

Every message that enters streamlearn is decoded here from raw bytes, so
anything malformed becomes a :class:`Rejected` with a reason (a short,
stable word used as a metric label) and a human-readable detail. Nothing in
this module unpickles; model state never travels through these messages.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from streamlearn.core.messages import (
    BAD_FIELD, BAD_KEY, BAD_LABEL, EXPIRED_COMMAND, EXPIRED_EVENT, INTERNAL_ERROR, LATE_LABEL, MISSING_FIELD,
    MODEL_ERROR, NON_FINITE, NOT_JSON, NOT_OBJECT, OVERSIZED, SPEC_MISMATCH, UNAUTHENTICATED, UNKNOWN_COMMAND, UNKNOWN_EVENT,
    UNKNOWN_MODEL, UNKNOWN_SPEC, Example, FeatureEvent, Label, Rejected)
from streamlearn.core.join import Parked, Waiting
from streamlearn.models.specs import UnknownSpec

from .commands import (COMMANDS, SIGNATURE_HEADER, Command, decode_command, encode_command, encode_result,
                       request_id_of, sign, signature_of)
from .wire import DUMPS_OPTIONS, load_object, b64, dumps, dumps_kept, key_text, loads, unb64

__all__ = [
    # what comes in, decoded and validated
    "FeatureEvent", "Label", "Example", "Command", "Inputs", "decode_event", "decode_label", "decode_examples",
    "decode_command", "request_id_of", "signature_of", "sign", "COMMANDS", "SIGNATURE_HEADER",
    # why it is refused
    "Rejected", "BAD_FIELD", "BAD_KEY", "BAD_LABEL", "EXPIRED_COMMAND", "EXPIRED_EVENT", "INTERNAL_ERROR",
    "LATE_LABEL", "MISSING_FIELD", "MODEL_ERROR", "NON_FINITE", "NOT_JSON", "NOT_OBJECT", "OVERSIZED", "SPEC_MISMATCH",
    "UNAUTHENTICATED", "UNKNOWN_COMMAND", "UNKNOWN_EVENT", "UNKNOWN_MODEL", "UNKNOWN_SPEC",
    # what goes out
    "encode_prediction", "encode_waiting", "decode_waiting", "waiting_written", "examples_of", "encode_parked", "decode_parked", "encode_example",
    "pack", "encode_deadletter", "encode_command", "encode_result", "DEADLETTER_VALUE_MAX",
    "dumps", "dumps_kept", "loads", "b64", "unb64", "key_text",
]




# ---- decoding -------------------------------------------------------------

def _event_id(obj: dict[str, Any]) -> str:
    eid = obj.get("event_id")
    if eid is None:
        raise Rejected(MISSING_FIELD, "event_id is required")
    if isinstance(eid, bool) or not isinstance(eid, (str, int)) or eid == "":
        raise Rejected(BAD_FIELD, "event_id must be a non-empty string")
    return str(eid)


def _model_key(obj: dict[str, Any], key: bytes | None, default: str, eid: str) -> str:
    model = obj.get("model")
    if model is not None:
        if not isinstance(model, str) or not model:
            raise Rejected(BAD_FIELD, "model must be a non-empty string", eid)
        return model
    if key:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected(BAD_KEY, "the Kafka key is not UTF-8 and no model field is given", eid) from None
    return default


def _features(value: Any, eid: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Rejected(BAD_FIELD, "features must be an object of name to number, string or boolean", eid)
    for name, v in value.items():
        if isinstance(v, float):
            if not math.isfinite(v):
                raise Rejected(NON_FINITE, f"feature {name!r} is not finite", eid)
        elif not isinstance(v, (int, str)):  # bool is an int
            raise Rejected(BAD_FIELD, f"feature {name!r} must be a number, string or boolean, "
                                      f"not {type(v).__name__}", eid)
    return value


def _ts(obj: dict[str, Any], eid: str) -> float | None:
    ts = obj.get("ts")
    if ts is None:
        return None
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise Rejected(BAD_FIELD, "ts must be a number of epoch seconds", eid)
    return float(ts)


def decode_event(raw: bytes | None, key: bytes | None, *, default_model: str, max_bytes: int) -> FeatureEvent:
    """A feature event from the features topic (or its routed copy)."""
    obj = load_object(raw, max_bytes)
    eid = _event_id(obj)
    if "features" not in obj:
        raise Rejected(MISSING_FIELD, "features is required", eid)
    spec = obj.get("spec")
    if spec is not None and not isinstance(spec, str):
        raise Rejected(BAD_FIELD, "spec must be a string", eid)
    return FeatureEvent(
        event_id=eid,
        model=_model_key(obj, key, default_model, eid),
        features=_features(obj["features"], eid),
        ts=_ts(obj, eid),
        spec=spec,
    )


def decode_label(raw: bytes | None, key: bytes | None, *, default_model: str, max_bytes: int) -> Label:
    """A label from the feedback topic (or its routed copy)."""
    obj = load_object(raw, max_bytes)
    eid = _event_id(obj)
    if "label" not in obj:
        raise Rejected(MISSING_FIELD, "label is required", eid)
    label = obj["label"]
    if isinstance(label, float) and not math.isfinite(label):
        raise Rejected(NON_FINITE, "label is not finite", eid)
    if not isinstance(label, (bool, int, float, str)):
        raise Rejected(BAD_LABEL, f"label must be a boolean, number or string, not {type(label).__name__}", eid)
    features = obj.get("features")
    return Label(
        event_id=eid,
        model=_model_key(obj, key, default_model, eid),
        label=label,
        features=None if features is None else _features(features, eid),
        ts=_ts(obj, eid),
    )


def decode_examples(raw: bytes) -> list[Example]:
    """The training examples of one message of our own training topic: a pack (see ``pack``), or one."""
    return examples_of(orjson.loads(raw))


def examples_of(obj: Any) -> list[Example]:
    """``decode_examples`` of a training message already parsed from its JSON."""
    return [Example(o["event_id"], o["model"], o["features"], o["label"], o.get("ts"), o.get("origin"))
            for o in (obj if isinstance(obj, list) else [obj])]


@dataclass(frozen=True)
class Inputs:
    """A worker's decoders of its input topics, with its settings bound: the default model key, the size
    limit, the command secret (None: commands are not checked), and the specs an event may ask for."""

    default_model: str
    max_bytes: int
    secret: bytes | None
    specs: Mapping[str, Any]

    def event(self, raw: bytes | None, key: bytes | None) -> FeatureEvent:
        return decode_event(raw, key, default_model=self.default_model, max_bytes=self.max_bytes)

    def unknown_spec(self, ev: FeatureEvent) -> Rejected | None:
        """Why an event cannot be answered as it asks (None: it can): it asks for a spec nobody registered."""
        if ev.spec is not None and ev.spec not in self.specs:
            return Rejected(UNKNOWN_SPEC, str(UnknownSpec(ev.spec, self.specs)), ev.event_id)
        return None

    def label(self, raw: bytes | None, key: bytes | None) -> Label:
        return decode_label(raw, key, default_model=self.default_model, max_bytes=self.max_bytes)

    def command(self, raw: bytes | None, key: bytes | None, signature: bytes | None) -> "Command":
        return decode_command(raw, key, max_bytes=self.max_bytes, secret=self.secret, signature=signature)


# ---- encoding -------------------------------------------------------------

def encode_prediction(event: FeatureEvent, label: Any, proba: dict[Any, float] | None,
                      version: int, learned: int, predicted_at: float) -> bytes:
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "model": event.model,
        "prediction": label,
        "proba": proba,
        "model_version": version,
        "learned": learned,
        "ts": event.ts,
        "predicted_at": predicted_at,
    }
    return orjson.dumps(out, option=DUMPS_OPTIONS)


# ---- the join state (changelog-backed tables): short keys, as their changelogs have always held them ----

# The join state, kept by the million: short keys, the same in both entries. f: features, t: when written,
# o: the label's origin, y: the label, lt: the label's ts, early: a parked label released by these features,
# dflt: the label is a rule's default (o: the tick that gave it);
# a parked label: id, m (model), v (the producer's message, base64). Entries written before 2026-12-07 had
# "l" for the origin, and parked labels long keys: both are still read.

def encode_waiting(w: Waiting) -> bytes:
    entry = {"t": w.written, "f": w.features, "o": w.origin}   # "t" first: ``waiting_written`` reads it alone
    if w.origin is not None:
        entry.update(y=w.label, lt=w.label_ts)
        if w.released:
            entry["early"] = True
        if w.defaulted:
            entry["dflt"] = True
    return dumps_kept(entry)


def decode_waiting(raw: bytes) -> Waiting:
    o = orjson.loads(raw)
    return Waiting(o["f"], o["t"], o["o"] if "o" in o else o.get("l"), o.get("y"), o.get("lt"),
                   bool(o.get("early")), bool(o.get("dflt")))


def waiting_written(raw: bytes) -> float:
    """An encoded ``Waiting``'s ``written`` stamp, without decoding its features (a restart indexes a million)."""
    if raw.startswith(b'{"t":'):   # written since 2026-12-07: the stamp leads
        return float(raw[5:raw.index(b",", 5)])
    return decode_waiting(raw).written


def encode_parked(p: Parked) -> bytes:
    return dumps_kept({"id": p.event_id, "m": p.model, "y": p.label, "lt": p.ts, "o": p.origin, "v": b64(p.value),
                       "t": p.written})


def decode_parked(raw: bytes) -> Parked:
    o = orjson.loads(raw)
    if "id" not in o:   # written before 2026-12-07
        return Parked(o["event_id"], o["model"], o["label"], o.get("ts"), o["src"], unb64(o.get("value")), o["t"])
    return Parked(o["id"], o["m"], o["y"], o.get("lt"), o["o"], unb64(o.get("v")), o["t"])


def encode_example(ex: Example) -> bytes:
    return orjson.dumps(
        {"event_id": ex.event_id, "model": ex.model, "features": ex.features, "label": ex.label, "ts": ex.ts,
         "origin": ex.origin},
        option=DUMPS_OPTIONS,
    )


def pack(values: list[bytes], max_bytes: int) -> list[bytes]:
    """JSON values packed as JSON arrays of at most ``max_bytes`` each (a value larger than that alone)."""
    packs, run, size = [], [], 1          # "[", then each value and the "," or "]" after it
    for v in values:
        if run and size + len(v) + 1 > max_bytes:
            packs.append(b"[" + b",".join(run) + b"]")
            run, size = [], 1
        run.append(v)
        size += len(v) + 1
    if run:
        packs.append(b"[" + b",".join(run) + b"]")
    return packs


# Rejected bytes kept in a deadletter record: the record carries them twice (as text and as base64),
# so a large rejected message (up to the input limit, 1 MB by default) would make a record over the
# broker's message size limit, which could never be delivered. Beyond this size they are cut.
DEADLETTER_VALUE_MAX = 64 * 1024


def encode_deadletter(*, reason: str, detail: str, topic: str, partition: int, offset: int,
                      key: bytes | None, value: bytes | None, event_id: str | None = None) -> bytes:
    """A deadletter record: the rejected bytes (base64, and as text when UTF-8), where from, and why.

    Bytes beyond ``DEADLETTER_VALUE_MAX`` are cut (``value_size`` says how many there were); the
    record's topic/partition/offset still point at the whole message.
    """
    size = None if value is None else len(value)
    if value is not None and len(value) > DEADLETTER_VALUE_MAX:
        value = value[:DEADLETTER_VALUE_MAX]
    text: str | None
    try:
        text = None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return orjson.dumps({
        "reason": reason,
        "detail": detail[:2000],
        "event_id": None if event_id is None else event_id[:1000],
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": None if key is None else key[:1000].decode("utf-8", "replace"),
        "value": text,
        "value_b64": b64(value),
        "value_size": size,
        "value_truncated": size is not None and size > DEADLETTER_VALUE_MAX,
        "rejected_at": time.time(),
    })


