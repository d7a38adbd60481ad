"""Prometheus metrics of one worker, on its own registry (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        self.errors = Counter(
            "streamlearn_processing_errors_total", "Exceptions raised while processing an event.", ["stage"],
            registry=r)
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
            "streamlearn_checkpoints_refused_total", "Checkpoints refused (too large to write, or invalid to load).",
            ["reason"], registry=r)
        self.checkpoints_restored = Counter(
            "streamlearn_checkpoints_restored_total", "Models restored from their checkpoint.", registry=r)
        self.replayed_skips = Counter(
            "streamlearn_replay_skipped_total",
            "Training examples skipped on replay because the model's checkpoint already had them.", registry=r)
        self.live_models = Gauge(
            "streamlearn_live_models", "Live models held by this worker.", registry=r)
        self.pending_events = Gauge(
            "streamlearn_pending_events", "Events waiting for their label on this worker.", registry=r)

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

    def error(self, stage: str) -> None:
        self.errors.labels(stage).inc()

    def checkpoint_written(self, size: int, seconds: float) -> None:
        self.checkpoints.inc()
        self.checkpoint_bytes.observe(size)
        self.checkpoint_seconds.observe(seconds)

    def checkpoint_refused(self, reason: str) -> None:
        self.checkpoints_refused.labels(reason).inc()

    def checkpoint_restored(self) -> None:
        self.checkpoints_restored.inc()

    def replay_skipped(self) -> None:
        self.replayed_skips.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
