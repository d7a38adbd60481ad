"""A generated corpus of malformed messages, for the codec's unit tests and a real worker.

Each item is ``(input, key, value, shape)``: the input topic it goes to
(``features``, ``feedback`` or ``control``), the Kafka key (bytes or None), the
raw value (bytes or None) and a short name of its shape. Every one of them must
be dead-lettered; none is a valid event, label or command.
"""

from __future__ import annotations

import random

import orjson

FEATURES, FEEDBACK, CONTROL = "features", "feedback", "control"

WRONG_TYPES = [None, True, 1.5, -3, "", "text", [], [1, "a"], {}, {"a": {"b": 1}}]


def _valid(kind: str, i: int) -> dict:
    if kind == FEATURES:
        return {"event_id": f"bad-{i}", "model": "m0", "features": {"a": 1.0, "c": "x"}, "ts": 1.0}
    if kind == FEEDBACK:
        return {"event_id": f"bad-{i}", "model": "m0", "label": True, "features": {"a": 1.0}}
    return {"request_id": f"r-{i}", "command": "restore", "model": "m0", "version": 1}


def _wrong_fields(kind: str, i: int) -> list[tuple[bytes, str]]:
    """Every field of a valid message replaced by every wrong type (those a decoder must refuse)."""
    base = _valid(kind, i)
    out = []
    for name in base:
        for wrong in WRONG_TYPES:
            if kind == FEATURES and name == "ts" and wrong is None:
                continue       # ts is optional: null is fine
            if name == "model" and wrong is None:
                continue       # model is optional (the key, or the default key)
            if kind == FEEDBACK and name == "features" and wrong is None:
                continue       # inline features are optional
            if kind == FEEDBACK and name == "label" and isinstance(wrong, (bool, int, float, str)) and wrong is not None:
                continue       # any scalar is a label for some model
            if kind == FEATURES and name == "features" and wrong == {}:
                continue       # no features at all is a valid event
            if kind == FEEDBACK and name == "features" and wrong == {}:
                continue
            if name in ("event_id", "request_id") and (isinstance(wrong, int) and not isinstance(wrong, bool)
                                                       or isinstance(wrong, str) and wrong):
                continue       # integer ids are accepted (as text), and any non-empty string
            if name == "ts" and isinstance(wrong, (int, float)) and not isinstance(wrong, bool):
                continue       # any number is a time
            if name == "version" and isinstance(wrong, int) and not isinstance(wrong, bool) and wrong >= 1:
                continue
            if kind == CONTROL and name == "model" and wrong in ("text",):
                continue
            if name == "model" and isinstance(wrong, str) and wrong:
                continue
            if kind == FEATURES and name == "features" and isinstance(wrong, dict) and not any(
                    isinstance(v, (dict, list)) for v in wrong.values()):
                continue
            msg = dict(base)
            msg[name] = wrong
            out.append((orjson.dumps(msg), f"wrong type in {name}: {type(wrong).__name__}"))
        msg = dict(base)
        if name in ("ts", "model") or (kind == FEEDBACK and name == "features") or name == "version" and False:
            continue
        del msg[name]
        if kind == CONTROL and name == "version":
            out.append((orjson.dumps(msg), "restore without a version"))
        else:
            out.append((orjson.dumps(msg), f"missing {name}"))
    return out


def corpus(seed: int = 7, *, max_bytes: int = 100_000) -> list[tuple[str, bytes | None, bytes | None, str]]:
    rng = random.Random(seed)
    items: list[tuple[str, bytes | None, bytes | None, str]] = []
    kinds = [FEATURES, FEEDBACK, CONTROL]
    for i, kind in enumerate(kinds * 3):
        n = len(items)
        for value, shape in _wrong_fields(kind, n):
            items.append((kind, None, value, shape))
    for kind in kinds:
        valid = orjson.dumps(_valid(kind, len(items)))
        for cut in range(1, len(valid), 3):                                   # truncated JSON
            items.append((kind, None, valid[:cut], "truncated JSON"))
        items += [
            (kind, None, b"[" * 5000 + b"]" * 5000, "arrays nested 5,000 deep"),
            (kind, None, b'{"a":' * 3000 + b"1" + b"}" * 3000, "objects nested 3,000 deep"),
            (kind, None, b'{"event_id": "x", "features": ' + b"[" * 2000 + b"]" * 2000 + b"}", "nested field"),
            (kind, None, b"\xff\xfe" + valid, "invalid UTF-8"),
            (kind, None, valid.replace(b'"m0"', b'"m\xc3\x28"'), "invalid UTF-8 in a string"),
            (kind, None, b'{"event_id": "x", "model": "m0", "features": {"a": NaN}, "label": NaN}', "NaN"),
            (kind, None, b'{"event_id": "x", "model": "m0", "features": {"a": Infinity}, "label": -Infinity}',
             "Infinity"),
            (kind, None, b'{"event_id": "x", "model": "m0", "features": {"a": 1e999}, "label": 1e999}', "1e999"),
            (kind, None, b"", "empty"),
            (kind, None, b"null", "null"),
            (kind, None, b"42", "a number"),
            (kind, None, b'"a string"', "a string"),
            (kind, None, b"[1, 2]", "an array"),
            (kind, None, b"{" + b'"k": "' + b"x" * (max_bytes + 10) + b'"}', "over the size limit"),
            (kind, None, b'{"event_id": 123456789012345678901234567890, "model": "m0", "features": {}, '
                         b'"label": true, "request_id": 123456789012345678901234567890, "command": "status"}',
             "integer id beyond 64 bits"),
        ]
    for kind in (FEATURES, FEEDBACK):
        body = {k: v for k, v in _valid(kind, 0).items() if k != "model"}
        items.append((kind, b"\xff\xfe-not-utf8", orjson.dumps(body), "key not UTF-8, no model field"))
    for i in range(450):                                                     # random bytes
        kind = kinds[i % 3]
        n = rng.choice([1, 2, 7, 64, 500, 4000])
        raw = bytes(rng.getrandbits(8) for _ in range(n))
        if raw[:1] in (b"{", b"[", b'"') or raw.strip()[:1].isdigit():
            raw = b"\x00" + raw
        items.append((kind, rng.choice([None, b"m0", bytes([rng.getrandbits(8)])]), raw, "random bytes"))
    for i in range(150):                                                     # huge strings (under the limit)
        kind = kinds[i % 3]
        text = "".join(rng.choice("ab\u00e9\u4e2d\U0001f600\"\\") for _ in range(rng.choice([1000, 20000])))
        items.append((kind, None, orjson.dumps({"event_id": text, "model": "m0", "features": [text],
                                                "label": [text], "command": text}), "huge string"))
    return items
