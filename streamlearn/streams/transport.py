"""Faust's aiokafka transport with our commit rules: only what an agent handled is committed.

The rules are decided in ``core/offsets.py``; this consumer carries them out
on Faust's bookkeeping:

- An ack counts only for a message an agent handled (``BatchCommit`` marks
  it, ``handled``). Nothing is committed past an unhandled message; a
  partition whose committed offset stays unhandled is read again from there
  (``reread_skipped``, from the worker's timer, once flow control is active;
  a warning says so). What was handled after it is handled again, which
  every step tolerates (predictions are at-least-once; the join and the
  learner recognise repeats).
- A jump in offsets right after a seek is not taken for a gap (transaction
  markers, compaction), nor any jump in a topic only we write
  (``app.exact_topics``: every offset a message). One unacked message at
  the committed offset never slips through (``_new_offset``).
- A fetch is never dropped as older than Faust's read offset: reading a
  partition again from an offset reads it (``read_offset_for``).
- A stop commits every ack, also while a timed commit is under way
  (``commit_and_end_transactions``); a commit whose partitions all left in
  a rebalance commits nothing instead of crashing the consumer
  (``ConsumerThread``).
- For the topics our agents read (``app.batched_topics``), ``getmany`` hands
  Faust one ``Fetched`` message per partition per fetch: one Faust event
  whose ``records`` are the fetched Kafka records, in offset order; acking it
  acks every offset it holds. Table changelogs (read by Faust's recovery)
  keep Faust's per-message path.
- What Faust pauses, aiokafka stops fetching, and what it resumes, aiokafka
  fetches again (``fetch_only_unpaused``): Faust's own pause only left the
  partitions out of what it asks for.
- A recovery watchdog, ``unstick_recovery`` (every ``RECOVERY_CHECK_SECONDS``):
  an active changelog partition with records left, no event for
  ``RECOVERY_STALL_SECONDS`` and nothing queued for recovery is logged,
  resumed and sought to the next offset recovery needs.

Selected by the broker URL's scheme: the worker's consumer uses
``streamlearn://host:port`` (a ``faust.transports`` entry point in
pyproject.toml); the producer keeps Faust's own transport. Why each rule
exists (the losses that found them, Faust's issues, what a message costs on
Faust's path): docs/architecture.md, "The consumer transport".
"""

from __future__ import annotations

import logging
import weakref
from time import monotonic, time
from typing import Any

from aiokafka import TopicPartition
from faust.transport.consumer import notify
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ConsumerMessage, Message, ack_lock
from mode import Service

from streamlearn.core.offsets import CommitHold, Seeks, new_acks, read_offset_for, stalled_recovery

log = logging.getLogger("streamlearn.transport")

SCHEME = "streamlearn"
# An active changelog partition with records left and no event for this long, nothing queued, is asked again.
RECOVERY_STALL_SECONDS = 15.0
RECOVERY_CHECK_SECONDS = 5.0


class Fetched(ConsumerMessage):
    """The records of one partition from one fetch, as one Faust message (its offset: the last one's)."""

    def __init__(self, tp: Any, records: list, generation_id: int | None) -> None:
        last = records[-1]
        super().__init__(tp.topic, tp.partition, last.offset, last.timestamp / 1000.0, last.timestamp_type, (),
                         None, b"", None, 0, 0, tp, generation_id=generation_id)
        self.records = records          # aiokafka ConsumerRecords: topic, partition, offset, key, value, headers
        self.first = records[0].offset
        self.fetched_at = time()        # wall clock: when the consumer handed the fetch over


def records_of(message: Any) -> list:
    """The Kafka records a Faust message carries: a fetch's, or the message itself."""
    return message.records if isinstance(message, Fetched) else [message]


def record_time(record: Any) -> float:
    """A record's timestamp in seconds (aiokafka's records count milliseconds, Faust's messages seconds)."""
    return record.timestamp if isinstance(record, Message) else record.timestamp / 1000.0


class Consumer(faust_aiokafka.Consumer):
    """Commits only the messages our agents handled; reads again what Faust skipped or took for a gap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handled: weakref.WeakSet = weakref.WeakSet()
        self._reread: dict[Any, int] = {}         # partition -> lowest offset to read again
        self._seeks = Seeks()
        self._hold = CommitHold()

    def _new_consumer_thread(self) -> "ConsumerThread":
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def pause_partitions(self, tps: Any) -> None:
        super().pause_partitions(tps)
        self._fetch_as_faust_reads()

    def resume_partitions(self, tps: Any) -> None:
        super().resume_partitions(tps)
        self._fetch_as_faust_reads()

    def _fetch_as_faust_reads(self) -> None:
        """aiokafka pauses what Faust paused (see ``fetch_only_unpaused``); after Faust's own bookkeeping,
        on the consumer thread's loop, before any fetch asked after it."""
        thread = self._thread
        loop = getattr(thread, "thread_loop", None) if thread is not None else None
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fetch_only_unpaused, thread, frozenset(self._paused_partitions))
        except RuntimeError:   # the thread's loop closed meanwhile: the consumer is stopping
            pass

    def handled(self, message: Any) -> None:
        """An agent handled ``message``: its ack may be committed."""
        self._handled.add(message)

    async def commit_and_end_transactions(self) -> None:
        """The commit of a stop: every ack so far, even while a timed commit is under way.

        Faust's ``commit`` returns without committing when another commit is
        under way: it waits for that one, whose offsets may predate the last
        acks. At a stop, the events acked since would then be handled again
        by the partition's next owner (answered twice).
        """
        while await self.maybe_wait_for_commit_to_finish():
            pass
        await super().commit_and_end_transactions()

    def ack(self, message: Any) -> bool:
        if message not in self._handled:
            return False   # skipped by Faust: left unacked, so nothing past it is committed (see _new_offset)
        if isinstance(message, Fetched):
            return self._ack_fetched(message)
        return super().ack(message)

    def _ack_fetched(self, fetched: Fetched) -> bool:
        """Faust's ack bookkeeping (``Consumer.ack``), for every offset of a fetch at once."""
        with ack_lock:
            if fetched.acked:
                return False
            fetched.acked = True
            tp = fetched.tp
            if not self.app.topics.acks_enabled_for(fetched.topic):
                return False
            index = self._acked_index[tp]
            offsets = new_acks((record.offset for record in fetched.records), self._committed_offset[tp], index)
            index.update(offsets)
            self._acked[tp].extend(offsets)
            n = len(offsets)
            self._unacked_messages.discard(fetched)
            self._n_acked += n
            notify(self._waiting_for_ack)
            return n > 0

    async def getmany(self, timeout: float):
        """Faust's ``getmany``, but one ``Fetched`` per partition for the topics of ``app.batched_topics``."""
        batched = getattr(self.app, "batched_topics", frozenset())
        records, active = await self._wait_next_records(timeout)
        generation = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            try:
                await self.perform_seek()   # as Faust does: the flow stopped, go back to the committed offsets
            except Exception as exc:  # noqa: BLE001 - Faust's own handling: logged, tried again next fetch
                log.warning("seek while flow not active failed: %r", exc)
            return
        singles = {tp: rs for tp, rs in records.items() if tp.topic not in batched}
        for tp, rs in records.items():
            if tp.topic not in batched or not rs:
                continue
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            if active is None or tp in active or tp in self._buffered_partitions:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                self._seeks.fetching(tp, rs[0].offset)   # for _add_gap: the drain loop checks the last offset
                behind = self._read_offset.get(tp)
                read = read_offset_for(rs[0].offset, rs[-1].offset, behind)
                if read is not None:
                    log.info("%s: the fetch of offsets %d-%d lay behind the read offset %d (set past a seek by "
                             "records fetched before it): let through", tp, rs[0].offset, rs[-1].offset, behind)
                    self._read_offset[tp] = read
                yield tp, Fetched(tp, rs, generation)
        for tp, record in self.scheduler.iterate(singles):
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            if active is None or tp in active or tp in self._buffered_partitions:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, self._to_message(tp, record)

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Faust's drain loop saw offsets jump: acked as a gap, unless the jump follows a seek or lies in a
        topic only we write (``Seeks``)."""
        if tp.topic in getattr(self.app, "exact_topics", ()):
            jump = self._seeks.jumped(tp, offset_from, offset_to)
            if jump is not None:
                log.info("%s: offsets %d-%d were not handed to an agent (a dropped fetch): not committed, read "
                         "again from the committed offset", tp, *jump)
            return
        gap = self._seeks.gap(tp, offset_from, offset_to)
        if gap is not None:
            await super()._add_gap(tp, *gap)

    def _new_offset(self, tp: Any) -> int | None:
        """The offset to commit, only when everything from the committed offset on was handled (``CommitHold``).

        Faust lets one unacked message at the committed offset through (its
        check is ``min(acked) - committed > 1``, faust-streaming #606, made so
        that a transaction marker sitting there does not block commits).
        """
        committed, acked, gaps = self._committed_offset[tp], self._acked[tp], self._gap[tp]
        low = (min(min(acked), gaps.begin()) if gaps else min(acked)) if acked else None
        wait, read_again = self._hold.check(tp, committed, low, tp.topic in getattr(self.app, "exact_topics", ()))
        if read_again:
            self.read_again(tp, committed)
        return None if wait else super()._new_offset(tp)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        self._seeks.sought_all(self._read_offset)

    async def seek(self, partition: Any, offset: int) -> None:
        await super().seek(partition, offset)
        self._seeks.sought(partition, offset)

    def read_again(self, tp: Any, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (at the next ``reread_skipped``)."""
        self._reread[tp] = min(self._reread.get(tp, offset), offset)

    def committed_offset(self, tp: Any) -> int | None:
        """The group's committed offset of ``tp`` as this consumer knows it (None: none yet, or 0)."""
        return self._committed_offset.get(tp)

    async def reread_skipped(self) -> int:
        """Seek back to what Faust skipped or took for a gap; returns how many partitions."""
        if not self._reread or not self.app.flow_control.is_active() or self.app.rebalancing:
            return 0
        assigned = self.assignment()
        todo, self._reread = self._reread, {}
        n = 0
        for tp, offset in todo.items():
            if tp in assigned:
                log.warning("%s: offset %d was skipped without our agents handling it: reading the "
                            "partition again from there", tp, offset)
                await self.seek(tp, offset)
                n += 1
        return n

    @Service.timer(RECOVERY_CHECK_SECONDS)
    async def _watch_recovery(self) -> None:
        try:
            await self.unstick_recovery()
        except Exception as exc:  # noqa: BLE001 - a watchdog must not take the consumer down; tried again later
            log.warning("recovery watchdog failed: %r", exc)

    def stalled_recovery(self, now: float, stall: float = RECOVERY_STALL_SECONDS) -> dict[Any, int]:
        """Active changelog partitions recovery waits for in vain: partition -> next offset it needs."""
        recovery = self.app.tables.recovery
        # (app.rebalancing stays set until recovery ends; a new rebalance stops the flow first)
        if not recovery.in_recovery or not self.flow_active:
            return {}
        return stalled_recovery(now, recovery._recovery_started_at, stall,   # Faust keeps no public accessors
                                self.app.tables.changelog_queue.qsize(), recovery.active_remaining(),
                                recovery.active_offsets, recovery._active_events_received_at)

    async def unstick_recovery(self, stall: float = RECOVERY_STALL_SECONDS) -> int:
        """Resume and seek again the partitions recovery stalled on; returns how many (see the module's doc)."""
        stuck = self.stalled_recovery(monotonic(), stall)
        if not stuck:
            return 0
        recovery = self.app.tables.recovery
        active = self._get_active_partitions()
        for tp, offset in sorted(stuck.items()):
            try:
                position, high = await self.position(tp), self.highwater(tp)
            except Exception as exc:  # noqa: BLE001 - only for the log line
                position = high = repr(exc)
            log.warning(
                "recovery stalled on %s: needs offset %d up to highwater %s, no event for %.0f s; consumer "
                "position %s, highwater %s, fetched %s, paused %s, buffered %s, read offset %s, flow %s, flow "
                "control %s: resuming it and seeking it to %d", tp, offset, recovery.active_highwaters[tp],
                monotonic() - recovery._active_events_received_at.get(tp, recovery._recovery_started_at),
                position, high, tp in active, tp in self._paused_partitions, tp in self._buffered_partitions,
                self._read_offset.get(tp), self.flow_active, self.app.flow_control.is_active(), offset)
        self.resume_partitions(stuck)
        await self.seek_wait(stuck)
        count = getattr(self.app, "on_recovery_stall", None)
        if count is not None:
            count(len(stuck))
        return len(stuck)


def fetch_only_unpaused(thread: Any, paused: frozenset) -> None:
    """Pause in aiokafka the assigned partitions Faust paused, resume the others (on the consumer thread).

    Faust's pause only leaves a partition out of what it asks aiokafka for.
    Without this, aiokafka goes on fetching it (the active tables' changelogs
    after their recovery), and records fetched and never asked for hold back
    every fetch to that broker for aiokafka's ``prefetch_backoff``. Why:
    docs/architecture.md, "The consumer transport".
    """
    try:
        consumer = thread._ensure_consumer()   # Faust keeps no public accessor
    except Exception:  # noqa: BLE001 - not started, or stopped: nothing to pause
        return
    assigned = consumer.assignment()
    want = {TopicPartition(tp.topic, tp.partition) for tp in paused} & assigned
    now = consumer.paused()
    consumer.pause(*(want - now))
    consumer.resume(*((now & assigned) - want))


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, without its crash on a commit whose partitions all left in a rebalance.

    Faust commits only the offsets of partitions still assigned; when none
    is left, it hands aiokafka an empty commit, which aiokafka refuses with a
    ValueError, and Faust crashes the consumer on it: the worker stops (a
    fresh-clone CI run lost a worker of the SIGKILL test so, right as it was
    assigned new partitions).
    """

    async def _commit(self, offsets: Any) -> bool:
        assigned = self.assignment()   # a set built anew per call
        if not any(tp in assigned for tp in offsets):
            return False   # nothing of ours left to commit
        return await super()._commit(offsets)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


def consumer_url(broker: str) -> str:
    """The broker URL for our consumer transport: same hosts, our scheme."""
    hosts = broker.split("://", 1)[-1]
    return f"{SCHEME}://{hosts}"
