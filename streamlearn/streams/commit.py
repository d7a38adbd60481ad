"""The commit protocol: when the input of a batch may be committed, and what must be on the broker first.

Faust commits the offsets of acked events. ``BatchCommit`` decides which
events are acked and when; nothing else acks. For each fetch an agent
handled (the records of one partition, see transport.py), in this order:

0. The learn agent handles its partitions in offset order with no gap
   (``in_order``, ``core.offsets.InOrder``): a fetch that starts past the
   next offset due is neither handled nor acked, and the consumer reads the
   partition again from that offset.
1. While the records were handled, what they produced was sent at once
   (answers, routed messages, dead letters: ``Outbox.send``), packed
   (training examples: ``Outbox.pack``) or staged (table changes:
   ``WriteBehind.stage``; models learned: ``learned``/``changed``).
2. ``finish`` sends the packs.
3. The learn agent's fetches (``finish(..., learned=True)``) are held: when
   the partition's checkpoint is due (every N examples or T seconds, at once
   after a version change: ``core.checkpointing``), its changed models are
   checkpointed, a table change staged like any other.
4. The staged table changes are sent, the latest value of each key once,
   after every earlier flush (``WriteBehind.flush``).
5. What may be acked is chosen now, before any await (a rebalance during one
   changes the checkpoint policy): the fetch; for the learn agent, the held
   fetches below the first training offset some model's checkpoint lacks
   (all of them once none lacks any).
6. Once every record of 1-4 is delivered (a failed send is sent again until
   it is), those fetches are marked handled in the consumer and acked; Faust
   commits them at its next commit.

So a crash anywhere before 6 replays the fetch: its outputs may go out twice
(everything downstream is keyed by event id, and a model learns an event
once), never not at all. The outputs of no agent bypass this: ticks (a
timer's, see worker.py) carry nothing that is lost when they are.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Iterable

import faust

from streamlearn.core.checkpointing import CheckpointPolicy
from streamlearn.core.offsets import InOrder
from streamlearn.models import LiveModel

from .checkpoints import Checkpoints, CheckpointTooLarge
from .outbox import Outbox, WriteBehind

log = logging.getLogger("streamlearn.commit")


class BatchCommit:
    """The one owner of the commit protocol (the steps above) for every agent of a worker."""

    def __init__(self, app: faust.App, state: WriteBehind, policy: CheckpointPolicy, checkpoints: Checkpoints) -> None:
        self.app = app
        self.state = state                 # the tables' changelog writes, sent behind each batch
        self.policy = policy
        self.checkpoints = checkpoints
        self.held: dict[int, list] = {}    # partition -> training fetches learned, not yet covered by checkpoints
        self.order = InOrder()
        self._deliveries: set[asyncio.Task] = set()

    # ---- step 0 --------------------------------------------------------
    def in_order(self, event: faust.EventT) -> bool:
        """Whether the learn agent may handle this fetch now: not when it starts past the next offset due of
        its partition (then the consumer is asked to read the partition again from there)."""
        message = event.message
        first = getattr(message, "first", message.offset)
        consumer = getattr(self.app, "consumer", None)
        committed = consumer.committed_offset(message.tp) if hasattr(consumer, "committed_offset") else None
        handle, again, gap = self.order.check(message.tp, first, message.offset, committed)
        if again is not None:
            log.warning("%s: a fetch from offset %d came where offset %d is due (what lies between was skipped): "
                        "reading the partition again from %d", message.tp, first, again, again)
            if hasattr(consumer, "read_again"):
                consumer.read_again(message.tp, again)
        if gap is not None:
            log.error("%s: offsets %d..%d were never read again (deleted by retention?): going on without them",
                      message.tp, *gap)
        return handle

    # ---- step 1, the learn agent's part --------------------------------
    def learned(self, partition: int, live: LiveModel) -> None:
        """A model of the partition learned (or failed on) a training message: its checkpoint lacks it."""
        self.policy.learned(partition, live)

    def changed(self, partition: int, live: LiveModel | None) -> None:
        """A model's version changed (or was taken back after a rebalance): checkpoint the partition now."""
        self.policy.changed(partition, live)

    def dirty(self, partition: int) -> dict[str, LiveModel]:
        """The partition's models whose checkpoint lacks something they learned."""
        return self.policy.dirty.get(partition, {})

    # ---- steps 2-6 -------------------------------------------------------
    async def finish(self, out: Outbox, stream: faust.StreamT, event: faust.EventT, *, learned: bool = False) -> None:
        """A fetch is handled: send what it produced, and ack it (or, learned, what checkpoints cover) once
        all of that is delivered."""
        await out.send_packs()
        if learned:
            acks = self._covered(event.message.partition, event)
        else:
            acks = [event]
        written = await self.state.flush()
        if acks:
            self._ack_when_delivered(out, stream, acks, written)

    def _covered(self, partition: int, event: faust.EventT) -> list:
        held = self.held.setdefault(partition, [])
        held.append(event)
        if self.policy.due(partition):
            self._checkpoint(partition)
        low = self.policy.low_water(partition)
        n = len(held) if low is None else next((i for i, e in enumerate(held) if e.message.offset >= low), len(held))
        covered = held[:n]
        del held[:n]
        return covered

    def _checkpoint(self, partition: int) -> None:
        for live in self.policy.take_due(partition):
            try:
                self.checkpoints.write(live)
            except CheckpointTooLarge as exc:
                # Holding acks forever would stall the partition: the model's
                # learning since its last checkpoint is at risk; say so loudly.
                log.error("%s; its learning since the last checkpoint would be lost in a crash", exc)

    def _ack_when_delivered(self, out: Outbox, stream: faust.StreamT, events: Iterable[faust.EventT],
                            after: Awaitable[None] | None) -> None:
        task = asyncio.ensure_future(self._ack(out, out.handover(), stream, list(events), after))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _ack(self, out: Outbox, sent: list, stream: faust.StreamT, events: list,
                   after: Awaitable[None] | None) -> None:
        await out.deliver(sent)
        if after is not None:
            await asyncio.shield(after)
        handled = getattr(getattr(self.app, "consumer", None), "handled", None)   # streams/transport.py
        for event in events:
            if handled is not None:
                handled(event.message)
            await stream.ack(event)

    async def settled(self) -> None:
        """Until every ack decided so far is done (or failed)."""
        while self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)

    # ---- rebalances ----------------------------------------------------
    def forget_partitions(self, keep: set[int]) -> None:
        """After a rebalance: drop the held fetches and checkpoint policy of partitions moved away."""
        for p in [p for p in self.held if p not in keep]:
            del self.held[p]
        self.policy.forget_partitions(keep)
        self.order.forget()
