"""Join: an event's features with its label, in the partition that owns the key (decisions: ``core.join``)."""

from __future__ import annotations

import faust

from streamlearn.core import join

from ..codec import FeatureEvent, Inputs, Label, Rejected, encode_example, key_text
from ..deadletter import DeadLetters
from ..health import InputHealth
from ..outbox import Outbox
from ..pending import BoundedTable, join_key
from ..routing import is_tick, origin_of
from .live import LiveModels
from .loop import agent_log


class Joins:
    """Carries out the join's decisions: writes the join state, packs examples for the learner, refuses; tells
    ``health`` of each prediction and label of a key."""

    def __init__(self, inputs: Inputs, pending: BoundedTable[join.Waiting], early: BoundedTable[join.Parked],
                 live: LiveModels, training: faust.TopicT, dead: DeadLetters, health: InputHealth) -> None:
        self.inputs = inputs
        self.pending = pending
        self.early = early
        self.windows = join.Windows(features_ttl=pending.ttl, label_ttl=early.ttl)
        self.live = live
        self.training = training
        self.dead = dead
        self.health = health
        self._live_of = live.registry.find   # a key's live model, for its alerts (bound once: asked per event)

    async def message(self, msg, out: Outbox) -> None:
        """A label routed to its owner's partition, or a timer's tick (evict what outlived its TTL, see whose
        labels stopped)."""
        if is_tick(msg.headers):
            await self._expire(msg.partition, out)
            return
        try:
            label = self.inputs.label(msg.value, msg.key)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out, model=key_text(msg.key))
            return
        await self.label(msg, label, out)

    async def features(self, partition: int, ev: FeatureEvent, out: Outbox) -> None:
        """An event was answered: keep its features for the label; if the label came first, train now."""
        self.health.predicted(partition, ev.model, ev.features, self._live_of)
        key = join_key(ev.model, ev.event_id)
        outcome = join.on_features(ev, self.pending.get(key), self.early.get(key), self.windows, self.pending.clock())
        await self._carry_out(partition, key, outcome, out)

    async def label(self, msg, label: Label, out: Outbox) -> None:
        """Join a label with its event's features in the partition that owns its model (``msg.partition``)."""
        refused = join.label_refused(label, self.live.spec_of(msg.partition, label.model).is_classifier)
        if refused is not None:
            await self.dead.send(refused, msg, out, model=label.model)
            return
        key = join_key(label.model, label.event_id)
        origin = list(origin_of(msg.headers, msg.topic, msg.partition, msg.offset))
        outcome = join.on_label(label, origin, self.pending.get(key), self.early.get(key), msg.value, self.windows,
                                self.pending.clock())
        if isinstance(outcome, join.Refuse):
            self.health.refused(msg.partition, label.model, expired=True)
            await self.dead.send(outcome.rejected, msg, out, model=label.model)
        elif isinstance(outcome, join.DuplicateLabel):
            self.health.duplicate()
            agent_log().info("ignored a second label for event_id=%s model=%s", label.event_id, label.model)
        else:
            await self._carry_out(msg.partition, key, outcome, out)

    async def _carry_out(self, partition: int, key: bytes, outcome: join.Outcome, out: Outbox) -> None:
        """Write the join state a decision keeps; pack the example it sends to the learner."""
        if isinstance(outcome, join.Keep):
            if isinstance(outcome.entry, join.Parked):
                for parked in self.early.put(partition, key, outcome.entry):
                    await self._refuse_parked(partition, parked, out)
            else:
                self.pending.put(partition, key, outcome.entry)
        elif isinstance(outcome, join.Learn):
            if outcome.entry is not None:   # a first join (a replay writes nothing): how long the label took
                example = outcome.example
                self.health.joined(partition, example.model,
                                   0.0 if outcome.restamp else self.pending.clock() - outcome.entry.written,
                                   self._live_of)
                self.pending.put(partition, key, outcome.entry, restamp=outcome.restamp)
            out.pack(self.training, partition, encode_example(outcome.example))

    async def _expire(self, partition: int, out: Outbox) -> None:
        self.pending.evict(partition)
        for parked in self.early.evict(partition):
            await self._refuse_parked(partition, parked, out)
        self.health.tick(partition, self._live_of)

    async def _refuse_parked(self, partition: int, parked: join.Parked, out: Outbox) -> None:
        """An evicted parked label: dead-lettered ``unknown_event``, unless its features came and released it."""
        rejected = join.on_parked_evicted(parked, self.pending.get(join_key(parked.model, parked.event_id)),
                                          self.windows)
        if rejected is None:
            return
        self.health.refused(partition, parked.model, expired=False)
        topic, source, offset = parked.origin
        await self.dead.send_record(rejected, out, topic=topic, partition=source, offset=offset,
                                    key=parked.model.encode(), value=parked.value, model=parked.model)
