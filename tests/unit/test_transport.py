"""Our consumer commits only what agents handled, and reads again what Faust skipped in this generation."""

from __future__ import annotations

import weakref
from collections import defaultdict
from types import SimpleNamespace

from faust.types.tuples import Message

from streamlearn.streams.transport import Consumer, consumer_url


def consumer(generation: int = 3, active: bool = True) -> Consumer:
    """The consumer's ack bookkeeping alone, without a Kafka connection."""
    c = Consumer.__new__(Consumer)
    c._handled, c._reread = weakref.WeakSet(), {}
    c.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
                            consumer_generation_id=generation, rebalancing=False,
                            flow_control=SimpleNamespace(is_active=lambda: active))
    c._committed_offset = defaultdict(lambda: None)
    c._acked_index, c._acked, c._n_acked = defaultdict(set), defaultdict(list), 0
    c._unacked_messages, c._waiting_for_ack = weakref.WeakSet(), None
    return c


def message(offset: int, generation: int = 3) -> Message:
    return Message("t", 4, offset, 0.0, 0, [], b"k", b"v", None, generation_id=generation)


async def test_a_skipped_message_is_not_committed_and_is_read_again():
    c = consumer()
    handled, skipped, old = message(276), message(277), message(278, generation=2)
    c.handled(handled)
    assert c.ack(handled) is True
    assert c.ack(skipped) is False and c.ack(old) is False     # Faust acks what its stream skips
    assert c._acked[handled.tp] == [276]                        # only the handled one counts
    assert c._reread == {skipped.tp: 277}                       # the old generation's is re-read by Faust's seek
    seeks = []

    async def seek(tp, offset):
        seeks.append((tp, offset))

    c.seek, c.assignment = seek, lambda: {skipped.tp}
    assert await c.reread_skipped() == 1 and seeks == [(skipped.tp, 277)] and c._reread == {}


async def test_skipped_messages_wait_for_flow_control_to_be_active():
    c = consumer(active=False)
    c.ack(message(10))
    c.assignment = lambda: set()
    assert await c.reread_skipped() == 0 and c._reread   # kept until the flow resumes


def test_consumer_url_keeps_the_hosts():
    assert consumer_url("kafka://a:9092;b:9093") == "streamlearn://a:9092;b:9093"
