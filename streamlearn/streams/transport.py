"""Faust's aiokafka transport with our commit rules: only what an agent handled is committed.

- An ack counts only for a message an agent handled (the outbox marks it,
  ``handled``). Nothing is committed past an unhandled message; a partition
  whose committed offset stays unhandled for ``REREAD_AFTER`` commits is read
  again from there (``reread_skipped``, from the worker's timer, once flow
  control is active; a warning says so). What was handled after it is
  handled again, which every step tolerates (predictions are at-least-once;
  the join and the learner recognise repeats).
- A jump in offsets right after a seek is not taken for a gap (transaction
  markers, compaction): a gap at an input's committed offset is committed
  past only after ``MARKER_PATIENCE`` commits. One unacked message at the
  committed offset never slips through (``_new_offset``).
- A stop commits every ack, also while a timed commit is under way
  (``commit_and_end_transactions``).
- For the topics our agents read (``app.batched_topics``), ``getmany`` hands
  Faust one ``Fetched`` message per partition per fetch: one Faust event
  whose ``records`` are the fetched Kafka records, in offset order; acking it
  acks every offset it holds. Table changelogs (read by Faust's recovery)
  keep Faust's per-message path.
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
from collections import Counter
from time import monotonic
from typing import Any

from faust.transport.consumer import notify
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ConsumerMessage, ack_lock
from mode import Service

log = logging.getLogger("streamlearn.transport")

SCHEME = "streamlearn"
# Commits (about every STREAMLEARN_COMMIT_INTERVAL_SECONDS) an input topic's partition waits for the
# message at its committed offset before taking it for a transaction marker and committing past it.
MARKER_PATIENCE = 40
# Commits a partition's committed offset may wait for its message before the partition is read again.
REREAD_AFTER = 10
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


def records_of(message: Any) -> list:
    """The Kafka records a Faust message carries: a fetch's, or the message itself."""
    return message.records if isinstance(message, Fetched) else [message]


class Consumer(faust_aiokafka.Consumer):
    """Commits only the messages our agents handled; reads again what Faust skipped or took for a gap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handled: weakref.WeakSet = weakref.WeakSet()
        self._reread: dict[Any, int] = {}         # partition -> lowest offset to read again
        self._sought: dict[Any, int] = {}         # partition -> where it was last sought to
        self._rereads: Counter = Counter()        # (partition, offset) -> times read again from there
        self._holes: dict[Any, tuple[int, int]] = {}   # partition -> (committed offset, commits held back)
        self._fetching: dict[Any, int] = {}       # partition -> first offset of the Fetched being delivered

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
            committed = self._committed_offset[tp]
            index, acked = self._acked_index[tp], self._acked[tp]
            n = 0
            for record in fetched.records:
                offset = record.offset
                if (committed is None or offset >= committed) and offset not in index:
                    index.add(offset)
                    acked.append(offset)
                    n += 1
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
                self._fetching[tp] = rs[0].offset   # for _add_gap: the drain loop checks the last offset
                yield tp, Fetched(tp, rs, generation)
        for tp, record in self.scheduler.iterate(singles):
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            if active is None or tp in active or tp in self._buffered_partitions:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, self._to_message(tp, record)

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Faust's drain loop saw offsets jump: acked as a gap, unless the jump follows a seek.

        A real gap (transaction markers, compaction) is committed as Faust does.
        But right after a seek nothing has been read yet: a message then far past
        the seek's offset was fetched *before* the seek, and the offsets in
        between are real messages, which Faust would commit unread (and then
        drop as already read). Read the partition again from the seek's offset
        instead; twice at most, then accept the gap.
        """
        fetched_from = self._fetching.pop(tp, None)
        if fetched_from is not None:
            # Faust's check saw the fetch's last offset: only what lies before its first is a gap
            offset_to = fetched_from - 1
            if offset_to < offset_from:
                return
        sought = self._sought.pop(tp, None)
        if sought is not None and offset_from - 1 <= sought and self._rereads[(tp, sought)] < 2:
            self._rereads[(tp, sought)] += 1
            return        # not a gap: _new_offset holds commits there and has the partition read again
        await super()._add_gap(tp, offset_from, offset_to)

    def _new_offset(self, tp: Any) -> int | None:
        """The offset to commit, only when everything from the committed offset on was handled.

        Faust lets one unacked message at the committed offset through (its
        check is ``min(acked) - committed > 1``, faust-streaming #606, made so
        that a transaction marker sitting there does not block commits): a
        message skipped there is committed past, unhandled. Here the message at
        the committed offset waits; if it is still missing after ``REREAD_AFTER``
        commits, the partition is read again from it. Only a partition of an
        input topic (where markers exist) gives up after ``MARKER_PATIENCE``.
        """
        committed = self._committed_offset[tp]
        acked, gaps = self._acked[tp], self._gap[tp]
        if committed is not None and acked:
            low = min(min(acked), gaps.begin()) if gaps else min(acked)
            if low > committed:
                at, held = self._holes.get(tp, (committed, 0))
                held = held + 1 if at == committed else 1
                self._holes[tp] = (committed, held)
                if tp.topic in getattr(self.app, "exact_topics", ()) or held <= MARKER_PATIENCE:
                    # Still missing after REREAD_AFTER commits (a message an agent is handling now is
                    # acked well within that): read the partition again from there, and again later.
                    if held % (2 * REREAD_AFTER) == REREAD_AFTER:
                        self._read_again(tp, committed)
                    return None
        self._holes.pop(tp, None)
        return super()._new_offset(tp)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        self._rereads.clear()
        self._sought = {tp: offset for tp, offset in self._read_offset.items() if offset is not None}

    async def seek(self, partition: Any, offset: int) -> None:
        await super().seek(partition, offset)
        self._sought[partition] = offset

    def _read_again(self, tp: Any, offset: int) -> None:
        self._reread[tp] = min(self._reread.get(tp, offset), offset)

    async def reread_skipped(self) -> int:
        """Seek back to what Faust skipped or took for a gap; returns how many partitions."""
        if not self._reread or not self.app.flow_control.is_active() or self.app.rebalancing:
            return 0
        assigned = self.assignment()
        todo, self._reread = self._reread, {}
        n = 0
        for tp, offset in todo.items():
            if tp in assigned:
                log.warning("Faust skipped %s from offset %d without our agents handling it: reading the "
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
        app = self.app
        recovery = app.tables.recovery
        # (app.rebalancing stays set until recovery ends; a new rebalance stops the flow first)
        if not recovery.in_recovery or not self.flow_active:
            return {}
        started = recovery._recovery_started_at     # Faust keeps no public accessor for these
        if started is None or now - started < stall or app.tables.changelog_queue.qsize():
            return {}
        received = recovery._active_events_received_at
        return {tp: max(0, recovery.active_offsets[tp] + 1)
                for tp, remaining in recovery.active_remaining().items()
                if remaining > 0 and now - received.get(tp, started) >= stall}

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


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


def consumer_url(broker: str) -> str:
    """The broker URL for our consumer transport: same hosts, our scheme."""
    hosts = broker.split("://", 1)[-1]
    return f"{SCHEME}://{hosts}"
