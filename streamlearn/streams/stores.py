"""Faust's tables at the edges: their manager's start, and what recovery reads back, counted.

Where a store's changelog offset comes from is ``pending.TableState``'s
business: every table the agents write goes through it, and it records the
offset of a delivered write only while the write's partition is this
worker's, with its database open.
"""

from __future__ import annotations

from typing import Any

from faust.tables import TableManager as FaustTableManager


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
