"""Assembly: the Faust app of one worker, wired from settings.

Nothing here decides anything about models or messages: it builds the Faust
app, declares topics and tables, binds the agents of ``streamlearn.streams``
and exposes HTTP views and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import faust

from streamlearn import models
from streamlearn.core.registry import ModelRegistry
from streamlearn.models import LiveModel, Spec
from streamlearn.models.blobs import Blobs
from streamlearn.streams import codec
from streamlearn.core.checkpointing import CheckpointPolicy
from streamlearn.core.defaults import DefaultLabels
from streamlearn.core.drift import DriftBook, DriftSettings
from streamlearn.core.labels import LabelBook, LabelSettings
from streamlearn.streams.agents.joins import Joins
from streamlearn.streams.agents.learning import Learning
from streamlearn.streams.agents.live import LiveModels
from streamlearn.streams.agents.loop import AgentLoop
from streamlearn.streams.agents.predict import Predict
from streamlearn.streams.agents.routers import Routers
from streamlearn.streams.checkpoints import Checkpoints
from streamlearn.streams.commit import BatchCommit
from streamlearn.streams.deadletter import DeadLetters
from streamlearn.streams.health import InputHealth
from streamlearn.streams.history import Backfiller, History
from streamlearn.streams.outbox import Outbox, WriteBehind
from streamlearn.streams.pending import BoundedTable, TableState
from streamlearn.streams.stores import TableManager, count_restored
from streamlearn.streams.routing import TICK_HEADER, Ownership
from streamlearn.streams.transport import consumer_url
from streamlearn.streams.topics import Changelog, TopicNames, Topics, ensure_topics
from streamlearn.streams.commands import Answers, Commands
from streamlearn.streams.snapshots import Alerts, Audit, TableStore, WarmStart, index_position, snapshot_metrics

from . import canary
from .auth import bearer_headers
from .control import ControlClient
from .http import bind_views, cluster_models
from .metrics import LOOP_PROBE_SECONDS, Metrics, StateCollector
from .runner import settle_heap
from .settings import Settings

log = logging.getLogger("streamlearn")


@dataclass
class Worker:
    """One streamlearn worker: its Faust app and the state it owns."""

    settings: Settings
    app: faust.App
    topics: Topics
    registry: ModelRegistry
    pending: BoundedTable
    early: BoundedTable
    metrics: Metrics
    ownership: Ownership
    loop: AgentLoop
    commit: BatchCommit
    live: LiveModels
    predict: Predict
    dead: DeadLetters
    commands: Commands
    health: InputHealth
    checkpoints: Checkpoints
    versions: models.ModelVersions
    store: TableStore
    control: ControlClient

    async def ensure_topics(self) -> list[str]:
        s = self.settings
        changelogs = [Changelog(t.changelog_topic.get_topic_name(), t.partitions or s.partitions)
                      for t in self.app.tables.values()]
        return await ensure_topics(s.bootstrap_servers, self.topics.names, s.partitions, s.replication_factor,
                                   changelogs=changelogs, kafka=s.kafka_options)


def _assigned_actives(app: Any) -> Callable[[], frozenset]:
    """The topic-partitions Faust's assignor gave this worker, as a set built once per assignment.

    Asked on every delivered batch of table writes (``TableState``). The
    assignor builds a new set on each call, and it replaces its assignment
    object on each rebalance without changing the old one in place, so that
    object's identity says when to build the set again.
    """
    memo: list = [None, frozenset()]

    def assigned() -> frozenset:
        assignment = app.assignor._assignment
        if assignment is not memo[0]:
            memo[:] = [assignment, frozenset(app.assignor.assigned_actives())]
        return memo[1]
    return assigned


def create_worker(settings: Settings, **faust_overrides: Any) -> Worker:
    """One worker, built in order (nothing refers to a part before it is built): the Faust app and its topics,
    the tables, the models' side, the commit protocol, the agents."""
    s = settings
    s.require_secrets()
    if s.dev:
        log.warning("DEVELOPMENT MODE (STREAMLEARN_DEV=true): development keys may be in use and HTTP commands "
                    "need no token unless STREAMLEARN_API_TOKEN is set. Never run production this way.")
    app = _faust_app(s, faust_overrides)
    names = TopicNames.with_prefix(s.topic_prefix)
    topics = Topics.declare(app, names, s.partitions)
    # only we write these (no transactions, no compaction): every offset is a message, so the
    # consumer commits none of them past one unhandled (streams/transport.py)
    app.exact_topics = frozenset(names.internal())
    # the agents' topics reach them a fetch per partition at a time (streams/transport.py)
    app.batched_topics = frozenset([names.features, names.feedback, names.control, *names.internal()])
    metrics = Metrics()
    app.on_recovery_stall = metrics.recovery_stalled   # the consumer's recovery watchdog counts here
    # recovery's batched changelog read (streams/stores.py): its client, and its pace
    app.changelog_client_options = {"bootstrap_servers": s.bootstrap_servers, **s.kafka_options}
    app.on_changelog_read = metrics.changelog_read
    specs, params = s.registry, s.params
    blobs = Blobs(s.signing_secret, specs)

    def new_outbox() -> Outbox:
        return Outbox(app, on_retry=lambda topic: metrics.error("send"))

    behind = WriteBehind(new_outbox())   # the tables' changelogs, written behind each batch
    ownership = Ownership(s.partitions, _assigned_actives(app))
    tables = _Tables(app, s, metrics, behind, ownership)
    pending = tables.bounded("pending", "Features of predicted events waiting for their label.",
                             s.pending_ttl_seconds, codec.encode_waiting, codec.decode_waiting, codec.waiting_written)
    early = tables.bounded("early-labels", "Labels that arrived before their event's features.",
                           s.label_wait_seconds, codec.encode_parked, codec.decode_parked)

    def stale_checkpoint(key: bytes) -> None:
        metrics.checkpoint_refused("stale")
        log.warning("model=%s: refused a checkpoint behind the one held (a late write of a worker that had "
                    "lost the partition)", key.decode(errors="replace"))

    checkpoints = Checkpoints(tables.by_model("checkpoints", "Latest checkpoint of each live model (signed blob).",
                                              bytes.decode, position=blobs.offset, on_stale=stale_checkpoint),
                              blobs, s.max_checkpoint_bytes, metrics)
    # Only with warm-start rules: a global table makes every worker a standby of its
    # changelog, which brings back Faust's standby recovery (disabled above); with it,
    # learning stalled after scale-in in the durability test (2 runs of 3).
    templates: Any = app.GlobalTable(
        "templates", default=None, partitions=1, recovery_buffer_size=1, use_partitioner=True, store="memory://",
        key_type=bytes, value_type=bytes, help="Latest snapshot of each warm-start template key, on every worker.",
    ) if s.warm_starts else {}

    def stale_index(key: bytes) -> None:
        log.warning("model=%s: refused a snapshot index behind the one held (a late write of a worker that had "
                    "lost the partition)", key.decode(errors="replace"))

    store = TableStore(tables.by_model("snapshot-index", "Snapshot index of each model (JSON).", bytes.decode,
                                       position=index_position, on_stale=stale_index),
                       tables.by_model("snapshots", "Snapshot blobs: [model, version] -> signed blob.",
                                       TableStore.model_of_blob_key),
                       templates, {template for _, template in s.warm_starts})
    gate = models.versions.GateSettings(s.gate_window, s.gate_z_threshold, s.gate_min_discordant,
                                        s.gate_steady_examples) if s.quality_gate else None
    promotion = models.PromotionSettings(s.promote_window, s.promote_z_threshold, s.promote_min_discordant,
                                         s.promote_min_examples) if s.auto_promote else None
    alerts = Alerts(topics.alerts, metrics.alerted)
    versions = models.ModelVersions(
        store, blobs,
        models.VersionSettings(s.snapshot_every_examples, s.snapshot_every_seconds, s.snapshot_keep, gate,
                               promotion),
        on_snapshot=snapshot_metrics(metrics), on_alert=alerts.record)
    audit = Audit(topics.audit, metrics)
    warm = WarmStart(s.template_for, templates, blobs, audit)
    commit = BatchCommit(app, behind, CheckpointPolicy(s.checkpoint_every_examples, s.checkpoint_every_seconds,
                                                       s.checkpoint_defer_seconds), checkpoints)

    def factory(key: str, spec: Spec) -> LiveModel:
        """A key's model: from its checkpoint when it has one, else from its template, else fresh.

        Its challengers: those of the rules (kept from the checkpoint when it had them).
        """
        live = checkpoints.restore(key) or warm.start(key) or models.new_model(key, spec, params.get(spec.name))
        live.recent.resize(s.dedup_window)
        changes = models.set_challengers(live, [specs[n] for n in s.challengers_for(key)], params)
        if changes:
            log.info("model=%s challengers: %s", key, ", ".join(changes))
        return live

    def still_valid(partition: int, live: LiveModel) -> bool:
        """A kept model after a rebalance: still the latest state of its key, unless another worker checkpointed it.

        Taken back, it is checkpointed at once: it may be ahead of its
        checkpoint, and the replay since the committed offset (examples it
        skips) must not be committed before a checkpoint covers them.
        """
        if not checkpoints.unchanged(live.key):
            log.info("model=%s was checkpointed by another worker since this one had it: restoring", live.key)
            return False
        commit.changed(partition, live)
        return True

    def evicted(partition: int, live: LiveModel, reason: str) -> None:
        versions.forget_model(live.key)
        metrics.models_evicted.labels(reason).inc()

    registry = ModelRegistry(factory, still_valid, max_live=s.max_live_models, on_evict=evicted,
                             evictable=lambda p, live: checkpoints.clean(live, commit.dirty(p)))
    inputs = codec.Inputs(s.default_model_key, s.max_message_bytes, s.command_key, specs)
    labels_watched = LabelBook(LabelSettings(s.label_starvation_seconds, s.label_starvation_predictions), time.time)
    health = InputHealth(labels_watched, metrics, alerts, DriftBook(DriftSettings()) if s.drift_alerts else None)
    history = History(s.bootstrap_servers, s.kafka_options, topics.names.training, topics.names.predictions,
                      s.partitions)
    commands = Commands(versions, registry, checkpoints.restore, audit,
                        Answers(topics.control_results, f"{s.web_host}:{s.web_port}", metrics), inputs, health,
                        Backfiller(history, specs, params))
    dead = DeadLetters(topics.deadletter, metrics)
    live = LiveModels(registry, lambda key: specs[s.spec_for(key)], specs, metrics)
    joins = Joins(inputs, pending, early, live, topics.training, dead, health,
                  DefaultLabels(s.default_labels) if s.default_labels else None)
    predict = Predict(inputs, live, topics.predictions, topics.events, joins, dead, metrics)
    routers = Routers(topics, ownership, inputs, dead, commands, predict, joins)
    learning = Learning(live, versions, commit, commands, audit, dead, metrics)
    loop = AgentLoop(commit, dead, metrics, new_outbox)
    for topic, name, handle, kind in ((topics.features, "route-features", routers.features, "input"),
                                      (topics.feedback, "route-feedback", routers.feedback, "input"),
                                      (topics.control, "route-control", routers.control, "input"),
                                      (topics.events, "predict", predict.event, ""),
                                      (topics.labels, "join", joins.message, ""),
                                      (topics.training, "learn", learning.message, "learns")):
        app.agent(topic, name=name)(loop.body(name, handle, learns=kind == "learns", counts_input=kind == "input"))
        metrics.agent_crashes.labels(name)   # a series at 0 from the start, for dashboards and alerts

    control = ControlClient.of(s)
    worker = Worker(s, app, topics, registry, pending, early, metrics, ownership, loop, commit, live, predict, dead,
                    commands, health, checkpoints, versions, store, control)
    _bind_rebalance(worker)
    _bind_timers(worker)
    _bind_metrics(worker)
    bind_views(worker)
    canary.bind(worker, lambda: cluster_models(worker, bearer_headers(s.api_token), windows=True))
    return worker


def _faust_app(s: Settings, overrides: dict[str, Any]) -> faust.App:
    return faust.App(
        s.app_id,
        broker=s.broker,
        broker_credentials=s.kafka_auth.faust_credentials(),
        broker_consumer=consumer_url(s.broker),   # commits only what agents handled: streams/transport.py
        store=f"{s.table_store}://",   # RocksDB by default: a restart reads only each changelog's tail
        datadir=s.data_dir,
        autodiscover=False,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        web_host=s.web_host,
        web_port=s.web_port,
        web_bind=s.web_host,
        canonical_url=f"http://{s.web_host}:{s.web_port}",
        # Faust's /table/{name}/{key} would hand anyone the join state's features and checkpoint blobs,
        # past our API gate: off. (/router stays: the owner of a key, no data.)
        web_tables_enabled=False,
        broker_session_timeout=s.session_timeout_seconds,
        broker_heartbeat_interval=s.heartbeat_interval_seconds,
        consumer_group_instance_id=s.instance_id or None,   # static membership: no rebalance on a quick restart
        TableManager=TableManager,   # recovery starts at once (streams/stores.py)
        # Faust's defaults (90 s, the producer's 1,200 s) leave a worker waiting on a connection whose
        # packets were dropped until TCP's next retransmission, tens of seconds after the network is back
        broker_request_timeout=s.broker_request_timeout_seconds,
        producer_request_timeout=s.broker_request_timeout_seconds,
        broker_commit_interval=s.commit_interval_seconds,
        broker_max_poll_records=s.batch_max,
        producer_linger=s.producer_linger_ms / 1000.0,
        consumer_auto_offset_reset=s.offset_reset,
        # the learn agent holds acks until a checkpoint covers them: a rebalance
        # must not wait for them (replay skips what a checkpoint already has)
        stream_wait_empty=False,
        # Faust 0.15.3's standby recovery can seek to offset -1 and crash the
        # worker (seen in the SIGKILL tests); a new owner reads the compacted
        # changelogs instead, which holds only the latest value per key.
        table_standby_replicas=0,
        logging_config=None,
        **overrides,
    )


class _Tables:
    """The worker's changelog-backed tables: bytes keys and values (the codec writes the JSON), written behind."""

    def __init__(self, app: faust.App, s: Settings, metrics: Metrics, behind: WriteBehind,
                 ownership: Ownership) -> None:
        self.app, self.s, self.metrics, self.behind, self.ownership = app, s, metrics, behind, ownership
        half = s.rocksdb_memory_mb * 2**20 // 2
        # Faust's RocksDB defaults give each database (a table's partition) 3 x 64 MB of write buffers and a
        # 2 GB cache
        self.rocksdb_options = {"write_buffer_size": half // 2, "max_write_buffer_number": 2,
                                "block_cache_size": half}

    def _table(self, name: str, help: str) -> faust.Table:
        t = self.app.Table(name, default=None, partitions=self.s.partitions, help=help, key_type=bytes,
                           value_type=bytes, options=dict(self.rocksdb_options))
        count_restored(t, self.metrics.changelog_restored.labels(name))
        return t

    def bounded(self, name: str, help: str, ttl: float, encode: Any, decode: Any,
                written: Any = None) -> BoundedTable:
        """A table of the join state, keyed by event."""
        state = TableState(self._table(name, help), self.behind, self.ownership.assigned, self.s.partitions)
        return BoundedTable(state, self.s.partitions, ttl, self.s.pending_max_per_partition, encode, decode,
                            written=written)

    def by_model(self, name: str, help: str, model_of: Any, **kwargs: Any) -> TableState:
        """A table of the learn agent, keyed by model: written behind like the join state, so a store never
        holds a checkpoint or snapshot its changelog lacks (the next owner of the partition would not have it)."""
        return TableState(self._table(name, help), self.behind, self.ownership.assigned, self.s.partitions,
                          model_of, **kwargs)


def _bind_rebalance(w: Worker) -> None:
    owned_topics = {w.topics.names.events, w.topics.names.labels, w.topics.names.training}

    @w.app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set, **kwargs: Any) -> None:
        w.ownership.owned = frozenset()  # until the new assignment: route everything

    @w.app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: set, **kwargs: Any) -> None:
        """Models of partitions that moved here start from the tables; those of kept partitions only if still valid.

        A partition this worker still owns may have been owned by another
        worker in between (say this one missed heartbeats and was dropped from
        the group): its in-memory models could be stale. So they are parked, and
        each is taken back on first use (after Faust recovered the tables)
        only if the checkpoint table still has the last checkpoint this worker
        wrote of it; else it is restored from the table. Faust seeks every
        assigned partition back to its committed offset, which the commit's held acks
        keep at or before each model's checkpoint, so restoring and replaying
        is exact, and a kept model skips what it learned already.
        """
        partitions = {tp.partition for tp in assigned if tp.topic in owned_topics}
        parked, dropped = w.registry.park(partitions)
        for state in (w.pending, w.early, w.commit, w.predict.joins):
            state.forget_partitions(set())
        w.health.keep_partitions(partitions)
        for table in (w.pending, w.early):   # kept partitions keep their join state: Faust recovers only the tail
            table.drop_other_partitions(partitions)
        w.versions.forget()
        w.metrics.live_models.set(0)
        w.ownership.owned = frozenset(partitions)
        log.info("assigned partitions %s; %d live models of kept partitions parked (taken back on first use if no "
                 "other worker checkpointed them since), %d of partitions moved away dropped; since start %d parked "
                 "models were taken back, %d restored instead", sorted(partitions), parked, dropped,
                 w.registry.kept, w.registry.invalidated)


def _bind_timers(w: Worker) -> None:
    @w.app.task
    async def probe_event_loop() -> None:
        """Sleep LOOP_PROBE_SECONDS, again and again: how late each wake-up comes is how long the loop stalled."""
        while True:
            asked = time.monotonic()
            await asyncio.sleep(LOOP_PROBE_SECONDS)
            w.metrics.loop_lag.observe(max(0.0, time.monotonic() - asked - LOOP_PROBE_SECONDS))

    s = w.settings
    @w.app.timer(max(0.5, min(s.label_wait_seconds / 4, s.pending_ttl_seconds / 4, s.checkpoint_every_seconds / 2,
                              *(rule.wait / 4 for rule in s.default_labels))))
    async def tick_partitions() -> None:
        """Tick our partitions: join evicts expired join state and gives default labels, learn checkpoints and
        snapshots on time, each in order with its partition's messages."""
        for p in w.ownership.owned:
            for topic in (w.topics.labels, w.topics.training):
                await topic.send(key=None, value=b"", partition=p, headers=[(TICK_HEADER, b"1")])
        reread = getattr(w.app.consumer, "reread_skipped", None)
        if reread is not None:
            await reread()
        await w.predict.joins.find_waiting(recovered)   # after a rebalance, with default labels

    def recovered() -> bool:
        """Streams run on tables that hold their changelogs: this generation's recovery is complete (Faust
        resumes the flow while it reads the changelogs)."""
        return (w.app.flow_control.is_active() and
                getattr(w.app.tables.recovery, "recovered_generation", None) == w.app.consumer_generation_id)

    @w.app.task
    async def settle_heap_when_recovered() -> None:
        """Once the first recovery is complete, what it restored joins the frozen heap (``settle_heap``)."""
        while not recovered():
            await asyncio.sleep(0.5)
        log.info("%d objects frozen: full garbage collections skip them", settle_heap())

    if s.model_idle_seconds:
        @w.app.timer(max(1.0, s.model_idle_seconds / 4))
        async def evict_idle_models() -> None:
            """Idle models leave memory once their checkpoint has them (they come back from it on demand)."""
            if w.registry.evict_idle(s.model_idle_seconds):
                w.metrics.live_models.set(len(w.registry))


def _bind_metrics(w: Worker) -> None:
    app = w.app

    def lags():
        consumer = app.consumer
        for tp in w.ownership.assigned():
            try:
                high = consumer.highwater(tp)
            except (AssertionError, KeyError, TypeError):  # consumer not started or tp not fetched yet
                continue
            committed = consumer._committed_offset.get(tp) or 0  # faust keeps no public accessor
            if high is not None:
                yield tp.topic, tp.partition, max(high - committed, 0)

    w.metrics.registry.register(StateCollector(lambda: (m for _, m in w.registry), lags,
                                               w.settings.metrics_max_models))
