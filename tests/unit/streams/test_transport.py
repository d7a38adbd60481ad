"""Our consumer commits only what agents handled, and reads again what Faust skipped in this generation."""

from __future__ import annotations

import weakref
from collections import Counter, defaultdict
from types import SimpleNamespace

import faust.transport.consumer as faust_consumer
import pytest
from faust.types.tuples import Message

from streamlearn.streams.transport import Consumer, Fetched, consumer_url, records_of


def consumer(generation: int = 3, active: bool = True) -> Consumer:
    """The consumer's ack bookkeeping alone, without a Kafka connection."""
    c = Consumer.__new__(Consumer)
    c._handled, c._reread, c._holes, c._fetching = weakref.WeakSet(), {}, {}, {}
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
    seeks = []

    async def seek(tp, offset):
        seeks.append((tp, offset))

    c._read_again(skipped.tp, 277)                              # (as _new_offset does when 277 stays missing)
    c.seek, c.assignment = seek, lambda: {skipped.tp}
    assert await c.reread_skipped() == 1 and seeks == [(skipped.tp, 277)] and c._reread == {}


async def test_skipped_messages_wait_for_flow_control_to_be_active():
    c = consumer(active=False)
    c._read_again(message(10).tp, 10)
    c.assignment = lambda: set()
    assert await c.reread_skipped() == 0 and c._reread   # kept until the flow resumes


def test_consumer_url_keeps_the_hosts():
    assert consumer_url("kafka://a:9092;b:9093") == "streamlearn://a:9092;b:9093"


@pytest.fixture
def faust_gaps(monkeypatch) -> list:
    """The gaps Faust's own ``_add_gap`` is asked to commit, recorded instead."""
    gaps: list = []

    async def add_gap(self, tp, offset_from, offset_to):
        gaps.append((offset_from, offset_to))

    monkeypatch.setattr(faust_consumer.Consumer, "_add_gap", add_gap)
    return gaps


async def test_a_jump_right_after_a_seek_is_read_again_not_committed_as_a_gap(faust_gaps):
    c = consumer()
    c._sought, c._rereads, c._gap = {}, Counter(), defaultdict(list)
    tp = message(0).tp
    c._sought[tp] = 1122                 # Faust sought the partition back to its committed offset
    await c._add_gap(tp, 1123, 1127)     # ... and then 1127, fetched before the seek, came first
    assert faust_gaps == []              # not committed as a gap
    await c._add_gap(tp, 1300, 1302)     # later, a real gap (a transaction marker): Faust's way
    assert faust_gaps == [(1300, 1302)]
    for _ in range(3):                   # a real gap right after a seek: read again twice, then accepted
        c._sought[tp] = 2000
        await c._add_gap(tp, 2001, 2003)
    assert faust_gaps[-1] == (2001, 2003) and c._rereads[(tp, 2000)] == 2


def test_nothing_is_committed_past_an_unhandled_message():
    """Faust would commit past one unacked message at the committed offset (faust-streaming #606)."""
    from streamlearn.streams.transport import MARKER_PATIENCE

    c = consumer()
    c._gap = defaultdict(__import__("intervaltree").IntervalTree)
    c.app.exact_topics = {"t"}
    tp = message(0).tp
    c._committed_offset[tp] = 229
    c._acked[tp] = [230, 231]                 # 229 was skipped, 230 and 231 handled
    for _ in range(MARKER_PATIENCE + 5):
        assert c._new_offset(tp) is None      # an internal topic: never past 229
    assert c._reread == {tp: 229}             # ... and after a while read again from it
    c._acked[tp] = [229, 230, 231]            # read again and handled
    assert c._new_offset(tp) == 232

    c.app.exact_topics = set()                # an input topic: 229 may be a transaction marker
    c._committed_offset[tp], c._acked[tp] = 300, [301]
    held = [c._new_offset(tp) for _ in range(MARKER_PATIENCE + 1)]
    assert held[:-1] == [None] * MARKER_PATIENCE and held[-1] == 302


def fetched(offsets: list[int], generation: int = 3) -> Fetched:
    records = [SimpleNamespace(topic="t", partition=4, offset=o, key=b"k", value=b"v", headers=(), timestamp=0,
                               timestamp_type=0) for o in offsets]
    return Fetched(message(0).tp, records, generation)


async def test_a_fetch_is_one_message_whose_ack_acks_every_offset_it_holds():
    c = consumer()
    c._committed_offset[message(0).tp] = 10
    batch = fetched([10, 11, 12, 13])
    assert batch.offset == 13 and batch.first == 10 and [r.offset for r in records_of(batch)] == [10, 11, 12, 13]
    single = message(5)
    assert records_of(single) == [single]
    assert c.ack(batch) is False and c._acked[batch.tp] == []     # not handled: nothing acked
    c.handled(batch)
    assert c.ack(batch) is True
    assert sorted(c._acked[batch.tp]) == [10, 11, 12, 13] and c._n_acked == 4
    assert c.ack(batch) is False and c._n_acked == 4              # twice is once
    again = fetched([9, 10, 11, 14])                              # read again after a seek, partly committed
    c.handled(again)
    assert c.ack(again) is True and sorted(c._acked[batch.tp]) == [10, 11, 12, 13, 14]


async def test_only_offsets_before_a_fetch_are_a_gap(faust_gaps):
    """Faust's drain loop compares the fetch's last offset with the last read: the fetch itself is no gap."""
    c = consumer()
    c._sought, c._rereads = {}, Counter()
    tp = message(0).tp
    c._fetching[tp] = 21                 # read up to 20, fetched 21..29: Faust sees a jump 20 -> 29
    await c._add_gap(tp, 21, 29)
    assert faust_gaps == []
    c._fetching[tp] = 33                 # read up to 29, fetched 33..40: 30..32 are a gap (markers)
    await c._add_gap(tp, 30, 40)
    assert faust_gaps == [(30, 32)]


def recovering(now: float) -> tuple[Consumer, list, list]:
    """Our consumer on a real (not started) Faust app, its recovery 30 s into reading three changelog partitions."""
    import faust

    app = faust.App("t-recovery", broker="memory://", store="memory://")
    c = Consumer.__new__(Consumer)
    c.app, c.flow_active = app, True
    c._active_partitions, c._paused_partitions, c._buffered_partitions = set(), set(), set()
    c._read_offset = defaultdict(lambda: None)
    stuck, moving, done = (faust_consumer.TP("cl", p) for p in (0, 1, 2))
    c._paused_partitions.add(stuck)
    r = app.tables.recovery
    r.in_recovery, r._recovery_started_at = True, now - 30
    app.rebalancing = True                              # as in Faust: set from the rebalance until recovery ends
    r.active_highwaters.update({stuck: 40, moving: 90, done: 7})
    r.active_offsets.update({stuck: -1, moving: 50, done: 7})
    r._active_events_received_at[moving] = now - 2      # events still arriving for this one
    sought, counted = [], []

    async def seek_wait(partitions):
        sought.append(dict(partitions))

    async def position(tp):
        return 0

    c.seek_wait, c.position, c.highwater = seek_wait, position, lambda tp: 41
    app.on_recovery_stall = counted.append
    return c, sought, counted


async def test_a_changelog_partition_recovery_waits_on_in_vain_is_resumed_and_sought_again():
    import time

    c, sought, counted = recovering(time.monotonic())
    stuck = faust_consumer.TP("cl", 0)
    assert await c.unstick_recovery() == 1
    assert sought == [{stuck: 0}] and counted == [1]    # from the next offset recovery needs (it has seen none)
    assert stuck in c._active_partitions and stuck not in c._paused_partitions


async def test_recovery_still_moving_or_not_under_way_is_left_alone():
    import time

    now = time.monotonic()
    c, sought, counted = recovering(now)
    r = c.app.tables.recovery
    assert c.stalled_recovery(now, stall=60) == {}          # not waited that long yet
    c.flow_active = False
    assert c.stalled_recovery(now) == {}                    # a new rebalance stopped the flow: its own recovery
    c.flow_active = True
    assert c.stalled_recovery(now)
    c.app.tables.changelog_queue.put_nowait(object())
    assert c.stalled_recovery(now) == {}                    # events queued: recovery is behind, not stuck
    c.app.tables.changelog_queue.get_nowait()
    r.active_offsets[faust_consumer.TP("cl", 0)] = 39       # one left: still stalled
    assert c.stalled_recovery(now) == {faust_consumer.TP("cl", 0): 40}
    r.in_recovery = False
    assert await c.unstick_recovery() == 0 and sought == [] and counted == []


async def test_the_stop_commits_what_was_acked_during_a_timed_commit():
    """Faust's commit returns at once, committing nothing, when a timed commit is under way; a stop must not."""
    import asyncio
    c = consumer()
    c.loop = asyncio.get_running_loop()
    committed: list[dict] = []

    async def force_commit(topics=None, start_new_transaction=True):
        committed.append({tp: acked[-1] + 1 for tp, acked in c._acked.items() if acked})
        await asyncio.sleep(0.05)   # the broker's answer
        return True
    c.force_commit = force_commit
    c.app.client_only = False
    c._commit_fut = None
    first = message(10)
    c.handled(first)
    c.ack(first)
    timed = asyncio.create_task(c.commit())            # the timer's commit: it takes offset 11
    await asyncio.sleep(0)
    last = message(11)
    c.handled(last)
    c.ack(last)                                        # acked while that commit is under way
    await c.commit_and_end_transactions()
    await timed
    assert committed == [{first.tp: 11}, {first.tp: 12}]
