"""``streamlearn whatif --spec SPEC``: how a spec would have done on the keys' history, against the live models.

Reads, in a process of its own (the cluster is not touched), the internal
training topic from its start (what retention kept of every example the
models learned, each key's in the order its model learned them) and the
predictions topic (the answers the live models gave those events, before
they learned them). Per key, a fresh SPEC predicts each example, then
learns it (progressive validation, as the live model was scored); both are
scored with the live models' online metric (accuracy, or the mean absolute
error), on the examples whose live answer is known, and compared with the
promotion policy's paired test over all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

CURVE_POINTS = 200   # points of each key's curves on the plot


@dataclass
class KeyReport:
    """One key's history replayed through the spec, against its live model's answers."""

    key: str
    examples: int = 0             # in the retained history (since --since)
    compared: int = 0             # of which the live model's answer is known: the figures below are over these
    spec_metric: float | None = None
    live_metric: float | None = None
    spec_better: int = 0          # examples where the spec's error was smaller
    live_better: int = 0
    z: float = 0.0
    verdict: str = ""
    curve: list[tuple[int, float, float]] = field(default_factory=list)   # (compared, spec, live) as it went


def replay(spec_name: str, examples: Iterable[Any], answers: dict[tuple[str, str], Any], z_threshold: float,
           min_discordant: int) -> list[KeyReport]:
    """Replay each key's ``examples`` (in order) through a fresh ``spec_name``; ``answers``: the live models'
    predictions by (key, event id)."""
    from streamlearn.models import get_spec
    from streamlearn.models.gate import PairedTest, error_of
    from streamlearn.models.state import new_metric

    spec = get_spec(spec_name)
    keys: dict[str, tuple[KeyReport, Any, Any, Any, Any]] = {}
    for ex in examples:
        state = keys.get(ex.model)
        if state is None:
            state = keys[ex.model] = (KeyReport(ex.model), spec.build(), new_metric(spec), new_metric(spec),
                                      PairedTest(window=2**62))
        report, model, spec_metric, live_metric, test = state
        report.examples += 1
        y_pred = model.predict_one(ex.features)
        model.learn_one(ex.features, ex.label)
        key = (ex.model, ex.event_id)
        if key not in answers:
            continue
        live = answers[key]
        report.compared += 1
        for metric, answer in ((spec_metric, y_pred), (live_metric, live)):
            if answer is not None or spec.is_classifier:   # a classifier's missing answer is wrong
                metric.update(ex.label, answer)
        test.add(error_of(spec.is_classifier, ex.label, y_pred), error_of(spec.is_classifier, ex.label, live))
        report.curve.append((report.compared, spec_metric.get(), live_metric.get()))
    reports = []
    for report, _, spec_metric, live_metric, test in keys.values():
        report.spec_better, report.live_better, report.z = test.a_better, test.b_better, test.z()
        if report.compared:
            report.spec_metric, report.live_metric = spec_metric.get(), live_metric.get()
        step = max(1, len(report.curve) // CURVE_POINTS)
        report.curve = report.curve[::step]
        report.verdict = (
            "no live answers to compare with" if not report.compared else
            f"too few disagreements to tell ({test.discordant} of {min_discordant})"
            if test.discordant < min_discordant else
            f"{spec_name} better" if report.z >= z_threshold else
            "the live model better" if report.z <= -z_threshold else "no significant difference")
        reports.append(report)
    return sorted(reports, key=lambda r: r.key)


def history(records: dict[str, list[Any]], pattern: str, since: float | None
            ) -> tuple[list[Any], dict[tuple[str, str], Any]]:
    """The matching keys' examples in learned order, and the live answers by (key, event id), from
    ``read_topics`` of the training and predictions topics (stamped)."""
    from streamlearn.streams.codec import examples_of

    examples = [ex for at, message in records["training"] if since is None or at >= since
                for ex in examples_of(message) if fnmatch.fnmatchcase(ex.model, pattern)]
    answers: dict[tuple[str, str], Any] = {}
    for _, p in records["predictions"]:
        if isinstance(p, dict) and "event_id" in p and "model" in p:
            answers.setdefault((p["model"], p["event_id"]), p.get("prediction"))
    return examples, answers


def add_command(command: Any, common: Any) -> None:
    wi = common(command("whatif", help="replay the keys' training history through a spec, against the live models"))
    wi.add_argument("--spec", required=True, help="the model spec to try")
    wi.add_argument("--keys", default="*", help="model keys matching this pattern (fnmatch)")
    wi.add_argument("--since", type=float, help="only examples written since this Unix time")
    wi.add_argument("--plot", type=Path, help="also write a PNG of both metrics as each key's examples went")
    wi.add_argument("--json", action="store_true", help="print the reports as JSON")
    wi.set_defaults(func=cmd_whatif)


def cmd_whatif(args: argparse.Namespace) -> int:
    from .cli import connected
    from .plot import read_topics

    from streamlearn.models import UnknownSpec, get_spec

    try:
        get_spec(args.spec)
    except UnknownSpec as exc:
        print(f"streamlearn whatif: {exc}", file=sys.stderr)
        return 2
    s = connected(args)
    examples, answers = history(asyncio.run(read_topics(s, ("training", "predictions"), stamped=True)),
                                args.keys, args.since)
    if not examples:
        print(f"streamlearn whatif: no training history for keys matching {args.keys!r}", file=sys.stderr)
        return 1
    reports = replay(args.spec, examples, answers, s.promote_z_threshold, s.promote_min_discordant)
    if args.json:
        print(json.dumps([asdict(r) for r in reports], indent=2))
    else:
        for r in reports:
            shown = (f"{args.spec} {r.spec_metric:.4f} vs live {r.live_metric:.4f} on {r.compared:,} of them, "
                     f"better on {r.spec_better}, worse on {r.live_better}, z={r.z:.1f}: " if r.compared else "")
            print(f"{r.key}: {r.examples:,} examples; {shown}{r.verdict}")
    if args.plot is not None:
        print(f"wrote {_render(reports, args.spec, args.plot)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _render(reports: list[KeyReport], spec: str, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import _save

    shown = [r for r in reports if r.curve][:12]
    fig, axes = plt.subplots(max(1, len(shown)), 1, figsize=(11, 2.4 * max(1, len(shown)) + 0.6), squeeze=False)
    for ax, r in zip(axes[:, 0], shown):
        n = [c[0] for c in r.curve]
        ax.plot(n, [c[1] for c in r.curve], color="tab:purple", lw=1.2, label=spec)
        ax.plot(n, [c[2] for c in r.curve], color="tab:blue", lw=1.2, label="live model")
        ax.set_ylabel(r.key)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower right", fontsize=8)
    axes[0, 0].set_title(f"What if: {spec} against the live models, progressive metric on the same examples")
    axes[-1, 0].set_xlabel("examples")
    return _save(fig, path)
