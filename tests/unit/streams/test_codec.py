"""The codec: raw bytes in, validated messages or a reason out."""

from __future__ import annotations

import base64

import orjson
import pytest

from streamlearn.core.join import Parked, Waiting
from streamlearn.streams import codec
from streamlearn.streams.codec import Rejected


def event(raw: bytes, key: bytes | None = None, max_bytes: int = 10_000):
    return codec.decode_event(raw, key, default_model="dflt", max_bytes=max_bytes)


def label(raw: bytes, key: bytes | None = None):
    return codec.decode_label(raw, key, default_model="dflt", max_bytes=10_000)


def test_feature_event_contract():
    ev = event(b'{"event_id": "e-1", "model": "tenant-7", "features": {"amount": 12.5, "country": "FR"},'
               b' "ts": 1764000000.123}')
    assert (ev.event_id, ev.model, ev.features, ev.ts) == ("e-1", "tenant-7", {"amount": 12.5, "country": "FR"},
                                                           1764000000.123)


def test_model_key_from_field_then_kafka_key_then_default():
    raw = b'{"event_id": 1, "features": {}}'
    assert event(raw, b"from-key").model == "from-key"
    assert event(raw).model == "dflt"
    assert event(b'{"event_id": 1, "model": "field", "features": {}}', b"from-key").model == "field"
    assert event(raw).event_id == "1"


@pytest.mark.parametrize("raw,reason", [
    (b"not json", "not_json"),
    (b"", "not_json"),
    (b'"a string"', "not_an_object"),
    (b'{"features": {}}', "missing_field"),
    (b'{"event_id": "e"}', "missing_field"),
    (b'{"event_id": "", "features": {}}', "bad_field"),
    (b'{"event_id": true, "features": {}}', "bad_field"),
    (b'{"event_id": "e", "features": [1]}', "bad_field"),
    (b'{"event_id": "e", "features": {"a": null}}', "bad_field"),
    (b'{"event_id": "e", "features": {"a": {"b": 1}}}', "bad_field"),
    (b'{"event_id": "e", "features": {"a": NaN}}', "non_finite_number"),
    (b'{"event_id": "e", "features": {"a": Infinity}}', "non_finite_number"),
    (b'{"event_id": "e", "features": {"a": 1e999}}', "non_finite_number"),
    (b'{"event_id": "e", "model": 5, "features": {}}', "bad_field"),
    (b'{"event_id": "e", "features": {}, "ts": "yesterday"}', "bad_field"),
    (b'{"event_id": "e", "features": {}, "spec": 3}', "bad_field"),
])
def test_bad_events_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(Rejected) as info:
        event(raw)
    assert info.value.reason == reason
    assert info.value.detail


def test_oversized_and_bad_key():
    with pytest.raises(Rejected, match="oversized"):
        event(b'{"event_id": "e", "features": {}}', max_bytes=10)
    with pytest.raises(Rejected) as info:
        event(b'{"event_id": "e", "features": {}}', key=b"\xff\xfe")
    assert info.value.reason == "bad_key" and info.value.event_id == "e"


def test_labels():
    lab = label(b'{"event_id": "e-1", "label": true}', b"tenant-7")
    assert (lab.event_id, lab.model, lab.label, lab.features) == ("e-1", "tenant-7", True, None)
    lab = label(b'{"event_id": "e-1", "label": 2.5, "model": "m", "features": {"a": 1}}')
    assert (lab.model, lab.label, lab.features) == ("m", 2.5, {"a": 1})
    for raw, reason in [(b'{"event_id": "e"}', "missing_field"), (b'{"event_id": "e", "label": null}', "bad_label"),
                        (b'{"event_id": "e", "label": [1]}', "bad_label"), (b'{"label": 1}', "missing_field")]:
        with pytest.raises(Rejected) as info:
            label(raw)
        assert info.value.reason == reason


def test_prediction_and_deadletter_encoding():
    ev = codec.FeatureEvent("e", "m", {"a": 1}, 10.0)
    out = orjson.loads(codec.encode_prediction(ev, True, {True: 0.9, False: 0.1}, 3, 1250, 11.0))
    assert out == {"event_id": "e", "model": "m", "prediction": True, "proba": {"true": 0.9, "false": 0.1},
                   "model_version": 3, "learned": 1250, "ts": 10.0, "predicted_at": 11.0}
    raw = b"\xff not utf-8"
    dl = orjson.loads(codec.encode_deadletter(reason="not_json", detail="d", topic="t", partition=1, offset=2,
                                              key=b"k", value=raw, event_id=None))
    assert base64.b64decode(dl["value_b64"]) == raw and dl["value"] is None
    assert (dl["topic"], dl["partition"], dl["offset"], dl["key"], dl["reason"]) == ("t", 1, 2, "k", "not_json")
    ex = codec.Example("e", "m", {"a": 1}, True, 5.0)
    assert codec.decode_examples(codec.encode_example(ex)) == [ex]
    [packed] = codec.pack([codec.encode_example(ex)] * 2, 1 << 20)
    assert codec.decode_examples(packed) == [ex, ex]
    assert len(codec.pack([codec.encode_example(ex)] * 3, 2 * len(codec.encode_example(ex)) + 3)) == 2


def test_every_malformed_message_of_the_corpus_is_rejected_with_a_reason():
    from tests.malformed import CONTROL, FEATURES, corpus

    items = corpus(max_bytes=100_000)
    assert len(items) >= 1000
    accepted, reasons = [], {}
    for kind, key, value, shape in items:
        try:
            if kind == FEATURES:
                codec.decode_event(value, key, default_model="d", max_bytes=100_000)
            elif kind == CONTROL:
                codec.decode_command(value, key, max_bytes=100_000)
            else:
                codec.decode_label(value, key, default_model="d", max_bytes=100_000)
        except codec.Rejected as rejected:
            reasons[rejected.reason] = reasons.get(rejected.reason, 0) + 1
            continue
        accepted.append((kind, shape, value[:80]))
    assert accepted == []
    assert {"not_json", "oversized", "bad_field", "missing_field", "not_an_object", "non_finite_number",
            "bad_key", "unknown_command"} <= set(reasons)


def test_an_integer_beyond_64_bits_is_a_number():
    """JSON numbers are doubles for most clients: a feature 2**100 is read as 1.2676506002282294e+30."""
    ev = codec.decode_event(b'{"event_id": "e", "features": {"a": 1267650600228229401496703205376}}', None,
                            default_model="d", max_bytes=1000)
    assert ev.features["a"] == float(2**100)
    with pytest.raises(codec.Rejected) as rejected:   # but not as an id
        codec.decode_event(b'{"event_id": 1267650600228229401496703205376, "features": {}}', None,
                           default_model="d", max_bytes=1000)
    assert rejected.value.reason == "bad_field"


def test_join_state_entries_round_trip_and_entries_of_the_previous_format_still_read():
    waiting = [Waiting({"a": 1.0}, 5.0), Waiting({"a": 1.0}, 5.0, ["feedback", 3, 10], True, 7.0, released=True),
               Waiting({"a": 1.0}, 5.0, ["streamlearn.labels", 3, 77], False, 35.0, defaulted=True)]
    for w in waiting:
        assert codec.decode_waiting(codec.encode_waiting(w)) == w
    parked = Parked("e1", "m", "yes", 7.0, ["feedback", 3, 10], b"\x00raw", 6.0)
    assert codec.decode_parked(codec.encode_parked(parked)) == parked
    assert set(orjson.loads(codec.encode_parked(parked))) == {"id", "m", "y", "lt", "o", "v", "t"}
    # as the release before wrote them
    old_waiting = orjson.dumps({"f": {"a": 1.0}, "t": 5.0, "l": ["feedback", 3, 10], "y": True, "lt": 7.0,
                                "early": True})
    assert codec.decode_waiting(old_waiting) == waiting[1]
    old_parked = orjson.dumps({"label": "yes", "ts": 7.0, "event_id": "e1", "model": "m", "src": ["feedback", 3, 10],
                               "value": codec.b64(b"\x00raw"), "t": 6.0})
    assert codec.decode_parked(old_parked) == parked


@pytest.mark.parametrize("written", [1765000000.123456, 5.0, 1e-7, 0.0])
def test_a_waiting_entry_gives_its_stamp_without_decoding_its_features(written):
    """A restart indexes every entry by its stamp: read where it leads, or from the whole entry before that."""
    w = Waiting({"t": 3.0, "z": "},\"t\":9"}, written, ["feedback", 3, 10], True, 7.0)   # features that look alike
    assert codec.waiting_written(codec.encode_waiting(w)) == written
    assert codec.waiting_written(orjson.dumps({"f": w.features, "t": written, "o": None})) == written
