"""The commit protocol acks inputs only once their outputs are delivered; the outbox sends failed ones again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson

from streamlearn.core.checkpointing import CheckpointPolicy
from streamlearn.streams.commit import BatchCommit
from streamlearn.streams.outbox import Outbox, WriteBehind
from tests.unit.fakes import FlakyProducer, Stream


def commit_of(app, behind: WriteBehind | None = None) -> BatchCommit:
    return BatchCommit(app, behind or WriteBehind(Outbox(app)), CheckpointPolicy(100, 5.0), checkpoints=None)


async def test_acks_after_delivery_and_resends_what_failed():
    producer = FlakyProducer(fail_first={"out.b"})
    retries: list[str] = []
    app = SimpleNamespace(producer=producer)
    out = Outbox(app, on_retry=retries.append, retry_backoff=0.01)
    commit, stream = commit_of(app), Stream()

    await out.send("out.a", key=b"k", value=b"1")
    await out.send("out.b", key=b"k", value=b"2")
    await commit.finish(out, stream, "e1")
    await asyncio.sleep(0.05)
    assert stream.acked == []                      # out.a not yet delivered (and out.b failed)

    producer.futures[0].set_result(None)           # out.a delivered
    await asyncio.sleep(0.05)
    assert retries == ["out.b"] and producer.sent[-1] == ("out.b", b"2")   # out.b sent again
    assert stream.acked == []                      # ... and not yet delivered

    producer.futures[-1].set_result(None)
    await asyncio.sleep(0.05)
    assert stream.acked == ["e1"]


async def test_a_batch_that_sent_nothing_is_acked_at_once():
    app = SimpleNamespace(producer=FlakyProducer(set()))
    out, commit, stream = Outbox(app), commit_of(app), Stream()
    await commit.finish(out, stream, "e1")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert stream.acked == ["e1"]


async def test_state_written_behind_once_per_key_in_order_and_acked_after_whoever_sent_it():
    """Two agents share the join state: one's batch may be sent by the other's flush; both wait for it."""
    producer = FlakyProducer(fail_first={"state"})     # the first changelog send fails: sent again
    app = SimpleNamespace(producer=producer)
    behind = WriteBehind(Outbox(app, retry_backoff=0.01))
    commit = commit_of(app, behind)
    a, b = Outbox(app), Outbox(app)
    stream = Stream()

    behind.stage("state", 3, b"k1", orjson.dumps({"f": 1}))               # agent A's batch writes k1 ...
    behind.stage("state", 3, b"k2", orjson.dumps({"f": 2}))               # ... agent B's batch writes k2
    behind.stage("state", 3, b"k1", orjson.dumps({"f": 1, "l": 7}))      # ... and A again: k1's latest value only
    await commit.finish(a, stream, "a")        # A's flush sends B's k2 too
    await commit.finish(b, stream, "b")        # B's flush finds nothing new
    assert [(t, orjson.loads(v)) for t, v in producer.sent] == [("state", {"f": 2}), ("state", {"f": 1, "l": 7})]
    await asyncio.sleep(0.05)
    assert stream.acked == []                  # k2 failed, k1 not delivered yet
    producer.futures[1].set_result(None)       # k1 delivered
    await asyncio.sleep(0.05)
    assert [orjson.loads(v) for _, v in producer.sent[2:]] == [{"f": 2}]   # k2 sent again
    assert stream.acked == []                  # ... still on its way: B waits for it too, though A sent it
    producer.futures[2].set_result(None)
    await asyncio.sleep(0.02)
    assert sorted(stream.acked) == ["a", "b"]

    behind.stage("state", 3, b"k1", None)                   # a deletion: a tombstone
    await behind.flush()
    assert producer.sent[-1] == ("state", None)
