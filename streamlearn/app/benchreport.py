"""What ``streamlearn bench`` prints: its table, one row per run, and each run's latency waterfall."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from streamlearn.streams.routing import trace_of

if TYPE_CHECKING:
    from .bench import Result


def waterfall(received: list[tuple[float, bytes, Any]]) -> dict:
    """Where the time of the traced events went: per path (the steps an event took, e.g. routed or not), the
    number of events and each step's p50 and p99 in ms, from the event's ``ts`` through the worker's stamps
    (``streams.routing.trace_of``) to its prediction being consumed."""
    paths: dict[tuple, list[list[float]]] = {}
    for consumed, value, headers in received:
        stamps = trace_of(headers)
        if not stamps:
            continue
        steps = [("produced", orjson.loads(value)["ts"]), *((s, t) for s, t in stamps), ("consumed", consumed)]
        names = tuple(name for name, _ in steps)
        paths.setdefault(names, []).append([b - a for (_, a), (_, b) in zip(steps, steps[1:])])
    out = {}
    for names, rows in paths.items():
        spans = np.array(rows) * 1000
        out[" > ".join(names)] = {
            "events": len(rows),
            "steps": [{"from": a, "to": b, "p50_ms": float(np.percentile(spans[:, i], 50)),
                       "p99_ms": float(np.percentile(spans[:, i], 99))}
                      for i, (a, b) in enumerate(zip(names, names[1:]))]}
    return out


def freshness(received: list[tuple[float, bytes, Any]], labels_sent: dict[str, list[float]]) -> dict | None:
    """How soon a label counts: per label, the time from its produce time until a prediction shows the
    model has learned it; p50, p99 (ms) and the number of labels measured.

    ``labels_sent``: per model key, when each timed label was produced, in order. A model learns each
    label once, so its ``learned`` grows by one per label; the first timed prediction of a key shows
    what it had learned before (the warm-up), and the n-th label counts from the first prediction
    whose ``learned`` passed that by n, at its ``predicted_at``. That is an upper bound: the model
    learned it at most one of the key's predictions earlier (20 ms at 1,000 events/s over 20 keys).
    Labels no later prediction shows are not measured; None when none is.
    """
    seen: dict[str, list[tuple[float, int]]] = {}
    for _, value, _ in received:
        p = orjson.loads(value)
        seen.setdefault(p["model"], []).append((p["predicted_at"], p["learned"]))
    waits = []
    for model, sent in labels_sent.items():
        shown = sorted(seen.get(model, ()))
        if not shown:
            continue
        before, i = shown[0][1], 0
        for n, produced in enumerate(sent, 1):
            while i < len(shown) and shown[i][1] < before + n:
                i += 1
            if i == len(shown):
                break
            waits.append((shown[i][0] - produced) * 1000)
    if not waits:
        return None
    return {"labels": len(waits), "p50_ms": float(np.percentile(waits, 50)), "p99_ms": float(np.percentile(waits, 99))}


class Table:
    """Prints results as rows of a table, the header once."""

    def __init__(self, out) -> None:
        self.out = out
        print(f"{'run':<10}{'spec':<16}{'workers':>8}{'rate':>8}{'keys':>8}{'events':>8}{'events/s':>10}"
              f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'cpu s/1k':>10}{'vs raw':>8}{'vs loop':>9}"
              f"{'rss MB':>8}{'vs keys':>9}{'B/model':>9}{'stall<=ms':>10}", file=out, flush=True)

    def row(self, r: Result) -> None:
        rate = "max" if not r.target_rate else f"{r.target_rate:g}"
        raw = f"{r.ratio_to_baseline:.2f}" if r.ratio_to_baseline is not None else "-"
        loop = f"{r.ratio_to_loop:.2f}" if r.ratio_to_loop is not None else "-"
        rss = f"{r.rss_mb:.0f}" if r.rss_mb is not None else "-"
        vs_keys = f"{r.ratio_to_keys:.2f}" if r.ratio_to_keys is not None else "-"
        per_model = f"{r.bytes_per_model:,.0f}" if r.bytes_per_model is not None else "-"
        stall = f"{r.stall_ms:g}" if r.stall_ms is not None else "-"
        print(f"{r.name:<10}{r.spec:<16}{r.workers:>8}{rate:>8}{r.keys:>8}{r.events:>8}{r.events_per_s:>10,.0f}"
              f"{r.p50_ms:>9.1f}{r.p95_ms:>9.1f}{r.p99_ms:>9.1f}{r.cpu_s_per_1k:>10.2f}{raw:>8}{loop:>9}"
              f"{rss:>8}{vs_keys:>9}{per_model:>9}{stall:>10}", file=self.out, flush=True)
        for path, w in (r.waterfall or {}).items():
            print(f"    {r.producers} producers, {w['events']} traced events: " + ", ".join(
                f"{s['to']} +{s['p50_ms']:.1f}/{s['p99_ms']:.1f}" for s in w["steps"]) + " (ms, p50/p99)",
                file=self.out, flush=True)
        if r.freshness:
            f = r.freshness
            print(f"    freshness, {f['labels']} labels: produced > learned {f['p50_ms']:.1f}/{f['p99_ms']:.1f} "
                  f"(ms, p50/p99)", file=self.out, flush=True)
