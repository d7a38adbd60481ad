"""``streamlearn plot``: online accuracy over time, with every version change marked, as a PNG.

Reads the predictions, feedback and audit topics from the beginning up to
their ends at the time it starts (no consumer group, nothing committed),
joins each prediction with its label by event id and plots, per model, the
accuracy of the last ``window`` labelled predictions. A label carrying
``true_label`` (the replay's injected bad labels do) is scored against the
true one: the plot shows how good the predictions really were. Automatic
rollbacks are red lines, operator restores and rollbacks orange, warm starts
green, promotions of challengers purple (named after the spec promoted);
stretches of injected bad labels are shaded.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streamlearn.streams.topics import TopicNames

from .settings import Settings

COLORS = {"auto_rollback": "tab:red", "restore": "tab:orange", "rollback": "tab:orange", "warm_start": "tab:green",
          "promote": "tab:purple", "auto_promote": "tab:purple"}


@dataclass
class Series:
    """One model's accuracy over time, the times its labels were bad, and its version changes."""

    model: str
    times: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    bad_label_times: list[float] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)


async def read_topics(settings: Settings, which: tuple[str, ...] = ("predictions", "feedback", "audit"),
                      stamped: bool = False) -> dict[str, list[Any]]:
    """Every JSON record of the topics ``which`` (``TopicNames`` fields), up to their current ends, each
    partition's in offset order; ``stamped``: each as (its Kafka timestamp in seconds, the record)."""
    names = TopicNames.with_prefix(settings.topic_prefix)
    topics = {name: getattr(names, name) for name in which}
    consumer = AIOKafkaConsumer(*topics.values(), bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False, **settings.kafka_options)
    await consumer.start()
    out: dict[str, list[Any]] = {name: [] for name in topics}
    by_topic = {t: name for name, t in topics.items()}
    try:
        end: dict[TopicPartition, int] | None = None
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, messages in batch.items():
                for m in messages:
                    if end is None or m.offset < end.get(tp, 0):
                        try:
                            value = orjson.loads(m.value)
                        except orjson.JSONDecodeError:
                            continue
                        out[by_topic[tp.topic]].append((m.timestamp / 1000, value) if stamped else value)
            if end is None and consumer.assignment():
                end = await consumer.end_offsets(list(consumer.assignment()))
            if end is not None:
                positions = [await consumer.position(tp) for tp in end]
                if all(pos >= end[tp] for pos, tp in zip(positions, end)):
                    return out
    finally:
        await consumer.stop()


def series(records: dict[str, list[Any]], window: int = 200, models: list[str] | None = None) -> list[Series]:
    """Rolling accuracy per model, over the predictions' times, with the models' version changes."""
    labels = {}
    for lab in records["feedback"]:
        if isinstance(lab, dict) and "event_id" in lab:
            labels[str(lab["event_id"])] = lab
    out: dict[str, Series] = {}
    recent: dict[str, deque[bool]] = {}
    for pred in sorted((p for p in records["predictions"] if isinstance(p, dict)),
                       key=lambda p: p.get("predicted_at") or 0):
        lab = labels.get(str(pred.get("event_id")))
        model = pred.get("model")
        if lab is None or (models and model not in models):
            continue
        s = out.setdefault(model, Series(model))
        truth = lab.get("true_label", lab.get("label"))
        window_of = recent.setdefault(model, deque(maxlen=window))
        window_of.append(pred.get("prediction") == truth)
        s.times.append(pred["predicted_at"])
        s.accuracy.append(sum(window_of) / len(window_of))
        if "true_label" in lab:
            s.bad_label_times.append(pred["predicted_at"])
    for change in records["audit"]:
        if isinstance(change, dict) and change.get("model") in out:
            out[change["model"]].changes.append(change)
    return [out[m] for m in sorted(out)]


def mark(change: dict[str, Any]) -> tuple[str, str]:
    """How a version change is marked on the plot: its text and colour."""
    text = (f"{change['action']} v{change['from_version']}→v{change['to_version']}"
            + (f" (= v{change['restored_version']})" if change.get("restored_version") else "")
            + (f": {change['spec']}" if change.get("spec") else ""))
    return text, COLORS.get(change["action"], "0.3")


def render(all_series: list[Series], path: Path, title: str = "Online accuracy") -> Path:
    """Write the PNG: one panel per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not all_series:
        raise ValueError("no labelled predictions to plot")
    t0 = min(s.times[0] for s in all_series)
    fig, axes = plt.subplots(len(all_series), 1, figsize=(11, 2.6 * len(all_series) + 0.6), sharex=True,
                             squeeze=False)
    for ax, s in zip(axes[:, 0], all_series):
        ax.plot([t - t0 for t in s.times], s.accuracy, color="tab:blue", lw=1.2, label="accuracy (rolling)")
        if s.bad_label_times:
            ax.axvspan(min(s.bad_label_times) - t0, max(s.bad_label_times) - t0, color="0.85",
                       label="bad labels injected")
        for c in s.changes:
            if c["action"] == "snapshot":
                ax.plot([c["at"] - t0], [0.02], marker="|", color="0.5", ms=6)
                continue
            text, color = mark(c)
            ax.axvline(c["at"] - t0, color=color, lw=1.5, ls="-" if c.get("spec") else "--")
            ax.annotate(text, (c["at"] - t0, 0.08), rotation=90, fontsize=7, color=color, ha="right", va="bottom")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(s.model)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower left", fontsize=8)
    axes[0, 0].set_title(f"{title} (snapshots: grey ticks)")
    axes[-1, 0].set_xlabel("seconds")
    return _save(fig, path)


def render_bench(results: list, path: Path) -> Path:
    """Write the benchmark's PNG: throughput and p99 latency against the offered rate, one line per run kind.

    ``results`` are ``bench.Result`` rows; runs flat out (rate 0) are drawn at the rate they reached.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list] = defaultdict(list)
    for r in results:
        if r.name == "raw":
            continue
        label = f"{r.name} {r.spec}" + (f", {r.workers} worker{'s' if r.workers > 1 else ''}"
                                          if r.name == "pipeline" else "")
        lines[label].append((r.target_rate or r.events_per_s, r.events_per_s, r.p99_ms, not r.target_rate))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    for label, points in sorted(lines.items()):
        points.sort()
        offered = [p[0] for p in points]
        style = "--" if label.startswith("loop") else "-"
        top.plot(offered, [p[1] for p in points], style, marker="o", label=label)
        bottom.plot(offered, [p[2] for p in points], style, marker="o", label=label)
        for p in points:
            if p[3]:
                top.annotate("flat out", (p[0], p[1]), fontsize=7, xytext=(3, -10), textcoords="offset points")
    top.set_ylabel("events/s reached")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    top.set_title("streamlearn bench: pipeline against the hand-written loop")
    bottom.set_yscale("log")
    bottom.set_ylabel("p99 latency, ms (event ts to prediction consumed)")
    bottom.set_xlabel("offered events/s (flat-out runs: what they reached)")
    bottom.grid(alpha=0.3, which="both")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Write a figure as a PNG (its folder made if needed), then free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
