"""The console's markup, without a worker: search and paging, escaping, the plot, the answers to actions."""

from __future__ import annotations

import re

from streamlearn.app import pages

EVIL = "<script>alert(1)</script>&\"'"


def model(key: str, **kw) -> dict:
    return {"model": key, "spec": "logreg", "version": 1, "learned": 10, "metric": {"value": 0.5}, **kw}


def test_search_is_a_substring_or_a_pattern_and_pages_are_sorted_by_key():
    models = [model("bank-1")] + [model(f"tenant-{i:06d}") for i in range(100_000)]   # sorted, as the list is
    rows, total = pages.select(models, "", 0)
    assert total == 100_001 and [r["model"] for r in rows[:2]] == ["bank-1", "tenant-000000"]
    rows, total = pages.select(models, "tenant-0999", 1, per_page=50)
    assert total == 100 and rows[0]["model"] == "tenant-099950" and len(rows) == 50
    rows, total = pages.select(models, "tenant-*42", 0)
    assert total == 1000 and all(r["model"].endswith("42") for r in rows)
    assert pages.select(models, "nothing", 0) == ([], 0)
    assert pages.select(models, "bank", 7) == ([], 1)                       # past the last page: empty
    assert pages.select(models, "tenant-00000?", 0)[1] == 10


def test_keys_and_everything_a_user_writes_are_escaped():
    html = pages.keys_fragment([model(EVIL, challengers=[{"spec": EVIL}], alerts=[EVIL], worker=EVIL)], 1, EVIL, 0)
    assert "<script>" not in html and html.count("&lt;script&gt;") >= 4
    assert 'href="/console/models/%3Cscript%3Ealert%281%29%3C%2Fscript%3E%26%22%27"' in html
    status = model(EVIL, challengers=[{"spec": EVIL, "learned": 1, "metric": {"value": 0.1}, "error": EVIL}],
                   alerts=[{"kind": EVIL, "detail": EVIL, "at": 1.0}], labels={"coverage": 0.5})
    versions = {"snapshots": [{"version": 1, "kind": "manual", "spec": EVIL, "learned": 5, "metric": 0.4,
                               "created_at": 1.0, "reason": EVIL, "pinned": False}]}
    audit = [{"at": 1.0, "action": EVIL, "from_version": 1, "to_version": 2, "by": EVIL, "reason": EVIL}]
    html = pages.panel(EVIL, status, versions, audit, {EVIL: 3}, now=2.0)
    assert "<script>" not in html and html.count("&lt;script&gt;") >= 8
    assert "<script>" not in pages.key_body(EVIL) and "<script>alert" not in pages.shell(EVIL, "", needs_token=True)
    refused = pages.result("rollback", EVIL, {"ok": False, "error": "unauthorized", "detail": EVIL}, 401)
    assert "refused (401)" in refused and "<script>" not in refused


def test_the_plot_draws_each_point_and_says_when_there_is_none():
    svg = pages.plot_svg([(0.0, 0.5), (10.0, 0.7), (20.0, 0.6)])
    xs = [float(x) for x in re.findall(r'cx="([0-9.]+)"', svg)]
    ys = [float(y) for y in re.findall(r'cy="([0-9.]+)"', svg)]
    assert len(xs) == 3 and xs == sorted(xs)
    assert ys[1] < ys[2] < ys[0]                                         # higher values are drawn higher up
    assert "no metric yet" in pages.plot_svg([]) and "no metric yet" in pages.plot_svg([(1.0, None)])
    assert pages.plot_svg([(5.0, 0.5)]).count("<circle") == 1          # one point: no division by zero


def test_an_action_says_what_it_changed():
    done = pages.result("rollback", "k", {"ok": True, "result": {"live": {"version": 7, "spec": "logreg"}}}, 200)
    assert 'class="done"' in done and "now v7 (logreg)" in done
