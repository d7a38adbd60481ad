"""Predict: answer each event with its key's live model, in the partition that owns the key."""

from __future__ import annotations

import time

import faust

from ..codec import FeatureEvent, Inputs, Rejected, dumps, encode_prediction, key_text
from ..deadletter import Counters, DeadLetters
from ..outbox import Outbox
from ..routing import ANSWERED_HEADER, is_answered, trace_header, trace_of
from .joins import Joins
from .live import LiveModels
from .loop import fetched_at


class Predict:
    """Answers an event on the predictions topic, then keeps its features for the label (``Joins.features``)."""

    def __init__(self, inputs: Inputs, live: LiveModels, predictions: faust.TopicT, events: faust.TopicT, joins: Joins,
                 dead: DeadLetters, metrics: Counters) -> None:
        self.inputs = inputs
        self.live = live
        self.predictions = predictions
        self.events = events
        self.joins = joins
        self.dead = dead
        self.metrics = metrics

    async def event(self, msg, out: Outbox) -> None:
        """An event routed to its owner's partition (answered over HTTP already: only its features are kept)."""
        try:
            ev = self.inputs.event(msg.value, msg.key)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out, model=key_text(msg.key))
            return
        if is_answered(msg.headers):
            await self.joins.features(msg.partition, ev, out)
            return
        stamps = trace_of(msg.headers)
        if stamps is not None:
            stamps += [["fetched", fetched_at()], ["handled", time.time()]]
        await self.answer(msg, ev, out, stamps)

    async def answer(self, msg, ev: FeatureEvent, out: Outbox, stamps: list | None = None) -> None:
        """Answer an event in the partition that owns its model (``msg.partition``); ``stamps``: its latency
        stamps so far, when it asked for them (``routing.trace_of``): its prediction carries them on."""
        started = time.perf_counter()
        try:
            value, predicted_at = self.predicted(msg.partition, ev)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out, model=ev.model)
            return
        headers = None if stamps is None else [trace_header([*stamps, ["predicted", predicted_at],
                                                             ["sent", time.time()]])]
        await out.send(self.predictions, key=ev.model.encode(), value=value, headers=headers)
        self.metrics.predicted(ev.model, time.perf_counter() - started, None if ev.ts is None else predicted_at - ev.ts)
        await self.joins.features(msg.partition, ev, out)

    async def answer_request(self, partition: int, ev: FeatureEvent, keep: bool) -> bytes:
        """Answer an event asked for over HTTP on its key's owner (``partition``): its prediction, the JSON of
        the predictions topic. ``keep``: its features wait for the label, as a topic event's do (sent to the
        internal events topic marked answered, where this agent keeps them, in order with the partition).
        Raises ``Rejected`` (an unknown spec, a spec mismatch, River's error)."""
        started = time.perf_counter()
        refused = self.inputs.unknown_spec(ev)
        if refused is not None:
            raise refused
        value, _ = self.predicted(partition, ev)
        if keep:
            raw = dumps({"event_id": ev.event_id, "model": ev.model, "features": ev.features, "ts": ev.ts})
            await (await self.events.send(key=ev.model.encode(), value=raw, partition=partition,
                                          headers=[(ANSWERED_HEADER, b"1")]))
        self.metrics.predicted(ev.model, time.perf_counter() - started, None)
        return value

    def predicted(self, partition: int, ev: FeatureEvent) -> tuple[bytes, float]:
        """The prediction record of the key's live model for an event, and when it was made."""
        live = self.live.for_event(partition, ev.model, ev.spec, ev.event_id)
        prediction = self.live.predict(live, ev.features, ev.event_id)
        predicted_at = time.time()
        return encode_prediction(ev, prediction.label, prediction.proba, prediction.version, prediction.learned,
                                 predicted_at), predicted_at
