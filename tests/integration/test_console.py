"""The console in a real browser (Debian's headless chromium, driven by Playwright) against a real worker.

With reads protected: nothing shown without the API token, then the keys
list and its search, a key's page with its plot, versions, challengers and
audit, and rollback: refused without the token (nothing changes), done with
it (the predictions topic shows the new version). Keys are escaped, the
token is never in a URL or the worker's log. Screenshots of each page
go to test-artifacts/ (kept after the run).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .harness import Collector, Producer, wait_learned
from .test_promotion import send_labelled, tree_wins

pytestmark = pytest.mark.integration
TOKEN = "console-test-token-7f3a"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ODD = "odd<b>&\"'key"          # a key that is markup: shown as text, never as HTML


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is not installed (scripts/setup installs it)"
    return path


@pytest.mark.timeout(240)
async def test_the_console_lists_searches_plots_and_rolls_back_only_with_the_token(cluster):
    from playwright.async_api import async_playwright

    w = cluster.start_worker("w0", api_token=TOKEN, api_protect_reads="true", checkpoint_every_seconds=0.5,
                             snapshot_every_examples=150,
                             challenger_rules="shop-*=hoeffding_tree", auto_promote="false", quality_gate="false")
    cluster.wait_ready()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    keys = ["shop-1", "shop-2", "bank-1", ODD]
    rows = tree_wins(600)
    async with Producer(cluster.bootstrap) as p, Collector(cluster.bootstrap, cluster.topics.predictions) as preds:
        for key in keys:
            await send_labelled(p, cluster, key, rows[:300])
        await wait_learned(w, "shop-1", 300)
        status, body = w.request("POST", "/models/shop-1/snapshot", {"reason": "before more"}, headers=auth)
        assert status == 200, body
        await send_labelled(p, cluster, "shop-1", rows[300:], start=300)
        await wait_learned(w, "shop-1", 600)
        for key in keys:
            await wait_learned(w, key, 300)
        version = w.get("/models/shop-1")[1]["version"]

        ARTIFACTS.mkdir(exist_ok=True)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            # reads are protected: without the token the page says so and shows no model
            await page.goto(w.url + "/console")
            await page.wait_for_selector("#outcome.refused")
            assert "refused (401)" in await page.inner_text("#keys") and await page.locator("tr.model").count() == 0
            assert "Read-only" in await page.inner_text("#mode")
            await page.screenshot(path=str(ARTIFACTS / "console-no-token.png"), full_page=True)

            # the token, asked once, kept for the browser session (never in a URL)
            await page.fill("input[name=token]", TOKEN)
            await page.click("text=use token")
            assert "actions enabled" in await page.inner_text("#mode")
            await page.reload()
            await page.wait_for_selector("tr.model")
            listed = await page.locator("tr.model td:first-child").all_inner_texts()
            assert sorted(listed) == sorted(keys)          # the odd key as its text, not markup
            assert await page.locator("tr.model b").count() == 0
            await page.screenshot(path=str(ARTIFACTS / "console-keys.png"), full_page=True)

            await page.fill("#q", "shop-")
            await page.wait_for_function("document.querySelectorAll('tr.model').length == 2")
            assert sorted(await page.locator("tr.model td:first-child").all_inner_texts()) == ["shop-1", "shop-2"]
            assert "of 2 model keys" in await page.inner_text("#count")

            await page.click("text=shop-1")
            await page.wait_for_selector("#plot polyline")
            snapshots = len(w.get("/models/shop-1/versions")[1]["snapshots"])
            assert snapshots >= 4                                              # 600 examples, one every 150
            assert await page.locator("tr.version").count() == snapshots
            assert await page.locator("#plot circle").count() == snapshots + 1   # and the live metric
            assert await page.inner_text("tr.challenger td:first-child") == "hoeffding_tree"
            assert await page.inner_text("#version") == str(version)
            assert "snapshot" in await page.inner_text("tr.audit")          # the snapshot, in the audit records
            await page.screenshot(path=str(ARTIFACTS / "console-key.png"), full_page=True)

            # the token dropped: the rollback is refused, nothing changes
            await page.fill("input[name=token]", "")
            await page.click("text=use token")
            assert "Read-only" in await page.inner_text("#mode")
            await page.click("button[data-action=rollback]")
            await page.wait_for_selector("#outcome.refused")
            assert "refused (401)" in await page.inner_text("#outcome")
            assert w.get("/models/shop-1")[1]["version"] == version
            await page.screenshot(path=str(ARTIFACTS / "console-refused.png"), full_page=True)

            # with it again: the rollback is done
            await page.fill("input[name=token]", TOKEN)
            await page.click("text=use token")
            await page.click("button[data-action=rollback]")
            await page.wait_for_selector("#outcome.done")
            assert TOKEN not in page.url
            await page.reload()
            await page.wait_for_selector("#version")
            rolled = int(await page.inner_text("#version"))
            assert rolled > version and "actions enabled" in await page.inner_text("#mode")

            # the odd key's page: its name as text
            await page.goto(w.url + "/console")
            await page.wait_for_selector("tr.model")
            await page.click(f"tr.model a >> text={ODD}")
            await page.wait_for_selector("#plot")
            assert ODD in await page.inner_text("h1")
            await browser.close()

        # the served version changed: the predictions topic says so
        await p.send(cluster.topics.features, {"event_id": "after-rollback", "features": rows[0][0]}, key="shop-1")
        served = await preds.wait_for_one(lambda v: v["event_id"] == "after-rollback")
        assert served["model_version"] == rolled
    assert TOKEN not in w.log.read_text()
