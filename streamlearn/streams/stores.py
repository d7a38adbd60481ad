"""Two hooks on Faust's tables: what recovery reads back, and where a store's changelog offset comes from.

With RocksDB, each table partition's database records the changelog offset
it holds everything up to (its *persisted offset*); a recovery reads the
changelog after it. Faust sets it from the delivery of each write the table
sent, also when that write is delivered after its partition was revoked:
the store would then claim writes another owner made in between, and a
later recovery of the partition skip them (a checkpoint skipped is learning
lost). ``guard_persisted_offsets`` keeps Faust's record to partitions this
worker owns, with their database open. The join state is written behind by
``pending.TableState``, which applies the same rule to its own writes.
"""

from __future__ import annotations

from typing import Any, Callable


def count_restored(table: Any, restored: Any) -> None:
    """Count (``restored.inc``) the changelog records Faust's recovery reads back into ``table``."""
    apply = table.apply_changelog_batch

    def apply_counted(batch: list) -> None:   # recovery hands each table its changelog in batches
        restored.inc(len(batch))
        apply(batch)
    table.apply_changelog_batch = apply_counted


def guard_persisted_offsets(table: Any, actives: Callable[[], set]) -> None:
    """Record a delivered write's offset in the store only while its partition is this worker's."""
    dbs = getattr(table.data, "_dbs", None)   # RocksDB: the open databases
    if dbs is None:
        return   # the memory store records no offsets: nothing to guard
    record = table._on_changelog_sent   # Faust passes it as each changelog send's callback

    def on_changelog_sent(fut: Any) -> None:
        tp = fut.result().topic_partition
        if tp.partition in dbs and (tp.topic, tp.partition) in actives():
            record(fut)
    table._on_changelog_sent = on_changelog_sent
