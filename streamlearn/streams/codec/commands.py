"""Operator commands: decoded and verified (HMAC-signed, with a deadline), and their answers encoded."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

import orjson

from streamlearn.core.messages import (BAD_FIELD, MISSING_FIELD, OVERSIZED, UNAUTHENTICATED, UNKNOWN_COMMAND,
                                       Rejected)

from .wire import DUMPS_OPTIONS, lenient, load_object

# The Kafka header carrying a command's signature: "sha256=" + hex HMAC-SHA256 of the message value
# (its exact bytes, so any client can sign), under STREAMLEARN_COMMAND_SECRET.
SIGNATURE_HEADER = "streamlearn-signature"

# Operator commands: name -> the argument it needs (a version, a challenger's spec), or None
COMMANDS = {"status": None, "versions": None, "snapshot": None, "restore": "version", "rollback": None,
            "pin": "version", "unpin": "version", "promote": "spec", "backfill": "spec"}


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
    spec: str | None = None         # promote: the challenger to promote; backfill: the spec of the new one

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "command": self.command, "model": self.model,
                "version": self.version, "reason": self.reason, "by": self.by, "deadline": self.deadline,
                "spec": self.spec}


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


def verify(raw: bytes | None, signature: bytes | None, secret: bytes) -> None:
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
        verify(raw, signature, secret)
    obj = load_object(raw, max_bytes)
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


def request_id_of(raw: bytes | None) -> str | None:
    """The request id of a command we could not decode, when one can be found (to answer it)."""
    obj = lenient(raw) if raw else None
    rid = obj.get("request_id") if isinstance(obj, dict) else None
    return str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None


def encode_command(cmd: Command) -> bytes:
    return orjson.dumps(cmd.to_json())


def encode_result(*, request_id: str | None, model: str | None, command: str | None, ok: bool,
                  error: str | None = None, detail: str = "", result: Any = None, worker: str = "") -> bytes:
    """The answer to a command, on the control-results topic."""
    return orjson.dumps({"request_id": request_id, "model": model, "command": command, "ok": ok,
                         "error": error, "detail": detail, "result": result, "worker": worker,
                         "answered_at": time.time()}, option=DUMPS_OPTIONS)
