"""The codec's JSON: parsing with a size limit and a reason for every refusal, and writing."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson

from streamlearn.core.messages import NON_FINITE, NOT_JSON, NOT_OBJECT, OVERSIZED, Rejected

DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def load_object(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    """A JSON object of at most ``max_bytes``; anything else is refused with its reason."""
    if raw is None:
        raise Rejected(NOT_JSON, "empty message (null value)")
    if len(raw) > max_bytes:
        raise Rejected(OVERSIZED, f"{len(raw)} bytes > limit of {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        loose = lenient(raw)
        if loose is not None:
            eid = loose.get("event_id") if isinstance(loose, dict) else None
            raise Rejected(NON_FINITE, "NaN or Infinity is not a valid number",
                           str(eid) if isinstance(eid, (str, int)) else None) from None
        raise Rejected(NOT_JSON, str(exc)) from None
    if not isinstance(obj, dict):
        raise Rejected(NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def lenient(raw: bytes) -> Any:
    """raw parsed with NaN/Infinity allowed (as the json module does), or None if still not JSON.

    Only asked about bytes orjson refused, which include nesting past its depth
    limit (1,024): the json module recurses there and raises RecursionError,
    so anything it raises means "not JSON".
    """
    try:
        return json.loads(raw)
    except Exception:  # noqa: BLE001 - ValueError, UnicodeDecodeError, RecursionError, MemoryError
        return None


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=DUMPS_OPTIONS)


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


def key_text(key: bytes | None) -> str | None:
    """A Kafka key as text, for logs and dead letters (None: no key)."""
    return None if key is None else key.decode("utf-8", "replace")
