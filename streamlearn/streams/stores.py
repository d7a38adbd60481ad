"""Faust's tables at the edges: their manager's start, their recovery's changelog read, what it reads, counted.

Where a store's changelog offset comes from is ``pending.TableState``'s
business: every table the agents write goes through it, and it records the
offset of a delivered write only while the write's partition is this
worker's, with its database open.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables import TableManager as FaustTableManager
from faust.tables.recovery import RebalanceAgain, Recovery as FaustRecovery
from faust.types import TP

from streamlearn.core.offsets import ChangelogRead

log = logging.getLogger("streamlearn.stores")

# In the data directory: the id of the Kafka cluster whose changelogs its tables hold a prefix of.
CLUSTER_FILE = "kafka-cluster-id"


# The batched read's client: fetches of up to this much per partition and in all (the broker's own bounds
# still apply). Larger fetches mean fewer round trips; a fetch's records are held in memory until applied.
READ_PARTITION_BYTES = 8 * 2**20
READ_FETCH_BYTES = 64 * 2**20


class TableManager(FaustTableManager):
    """Faust's table manager, without the second it sleeps before starting recovery, and with ``Recovery``.

    That sleep gives tables declared after the app starts a chance to
    register; a worker declares all of its tables before (``create_worker``),
    and every start and restart paid the second.
    """

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    @property
    def recovery(self) -> FaustRecovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class _Record:
    """A changelog record as a table's ``apply_changelog_batch`` reads it: Faust's event and its message in one
    (``key``, ``value``: our tables' bytes, which Faust's raw codec hands on as they are)."""

    __slots__ = ("key", "value", "tp", "partition", "offset")

    def __init__(self, tp: TP, record: Any) -> None:
        self.key, self.value, self.tp, self.partition, self.offset = record.key, record.value, tp, tp.partition, \
            record.offset

    @property
    def message(self) -> "_Record":
        return self


class Recovery(FaustRecovery):
    """Faust's recovery, with the active changelog partitions read by one batched client.

    Faust's own read hands each record through its consumer thread, its
    conductor and a queue, and recomputes what remains over every changelog
    partition per record: about 11,000 records/s here. Instead, once Faust
    has found each active partition's highwater and where its store stands
    (``_build_offsets``), the partitions behind are marked read up to their
    highwater, so Faust's own read has nothing left, and read before the
    recovery completes (``on_recovery_completed``, which Faust waits on with
    no timeout) by a plain aiokafka consumer: each fetch's records of a
    partition applied as one batch through the table's own
    ``apply_changelog_batch``, the path Faust's read takes, with its
    wrappers (counted, forward-only checkpoints, RocksDB's persisted offset).

    The stream partitions stay paused until then, as in Faust's read. A
    rebalance during the read cancels it: each partition's offset then goes
    back to what was applied, so the next recovery reads the rest. The
    client's options (servers, security) are the app's
    ``changelog_client_options``; without them, or for a table that is
    global or has a changelog callback, Faust reads as before.
    """

    _read: ChangelogRead | None = None
    recovered_generation: int | None = None   # the consumer generation whose tables are all recovered

    def _readable(self, tp: TP) -> bool:
        table = self.tp_to_table.get(tp)
        return (table is not None and not getattr(table, "is_global", False)
                and getattr(table, "_on_changelog_event", None) is None)

    async def _build_offsets(self, consumer: Any, tps: set, destination: Any, title: str) -> None:
        if title == "active" and self._read is not None:   # a rebalance came before the read
            self._unread(self._read)
            self._read = None
        await super()._build_offsets(consumer, tps, destination, title)
        if title != "active" or getattr(self.app, "changelog_client_options", None) is None:
            return
        read = ChangelogRead({tp: destination[tp] for tp in tps if self._readable(tp)}, self.active_highwaters)
        self._read = read if read.highwaters else None
        for tp, highwater in read.highwaters.items():
            destination[tp] = highwater   # Faust's read: nothing left here

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        read, self._read = self._read, None
        if read is not None:
            try:
                await self._read_changelogs(read)
            finally:   # cancelled by a rebalance: what was not applied is read again
                self._unread(read)
            if self.signal_recovery_start.is_set():
                raise RebalanceAgain()
        await super().on_recovery_completed(generation_id)
        if self.app.consumer_generation_id == generation_id:
            self.recovered_generation = generation_id

    def _unread(self, read: ChangelogRead) -> None:
        """Partitions marked read for Faust and still held: back to the offset applied."""
        for tp, applied in read.applied.items():
            if self.active_offsets.get(tp) == read.highwaters[tp]:
                self.active_offsets[tp] = applied

    async def _read_changelogs(self, read: ChangelogRead) -> None:
        started = time.monotonic()
        client = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                  max_partition_fetch_bytes=READ_PARTITION_BYTES, fetch_max_bytes=READ_FETCH_BYTES,
                                  **self.app.changelog_client_options)
        await client.start()
        try:
            kafka = {tp: TopicPartition(tp.topic, tp.partition) for tp in read.highwaters}
            client.assign(list(kafka.values()))
            for tp, offset in read.start().items():
                client.seek(kafka[tp], offset)
            while (left := read.left()) and not self.signal_recovery_start.is_set():
                fetched = await client.getmany(*(kafka[tp] for tp in left), timeout_ms=1000)
                for ktp, records in fetched.items():
                    self._apply(read, TP(ktp.topic, ktp.partition), records)
                for tp in left:
                    read.passed(tp, await client.position(kafka[tp]))
        finally:
            await client.stop()
        seconds = time.monotonic() - started
        log.info("read %d changelog records of %d partitions back in %.1f s (%.0f records/s)", read.records,
                 len(read.highwaters), seconds, read.records / max(seconds, 1e-6))
        on_read: Callable[[int, float], None] | None = getattr(self.app, "on_changelog_read", None)
        if on_read is not None:
            on_read(read.records, seconds)

    def _apply(self, read: ChangelogRead, tp: TP, records: list) -> None:
        if tp not in read.highwaters or not records:
            return
        if records[-1].offset > read.highwaters[tp]:
            records = records[:read.wanted(tp, (r.offset for r in records))]
            if not records:
                return
        self.tp_to_table[tp].apply_changelog_batch([_Record(tp, r) for r in records])
        read.applied_up_to(tp, records[-1].offset, len(records))


def count_restored(table: Any, restored: Any) -> None:
    """Count (``restored.inc``) the changelog records Faust's recovery reads back into ``table``."""
    apply = table.apply_changelog_batch

    def apply_counted(batch: list) -> None:   # recovery hands each table its changelog in batches
        restored.inc(len(batch))
        apply(batch)
    table.apply_changelog_batch = apply_counted


def keep_tables_of(cluster: str, datadir: Path, tabledir: Path) -> bool:
    """Whether the tables on disk (``tabledir``) may be kept for Kafka cluster ``cluster``; removed if not.

    A store on disk holds a prefix of its changelogs, and recovery reads only
    what follows its offsets. Tables written for another cluster (the broker's
    storage started afresh, a new environment) hold offsets and records that
    cluster's changelogs never had: recovery would read nothing, and a model
    restored from such a checkpoint would skip the new training messages at
    or below its offset as learned. So they are removed, and the start reads
    the changelogs in full. The cluster is recorded in ``datadir`` (a data
    directory without the record, from before it existed, is kept).
    """
    record = datadir / CLUSTER_FILE
    known = record.read_text().strip() if record.exists() else None
    kept = known is None or known == cluster
    if not kept:
        log.warning("the data directory %s holds tables of Kafka cluster %s, not of %s (this one): removing them; "
                    "this start reads the changelogs in full", datadir, known, cluster)
        shutil.rmtree(tabledir, ignore_errors=True)
    datadir.mkdir(parents=True, exist_ok=True)
    record.write_text(cluster + "\n")
    return kept
