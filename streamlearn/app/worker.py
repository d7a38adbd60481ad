"""Assembly: the Faust app of one worker, wired from settings.

Nothing here decides anything about models or messages: it builds the Faust
app, declares topics and tables, binds the agents of ``streamlearn.streams``
and exposes HTTP views and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import faust
import uvloop
from faust.web import Request, Response, View

from streamlearn import models
from streamlearn.models import LiveModel, ModelRegistry, Spec
from streamlearn.streams import codec
from streamlearn.streams.agents import Agents, Options
from streamlearn.streams.checkpoints import CheckpointPolicy, Checkpoints
from streamlearn.streams.checkpoints import position as checkpoint_position
from streamlearn.streams.deadletter import DeadLetters
from streamlearn.streams.outbox import Outbox, WriteBehind
from streamlearn.streams.pending import BoundedTable, TableState
from streamlearn.streams.routing import partition_for
from streamlearn.streams.stores import TableManager, count_restored
from streamlearn.streams.transport import consumer_url
from streamlearn.streams.topics import Changelog, TopicNames, Topics, ensure_committed, ensure_topics
from streamlearn.streams.versions import Audit, Commands, TableStore, WarmStart, snapshot_metrics, versions_of

from .auth import ApiGate
from .control import HTTP_STATUS, ControlClient

from .logs import logging_config
from .metrics import Metrics, StateCollector
from .settings import Settings

log = logging.getLogger("streamlearn")

# An agent that crashed within this many seconds makes /ready answer 503 (it may be crash-looping).
CRASH_WINDOW_SECONDS = 30.0


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
    agents: Agents
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


def create_worker(settings: Settings, **faust_overrides: Any) -> Worker:
    s = settings
    s.require_secrets()
    if s.dev:
        log.warning("DEVELOPMENT MODE (STREAMLEARN_DEV=true): development keys may be in use and HTTP commands "
                    "need no token unless STREAMLEARN_API_TOKEN is set. Never run production this way.")
    app = faust.App(
        s.app_id,
        broker=s.broker,
        broker_credentials=s.kafka_auth.faust_credentials(),
        broker_consumer=consumer_url(s.broker),   # commits only what agents handled: streams/transport.py
        store=f"{s.table_store}://",   # memory by default; RocksDB (a restart reads only the tail) is experimental
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
        **faust_overrides,
    )
    names = TopicNames.with_prefix(s.topic_prefix)
    topics = Topics.declare(app, names, s.partitions)
    # only we write these (no transactions, no compaction): every offset is a message, so the
    # consumer commits none of them past one unhandled (streams/transport.py)
    app.exact_topics = frozenset(names.internal())
    # the agents' topics reach them a fetch per partition at a time (streams/transport.py)
    app.batched_topics = frozenset([names.features, names.feedback, names.control, *names.internal()])
    metrics = Metrics()
    app.on_recovery_stall = metrics.recovery_stalled   # the consumer's recovery watchdog counts here
    params = s.params

    specs = s.registry

    def spec_for(key: str) -> Spec:
        return specs[s.spec_for(key)]

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
        agents.policy.changed(partition, live)
        return True

    def evicted(partition: int, live: LiveModel, reason: str) -> None:
        versions.forget_model(live.key)
        metrics.models_evicted.labels(reason).inc()

    registry = ModelRegistry(factory, still_valid, max_live=s.max_live_models, on_evict=evicted,
                             evictable=lambda p, live: checkpoints.clean(live, agents.policy.dirty.get(p, {})))

    def actives() -> set:
        return app.assignor.assigned_actives()

    half = s.rocksdb_memory_mb * 2**20 // 2
    # Faust's RocksDB defaults give each database (a table's partition) 3 x 64 MB of write buffers and a 2 GB cache
    rocksdb_options = {"write_buffer_size": half // 2, "max_write_buffer_number": 2, "block_cache_size": half}

    def table(name: str, help: str) -> faust.Table:
        # bytes keys and values: Faust keeps them raw; our codec writes the JSON
        t = app.Table(name, default=None, partitions=s.partitions, help=help,
                      key_type=bytes, value_type=bytes, options=dict(rocksdb_options))
        count_restored(t, metrics.changelog_restored.labels(name))
        return t

    def new_outbox() -> Outbox:
        return Outbox(app, on_retry=lambda topic: metrics.error("send"))

    behind = WriteBehind(new_outbox())   # the tables' changelogs, written behind each batch

    def bounded(name: str, help: str, ttl: float, encode: Any, decode: Any) -> BoundedTable:
        state = TableState(table(name, help), behind, actives, s.partitions)
        return BoundedTable(state, s.partitions, ttl, s.pending_max_per_partition, encode, decode)

    pending = bounded("pending", "Features of predicted events waiting for their label.", s.pending_ttl_seconds,
                      codec.encode_waiting, codec.decode_waiting)
    early = bounded("early-labels", "Labels that arrived before their event's features.", s.label_wait_seconds,
                    codec.encode_parked, codec.decode_parked)
    signing_key = s.signing_secret
    def by_model(name: str, help: str, model_of: Any, **kwargs: Any) -> TableState:
        """A table of the learn agent, keyed by model: written behind like the join state, so a store never
        holds a checkpoint or snapshot its changelog lacks (the next owner of the partition would not have it)."""
        return TableState(table(name, help), behind, actives, s.partitions, model_of, **kwargs)

    def stale_checkpoint(key: bytes) -> None:
        metrics.checkpoint_refused("stale")
        log.warning("model=%s: refused a checkpoint behind the one held (a late write of a worker that had "
                    "lost the partition)", key.decode(errors="replace"))

    checkpoints = Checkpoints(by_model("checkpoints", "Latest checkpoint of each live model (signed blob).",
                                       bytes.decode, position=checkpoint_position(signing_key),
                                       on_stale=stale_checkpoint),
                              signing_key, s.max_checkpoint_bytes, metrics, specs)
    # Only with warm-start rules: a global table makes every worker a standby of its
    # changelog, which brings back Faust's standby recovery (disabled above); with it,
    # learning stalled after scale-in in the durability test (2 runs of 3).
    templates: Any = app.GlobalTable(
        "templates", default=None, partitions=1, recovery_buffer_size=1, use_partitioner=True, store="memory://",
        key_type=bytes, value_type=bytes, help="Latest snapshot of each warm-start template key, on every worker.",
    ) if s.warm_starts else {}
    store = TableStore(by_model("snapshot-index", "Snapshot index of each model (JSON).", bytes.decode),
                       by_model("snapshots", "Snapshot blobs: [model, version] -> signed blob.",
                                TableStore.model_of_blob_key),
                       templates, {template for _, template in s.warm_starts})
    gate = models.versions.GateSettings(s.gate_window, s.gate_z_threshold, s.gate_min_discordant,
                                        s.gate_steady_examples) if s.quality_gate else None
    promotion = models.PromotionSettings(s.promote_window, s.promote_z_threshold, s.promote_min_discordant,
                                         s.promote_min_examples) if s.auto_promote else None
    versions = models.ModelVersions(
        store, signing_key,
        models.VersionSettings(s.snapshot_every_examples, s.snapshot_every_seconds, s.snapshot_keep, gate,
                               promotion),
        on_snapshot=snapshot_metrics(metrics), specs=specs)
    audit = Audit(topics.audit, metrics)
    warm = WarmStart(s.template_for, templates, signing_key, audit, specs)
    commands = Commands(versions=versions, registry=registry, audit=audit, results=topics.control_results,
                        restore=checkpoints.restore, metrics=metrics, worker=f"{s.web_host}:{s.web_port}",
                        max_message_bytes=s.max_message_bytes, secret=s.command_key)
    agents = Agents(
        topics=topics, registry=registry, pending=pending, early=early,
        deadletters=DeadLetters(topics.deadletter, metrics), metrics=metrics,
        options=Options(s.partitions, s.default_model_key, s.max_message_bytes, s.command_key, specs),
        spec_for=spec_for, checkpoints=checkpoints,
        policy=CheckpointPolicy(s.checkpoint_every_examples, s.checkpoint_every_seconds, s.checkpoint_defer_seconds),
        versions=versions, commands=commands, audit=audit,
        outbox=new_outbox, state=behind,
    )
    for topic, name, body in ((topics.features, "route-features", agents.route_features),
                              (topics.feedback, "route-feedback", agents.route_feedback),
                              (topics.control, "route-control", agents.route_control),
                              (topics.events, "predict", agents.predict),
                              (topics.labels, "join", agents.join),
                              (topics.training, "learn", agents.learn)):
        app.agent(topic, name=name)(agents.watched(name, body))
        metrics.agent_crashes.labels(name)   # a series at 0 from the start, for dashboards and alerts

    control = ControlClient.of(s)
    worker = Worker(s, app, topics, registry, pending, early, metrics, agents, checkpoints, versions, store,
                    control)
    _bind_rebalance(worker)
    _bind_timers(worker)
    _bind_metrics(worker)
    _bind_views(worker)
    return worker


def _bind_rebalance(w: Worker) -> None:
    owned_topics = {w.topics.names.events, w.topics.names.labels, w.topics.names.training}

    @w.app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set, **kwargs: Any) -> None:
        w.agents.owned = set()  # until the new assignment: route everything

    @w.app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: set, **kwargs: Any) -> None:
        """Models of partitions that moved here start from the tables; those of kept partitions only if still valid.

        A partition this worker still owns may have been owned by another
        worker in between (say this one missed heartbeats and was dropped from
        the group): its in-memory models could be stale. So they are held, and
        each is taken back on first use (after Faust recovered the tables)
        only if the checkpoint table still has the last checkpoint this worker
        wrote of it; else it is restored from the table. Faust seeks every
        assigned partition back to its committed offset, which the held acks
        keep at or before each model's checkpoint, so restoring and replaying
        is exact, and a kept model skips what it learned already.
        """
        partitions = {tp.partition for tp in assigned if tp.topic in owned_topics}
        held, dropped = w.registry.hold(partitions)
        for state in (w.pending, w.early, w.agents):
            state.forget_partitions(set())
        for table in (w.pending, w.early):   # kept partitions keep their join state: Faust recovers only the tail
            table.drop_other_partitions(partitions)
        w.versions.forget()
        w.metrics.live_models.set(0)
        w.agents.owned = partitions
        log.info("assigned partitions %s; %d live models of kept partitions held (taken back on first use if no "
                 "other worker checkpointed them since), %d of partitions moved away dropped; since start %d held "
                 "models were taken back, %d restored instead", sorted(partitions), held, dropped,
                 w.registry.kept, w.registry.invalidated)


def _bind_timers(w: Worker) -> None:
    labels = w.topics.names.labels

    s = w.settings
    @w.app.timer(max(0.5, min(s.label_wait_seconds / 4, s.pending_ttl_seconds / 4, s.checkpoint_every_seconds / 2)))
    async def tick_partitions() -> None:
        """Tick our partitions: join evicts expired join state, learn checkpoints and snapshots on time, each in order with its partition's messages."""
        owned = {tp.partition for tp in w.app.assignor.assigned_actives() if tp.topic == labels}
        await w.agents.tick(owned)
        reread = getattr(w.app.consumer, "reread_skipped", None)
        if reread is not None:
            await reread()

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
        for tp in app.assignor.assigned_actives():
            try:
                high = consumer.highwater(tp)
            except (AssertionError, KeyError, TypeError):  # consumer not started or tp not fetched yet
                continue
            committed = consumer._committed_offset.get(tp) or 0  # faust keeps no public accessor
            if high is not None:
                yield tp.topic, tp.partition, max(high - committed, 0)

    w.metrics.registry.register(StateCollector(lambda: (m for _, m in w.registry), lags,
                                               w.settings.metrics_max_models))


class Unsettled(Exception):
    """A model was asked for while the worker's tables are not recovered (after a rebalance)."""


def readiness(owned: list[int], recovered: bool, rebalancing: bool, crashes: dict[str, tuple[float, str]],
              now: float) -> dict[str, Any]:
    """What ``/ready`` answers: ready only with partitions, tables recovered, no rebalance, no recent agent crash.

    ``crashes``: agent name -> (time, exception) of its last crash (``Agents.crashes``); one within
    ``CRASH_WINDOW_SECONDS`` keeps the worker not ready: Faust restarts it, and it may be crash-looping.
    """
    crashed = {name: f"crashed {now - at:.0f}s ago: {why}" for name, (at, why) in crashes.items()
               if now - at < CRASH_WINDOW_SECONDS}
    is_ready = bool(owned) and recovered and not rebalancing and not crashed
    reason = ("agents crashed: " + "; ".join(f"{n} {c}" for n, c in crashed.items()) if crashed else
              "no partitions assigned" if not owned else "recovering tables" if not recovered else
              "rebalancing" if rebalancing else None)
    return {"ready": is_ready, "reason": reason, "partitions": owned, "recovered": recovered,
            "rebalancing": rebalancing, "crashed_agents": crashed}


def _bind_views(w: Worker) -> None:
    app, metrics, registry = w.app, w.metrics, w.registry
    gate = ApiGate(w.settings.api_token, open_commands=w.settings.dev, protect_reads=w.settings.api_protect_reads)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Request) -> Response:
        refused = gate.refuse(request, command=False)
        if refused:
            return web.json(refused[1], status=refused[0])
        metrics.live_models.set(len(registry))
        metrics.pending_events.set(w.pending.size())
        return web.bytes(metrics.exposition(), content_type="text/plain")

    @app.page("/health")
    async def health(web: Any, request: Request) -> Response:
        """Alive: the process answers."""
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: Any, request: Request) -> Response:
        """Ready: partitions assigned, not rebalancing, tables recovered, no agent crashed lately."""
        owned = sorted({tp.partition for tp in app.assignor.assigned_actives()
                        if tp.topic == w.topics.names.events})
        body = readiness(owned, app.tables.recovery.completed.is_set(), bool(app.rebalancing), w.agents.crashes,
                         time.time())
        return web.json(body, status=200 if body["ready"] else 503)

    def owned() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == w.topics.names.events}

    def local_models() -> list[dict[str, Any]]:
        """The models of this worker: live ones, and checkpointed ones not loaded since the last rebalance."""
        partitions = owned()
        me = str(app.conf.canonical_url).rstrip("/")
        live = {m.key: {**m.describe(), "live": True, "worker": me} for _, m in registry}
        for h in w.checkpoints.headers(lambda k: k not in live and
                                       partition_for(k, w.settings.partitions) in partitions):
            live[h.model] = {"model": h.model, "spec": h.spec, "version": h.version,
                             "parent_version": h.parent_version, "learned": h.learned,
                             "metric": {"value": h.metric}, "offset": h.offset, "live": False, "worker": me}
        return list(live.values())

    def settled() -> bool:
        """Tables recovered and no rebalance running: only then may a request load a model."""
        return app.tables.recovery.completed.is_set() and not app.rebalancing

    def owner_model(key: str) -> LiveModel | None:
        """The key's live model on its owner (loaded from its checkpoint if needed, once the tables are settled).

        Before Faust has recovered the tables after a rebalance, the
        checkpoint table may miss what another owner wrote: loading (or
        taking a held model back) then could serve a stale model, and the
        learn agent would go on from it. The views answer 503 instead.
        """
        live = registry.find(key)
        if live is None and not settled():
            raise Unsettled(key)
        partition = partition_for(key, w.settings.partitions)
        if live is None and partition in owned() and w.checkpoints.table.get(key.encode()) is not None:
            live = registry.get_or_create(partition, key, w.agents.spec_for(key))
        return live

    class GatedView(View):
        """A view whose requests pass the API gate first: commands need the token, reads when protected."""

        async def dispatch(self, request: Any) -> Any:
            refused = gate.refuse(request, command=request.method not in ("GET", "HEAD"))
            if refused:
                return self.json(refused[1], status=refused[0])
            try:
                return await super().dispatch(request)
            except Unsettled as exc:
                return self.json({"error": "recovering", "model": exc.args[0],
                                  "detail": "the key's owner is recovering its tables after a rebalance: "
                                            "ask again in a moment"}, status=503)

    @app.page("/models")
    class ModelsView(GatedView):
        async def get(self, request: Request) -> Response:
            """Every model of the cluster (or of this worker only, with ``?local=1``)."""
            found = local_models()
            if request.query.get("local") not in ("1", "true"):
                me = str(app.conf.canonical_url).rstrip("/")
                for url in app.router.external_topics_metadata():
                    peer = str(url).rstrip("/")
                    if peer == me:
                        continue
                    try:
                        async with app.http_client.get(f"{peer}/models?local=1", timeout=5,
                                                       headers=gate.peer_headers()) as response:
                            found += (await response.json())["models"]
                    except Exception as exc:  # noqa: BLE001 - a peer down must not hide the rest
                        log.warning("GET /models: worker %s did not answer: %s", peer, exc)
            return self.json({"models": sorted(found, key=lambda d: d["model"])})

    @app.page("/models/{key}")
    class ModelView(GatedView):
        @app.topic_route(topic=w.topics.events, match_info="key")
        async def get(self, request: Request, key: str) -> Response:
            """One model's status, answered by the worker owning the key."""
            live = owner_model(key)
            if live is None:
                return self.json({"error": "unknown_model", "detail": f"no model {key!r}", "model": key},
                                 status=404)
            return self.json({**live.describe(), "live": True})

    @app.page("/models/{key}/versions")
    class VersionsView(GatedView):
        @app.topic_route(topic=w.topics.events, match_info="key")
        async def get(self, request: Request, key: str) -> Response:
            """Every version of a model (read from the owner's snapshot index)."""
            live = owner_model(key)
            index = w.store.load_index(key)
            if live is None and index is None:
                return self.json({"error": "unknown_model", "detail": f"no model {key!r}", "model": key},
                                 status=404)
            return self.json(versions_of(live, index or models.versions.VersionIndex(key)))

    def command_view(command: str) -> type:
        class CommandView(GatedView):
            async def post(self, request: Request, key: str) -> Response:
                """Sent on the control topic, executed by the owner's learn agent; answers with its result."""
                try:
                    body = await request.json() if request.body_exists else {}
                except ValueError:
                    body = None
                version, spec = (body.get("version"), body.get("spec")) if isinstance(body, dict) else (None, None)
                needs = codec.COMMANDS[command]
                bad = ("the body must be a JSON object" if not isinstance(body, dict) else
                       "version must be a positive integer" if version is not None and (
                           isinstance(version, bool) or not isinstance(version, int) or version < 1) else
                       "spec must be the name of a challenger" if spec is not None and (
                           not isinstance(spec, str) or not spec) else
                       f"{command} needs a {needs}" if needs is not None and body.get(needs) is None else None)
                if bad:
                    return self.json({"ok": False, "error": "bad_request", "detail": bad, "model": key}, status=400)
                result = await w.control.call(command, key, version=version, spec=spec,
                                              reason=str(body.get("reason") or ""), by=str(body.get("by") or "http"))
                status = 200 if result["ok"] else HTTP_STATUS.get(result["error"], 400)
                return self.json(result, status=status)
        CommandView.__name__ = f"{command.title()}View"
        return CommandView

    for command in ("snapshot", "restore", "rollback", "pin", "unpin", "promote"):
        app.page(f"/models/{{key}}/{command}")(command_view(command))


async def prepare(worker: Worker) -> None:
    """What must exist before the worker consumes: its topics, and committed start offsets.

    First a connection check: Kafka refusing our credentials, or a broker
    certificate we do not trust, stops the worker here (``KafkaAuthError``),
    and so does a broker that no connection reaches within
    ``kafka_connect_timeout_seconds`` (``KafkaUnreachable``).
    """
    s = worker.settings
    await s.kafka_auth.check(s.bootstrap_servers, s.kafka_connect_timeout_seconds)
    created = await worker.ensure_topics()
    if created:
        log.info("created %d topics", len(created))
    n = worker.topics.names
    await ensure_committed(s.bootstrap_servers, s.app_id,
                           [n.features, n.feedback, n.control, n.events, n.labels, n.training], kafka=s.kafka_options)


class _Runner(faust.Worker):
    """Faust's worker, whose stop on a signal is bounded.

    The app and its tables must be built on the loop that runs them
    (``new_loop`` first): a table's cleanup task made on another loop never
    runs, and Faust's stop then cancels it and awaits it forever (it hung after
    ``Table: pending: Shutting down...`` on every stop while the loop was made
    after the app). Built in that order the worker stops in a fraction of a
    second, having left the group, committed and flushed its producer. The bound stays as a
    safety net: ``stop_timeout`` after the signal the process exits, with a
    warning. That loses nothing: what the worker produced is committed only
    once delivered, and a restart resumes from the committed offsets, as after
    a crash.
    """

    stop_timeout: float = 10.0

    async def _stop_on_signal(self, signal: Any) -> None:
        timer = threading.Timer(self.stop_timeout, self._exit_now)
        timer.daemon = True
        timer.start()
        await super()._stop_on_signal(signal)

    async def _sentinel_task(self) -> None:
        """Mode lets the loop run a last second before closing it, after every service stopped (the group
        left, the offsets committed, the producer flushed): a tenth is room enough for stray callbacks."""
        await asyncio.sleep(0.1)

    def _exit_now(self) -> None:
        log.warning("the worker did not stop within %gs of the signal (Faust's stop hung); exiting now",
                    self.stop_timeout)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)


def new_loop() -> asyncio.AbstractEventLoop:
    """The worker's event loop, uvloop, set as current; also the policy for Faust's consumer thread's loop.

    Made before the app (see ``_Runner``).
    """
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def run(worker: Worker) -> None:
    """Create the topics, then run the Faust worker until a signal stops it (on the loop of ``new_loop``)."""
    s = worker.settings
    loop = asyncio.get_event_loop()
    loop.run_until_complete(prepare(worker))
    runner = _Runner(worker.app, loglevel=s.log_level, loop=loop,
                     logging_config=logging_config(s.log_format, s.log_level))
    runner.stop_timeout = s.stop_timeout_seconds
    # Faust's terminal spinner sets the root logger to DEBUG at log levels
    # WARNING and above (to spin on every record): every debug call of Faust
    # and aiokafka then builds a LogRecord, ~8% of a worker's CPU. No spinner.
    runner.spinner = None
    try:
        runner.execute_from_commandline()
    except SystemExit as done:
        # Stopped: the group left, the offsets committed, the producer flushed, the loop closed. What
        # the interpreter's own teardown would still do took 1.6 s of every stop: exit now.
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
