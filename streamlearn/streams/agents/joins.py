"""Join: an event's features with its label, in the partition that owns the key (decisions: ``core.join``)."""

from __future__ import annotations

import asyncio
from typing import Callable

import faust

from streamlearn.core import join
from streamlearn.core.defaults import DefaultLabels

from ..codec import EXPIRED_EVENT, FeatureEvent, Inputs, Label, Rejected, encode_example, key_text
from ..deadletter import DeadLetters
from ..health import InputHealth
from ..outbox import Outbox
from ..pending import INDEX_STEP, SEP, BoundedTable, join_key, join_model, scan
from ..routing import is_tick, origin_of, partition_for
from ..transport import record_time
from .live import LiveModels
from .loop import agent_log


class Joins:
    """Carries out the join's decisions: writes the join state, packs examples for the learner, refuses; tells
    ``health`` of each prediction and label of a key. With ``defaults``, an event of a key with a default-label
    rule that got no label within its wait learns the rule's label."""

    def __init__(self, inputs: Inputs, pending: BoundedTable[join.Waiting], early: BoundedTable[join.Parked],
                 live: LiveModels, training: faust.TopicT, dead: DeadLetters, health: InputHealth,
                 defaults: DefaultLabels | None = None) -> None:
        self.inputs = inputs
        self.pending = pending
        self.early = early
        self.windows = join.Windows(features_ttl=pending.ttl, label_ttl=early.ttl)
        self.live = live
        self.training = training
        self.dead = dead
        self.health = health
        self._live_of = live.registry.find   # a key's live model, for its alerts (bound once: asked per event)
        self.defaults = defaults
        self._giving: dict[bytes, join.Waiting] = {}   # defaulted entries whose examples are on their way

    async def message(self, msg, out: Outbox) -> None:
        """A label routed to its owner's partition, or a timer's tick (evict what outlived its TTL, see whose
        labels stopped)."""
        if is_tick(msg.headers):
            await self._tick(msg, out)
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
        outcome = join.on_features(ev, self._waiting(key), self.early.get(key), self.windows, self.pending.clock())
        await self._carry_out(partition, key, outcome, out)
        if self.defaults is not None and isinstance(outcome, join.Keep):
            self.defaults.waiting(partition, key, ev.model, outcome.entry.written)

    async def label(self, msg, label: Label, out: Outbox) -> None:
        """Join a label with its event's features in the partition that owns its model (``msg.partition``)."""
        refused = join.label_refused(label, self.live.spec_of(msg.partition, label.model).is_classifier)
        if refused is not None:
            await self.dead.send(refused, msg, out, model=label.model)
            return
        key = join_key(label.model, label.event_id)
        origin = list(origin_of(msg.headers, msg.topic, msg.partition, msg.offset))
        outcome = join.on_label(label, origin, self._waiting(key), self.early.get(key), msg.value, self.windows,
                                self.pending.clock())
        if isinstance(outcome, join.Refuse):
            self.health.refused(msg.partition, label.model,
                                "expired" if outcome.rejected.reason == EXPIRED_EVENT else "late")
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

    async def _tick(self, msg, out: Outbox) -> None:
        partition = msg.partition
        self.pending.evict(partition)
        for parked in self.early.evict(partition):
            await self._refuse_parked(partition, parked, out)
        if self.defaults is not None:
            await self._give_defaults(msg, out)
        self.health.tick(partition, self._live_of)

    async def _give_defaults(self, tick, out: Outbox) -> None:
        """The events whose wait ended by the tick's time (its record's timestamp: the same when it is read
        again) learn their rule's label. Their examples are delivered before their entries are written: the
        changelog never says ``defaulted`` of an example the learner may lack (docs/checkpoints.md)."""
        defaults, partition = self.defaults, tick.partition
        assert defaults is not None
        now, origin = record_time(tick), [tick.topic, partition, tick.offset]
        given: dict[bytes, tuple[str, join.Waiting]] = {}
        for key in defaults.due(partition, now):
            if key in given:    # queued twice (found by a scan, and written since): given once
                continue
            model, _, event_id = key.partition(SEP)
            model_key = model.decode()
            rule = defaults.rule_for(model_key)
            if rule is None:
                continue
            waiting = self.pending.get(key)
            outcome = join.on_wait_over(event_id.decode(), model_key, waiting, rule.label, rule.wait, origin, now)
            if isinstance(outcome, join.Learn):
                out.pack(self.training, partition, encode_example(outcome.example))
                given[key] = (model_key, outcome.entry)
            elif outcome.why is join.NOT_YET:
                assert waiting is not None
                defaults.waiting(partition, key, model_key, waiting.written)
        if not given:
            return
        self._giving.update((key, entry) for key, (_, entry) in given.items())   # meanwhile, a label is late
        try:
            await out.send_packs()
            await out.deliver(out.handover())
        finally:
            for key in given:
                self._giving.pop(key, None)
        for key, (model, entry) in given.items():
            self.pending.put(partition, key, entry, restamp=False)
            self.health.defaulted(partition, model)

    def _waiting(self, key: bytes) -> join.Waiting | None:
        """An event's entry in the join state, or the default it is being given."""
        return self._giving.get(key) or self.pending.get(key)

    def forget_partitions(self, keep: set[int]) -> None:
        """A rebalance: the events waiting for a default label are found again (``find_waiting``)."""
        if self.defaults is not None:
            self.defaults.forget_partitions(keep)

    async def find_waiting(self, active: Callable[[], bool]) -> bool:
        """After a rebalance: find the events that wait for a default label in the join state, a chunk at a
        time while ``active()`` (this generation's tables are recovered: before, the store lacks what the
        changelogs still hold); begins again if a rebalance comes meanwhile. True once complete."""
        defaults = self.defaults
        if defaults is None or defaults.scanned:
            return True
        if not active():   # checked before the scan takes the store's keys (the memory store's at its start)
            return False
        generation, partitions = defaults.generation, self.pending.partitions
        found: list[tuple[int, bytes, str, float]] = []
        for chunk in scan(self.pending.data, INDEX_STEP):
            for key, raw in chunk:
                model = join_model(key)
                if defaults.rule_for(model) is None:
                    continue
                entry = self.pending.decode(raw)
                if entry.origin is None:
                    found.append((partition_for(model, partitions), key, model, entry.written))
            await asyncio.sleep(0)
            if defaults.generation != generation or not active():
                return False
        for partition, key, model, written in found:
            defaults.found(partition, key, model, written)
        defaults.scanned = True
        return True

    async def _refuse_parked(self, partition: int, parked: join.Parked, out: Outbox) -> None:
        """An evicted parked label: dead-lettered ``unknown_event``, unless its features came and released it."""
        rejected = join.on_parked_evicted(parked, self.pending.get(join_key(parked.model, parked.event_id)),
                                          self.windows)
        if rejected is None:
            return
        self.health.refused(partition, parked.model, "unknown")
        topic, source, offset = parked.origin
        await self.dead.send_record(rejected, out, topic=topic, partition=source, offset=offset,
                                    key=parked.model.encode(), value=parked.value, model=parked.model)
