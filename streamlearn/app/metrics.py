"""Prometheus metrics of one worker, on its own registry (no global state)."""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamlearn.models import LiveModel

OTHER = "_other"

LOOP_PROBE_SECONDS = 0.25   # how often the event loop's lag is sampled (app/worker.py)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Implements the ``Counters`` protocol of ``streamlearn.streams``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_consumed = Counter(
            "streamlearn_events_consumed_total", "Messages consumed from input topics.", ["topic"], registry=r)
        self.predictions = Counter(
            "streamlearn_predictions_total", "Predictions published.", registry=r)
        self.examples_learned = Counter(
            "streamlearn_examples_learned_total", "Training examples learned.", registry=r)
        self.correct = Counter(
            "streamlearn_progressive_correct_total",
            "Learned examples the model had predicted right just before learning them.", registry=r)
        self.deadletters = Counter(
            "streamlearn_deadletters_total", "Messages sent to the deadletter topic.", ["reason"], registry=r)
        self.duplicate_labels = Counter(
            "streamlearn_duplicate_labels_total", "Labels ignored because the event already had one.", registry=r)
        self.default_labels = Counter(
            "streamlearn_default_labels_total", "Events that learned a rule's default label (no label came within "
            "its wait: STREAMLEARN_DEFAULT_LABEL_RULES).", registry=r)
        self.errors = Counter(
            "streamlearn_processing_errors_total", "Exceptions raised while processing an event.", ["stage"],
            registry=r)
        self.recovery_stalls = Counter(
            "streamlearn_recovery_stalls_total", "Changelog partitions Faust's recovery waited on in vain, asked "
            "for again (streams/transport.py).", registry=r)
        self.alerts = Counter("streamlearn_alerts_total", "Alerts raised (one record each on the alerts topic), "
                              "by kind: degradation.", ["kind"], registry=r)
        self.label_delay = Histogram(
            "streamlearn_label_delay_seconds", "From an event's features reaching its model's owner to its label "
            "joining them (0: the label came first); one observation per label joined, over all keys.",
            buckets=(0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0), registry=r)
        self.loop_lag = Histogram(
            "streamlearn_event_loop_lag_seconds", "How late the worker's event loop came back from a "
            f"{LOOP_PROBE_SECONDS:g} s sleep: a stall there holds every agent, timer and HTTP answer.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.prediction_latency = Histogram(
            "streamlearn_prediction_latency_seconds", "Time to process one routed event into a prediction.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.end_to_end_latency = Histogram(
            "streamlearn_end_to_end_latency_seconds", "From the event's ts to its prediction being published.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.checkpoints = Counter(
            "streamlearn_checkpoints_total", "Model checkpoints written.", registry=r)
        self.checkpoint_bytes = Histogram(
            "streamlearn_checkpoint_size_bytes", "Size of written checkpoints.",
            buckets=(1e3, 1e4, 1e5, 2.5e5, 5e5, 1e6, 2e6), registry=r)
        self.checkpoint_seconds = Histogram(
            "streamlearn_checkpoint_duration_seconds", "Time to serialize, sign and write a checkpoint.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.checkpoints_refused = Counter(
            "streamlearn_checkpoints_refused_total",
            "Checkpoints refused (too large to write, invalid to load, or stale: behind the one held).",
            ["reason"], registry=r)
        self.changelog_restored = Counter(
            "streamlearn_changelog_records_restored_total", "Changelog records read back into a table at "
            "recovery: a worker restarting on its data directory (RocksDB) reads only what the changelog gained "
            "since it stopped.", ["table"], registry=r)
        self.changelog_read_rate = Gauge(
            "streamlearn_changelog_read_records_per_second", "Of the last recovery's changelog read (records "
            "behind their highwater, read in batches before the worker serves): records per second.", registry=r)
        self.checkpoints_restored = Counter(
            "streamlearn_checkpoints_restored_total", "Models restored from their checkpoint.", registry=r)
        self.restore_seconds = Histogram(
            "streamlearn_checkpoint_restore_seconds", "Time to verify and unpickle a model's checkpoint.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.models_evicted = Counter(
            "streamlearn_models_evicted_total", "Live models that left memory (their state is in their checkpoint): "
            "over STREAMLEARN_MAX_LIVE_MODELS (cap) or idle for STREAMLEARN_MODEL_IDLE_SECONDS (idle).",
            ["reason"], registry=r)
        self.replayed_skips = Counter(
            "streamlearn_replay_skipped_total",
            "Training examples skipped on replay because the model's checkpoint already had them.", registry=r)
        self.repeats_skipped = Counter(
            "streamlearn_repeats_skipped_total",
            "Training examples not learned because their model had learned that event already "
            "(a label handled again after a crash).", registry=r)
        self.agent_crashes = Counter(
            "streamlearn_agent_crashes_total", "Agents that died with an exception (Faust restarts them).",
            ["agent"], registry=r)
        self.snapshots = Counter(
            "streamlearn_snapshots_total", "Model snapshots written, by kind (auto, manual, replaced).", ["kind"],
            registry=r)
        self.snapshot_bytes = Histogram(
            "streamlearn_snapshot_size_bytes", "Size of written snapshots.",
            buckets=(1e3, 1e4, 1e5, 2.5e5, 5e5, 1e6, 2e6), registry=r)
        self.snapshot_seconds = Histogram(
            "streamlearn_snapshot_duration_seconds", "Time to serialize, sign and write a snapshot.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.rollbacks = Counter(
            "streamlearn_rollbacks_total",
            "Live models replaced by a snapshot: by an operator (restore, rollback) or the quality gate.",
            ["trigger"], registry=r)
        self.version_changes = Counter(
            "streamlearn_version_changes_total", "Version changes (every record on the audit topic), by action.",
            ["action"], registry=r)
        self.commands = Counter(
            "streamlearn_commands_total", "Operator commands answered, by command and outcome (ok or error reason).",
            ["command", "outcome"], registry=r)
        self.live_models = Gauge(
            "streamlearn_live_models", "Live models held by this worker.", registry=r)
        self.pending_events = Gauge(
            "streamlearn_pending_events", "Events waiting for their label on this worker.", registry=r)
        self.ready = Gauge("streamlearn_ready", "1 while this worker is ready (GET /ready: partitions assigned, "
                           "tables recovered, no rebalance, no agent crashed lately), else 0.", registry=r)

    # ---- the Counters protocol -----------------------------------------
    def consumed(self, topic: str) -> None:
        self.events_consumed.labels(topic).inc()

    def deadletter(self, reason: str) -> None:
        self.deadletters.labels(reason).inc()

    def predicted(self, model: str, latency: float, end_to_end: float | None) -> None:
        self.predictions.inc()
        self.prediction_latency.observe(latency)
        if end_to_end is not None:
            self.end_to_end_latency.observe(max(end_to_end, 0.0))

    def learned(self, model: str, correct: bool | None) -> None:
        self.examples_learned.inc()
        if correct:
            self.correct.inc()

    def duplicate_label(self) -> None:
        self.duplicate_labels.inc()

    def default_label(self) -> None:
        self.default_labels.inc()

    def label_joined(self, delay: float) -> None:
        self.label_delay.observe(max(0.0, delay))

    def error(self, stage: str) -> None:
        self.errors.labels(stage).inc()

    def alerted(self, kind: str) -> None:
        self.alerts.labels(kind).inc()

    def changelog_read(self, records: int, seconds: float) -> None:
        if records:
            self.changelog_read_rate.set(records / max(seconds, 1e-6))

    def recovery_stalled(self, partitions: int) -> None:
        self.recovery_stalls.inc(partitions)

    def checkpoint_written(self, size: int, seconds: float) -> None:
        self.checkpoints.inc()
        self.checkpoint_bytes.observe(size)
        self.checkpoint_seconds.observe(seconds)

    def checkpoint_refused(self, reason: str) -> None:
        self.checkpoints_refused.labels(reason).inc()

    def checkpoint_restored(self, seconds: float) -> None:
        self.checkpoints_restored.inc()
        self.restore_seconds.observe(seconds)

    def repeat_skipped(self) -> None:
        self.repeats_skipped.inc()

    def agent_crashed(self, agent: str) -> None:
        self.agent_crashes.labels(agent).inc()

    def replay_skipped(self) -> None:
        self.replayed_skips.inc()

    def snapshot_written(self, kind: str, size: int, seconds: float) -> None:
        self.snapshots.labels(kind).inc()
        self.snapshot_bytes.observe(size)
        self.snapshot_seconds.observe(seconds)

    def version_changed(self, action: str) -> None:
        self.version_changes.labels(action).inc()
        if action in ("restore", "rollback"):
            self.rollbacks.labels("operator").inc()
        elif action == "auto_rollback":
            self.rollbacks.labels("quality_gate").inc()

    def command_answered(self, command: str, outcome: str) -> None:
        self.commands.labels(command, outcome).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """Per-model and per-partition series, read from the worker's state at scrape time.

    Nothing is counted per event for these: a scrape walks the live models
    and the consumer's offsets. At most ``max_models`` keys (those with the
    most examples learned) get series of their own; the rest are summed up
    (examples), averaged (metric) or maxed (version) under ``model="_other"``,
    so a worker with 100,000 keys does not flood Prometheus.
    """

    def __init__(self, models: Callable[[], Iterable[LiveModel]],
                 lags: Callable[[], Iterable[tuple[str, int, int]]], max_models: int) -> None:
        self.models = models
        self.lags = lags
        self.max_models = max_models

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        metric = GaugeMetricFamily("streamlearn_model_metric", "Online metric of progressive validation per model.",
                                   labels=["model", "metric"])
        version = GaugeMetricFamily("streamlearn_model_version", "Live version per model.", labels=["model"])
        examples = GaugeMetricFamily("streamlearn_model_examples", "Examples learned per model.", labels=["model"])
        challenger = GaugeMetricFamily("streamlearn_challenger_metric",
                                       "Online metric of each challenger, next to its champion's.",
                                       labels=["model", "challenger", "metric"])
        live = sorted(self.models(), key=lambda m: -m.learned)
        for m in live[:self.max_models]:
            metric.add_metric([m.key, type(m.metric).__name__], m.metric.get())
            version.add_metric([m.key], m.version)
            examples.add_metric([m.key], m.learned)
            for name, c in m.challengers.items():
                challenger.add_metric([m.key, name, type(c.metric).__name__], c.metric.get())
        rest = live[self.max_models:]
        if rest:
            by_metric: dict[str, list[float]] = {}
            for m in rest:
                by_metric.setdefault(type(m.metric).__name__, []).append(m.metric.get())
            for name, values in by_metric.items():
                metric.add_metric([OTHER, name], sum(values) / len(values))
            version.add_metric([OTHER], max(m.version for m in rest))
            examples.add_metric([OTHER], sum(m.learned for m in rest))
        lag = GaugeMetricFamily("streamlearn_consumer_lag",
                                "Messages not yet committed per assigned partition (highwater - committed).",
                                labels=["topic", "partition"])
        for topic, partition, value in self.lags():
            lag.add_metric([topic, str(partition)], value)
        return [metric, version, examples, challenger, lag]
