"""What ``streamlearn models`` prints for people: a command's answer as a line or a table.

Pure functions of the JSON the workers answer with (``--json`` prints that
instead): a model as ``models.LiveModel.describe`` gives it, a snapshot as
``models.versions.SnapshotInfo``.
"""

from __future__ import annotations

import time
from typing import Any, Sequence


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as columns, the first row the header; each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def metric(m: dict[str, Any] | None) -> str:
    """``Accuracy 0.9700``; ``-`` when there is none."""
    if not m or m.get("value") is None:
        return "-"
    return f"{m.get('name', '')} {m['value']:.4f}".strip()


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def challengers(model: dict[str, Any], z: dict[str, float] | None = None) -> str:
    """A model's challengers in one cell: ``hoeffding_tree (Accuracy 0.9650)``, comma-separated."""
    out = []
    for c in model.get("challengers") or []:
        notes = [metric(c.get("metric"))]
        if z and z.get(c["spec"]) is not None:
            notes.append(f"z {z[c['spec']]:+.2f}")
        if c.get("retired_version"):
            notes.append(f"champion until v{c['retired_version']}")
        if c.get("error"):
            notes.append(f"stopped: {c['error']}")
        out.append(f"{c['spec']} ({', '.join(notes)})")
    return ", ".join(out) or "-"


def models_table(found: list[dict[str, Any]]) -> str:
    """``models list``: one row per model of the cluster."""
    rows = [("MODEL", "SPEC", "VERSION", "LEARNED", "METRIC", "CHALLENGERS", "WORKER")]
    for m in found:
        rows.append((m["model"], m["spec"], f"v{m['version']}", str(m["learned"]), metric(m.get("metric")),
                     challengers(m), m.get("worker", "")))
    return table(rows)


def show(model: str, r: dict[str, Any]) -> str:
    """``models show`` / ``status``: one model, a line per fact."""
    origin = f" (parent v{r['parent_version']})" if r.get("parent_version") else ""
    lines = [f"{model}: {r['spec']} v{r['version']}{origin}, {r['learned']} learned, {metric(r.get('metric'))}",
             f"  challengers: {challengers(r, r.get('promotion_z'))}",
             f"  snapshots: {r.get('snapshots', 0)}"
             + (f" (latest v{r['latest_snapshot']})" if r.get("latest_snapshot") is not None else "")
             + (f"; quality gate reference v{r['gate_reference']}" if r.get("gate_reference") is not None else ""),
             f"  live since {when(r.get('created_at'))} UTC; training offset {r.get('offset')}"]
    lab = r.get("labels")
    if lab:
        coverage = "-" if lab.get("coverage") is None else f"{100 * lab['coverage']:.0f}%"
        delay = ("-" if lab.get("delay_p50_seconds") is None
                 else f"{lab['delay_p50_seconds']:g}s p50, {lab['delay_p99_seconds']:g}s p99")
        lines.append(f"  labels: {lab['labelled']} of {lab['predicted']} predictions ({coverage}); delay {delay}; "
                     f"{lab['expired']} expired, {lab['unknown']} unknown"
                     + (f"; {lab['defaulted']} defaulted, {lab['late']} late" if lab.get("defaulted") or lab.get("late")
                        else "")
                     + ("; STARVING: none lately" if lab.get("starving") else ""))
    for a in r.get("alerts") or []:
        lines.append(f"  alert {when(a.get('at'))} UTC: {a['kind']}: {a['detail']}")
    if r.get("warm_start"):
        w = r["warm_start"]
        lines.append(f"  warm-started from {w.get('template')} v{w.get('version')} ({w.get('learned')} examples)")
    return "\n".join(lines)


def versions(model: str, r: dict[str, Any]) -> str:
    """``models versions``: the snapshots, oldest first, then the live model."""
    rows = [("VERSION", "SPEC", "KIND", "LEARNED", "METRIC", "TAKEN (UTC)", "BY", "REASON")]
    for s in r.get("snapshots") or []:
        mark = "*" if s["version"] == r.get("gate_reference") else ""
        pin = " pinned" if s.get("pinned") else ""
        rows.append((f"v{s['version']}{mark}", s.get("spec") or "-", s["kind"] + pin, str(s["learned"]),
                     metric({"name": s.get("metric_name"), "value": s.get("metric")}), when(s.get("created_at")),
                     s.get("by", ""), s.get("reason", "")))
    live = r.get("live")
    if live:
        rows.append((f"v{live['version']}", live["spec"], "live", str(live["learned"]), metric(live.get("metric")),
                     "-", "", ""))
    out = table(rows)
    if r.get("gate_reference") is not None:
        out += "\n* the quality gate's reference"
    return out


def change(action: str, model: str, r: dict[str, Any]) -> str:
    """A change in one line: ``demo-0: restored v5 (was v9), now v10``."""
    live = r.get("live") or {}
    now = f"now v{live['version']}" if live else ""
    if action == "snapshot":
        s = r["snapshot"]
        return (f"{model}: snapshot v{s['version']} ({s['learned']} learned, "
                f"{metric({'name': s.get('metric_name'), 'value': s.get('metric')})}), {now}")
    if action in ("restore", "rollback"):
        verb = "restored" if action == "restore" else "rolled back to"
        return f"{model}: {verb} v{r['restored']} (was v{r['replaced']['version']}), {now}"
    if action == "promote":
        was = r["replaced"]
        return f"{model}: promoted {r['promoted']} (was {was.get('spec') or 'the champion'} v{was['version']}), {now}"
    if action in ("pin", "unpin"):
        s = r["snapshot"]
        return f"{model}: {action}ned v{s['version']}" + (" (kept until unpinned)" if action == "pin" else "")
    raise ValueError(f"no summary for {action!r}")


def answer(action: str, model: str, result: dict[str, Any]) -> str:
    """What a ``models`` action prints on success."""
    if action == "status":
        return show(model, result)
    if action == "versions":
        return versions(model, result)
    return change(action, model, result)
