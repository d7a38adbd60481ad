"""Faust's tables at the edges: their manager's start, and what recovery reads back, counted.

Where a store's changelog offset comes from is ``pending.TableState``'s
business: every table the agents write goes through it, and it records the
offset of a delivered write only while the write's partition is this
worker's, with its database open.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from faust.tables import TableManager as FaustTableManager

log = logging.getLogger("streamlearn.stores")

# In the data directory: the id of the Kafka cluster whose changelogs its tables hold a prefix of.
CLUSTER_FILE = "kafka-cluster-id"


class TableManager(FaustTableManager):
    """Faust's table manager, without the second it sleeps before starting recovery.

    That sleep gives tables declared after the app starts a chance to
    register; a worker declares all of its tables before (``create_worker``),
    and every start and restart paid the second.
    """

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


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
