"""What an agent produces, and when the input that produced it may be committed.

Faust commits a consumed offset after flushing its producer, but a flush
also returns when a send *failed* (a batch that expired while the broker was
down): the input is committed, its output is lost. An ``Outbox`` closes that
gap. Agents send through the app's producer (no per-message Faust send path)
and hand over the input events of a batch with ``ack_when_delivered``: they
are acked only once every message sent for them is on the broker. A failed
send is sent again until it is; until then its inputs stay uncommitted, so a
crash replays them instead of losing them.

Records of a topic-partition that travel together (training examples: one
message per partition per batch instead of one per example) are ``pack``ed
and sent as JSON arrays by ``send_packs``, before the batch is handed over.

Table changes are written behind (``WriteBehind``): an agent changes its
state in memory and stages the change; at the end of its batch, the changes
staged by then are sent, the latest value of each key once, and the batch's
inputs are acked only once those are delivered too.

A resent message may land after messages sent later: order across a retry is
not kept (everything downstream is keyed by event id or is the training log,
which defines its own order).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Iterable, Sequence

import faust

from .codec import pack

log = logging.getLogger("streamlearn.outbox")

Headers = Sequence[tuple[str, bytes]] | None

# A pack stays well under the broker's default message size limit (1 MB).
PACK_MAX_BYTES = 512 * 1024


class Outbox:
    """One per agent: sends, and acks inputs once their outputs are delivered."""

    def __init__(self, app: faust.App, *, on_retry: Callable[[str], None] = lambda topic: None,
                 retry_backoff: float = 0.5) -> None:
        self.app = app
        self.on_retry = on_retry
        self.retry_backoff = retry_backoff
        self._sent: list[tuple[Any, tuple]] = []   # (delivery future, what was sent) since the last hand-over
        self._deliveries: set[asyncio.Task] = set()
        self._packs: dict[tuple[str, int], list[bytes]] = {}   # (topic, partition) -> JSON values to pack
        self._last: asyncio.Future | None = None   # delivery of everything sent up to the last ``delivered``

    async def send(self, topic: faust.TopicT | str, *, key: bytes | None, value: bytes | None,
                   partition: int | None = None, headers: Headers = None) -> None:
        name = topic if isinstance(topic, str) else topic.get_topic_name()
        record = (name, key, value, partition, headers)
        self._sent.append((await self._send(record), record))

    def pack(self, topic: faust.TopicT | str, partition: int, value: bytes) -> None:
        """Send a JSON value with the others packed for its topic-partition, at ``send_packs``."""
        name = topic if isinstance(topic, str) else topic.get_topic_name()
        self._packs.setdefault((name, partition), []).append(value)

    async def send_packs(self) -> None:
        packs, self._packs = self._packs, {}
        for (name, partition), values in packs.items():
            for value in pack(values, PACK_MAX_BYTES):
                await self.send(name, key=None, value=value, partition=partition)

    def ack_when_delivered(self, stream: faust.StreamT, events: Iterable[faust.EventT],
                           after: Awaitable[None] | None = None) -> None:
        """Ack ``events`` once everything sent since the previous call is delivered (and ``after`` is done)."""
        sent, self._sent = self._sent, []
        task = asyncio.ensure_future(self._deliver(stream, list(events), sent, after))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    def delivered(self) -> asyncio.Future:
        """Done once everything sent through this outbox so far is delivered."""
        sent, self._sent = self._sent, []
        task = asyncio.ensure_future(self._deliver_after(self._last, sent))
        self._last = task
        return task

    async def _deliver_after(self, previous: asyncio.Future | None, sent: list) -> None:
        if previous is not None:
            await asyncio.shield(previous)
        await self._deliver_all(sent)

    async def _deliver(self, stream: faust.StreamT, events: list, sent: list,
                       after: Awaitable[None] | None) -> None:
        await self._deliver_all(sent)
        if after is not None:
            await asyncio.shield(after)
        handled = getattr(getattr(self.app, "consumer", None), "handled", None)   # streams/transport.py
        for event in events:
            if handled is not None:
                handled(event.message)
            await stream.ack(event)

    async def _deliver_all(self, sent: list) -> None:
        """Until every record of ``sent`` is on the broker: failed ones are sent again."""
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


class WriteBehind:
    """Table changes staged in memory by any agent, sent once per key per flush, in order, through one outbox.

    Agents share the join state: a key written by one agent's batch may be sent
    by another agent's flush. So a flush returns the delivery of *everything*
    sent so far (each delivery waits for the one before), and an agent acks its
    batch after that: whoever sent its changes, they are on the broker first.
    Flushes hold a lock, so a key's values reach the broker in the order written.
    """

    def __init__(self, out: Outbox) -> None:
        self.out = out
        self._staged: dict[tuple[str, bytes], tuple[int, bytes | None]] = {}   # (topic, key) -> (partition, value)
        self._lock = asyncio.Lock()
        self._done: asyncio.Future | None = None

    def stage(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        """The key's new value (None: deleted), sent at the next flush; a newer value replaces a staged one."""
        self._staged.pop((topic, key), None)
        self._staged[(topic, key)] = (partition, value)

    async def flush(self) -> Awaitable[None] | None:
        """Send what is staged; returns what to await before acking inputs that staged changes."""
        async with self._lock:
            staged, self._staged = self._staged, {}
            for (topic, key), (partition, value) in staged.items():
                await self.out.send(topic, key=key, value=value, partition=partition)
            if staged:
                self._done = self.out.delivered()
            return self._done
