"""The console's HTML: pure functions from the API's JSON to escaped markup (no I/O; app/console.py serves it).

Every value that a producer, an operator or a model can set (keys, specs,
reasons, details, `by`) goes through ``esc``; attributes are quoted. The
pages use htmx (served by the worker, from the package that ships it) for
searching, paging and the action buttons; the API token lives in the
browser's ``sessionStorage`` and goes out only as an ``Authorization``
header of htmx's requests.
"""

from __future__ import annotations

import fnmatch
import html
import re
import time
from typing import Any, Mapping, Sequence
from urllib.parse import quote

PER_PAGE = 50

esc = html.escape


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(str(value))


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _none(columns: int) -> str:
    return f'<tr><td colspan="{columns}">none</td></tr>'


def key_url(key: str) -> str:
    return "/console/models/" + quote(key, safe="")


# ---- the shell -----------------------------------------------------------------------------------------
_SCRIPT = """
const TOKEN = "streamlearn-api-token";
function token() { return sessionStorage.getItem(TOKEN) || ""; }
function saveToken(form) {
  const t = form.elements.token.value.trim();
  if (t) { sessionStorage.setItem(TOKEN, t); } else { sessionStorage.removeItem(TOKEN); }
  form.elements.token.value = "";
  showMode();
  return false;
}
function showMode() {
  const el = document.getElementById("mode");
  const needs = document.body.dataset.needsToken === "true";
  el.textContent = token() ? "API token set for this browser session: actions enabled." :
    needs ? "Read-only: no API token (actions need STREAMLEARN_API_TOKEN; enter it above)." :
            "No API token needed here (development mode): actions enabled.";
  el.className = token() || !needs ? "mode ok" : "mode readonly";
}
document.addEventListener("htmx:configRequest", (e) => {
  if (token()) { e.detail.headers["Authorization"] = "Bearer " + token(); }
});
document.addEventListener("htmx:beforeSwap", (e) => {   // refusals (4xx) are shown, not dropped
  if (e.detail.xhr.status >= 400 && e.detail.xhr.status < 600) { e.detail.shouldSwap = true; e.detail.isError = false; }
});
document.addEventListener("DOMContentLoaded", showMode);
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.5rem; text-align: left; }
th { background: #f4f4f4; }
.mode { padding: 0.4rem 0.6rem; margin: 0.5rem 0; }
.ok { background: #e8f5e9; } .readonly, .refused { background: #fff3e0; } .done { background: #e8f5e9; }
.result { margin: 0.5rem 0; padding: 0.4rem; }
nav a { margin-right: 1rem; } form.inline { display: inline; }
svg text { font-size: 11px; fill: #555; }
"""


def shell(title: str, body: str, *, needs_token: bool) -> str:
    """A whole page: the token box, the read-only notice, and ``body`` (which loads its data with htmx)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)} - streamlearn</title>
<style>{_STYLE}</style><script src="/console/static/htmx.min.js"></script><script>{_SCRIPT}</script></head>
<body data-needs-token="{'true' if needs_token else 'false'}">
<nav><a href="/console">streamlearn console</a>
<form class="inline" onsubmit="return saveToken(this)"><input type="password" name="token" placeholder="API token"
 autocomplete="off"> <button type="submit">use token</button></form></nav>
<div id="mode" class="mode"></div>
{body}
</body></html>"""


def index_body() -> str:
    return """<h1>Models</h1>
<input type="search" name="q" placeholder="search keys (text or pattern: tenant-*)" id="q"
 hx-get="/console/keys" hx-trigger="input changed delay:300ms, search" hx-target="#keys" size="40">
<div id="keys" hx-get="/console/keys" hx-trigger="load">loading...</div>"""


def key_body(key: str) -> str:
    return f"""<h1>Model {esc(key)}</h1>
<div id="panel" hx-get="{key_url(key)}/panel" hx-trigger="load">loading...</div>"""


# ---- the keys --------------------------------------------------------------------------------------------
def select(models: Sequence[Mapping[str, Any]], q: str, page: int,
           per_page: int = PER_PAGE) -> tuple[Sequence[Mapping[str, Any]], int]:
    """The page ``page`` (from 0) of ``models`` (sorted by key) whose key matches ``q`` (an fnmatch pattern
    when it has one of ``*?[``, else a substring); and how many match."""
    q = q.strip()
    if not q:
        rows = models
    elif any(c in q for c in "*?["):
        match = re.compile(fnmatch.translate(q)).match
        rows = [m for m in models if match(m["model"])]
    else:
        rows = [m for m in models if q in m["model"]]
    start = max(page, 0) * per_page
    return rows[start:start + per_page], len(rows)


def keys_fragment(rows: Sequence[Mapping[str, Any]], total: int, q: str, page: int,
                  per_page: int = PER_PAGE) -> str:
    """The keys table, with the pages before and after."""
    if not total:
        return f'<p id="count">no model key matches {esc(q)!s}</p>' if q else '<p id="count">no models yet</p>'
    body = "".join(f"""<tr class="model"><td><a href="{key_url(m['model'])}">{esc(m['model'])}</a></td>
<td>{esc(str(m.get('spec')))}</td><td>{_fmt(m.get('version'))}</td><td>{_fmt(m.get('learned'))}</td>
<td>{_fmt((m.get('metric') or {}).get('value'))}</td>
<td>{esc(', '.join(c['spec'] for c in m.get('challengers') or []))}</td>
<td>{_fmt(m.get('coverage'), 2)}</td><td>{esc(', '.join(m.get('alerts') or []))}</td>
<td>{esc(str(m.get('worker', '')))}</td></tr>""" for m in rows)
    last = (total - 1) // per_page
    qs = "&q=" + quote(q, safe="") if q else ""

    def link(p: int, text: str) -> str:
        return (f'<a href="#" hx-get="/console/keys?page={p}{qs}" hx-target="#keys" class="page">{text}</a>'
                if 0 <= p <= last and p != page else "")
    first, shown = page * per_page + 1, page * per_page + len(rows)
    return f"""<p id="count">{first}-{shown} of {total} model keys{(' matching ' + esc(q)) if q else ''}
{link(page - 1, '&larr; previous')} {link(page + 1, 'next &rarr;')}</p>
<table><thead><tr><th>key</th><th>spec</th><th>version</th><th>learned</th><th>metric</th><th>challengers</th>
<th>label coverage</th><th>recent alerts</th><th>worker</th></tr></thead><tbody>{body}</tbody></table>"""


# ---- one key ---------------------------------------------------------------------------------------------
def plot_svg(points: Sequence[tuple[float, float]], width: int = 640, height: int = 200) -> str:
    """The online metric over time as an SVG line (``points``: (time, value), oldest first)."""
    points = [(t, v) for t, v in points if v is not None]
    if not points:
        return '<p id="plot">no metric yet</p>'
    t0, t1 = points[0][0], points[-1][0]
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    span_t, span_v, pad = (t1 - t0) or 1.0, (hi - lo) or 1.0, 30

    def xy(t: float, v: float) -> tuple[float, float]:
        return (pad + (t - t0) / span_t * (width - 2 * pad),
                height - pad - (v - lo) / span_v * (height - 2 * pad))
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(t, v) for t, v in points))
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3"><title>{_when(t)}: {v:.4f}</title></circle>'
                   for (t, v), (x, y) in ((p, xy(*p)) for p in points))
    return f"""<svg id="plot" width="{width}" height="{height}" role="img" aria-label="online metric over time">
<polyline fill="none" stroke="#1565c0" stroke-width="2" points="{line}"/>{dots}
<text x="2" y="{pad}">{hi:.3f}</text><text x="2" y="{height - pad}">{lo:.3f}</text>
<text x="{pad}" y="{height - 8}">{_when(t0)}</text><text x="{width - 150}" y="{height - 8}">{_when(t1)}</text></svg>"""


def _action(key: str, action: str, label: str, **values: Any) -> str:
    vals = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(str(v))}">' for k, v in values.items())
    return (f'<form class="inline" hx-post="{key_url(key)}/{action}" hx-target="#result">{vals}'
            f'<button type="submit" class="action" data-action="{esc(action)}">{esc(label)}</button></form>')


def panel(key: str, status: Mapping[str, Any], versions: Mapping[str, Any], audit: Sequence[Mapping[str, Any]],
          deadletters: Mapping[str, int], now: float) -> str:
    """A key's page: live model, plot, versions with their buttons, challengers, audit, deadletters."""
    snaps = versions.get("snapshots") or []
    metric = status.get("metric") or {}
    points = [(s["created_at"], s.get("metric")) for s in snaps if s.get("created_at") is not None]
    points.append((now, metric.get("value")))
    labels = status.get("labels") or {}
    rows = "".join(f"""<tr class="version"><td>v{s['version']}</td><td>{esc(str(s.get('kind')))}</td>
<td>{esc(str(s.get('spec')))}</td><td>{_fmt(s.get('learned'))}</td><td>{_fmt(s.get('metric'))}</td>
<td>{_when(s.get('created_at'))}</td><td>{esc(str(s.get('reason') or ''))}</td><td>{'pinned' if s.get('pinned') else ''}</td>
<td>{_action(key, 'restore', 'restore', version=s['version'])}
{_action(key, 'unpin' if s.get('pinned') else 'pin', 'unpin' if s.get('pinned') else 'pin', version=s['version'])}</td></tr>"""
                   for s in reversed(snaps))
    challengers = "".join(f"""<tr class="challenger"><td>{esc(c['spec'])}</td><td>{_fmt(c.get('learned'))}</td>
<td>{_fmt((c.get('metric') or {}).get('value'))}</td><td>{esc(str(c.get('error') or ''))}</td>
<td>{_action(key, 'promote', 'promote', spec=c['spec'])}</td></tr>""" for c in status.get("challengers") or [])
    changes = "".join(f"""<tr class="audit"><td>{_when(r.get('at'))}</td><td>{esc(str(r.get('action')))}</td>
<td>{_fmt(r.get('from_version'))} &rarr; {_fmt(r.get('to_version'))}</td><td>{esc(str(r.get('by')))}</td>
<td>{esc(str(r.get('reason')))}</td></tr>""" for r in reversed(audit[-20:]))
    dead = "".join(f"<tr class=\"deadletter\"><td>{esc(reason)}</td><td>{n}</td></tr>"
                   for reason, n in sorted(deadletters.items(), key=lambda kv: -kv[1]))
    alerts = "".join(f"<li>{_when(a.get('at'))} {esc(str(a.get('kind')))}: {esc(str(a.get('detail')))}</li>"
                     for a in status.get("alerts") or [])
    return f"""<div id="result" class="result"></div>
<p id="live">live: <b>{esc(str(status.get('spec')))}</b> version <b id="version">{_fmt(status.get('version'))}</b>,
learned {_fmt(status.get('learned'))}, {esc(str(metric.get('name')))} {_fmt(metric.get('value'))}
{_action(key, 'rollback', 'rollback')} {_action(key, 'snapshot', 'snapshot')}</p>
<p>labels: coverage {_fmt(labels.get('coverage'), 2)}, delay p50 {_fmt(labels.get('delay_p50_seconds'), 2)} s,
expired {_fmt(labels.get('expired'))}, defaulted {_fmt(labels.get('defaulted'))}</p>
{f'<ul class="alerts">{alerts}</ul>' if alerts else ''}
<h2>Online metric</h2>{plot_svg(points)}
<h2>Versions</h2><table><thead><tr><th>version</th><th>kind</th><th>spec</th><th>learned</th><th>metric</th>
<th>created</th><th>reason</th><th></th><th></th></tr></thead><tbody>{rows or _none(9)}</tbody></table>
<h2>Challengers</h2><table><thead><tr><th>spec</th><th>learned</th><th>metric</th><th>error</th><th></th></tr>
</thead><tbody>{challengers or _none(5)}</tbody></table>
<h2>Recent changes</h2><table><thead><tr><th>at</th><th>action</th><th>versions</th><th>by</th><th>reason</th></tr>
</thead><tbody>{changes or _none(5)}</tbody></table>
<h2>Deadletters by reason</h2><table><thead><tr><th>reason</th><th>recent</th></tr></thead><tbody>{dead or _none(2)}</tbody></table>"""


def result(action: str, key: str, answer: Mapping[str, Any], status: int) -> str:
    """An action's answer, in the key's page: what changed, or why nothing did."""
    if status < 400 and answer.get("ok", True):
        live = (answer.get("result") or {}).get("live") or {}
        now = f": now v{live['version']} ({esc(str(live.get('spec')))})" if live.get("version") else ""
        return f'<div id="outcome" class="done">{esc(action)} of {esc(key)} done{now}. ' \
               f'<a href="{key_url(key)}">reload</a></div>'
    return (f'<div id="outcome" class="refused">{esc(action)} refused ({status}): '
            f'{esc(str(answer.get("error")))}: {esc(str(answer.get("detail")))}</div>')
