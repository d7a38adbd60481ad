"""Routers: any partition of an input topic in, the partition that owns the model key out.

A router decodes and validates raw bytes, then re-publishes the original
bytes to the owner's partition of an internal topic (see routing.py), with a
header recording where the message came from. A message that already sits
in its owner's partition number, on the worker that owns it (producers keyed
by model with Kafka's default partitioner), is predicted or joined by the
router itself, saving the hop. Operator commands are checked here and run by
the model's learn agent, in order with its learning.
"""

from __future__ import annotations

import time

import faust

from ..codec import SIGNATURE_HEADER, Inputs, Rejected, request_id_of, signature_of
from ..deadletter import DeadLetters
from ..outbox import Outbox
from ..routing import COMMAND_HEADER, Ownership, origin_header, trace_header, trace_of
from ..topics import Topics
from ..commands import Commands
from .joins import Joins
from .loop import fetched_at
from .predict import Predict


class Routers:
    """The handlers of the three input topics."""

    def __init__(self, topics: Topics, ownership: Ownership, inputs: Inputs, dead: DeadLetters, commands: Commands,
                 predict: Predict, joins: Joins) -> None:
        self.topics = topics
        self.ownership = ownership
        self.inputs = inputs
        self.dead = dead
        self.commands = commands
        self.predict = predict
        self.joins = joins

    async def features(self, msg, out: Outbox) -> None:
        """Feature events: answered here when their partition is their owner's on this worker, else routed."""
        try:
            ev = self.inputs.event(msg.value, msg.key)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out)
            return
        refused = self.inputs.unknown_spec(ev)
        if refused is not None:
            await self.dead.send(refused, msg, out, model=ev.model)
            return
        owner = self.ownership.owner(ev.model)
        stamps = trace_of(msg.headers)
        if stamps is not None:
            stamps += [["fetched", fetched_at()], ["handled", time.time()]]
        if self.ownership.here(msg.partition, owner):
            await self.predict.answer(msg, ev, out, stamps)
        elif stamps is None:
            await self._route(out, self.topics.events, ev.model, owner, msg)
        else:
            await self._route(out, self.topics.events, ev.model, owner, msg,
                              trace_header([*stamps, ["routed", time.time()]]))

    async def feedback(self, msg, out: Outbox) -> None:
        """Labels: joined here when their partition is their owner's on this worker, else routed."""
        try:
            label = self.inputs.label(msg.value, msg.key)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out)
            return
        owner = self.ownership.owner(label.model)
        if self.ownership.here(msg.partition, owner):
            await self.joins.label(msg, label, out)
        else:
            await self._route(out, self.topics.labels, label.model, owner, msg)

    async def control(self, msg, out: Outbox) -> None:
        """Operator commands: checked here, run by the model's learn agent, in order with its learning."""
        signature = signature_of(msg.headers)
        try:
            cmd = self.inputs.command(msg.value, msg.key, signature)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out)
            await self.commands.answers.send(None, request_id_of(msg.value), ok=False, error=rejected.reason,
                                       detail=rejected.detail)
            return
        signed = [(SIGNATURE_HEADER, signature)] if signature else []
        await self._route(out, self.topics.training, cmd.model, self.ownership.owner(cmd.model), msg,
                          (COMMAND_HEADER, b"1"), *signed)

    async def _route(self, out: Outbox, topic: faust.TopicT, model: str, owner: int, msg,
                     *headers: tuple[str, bytes]) -> None:
        await out.send(topic, key=model.encode(), value=msg.value, partition=owner,
                       headers=[origin_header(msg.topic, msg.partition, msg.offset), *headers])
