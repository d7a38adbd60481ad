"""Backfill: a challenger taught its key's history from the training topic, against River in process."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

from streamlearn.models import SPECS

from .harness import Collector, Producer, wait_learned
from .test_durability import read_topic
from .test_promotion import send_labelled, tree_wins
from .test_versions import post

pytestmark = pytest.mark.integration
KEY = "bf"


async def checkpoint_of(cluster, key: str):
    """The key's latest checkpoint (our own, signed: loaded)."""
    from streamlearn.app.settings import DEV_SIGNING_KEY
    from streamlearn.models.blobs import load

    latest = [m.value for m in await read_topic(cluster.bootstrap, f"{cluster.app_id}-checkpoints-changelog")
              if m.key == key.encode() and m.value]
    return load(latest[-1], DEV_SIGNING_KEY.encode())


async def challenger_of(w, spec: str, timeout: float = 60.0) -> tuple[dict | None, int]:
    """The key's challenger ``spec`` as its owner shows it, and the champion's learned count, once they agree."""
    deadline, body = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        status, body = w.get(f"/models/{KEY}")
        mine = [c for c in body.get("challengers", []) if c["spec"] == spec] if status == 200 else []
        if mine and mine[0]["learned"] == body["learned"]:
            return mine[0], body["learned"]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no complete {spec} challenger: {body}")


@pytest.mark.timeout(300)
async def test_a_backfilled_tree_learned_the_keys_history_like_river_and_a_sigkill_leaves_it_whole(cluster):
    # a command runs until its deadline: long enough for the restart after the SIGKILL
    settings = dict(auto_promote="false", quality_gate="false", checkpoint_every_seconds=0.5, command_timeout_seconds=60)
    w = cluster.start_worker("w0", **settings)
    cluster.wait_ready()
    rows = tree_wins(1700)
    async with Producer(cluster.bootstrap) as p:
        await send_labelled(p, cluster, KEY, rows[:1500])
        await wait_learned(w, KEY, 1500)
        status, res = post(w, f"/models/{KEY}/backfill", {"spec": "hoeffding_tree", "by": "test"})
        assert status == 200 and res["ok"], res
        result = res["result"]
        assert (result["history"], result["champion_learned"], result["challenger"]["learned"]) == (1500, 1500, 1500)
        assert result["compared"] == 0            # labels with their features: no answer was asked of the champion
        for bad, error in (({"spec": "logreg"}, "already_champion"), ({"spec": "linreg"}, "wrong_task"),
                           ({"spec": "nope"}, "unknown_spec")):
            status, res = post(w, f"/models/{KEY}/backfill", bad)
            assert status >= 400 and res["error"] == error, res
        # then it goes on in the champion's shadow, and equals River's tree trained on all 1,700 in order
        await send_labelled(p, cluster, KEY, rows[1500:], start=1500)
        await wait_learned(w, KEY, 1700)
        challenger, learned = await challenger_of(w, "hoeffding_tree")
        assert learned == 1700
        tree = SPECS["hoeffding_tree"].build()
        for x, y in rows:
            tree.learn_one(x, y)
        deadline = time.monotonic() + 30
        while (kept := (await checkpoint_of(cluster, KEY))).learned < 1700:
            assert time.monotonic() < deadline, kept.learned
            await asyncio.sleep(0.5)
        served = kept.challengers["hoeffding_tree"]
        probes = [x for x, _ in tree_wins(1750)[1700:]]
        assert [served.model.predict_proba_one(x) for x in probes] == [tree.predict_proba_one(x) for x in probes]

        # a SIGKILL while a backfill runs: the command is on the control topic, the worker dies
        def ask() -> None:
            try:
                post(w, f"/models/{KEY}/backfill", {"spec": "gaussian_nb"})
            except OSError:
                pass                       # the worker died under the request, as meant

        async with Collector(cluster.bootstrap, cluster.topics.control) as commands:
            threading.Thread(target=ask, daemon=True).start()
            await commands.wait_for(lambda v: any(c.get("spec") == "gaussian_nb" for c in v), 30, "the command")
        w.stop(signal.SIGKILL)
        again = cluster.start_worker("w0-again", data_of="w0", **settings)
        cluster.wait_ready([again], timeout=90)
        nb, learned = await challenger_of(again, "gaussian_nb")          # run again: whole, never half
        assert learned == 1700 and nb["error"] is None
