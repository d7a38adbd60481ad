"""The agents: thin ``async for`` loops from topic to topic.

    features --route_features--> internal.events   --predict--> predictions  (+ pending features)
    feedback --route_feedback--> internal.labels   --join-----> internal.training (or parked as early)
    control  --route_control---> internal.training
                                 internal.training --learn----> the live model (examples, and commands
                                                                in order with them: see versions.py)

Routers decode and validate raw bytes, then re-publish the original bytes to
the partition that owns the model key (see routing.py), with a header
recording where the message came from. A message that already sits in its
owner's partition number, on the worker that owns it (producers keyed by
model with Kafka's default partitioner), is predicted or joined by the router
itself, saving the hop. Everything after a router runs in the worker owning
the key. The join's decisions are ``streamlearn.core.join``; those about
models, the functions of ``streamlearn.models``.

Every agent takes its input a fetch at a time (one Faust event per partition
per fetch, see transport.py) and sends through an ``Outbox``; routers,
predict and join ack a fetch once all it produced is delivered. The learn agent acks when a checkpoint covers its
examples (and what it sent is delivered).

No input can stop an agent: what cannot be decoded is dead-lettered with its
reason, and an unexpected exception while handling one event (a bug of ours,
a River error) dead-letters that event as ``internal_error`` and the batch
goes on. Should an agent die anyway, the events it had taken and not handled
are kept and handled first when Faust restarts it.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import faust

from streamlearn import models
from streamlearn.core import join
from streamlearn.models import LiveModel, ModelRegistry, Spec

from . import codec
from .codec import BAD_LABEL, INTERNAL_ERROR, MODEL_ERROR, SPEC_MISMATCH, UNKNOWN_SPEC, Example, Rejected
from .checkpoints import CheckpointPolicy, Checkpoints, CheckpointTooLarge
from .deadletter import Counters, DeadLetters
from .outbox import Outbox, WriteBehind
from .pending import BoundedTable, join_key
from .routing import COMMAND_HEADER, TICK_HEADER, is_command, is_tick, origin_header, origin_of, partition_for
from .topics import Topics
from .transport import records_of
from .versions import Audit, Commands

log = logging.getLogger("streamlearn.agents")   # what no agent does (ticks, rebalances)
_running: ContextVar[str] = ContextVar("agent", default="")   # each agent runs as a task of its own


def agent_log() -> logging.Logger:
    """The logger of the agent running now: ``streamlearn.agent.predict``, ``streamlearn.agent.join``, ..."""
    name = _running.get()
    return logging.getLogger(f"streamlearn.agent.{name}") if name else log


def _current(app: faust.App, event) -> bool:
    """Whether an event belongs to the consumer's current generation.

    A rebalance may come while a batch is handled: the rest of it may belong
    to partitions now owned by another worker, which reads them again from
    the committed offset. Handling them here too would write join state into
    a partition we no longer own; they are skipped, and not acked (a worker
    that kept the partition gets them again after Faust's seek).
    """
    return app.flow_control.is_active() and event.message.generation_id == app.consumer_generation_id


Handler = Callable[[Any, "Outbox"], Awaitable[None]]


@dataclass(frozen=True)
class Options:
    partitions: int
    default_model: str
    max_message_bytes: int
    command_secret: bytes | None = None   # commands must be signed with it (None: not checked)
    specs: Mapping[str, Spec] = field(default_factory=lambda: models.SPECS)   # what an event may ask for


class Agents:
    """The agent bodies of one app, with their dependencies passed in."""

    def __init__(self, *, topics: Topics, registry: ModelRegistry, pending: BoundedTable[join.Waiting],
                 early: BoundedTable[join.Parked],
                 deadletters: DeadLetters, metrics: Counters, options: Options,
                 spec_for: Callable[[str], Spec], checkpoints: Checkpoints, policy: CheckpointPolicy,
                 versions: models.ModelVersions, commands: Commands, audit: Audit,
                 outbox: Callable[[], Outbox], state: WriteBehind) -> None:
        self.topics = topics
        self.registry = registry
        self.pending = pending
        self.early = early
        self.windows = join.Windows(features_ttl=pending.ttl, label_ttl=early.ttl)
        self.dead = deadletters
        self.metrics = metrics
        self.options = options
        self.spec_for = spec_for
        self.checkpoints = checkpoints
        self.policy = policy
        self.versions = versions
        self.commands = commands
        self.audit = audit
        self.outbox = outbox
        self.state = state   # the tables' changelog writes (join state, checkpoints, snapshots), sent behind each batch
        self.owned: set[int] = set()  # partitions of the internal topics assigned to this worker
        self.held: dict[int, list] = {}  # training events learned but not yet covered by a checkpoint
        # agent name -> (stream, events it had taken but not handled when it crashed)
        self.unfinished: dict[str, tuple[Any, list]] = {}
        self.crashes: dict[str, tuple[float, str]] = {}  # agent name -> (time, exception) of its last crash

    # ---- the batch loop: any input, one record at a time, never an exception out ----
    async def _consume(self, name: str, stream: faust.StreamT, handle: Handler) -> None:
        """Handle a stream's fetches (see transport.py); ack each once what it produced is delivered."""
        _running.set(name)
        out = self.outbox()
        left = self.unfinished.pop(name, None)
        if left is not None:
            agent_log().warning("agent %s restarted: handling the %d records it had taken first", name,
                                len(left[2]))
            await self._handle_records(name, *left, handle, out)
        async for event in stream.noack().events():
            if _current(stream.app, event):
                await self._handle_records(name, stream, event, records_of(event.message), handle, out)

    async def _handle_records(self, name: str, stream: faust.StreamT, event, records: list, handle: Handler,
                              out: Outbox) -> None:
        i = 0
        try:
            for i, record in enumerate(records):
                await self._guarded_handle(handle, record, out)
        except Exception:
            # Should anything escape the guard, keep what is left for the restarted agent.
            self.unfinished[name] = (stream, event, records[i:])
            raise
        await out.send_packs()
        out.ack_when_delivered(stream, [event], after=await self.state.flush())

    async def _guarded_handle(self, handle: Handler, msg, out: Outbox) -> None:
        """Handle one message; an unexpected exception dead-letters it (``internal_error``) instead of the agent."""
        try:
            await handle(msg, out)
        except Exception as exc:  # noqa: BLE001 - one event must never stop the agent
            self.metrics.error("internal")
            agent_log().exception("internal error handling %s/%d/%d", msg.topic, msg.partition, msg.offset)
            await self.dead.send(Rejected(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"), msg, out)

    def watched(self, name: str, body: Callable[[faust.StreamT], Awaitable[None]]):
        """The agent body ``body``, its crashes counted, logged and shown by ``/ready`` (Faust restarts it)."""
        async def agent(stream: faust.StreamT) -> None:
            try:
                await body(stream)
            except Exception as exc:
                self.crashes[name] = (time.time(), f"{type(exc).__name__}: {exc}")
                self.metrics.agent_crashed(name)
                logging.getLogger(f"streamlearn.agent.{name}").error(
                    "agent %s crashed (%s: %s); Faust restarts it", name, type(exc).__name__, exc, exc_info=exc)
                raise
        agent.__doc__ = body.__doc__
        return agent

    # ---- routers: any partition in, the owner's partition out ----------
    async def route_features(self, stream: faust.StreamT) -> None:
        await self._consume("route-features", stream, self._on_feature)

    async def route_feedback(self, stream: faust.StreamT) -> None:
        await self._consume("route-feedback", stream, self._on_feedback)

    async def route_control(self, stream: faust.StreamT) -> None:
        """Operator commands: checked here, executed by the model's learn agent, in order with its learning."""
        await self._consume("route-control", stream, self._on_control)

    async def _on_feature(self, msg, out: Outbox) -> None:
        self.metrics.consumed(msg.topic)
        try:
            ev = self._decode_event(msg.value, msg.key)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out)
            return
        if ev.spec is not None and ev.spec not in self.options.specs:
            await self.dead.send(Rejected(UNKNOWN_SPEC, str(models.UnknownSpec(ev.spec, self.options.specs)),
                                          ev.event_id),
                                 msg, out, model=ev.model)
            return
        owner = self._owner(ev.model)
        if self._here(msg, owner):
            await self._predict(msg, ev, out)
        else:
            await self._route(out, self.topics.events, ev.model, owner, msg)

    async def _on_feedback(self, msg, out: Outbox) -> None:
        self.metrics.consumed(msg.topic)
        try:
            label = self._decode_label(msg.value, msg.key)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out)
            return
        owner = self._owner(label.model)
        if self._here(msg, owner):
            await self._join_label(msg, label, out)
        else:
            await self._route(out, self.topics.labels, label.model, owner, msg)

    async def _on_control(self, msg, out: Outbox) -> None:
        self.metrics.consumed(msg.topic)
        signature = codec.signature_of(msg.headers)
        try:
            cmd = codec.decode_command(msg.value, msg.key, max_bytes=self.options.max_message_bytes,
                                       secret=self.options.command_secret, signature=signature)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out)
            await self.commands.answer(None, codec.request_id_of(msg.value), ok=False,
                                       error=rejected.reason, detail=rejected.detail)
            return
        signed = [(codec.SIGNATURE_HEADER, signature)] if signature else []
        await self._route(out, self.topics.training, cmd.model, self._owner(cmd.model), msg,
                          (COMMAND_HEADER, b"1"), *signed)

    def _owner(self, model: str) -> int:
        """The partition of the internal topics that owns a model key."""
        return partition_for(model, self.options.partitions)

    def _here(self, msg, owner: int) -> bool:
        """Whether a message of an input topic already sits in its owner's partition, on this worker.

        Producers that key by model with Kafka's default partitioner (and input
        topics with as many partitions as the internal ones) put every message
        there; handling it at once saves a hop through the internal topic.
        """
        return msg.partition == owner and owner in self.owned

    async def _route(self, out: Outbox, topic: faust.TopicT, model: str, owner: int, msg,
                     *headers: tuple[str, bytes]) -> None:
        await out.send(topic, key=model.encode(), value=msg.value, partition=owner,
                       headers=[origin_header(msg.topic, msg.partition, msg.offset), *headers])

    # ---- owner side ---------------------------------------------------
    async def predict(self, stream: faust.StreamT) -> None:
        await self._consume("predict", stream, self._on_event)

    async def _on_event(self, msg, out: Outbox) -> None:
        try:
            ev = self._decode_event(msg.value, msg.key)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out, model=_text(msg.key))
            return
        await self._predict(msg, ev, out)

    async def _predict(self, msg, ev: codec.FeatureEvent, out: Outbox) -> None:
        """Answer an event in the partition that owns its model (``msg.partition``)."""
        started = time.perf_counter()
        try:
            live = self._model(msg.partition, ev.model, ev.spec, ev.event_id)
            prediction = self._guarded(models.predict, live, ev.features, event_id=ev.event_id)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out, model=ev.model)
            return
        predicted_at = time.time()
        await out.send(self.topics.predictions, key=ev.model.encode(), value=codec.encode_prediction(
            ev, prediction.label, prediction.proba, prediction.version, prediction.learned, predicted_at))
        self.metrics.predicted(ev.model, time.perf_counter() - started,
                               None if ev.ts is None else predicted_at - ev.ts)
        await self._remember(msg.partition, ev, out)

    async def _remember(self, partition: int, ev: codec.FeatureEvent, out: Outbox) -> None:
        """Keep the features for the label; if the label came first, train now (see ``core.join``)."""
        key = join_key(ev.model, ev.event_id)
        outcome = join.on_features(ev, self.pending.get(key), self.early.get(key), self.windows,
                                   self.pending.clock())
        await self._joined(partition, key, outcome, out)

    async def join(self, stream: faust.StreamT) -> None:
        await self._consume("join", stream, self._join_one)

    async def _join_one(self, msg, out: Outbox) -> None:
        if is_tick(msg.headers):
            await self._expire(msg.partition, out)
            return
        try:
            label = self._decode_label(msg.value, msg.key)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out, model=_text(msg.key))
            return
        await self._join_label(msg, label, out)

    async def _join_label(self, msg, label: codec.Label, out: Outbox) -> None:
        """Join a label with its event's features in the partition that owns its model (``msg.partition``)."""
        try:
            self._check_label(msg.partition, label)
        except Rejected as rejected:
            await self.dead.send(rejected, msg, out, model=label.model)
            return
        key = join_key(label.model, label.event_id)
        origin = list(origin_of(msg.headers, msg.topic, msg.partition, msg.offset))
        outcome = join.on_label(label, origin, self.pending.get(key), self.early.get(key), msg.value,
                                self.windows, self.pending.clock())
        if isinstance(outcome, join.Refuse):
            await self.dead.send(outcome.rejected, msg, out, model=label.model)
        elif isinstance(outcome, join.DuplicateLabel):
            self.metrics.duplicate_label()
            agent_log().info("ignored a second label for event_id=%s model=%s", label.event_id, label.model)
        else:
            await self._joined(msg.partition, key, outcome, out)

    async def _joined(self, partition: int, key: bytes, outcome: join.Outcome, out: Outbox) -> None:
        """Carry out a join decision: write the join state, send the example to the learner."""
        if isinstance(outcome, join.Keep):
            if isinstance(outcome.entry, join.Parked):
                for parked in self.early.put(partition, key, outcome.entry):
                    await self._dead_parked(parked, out)
            else:
                self.pending.put(partition, key, outcome.entry)
        elif isinstance(outcome, join.Learn):
            if outcome.entry is not None:   # a first join (a replay writes nothing): how long the label took
                self.metrics.label_joined(0.0 if outcome.restamp else self.pending.clock() - outcome.entry.written)
                self.pending.put(partition, key, outcome.entry, restamp=outcome.restamp)
            out.pack(self.topics.training, partition, codec.encode_example(outcome.example))

    async def _expire(self, partition: int, out: Outbox) -> None:
        """A tick: evict what outlived its TTL in this partition."""
        self.pending.evict(partition)
        for parked in self.early.evict(partition):
            await self._dead_parked(parked, out)

    async def _dead_parked(self, parked: join.Parked, out: Outbox) -> None:
        """An evicted parked label: dead-lettered ``unknown_event``, unless its features came and released it."""
        rejected = join.on_parked_evicted(parked, self.pending.get(join_key(parked.model, parked.event_id)),
                                          self.windows)
        if rejected is None:
            return
        topic, partition, offset = parked.origin
        await self.dead.send_record(rejected, out, topic=topic, partition=partition, offset=offset,
                                    key=parked.model.encode(), value=parked.value, model=parked.model)

    async def learn(self, stream: faust.StreamT) -> None:
        """Learn training examples in order; checkpoint, then ack (see checkpoints.py).

        Like the other agents, it skips a fetch that is no longer current (a
        rebalance began): learning it could write a checkpoint into a
        partition another worker now owns, after that worker restored the
        previous one. The next owner would then restore a model that misses
        what was learned in between (and skip it, below its offset).
        """
        _running.set("learn")
        acks = stream.noack()
        out = self.outbox()
        left = self.unfinished.pop("learn", None)
        if left is not None:
            await self._learn_records(*left, out)
        async for event in acks.events():
            if _current(acks.app, event):
                await self._learn_records(acks, event, records_of(event.message), out)

    async def _learn_records(self, acks: faust.StreamT, event, records: list, out: Outbox) -> None:
        partition = event.message.partition
        i = 0
        try:
            for i, msg in enumerate(records):
                await self._learn_record(partition, msg, out)
        except Exception:
            self.unfinished["learn"] = (acks, event, records[i:])
            raise
        held = self.held.setdefault(partition, [])
        held.append(event)
        if self.policy.due(partition):
            self._checkpoint(partition)
        # ack what checkpoints cover: the messages below the first one a model's checkpoint lacks (all of
        # them once nothing is dirty: ticks, answered commands and replays are committed too, or an idle
        # partition's lag grows). Decided before any await: a rebalance meanwhile makes the policy forget
        # the partition, and it would then cover everything held.
        low = self.policy.low_water(partition)
        n = len(held) if low is None else next((i for i, e in enumerate(held) if e.message.offset >= low), len(held))
        covered = held[:n]
        del held[:n]
        # checkpoints and snapshots are written behind: on the changelog before the acks they allow
        written = await self.state.flush()
        if covered:
            out.ack_when_delivered(acks, covered, after=written)

    async def _learn_record(self, partition: int, msg, out: Outbox) -> None:
        if is_tick(msg.headers):
            self._snapshot_on_time(partition)
        elif is_command(msg.headers):
            changed = await self._command(partition, msg, out)
            if changed is not None:
                self.policy.changed(partition, changed)
        else:
            await self._guarded_handle(lambda m, o: self._learn_pack(partition, m, o), msg, out)

    async def _command(self, partition: int, msg, out: Outbox) -> LiveModel | None:
        """Run an operator's command; one that fails unexpectedly is answered and dead-lettered, not retried forever."""
        try:
            return await self.commands.run(partition, msg)
        except Exception as exc:  # noqa: BLE001 - a command must not crash-loop the learn agent
            self.metrics.error("internal")
            agent_log().exception("internal error running the command at %s/%d/%d", msg.topic, msg.partition,
                                  msg.offset)
            detail = f"{type(exc).__name__}: {exc}"
            await self.dead.send(Rejected(INTERNAL_ERROR, detail), msg, out)
            await self.commands.answer(None, codec.request_id_of(msg.value), ok=False, error=INTERNAL_ERROR,
                                       detail=detail)
            return None

    async def _learn_pack(self, partition: int, msg, out: Outbox) -> None:
        """The examples of one training message, each under its own guard.

        A model's checkpoint covers whole messages (checkpoints are taken
        between fetches), so whether a model's examples in this message are
        already inside its checkpoint is decided once per model per message.
        """
        replayed: dict[str, bool] = {}
        for example in codec.decode_examples(msg.value):
            try:
                await self._learn_one(partition, msg, example, out, replayed)
            except Exception as exc:  # noqa: BLE001 - one example must not stop the others
                self.metrics.error("internal")
                agent_log().exception("internal error learning event_id=%s model=%s", example.event_id,
                                      example.model)
                await self._dead_example(Rejected(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", example.event_id),
                                         msg, example, out)

    async def _dead_example(self, rejected: Rejected, msg, example: Example, out: Outbox) -> None:
        """Dead-letter one example of a pack: its own JSON, traced to its label's first source."""
        topic, partition, offset = example.origin or (msg.topic, msg.partition, msg.offset)
        await self.dead.send_record(rejected, out, topic=topic, partition=partition, offset=offset,
                                    key=example.model.encode(), value=codec.encode_example(example),
                                    model=example.model)

    async def _learn_one(self, partition: int, msg, example: Example, out: Outbox,
                         replayed: dict[str, bool]) -> None:
        live = (self.registry.get(partition, example.model)
                or self.registry.get_or_create(partition, example.model, self.spec_for(example.model)))
        if replayed.setdefault(example.model, msg.offset <= live.offset):
            self.metrics.replay_skipped()  # already inside the model's checkpoint
            return
        try:
            scored = self._guarded(models.learn, live, example.features, example.label, example.event_id,
                                   event_id=example.event_id)
        except Rejected as rejected:
            await self._dead_example(rejected, msg, example, out)
            return
        finally:
            live.offset = msg.offset
            self.policy.learned(partition, live)
        if scored is None:   # the model learned this event already (a repeat after a crash)
            self.metrics.repeat_skipped()
            return
        self.metrics.learned(example.model, scored.correct)
        new, changes = self.versions.learned(live, example.features, example.label, scored.y_pred,
                                                   scored.shadow)
        if changes:   # a snapshot, a rollback or a promotion: checkpoint the new version at once
            if new is not None:
                self.registry.put(partition, new)
            self.audit.record(changes)
            self.policy.changed(partition, new or live)

    def _snapshot_on_time(self, partition: int) -> None:
        for live in self.registry.partition(partition):
            if self.versions.due_by_time(live):
                _, changes = self.versions.snapshot(live, kind=models.versions.AUTO, by="policy",
                                                    reason=f"every {self.versions.settings.snapshot_every_seconds:g}s")
                self.audit.record(changes)
                self.policy.changed(partition, live)

    def _checkpoint(self, partition: int) -> None:
        for live in self.policy.done(partition):
            try:
                self.checkpoints.write(live)
            except CheckpointTooLarge as exc:
                # Holding acks forever would stall the partition: the model's
                # learning since its last checkpoint is at risk; say so loudly.
                agent_log().error("%s; its learning since the last checkpoint would be lost in a crash", exc)

    def forget_partitions(self, keep: set[int]) -> None:
        """After a rebalance: drop the held events and checkpoint policy of partitions moved away."""
        for p in [p for p in self.held if p not in keep]:
            del self.held[p]
        self.policy.forget_partitions(keep)

    async def tick(self, partitions: set[int]) -> None:
        """Tick each owned partition: evict expired join state, checkpoint on time (called by a timer)."""
        for p in partitions:
            await self.topics.labels.send(key=None, value=b"", partition=p, headers=[(TICK_HEADER, b"1")])
            await self.topics.training.send(key=None, value=b"", partition=p, headers=[(TICK_HEADER, b"1")])

    # ---- helpers ------------------------------------------------------
    def _decode_event(self, raw: bytes, key: bytes | None) -> codec.FeatureEvent:
        return codec.decode_event(raw, key, default_model=self.options.default_model,
                                  max_bytes=self.options.max_message_bytes)

    def _decode_label(self, raw: bytes, key: bytes | None) -> codec.Label:
        return codec.decode_label(raw, key, default_model=self.options.default_model,
                                  max_bytes=self.options.max_message_bytes)

    def _model(self, partition: int, key: str, requested: str | None, event_id: str) -> LiveModel:
        live = self.registry.get(partition, key)
        if live is None:
            spec = self.options.specs[requested] if requested else self.spec_for(key)
            return self.registry.get_or_create(partition, key, spec)
        if requested is not None and requested != live.spec.name:
            raise Rejected(SPEC_MISMATCH, f"model {key!r} is a {live.spec.name!r}, "
                                          f"the event asks for {requested!r}", event_id)
        return live

    def _check_label(self, partition: int, label: codec.Label) -> None:
        live = self.registry.get(partition, label.model)
        spec = live.spec if live is not None else self.spec_for(label.model)
        y = label.label
        if not spec.is_classifier and (isinstance(y, bool) or not isinstance(y, (int, float))):
            raise Rejected(BAD_LABEL, f"model {label.model!r} is a regressor; its label must be a number",
                           label.event_id)

    def _guarded(self, step: Callable[..., Any], live: LiveModel, *values: Any, event_id: str) -> Any:
        """Run a model step; an exception from River becomes a rejection, not a crash."""
        try:
            return step(live, *values)
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the agent
            self.metrics.error(step.__name__)
            agent_log().exception("model %s failed on event_id=%s", step.__name__, event_id)
            raise Rejected(MODEL_ERROR, f"{step.__name__} failed: {type(exc).__name__}: {exc}", event_id) from None


def _text(key: bytes | None) -> str | None:
    return None if key is None else key.decode("utf-8", "replace")
