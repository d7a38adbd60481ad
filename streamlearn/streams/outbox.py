"""What an agent produces, and when the input that produced it may be committed.

Faust commits a consumed offset after flushing its producer, but a flush
also returns when a send *failed* (a batch that expired while the broker was
down): the input is committed, its output is lost. An ``Outbox`` closes that
gap. Agents send through the app's producer (no per-message Faust send path)
and hand over the input events of a batch with ``ack_when_delivered``: they
are acked only once every message sent for them is on the broker. A failed
send is sent again until it is; until then its inputs stay uncommitted, so a
crash replays them instead of losing them.

A resent message may land after messages sent later: order across a retry is
not kept (everything downstream is keyed by event id or is the training log,
which defines its own order).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable, Sequence

import faust

log = logging.getLogger("streamlearn.outbox")

Headers = Sequence[tuple[str, bytes]] | None


class Outbox:
    """One per agent: sends, and acks inputs once their outputs are delivered."""

    def __init__(self, app: faust.App, *, on_retry: Callable[[str], None] = lambda topic: None,
                 retry_backoff: float = 0.5) -> None:
        self.app = app
        self.on_retry = on_retry
        self.retry_backoff = retry_backoff
        self._sent: list[tuple[Any, tuple]] = []   # (delivery future, what was sent) since the last hand-over
        self._deliveries: set[asyncio.Task] = set()

    async def send(self, topic: faust.TopicT | str, *, key: bytes | None, value: bytes | None,
                   partition: int | None = None, headers: Headers = None) -> None:
        name = topic if isinstance(topic, str) else topic.get_topic_name()
        record = (name, key, value, partition, headers)
        self._sent.append((await self._send(record), record))

    def ack_when_delivered(self, stream: faust.StreamT, events: Iterable[faust.EventT]) -> None:
        """Ack ``events`` once everything sent since the previous call is delivered."""
        sent, self._sent = self._sent, []
        task = asyncio.ensure_future(self._deliver(stream, list(events), sent))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, stream: faust.StreamT, events: list, sent: list) -> None:
        while sent:
            results = await asyncio.gather(*(future for future, _ in sent), return_exceptions=True)
            failed = [record for (_, record), result in zip(sent, results) if isinstance(result, BaseException)]
            if not failed:
                break
            log.warning("%d sends failed (first: %r to %s); sending them again", len(failed),
                        next(r for r in results if isinstance(r, BaseException)), failed[0][0])
            await asyncio.sleep(self.retry_backoff)
            sent = []
            for record in failed:
                self.on_retry(record[0])
                sent.append((await self._send(record), record))
        handled = getattr(getattr(self.app, "consumer", None), "handled", None)   # streams/transport.py
        for event in events:
            if handled is not None:
                handled(event.message)
            await stream.ack(event)

    async def _send(self, record: tuple) -> Any:
        """Hand one record to the producer; while it cannot take it (no metadata, broker away), wait and retry."""
        name, key, value, partition, headers = record
        while True:
            try:
                return await self.app.producer.send(name, key, value, partition, None, headers)
            except Exception as exc:  # noqa: BLE001 - keep the record; an agent crash would not help
                self.on_retry(name)
                log.warning("could not send to %s (%r); retrying", name, exc)
                await asyncio.sleep(self.retry_backoff)
