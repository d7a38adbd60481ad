"""The one codec: bytes in, validated messages out, and back to bytes.

Every message that enters streamlearn is decoded here from raw bytes, so
anything malformed becomes a :class:`Rejected` with a reason (a short,
stable word used as a metric label) and a human-readable detail. Nothing in
this module unpickles; model state never travels through these messages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from streamlearn.core.messages import (  # noqa: F401 - the codec's outputs, and the reasons it refuses
    BAD_FIELD, BAD_KEY, BAD_LABEL, EXPIRED_COMMAND, EXPIRED_EVENT, INTERNAL_ERROR, MISSING_FIELD, MODEL_ERROR,
    NON_FINITE, NOT_JSON, NOT_OBJECT, OVERSIZED, SPEC_MISMATCH, UNAUTHENTICATED, UNKNOWN_COMMAND, UNKNOWN_EVENT,
    UNKNOWN_MODEL, UNKNOWN_SPEC, Example, FeatureEvent, Label, Rejected)
from streamlearn.core.join import Parked, Waiting
from streamlearn.models.specs import UnknownSpec

# The Kafka header carrying a command's signature: "sha256=" + hex HMAC-SHA256 of the message value
# (its exact bytes, so any client can sign), under STREAMLEARN_COMMAND_SECRET.
SIGNATURE_HEADER = "streamlearn-signature"

# Operator commands: name -> the argument it needs (a version, a challenger's spec), or None
COMMANDS = {"status": None, "versions": None, "snapshot": None, "restore": "version", "rollback": None,
            "pin": "version", "unpin": "version", "promote": "spec"}

_DUMPS_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class Command:
    """An operator's command for one model key (control topic, CLI or HTTP)."""

    request_id: str
    command: str
    model: str
    version: int | None = None
    reason: str = ""
    by: str = "operator"
    deadline: float | None = None   # epoch seconds: not executed after it (the caller gave up)
    spec: str | None = None         # promote: the challenger to promote

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "command": self.command, "model": self.model,
                "version": self.version, "reason": self.reason, "by": self.by, "deadline": self.deadline,
                "spec": self.spec}


# ---- decoding -------------------------------------------------------------

def _load(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise Rejected(NOT_JSON, "empty message (null value)")
    if len(raw) > max_bytes:
        raise Rejected(OVERSIZED, f"{len(raw)} bytes > limit of {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        lenient = _lenient(raw)
        if lenient is not None:
            eid = lenient.get("event_id") if isinstance(lenient, dict) else None
            raise Rejected(NON_FINITE, "NaN or Infinity is not a valid number",
                           str(eid) if isinstance(eid, (str, int)) else None) from None
        raise Rejected(NOT_JSON, str(exc)) from None
    if not isinstance(obj, dict):
        raise Rejected(NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _lenient(raw: bytes) -> Any:
    """raw parsed with NaN/Infinity allowed (as the json module does), or None if still not JSON.

    Only asked about bytes orjson refused, which include nesting past its depth
    limit (1,024): the json module recurses there and raises RecursionError,
    so anything it raises means "not JSON".
    """
    try:
        return json.loads(raw)
    except Exception:  # noqa: BLE001 - ValueError, UnicodeDecodeError, RecursionError, MemoryError
        return None


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
    obj = _load(raw, max_bytes)
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
    obj = _load(raw, max_bytes)
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
    obj = orjson.loads(raw)
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


def sign(value: bytes, secret: bytes) -> bytes:
    """The signature header's value for a command's bytes."""
    return b"sha256=" + hmac.new(secret, value, hashlib.sha256).hexdigest().encode()


def signature_of(headers) -> bytes | None:
    """The signature header of a Kafka message (headers as aiokafka or Faust give them), if any."""
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    for name, value in items:
        if name == SIGNATURE_HEADER:
            return value
    return None


def _verify(raw: bytes | None, signature: bytes | None, secret: bytes) -> None:
    if not signature:
        raise Rejected(UNAUTHENTICATED, f"the command is not signed (header {SIGNATURE_HEADER}: "
                                        f"sha256=HMAC-SHA256 of the message under the command secret)")
    if not hmac.compare_digest(sign(raw or b"", secret), bytes(signature)):
        raise Rejected(UNAUTHENTICATED, "the command's signature does not verify (another secret, or the "
                                        "message changed after signing)")


def decode_command(raw: bytes | None, key: bytes | None, *, max_bytes: int, secret: bytes | None = None,
                   signature: bytes | None = None) -> Command:
    """A command from the control topic: ``{"request_id", "command", "model", "version"?, "spec"?, "reason"?, "by"?, "deadline"?}``.

    With a ``secret``, only a command whose ``signature`` (its header) verifies
    is decoded, and it must carry a deadline: a signed command captured off
    the topic can be replayed only until then.
    """
    if secret is not None:
        if raw is not None and len(raw) > max_bytes:
            raise Rejected(OVERSIZED, f"{len(raw)} bytes > limit of {max_bytes}")
        _verify(raw, signature, secret)
    obj = _load(raw, max_bytes)
    rid = obj.get("request_id")
    if rid is None:
        raise Rejected(MISSING_FIELD, "request_id is required")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise Rejected(BAD_FIELD, "request_id must be a non-empty string")
    rid = str(rid)
    name = obj.get("command")
    if name is None:
        raise Rejected(MISSING_FIELD, "command is required", rid)
    if not isinstance(name, str) or name not in COMMANDS:   # a list or object would not even hash
        raise Rejected(UNKNOWN_COMMAND, f"unknown command {name!r:.200}; known: {', '.join(COMMANDS)}", rid)
    model = obj.get("model")
    if model is None and key:
        model = key.decode("utf-8", "replace")
    if not isinstance(model, str) or not model:
        raise Rejected(MISSING_FIELD if model is None else BAD_FIELD,
                       "model (the model key) is required, as a field or as the Kafka key", rid)
    version, spec = obj.get("version"), obj.get("spec")
    needs = COMMANDS[name]
    if needs is not None and obj.get(needs) is None:
        raise Rejected(MISSING_FIELD, f"{name} needs a {needs}", rid)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise Rejected(BAD_FIELD, "version must be a positive integer", rid)
    if spec is not None and (not isinstance(spec, str) or not spec or len(spec) > 200):
        raise Rejected(BAD_FIELD, "spec must be the name of a challenger (a non-empty string)", rid)
    for text in ("reason", "by"):
        if obj.get(text) is not None and not isinstance(obj[text], str):
            raise Rejected(BAD_FIELD, f"{text} must be a string", rid)
    deadline = obj.get("deadline")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))):
        raise Rejected(BAD_FIELD, "deadline must be epoch seconds", rid)
    if deadline is None and secret is not None:
        raise Rejected(MISSING_FIELD, "a signed command needs a deadline (epoch seconds), so that it cannot "
                                      "be replayed later", rid)
    return Command(rid, name, model, version, obj.get("reason") or "", obj.get("by") or "operator",
                   None if deadline is None else float(deadline), spec)


def key_text(key: bytes | None) -> str | None:
    """A Kafka key as text, for logs and dead letters (None: no key)."""
    return None if key is None else key.decode("utf-8", "replace")


def request_id_of(raw: bytes | None) -> str | None:
    """The request id of a command we could not decode, when one can be found (to answer it)."""
    obj = _lenient(raw) if raw else None
    rid = obj.get("request_id") if isinstance(obj, dict) else None
    return str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None


# ---- encoding -------------------------------------------------------------

def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=_DUMPS_OPTS)


def dumps_kept(obj: Any) -> bytes:
    """``dumps`` for JSON kept in memory a long time: orjson (3.13) hands back its output in a 4 KB
    allocation whatever the length (tracemalloc: 4,097 bytes per 84-byte entry); a copy has its own size."""
    return bytes(memoryview(dumps(obj)))


def loads(raw: bytes) -> Any:
    return orjson.loads(raw)


def b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


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
    return orjson.dumps(out, option=_DUMPS_OPTS)


# ---- the join state (changelog-backed tables): short keys, as their changelogs have always held them ----

def encode_waiting(w: Waiting) -> bytes:
    entry = {"f": w.features, "t": w.written, "l": w.origin}
    if w.origin is not None:
        entry.update(y=w.label, lt=w.label_ts)
        if w.released:
            entry["early"] = True
    return dumps_kept(entry)


def decode_waiting(raw: bytes) -> Waiting:
    o = orjson.loads(raw)
    return Waiting(o["f"], o["t"], o.get("l"), o.get("y"), o.get("lt"), bool(o.get("early")))


def encode_parked(p: Parked) -> bytes:
    return dumps_kept({"label": p.label, "ts": p.ts, "event_id": p.event_id, "model": p.model, "src": p.origin,
                       "value": b64(p.value), "t": p.written})


def decode_parked(raw: bytes) -> Parked:
    o = orjson.loads(raw)
    return Parked(o["event_id"], o["model"], o["label"], o.get("ts"), o["src"], unb64(o.get("value")), o["t"])


def encode_example(ex: Example) -> bytes:
    return orjson.dumps(
        {"event_id": ex.event_id, "model": ex.model, "features": ex.features, "label": ex.label, "ts": ex.ts,
         "origin": ex.origin},
        option=_DUMPS_OPTS,
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


def encode_command(cmd: Command) -> bytes:
    return orjson.dumps(cmd.to_json())


def encode_result(*, request_id: str | None, model: str | None, command: str | None, ok: bool,
                  error: str | None = None, detail: str = "", result: Any = None, worker: str = "") -> bytes:
    """The answer to a command, on the control-results topic."""
    return orjson.dumps({"request_id": request_id, "model": model, "command": command, "ok": ok,
                         "error": error, "detail": detail, "result": result, "worker": worker,
                         "answered_at": time.time()}, option=_DUMPS_OPTS)
