"""What an agent produces, sent until it is on the broker.

Faust commits a consumed offset after flushing its producer, but a flush
also returns when a send *failed* (a batch that expired while the broker was
down): the input is committed, its output is lost. An ``Outbox`` closes that
gap. Agents send through the app's producer (no per-message Faust send path);
``deliver`` waits until every record handed over is on the broker, sending a
failed one again until it is, and ``streams.commit`` acks a batch's inputs
only after that, so a crash replays them instead of losing them.

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
from typing import Any, Awaitable, Callable, Sequence

import faust

from .codec import pack

log = logging.getLogger("streamlearn.outbox")

Headers = Sequence[tuple[str, bytes]] | None

# A pack stays well under the broker's default message size limit (1 MB).
PACK_MAX_BYTES = 512 * 1024


class Outbox:
    """One per agent: its sends, and their delivery."""

    def __init__(self, app: faust.App, *, on_retry: Callable[[str], None] = lambda topic: None,
                 retry_backoff: float = 0.5) -> None:
        self.app = app
        self.on_retry = on_retry
        self.retry_backoff = retry_backoff
        self._sent: list[tuple[Any, tuple]] = []   # (delivery future, what was sent) since the last hand-over
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

    def handover(self) -> list:
        """What was sent since the previous hand-over, for ``deliver`` (``streams.commit`` acks inputs after it)."""
        sent, self._sent = self._sent, []
        return sent

    def delivered(self) -> asyncio.Future:
        """Done once everything sent through this outbox so far is delivered; its result: the delivery
        (``RecordMetadata``: topic, partition, offset) of each record sent since the previous call, in order."""
        sent, self._sent = self._sent, []
        task = asyncio.ensure_future(self._deliver_after(self._last, sent))
        self._last = task
        return task

    async def _deliver_after(self, previous: asyncio.Future | None, sent: list) -> list:
        if previous is not None:
            await asyncio.shield(previous)
        return await self.deliver(sent)

    async def deliver(self, sent: list) -> list:
        """Until every record of ``sent`` is on the broker (failed ones are sent again); their deliveries, in order."""
        deliveries: list = [None] * len(sent)
        waiting = list(enumerate(sent))
        while waiting:
            results = await asyncio.gather(*(future for _, (future, _) in waiting), return_exceptions=True)
            failed = []
            for (i, (_, record)), result in zip(waiting, results):
                if isinstance(result, BaseException):
                    failed.append((i, record))
                else:
                    deliveries[i] = result
            if not failed:
                break
            log.warning("%d sends failed (first: %r to %s); sending them again", len(failed),
                        next(r for r in results if isinstance(r, BaseException)), failed[0][1][0])
            await asyncio.sleep(self.retry_backoff)
            waiting = []
            for i, record in failed:
                self.on_retry(record[0])
                waiting.append((i, (await self._send(record), record)))
        return deliveries

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

    Once a flush is delivered, the sink of each topic (``on_delivered``) is
    given its writes with their offsets, flush after flush in order: that is
    where a table's store takes them (``pending.TableState``).
    """

    def __init__(self, out: Outbox) -> None:
        self.out = out
        self._staged: dict[tuple[str, bytes], tuple[int, bytes | None]] = {}   # (topic, key) -> (partition, value)
        self._lock = asyncio.Lock()
        self._done: asyncio.Future | None = None
        self._sinks: dict[str, Sink] = {}

    def on_delivered(self, topic: str, sink: "Sink") -> None:
        """``sink(writes)`` gets the delivered writes to ``topic``: ``(partition, key, value, offset)`` each."""
        self._sinks[topic] = sink

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
                self._done = asyncio.ensure_future(self._delivered(self._done, self.out.delivered(), staged))
            return self._done

    async def _delivered(self, previous: asyncio.Future | None, delivery: asyncio.Future,
                         staged: dict[tuple[str, bytes], tuple[int, bytes | None]]) -> None:
        deliveries = await asyncio.shield(delivery)
        if previous is not None:
            await asyncio.shield(previous)   # the sinks take flushes in order
        by_topic: dict[str, list[tuple[int, bytes, bytes | None, int]]] = {}
        for ((topic, key), (partition, value)), meta in zip(staged.items(), deliveries):
            if topic in self._sinks:
                by_topic.setdefault(topic, []).append((partition, key, value, meta.offset))
        for topic, writes in by_topic.items():
            try:
                self._sinks[topic](writes)
            except Exception:  # noqa: BLE001 - a store that failed to take them must not hold every ack back
                log.exception("the store of %s could not take %d delivered writes; they stay in memory", topic,
                              len(writes))


Sink = Callable[[list[tuple[int, bytes, "bytes | None", int]]], None]
