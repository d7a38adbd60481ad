"""Canary promotion through Kafka: a tree promoted on a growing share of 20 keys, widened while it does no worse
(Agrawal's function 2, where trees win; through a SIGKILL of the worker in charge), every key sent back where
it does worse (SEA's linear concept, where trees lose), each step checked on the audit topic."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time

import orjson
import pytest
from river import datasets

from streamlearn.core.canary import FINISHED, Canary, share_of, steps_from
from streamlearn.streams.canary import CanaryLog

from .harness import Producer, wait_learned
from .test_durability import read_topic
from .test_promotion import send_labelled

pytestmark = pytest.mark.integration
KEYS = 20
SETTINGS = dict(auto_promote="false", quality_gate="false", canary_check_seconds=0.5, canary_examples=150,
                checkpoint_every_seconds=0.5, challenger_rules="cw-*=hoeffding_tree,cl-*=hoeffding_tree")


def start_canary(cluster, spec: str, pattern: str, share: float) -> str:
    r = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "models", "canary", spec, "--keys", pattern,
                        "--share", str(share), "--by", "test", "--json"], env=cluster.env(),
                       capture_output=True, text=True, timeout=60, cwd=cluster.workdir)
    assert r.returncode == 0, r.stderr
    return orjson.loads(r.stdout)["id"]


def canary_status(cluster) -> str:
    r = subprocess.run([sys.executable, "-m", "streamlearn.app.cli", "models", "canary", "status"],
                       env=cluster.env(), capture_output=True, text=True, timeout=60, cwd=cluster.workdir)
    assert r.returncode == 0, r.stderr
    return r.stdout


async def first(cluster, p: Producer, w, streams: dict[str, list], n: int) -> dict[str, int]:
    """The first ``n`` examples of each key's stream, learned: how many each key was sent."""
    for key, rows in streams.items():
        await send_labelled(p, cluster, key, rows[:n])
    for key in streams:
        await wait_learned(w, key, n, timeout=60)
    return dict.fromkeys(streams, n)


async def drive(cluster, p: Producer, streams: dict[str, list], sent: dict[str, int], cid: str,
                until, timeout: float = 240.0, per_round: int = 40) -> Canary:
    """Labelled examples to every key, a round at a time, until the canary's state satisfies ``until``."""
    from streamlearn.app.settings import DEV_COMMAND_SECRET

    log = CanaryLog(cluster.bootstrap, f"{cluster.prefix}canaries", DEV_COMMAND_SECRET.encode())
    deadline = time.monotonic() + timeout
    while True:
        c = (await log.read()).get(cid)
        if c is not None and until(c):
            return c
        assert time.monotonic() < deadline, c and c.to_json()
        for key, rows in streams.items():
            await send_labelled(p, cluster, key, rows[sent[key]:sent[key] + per_round], start=sent[key])
            sent[key] += per_round
        await asyncio.sleep(0.3)


async def canary_audit(cluster, cid: str) -> tuple[list[dict], list[dict]]:
    """The canary's own records and the version changes it made, from the audit topic."""
    records = [orjson.loads(m.value) for m in await read_topic(cluster.bootstrap, cluster.topics.audit)]
    return ([r for r in records if r.get("canary") == cid],
            [r for r in records if r.get("by") == f"canary:{cid}" and "canary" not in r])


@pytest.mark.timeout(420)
async def test_a_canary_of_trees_widens_step_by_step_to_every_key_through_a_sigkill(cluster):
    w = cluster.start_worker("w0", **SETTINGS)
    cluster.wait_ready()
    keys = [f"cw-{i}" for i in range(KEYS)]
    streams = {k: list(itertools.islice(datasets.synth.Agrawal(classification_function=2, seed=100 + i), 5000))
               for i, k in enumerate(keys)}
    async with Producer(cluster.bootstrap) as p:
        sent = await first(cluster, p, w, streams, 800)
        cid = start_canary(cluster, "hoeffding_tree", "cw-*", 0.1)
        assert f"canary {cid}: hoeffding_tree on cw-*, running" in canary_status(cluster)
        # the worker in charge dies once the canary has widened: its successor goes on from the topic
        c = await drive(cluster, p, streams, sent, cid, lambda c: c.step >= 1 or c.status in FINISHED)
        assert c.status not in FINISHED, c.to_json()
        w.stop(signal.SIGKILL)
        again = cluster.start_worker("w0-again", data_of="w0", **SETTINGS)
        cluster.wait_ready([again], timeout=90)
        c = await drive(cluster, p, streams, sent, cid, lambda c: c.status in FINISHED)

    shares = steps_from(0.1)
    assert (c.status, c.steps, c.step) == ("done", shares, len(shares) - 1), c.detail
    assert [(v["share"], v["action"]) for v in c.verdicts] == [
        (0.1, "widen"), (0.25, "widen"), (0.5, "widen"), (1.0, "done")]
    assert sorted(c.members) == sorted(keys) and not c.skipped
    for k, m in c.members.items():      # each key entered at the first step whose share is above its own
        assert m.step == next(i for i, s in enumerate(shares) if share_of(cid, k) < s), k
        assert (m.state, m.replaced_spec) == ("promoted", "logreg")
    for k in keys:
        assert again.get(f"/models/{k}")[1]["spec"] == "hoeffding_tree"

    own, changes = await canary_audit(cluster, cid)
    steps = [r for r in own if r["action"] in ("canary_widen", "canary_done")]
    assert [(r["action"], r["step"]) for r in steps] == [
        ("canary_widen", 1), ("canary_widen", 2), ("canary_widen", 3), ("canary_done", 3)]
    promotes = {r["model"]: r for r in changes if r["action"] == "promote"}
    assert sorted(promotes) == sorted(keys) and {r["spec"] for r in promotes.values()} == {"hoeffding_tree"}
    for k, m in c.members.items():      # promoted after the widening that opened its step, before the next
        assert m.step == 0 or steps[m.step - 1]["at"] < promotes[k]["at"], k
        assert promotes[k]["at"] < steps[m.step]["at"], k
    assert "done" in canary_status(cluster)


@pytest.mark.timeout(300)
async def test_a_canary_of_trees_where_they_lose_sends_every_key_back_to_logreg(cluster):
    w = cluster.start_worker("w0", **SETTINGS)
    cluster.wait_ready()
    keys = [f"cl-{i}" for i in range(KEYS)]
    streams = {k: [({f"x{j}": v for j, v in x.items()}, y)
                   for x, y in itertools.islice(datasets.synth.SEA(variant=0, seed=100 + i), 5000)]
               for i, k in enumerate(keys)}
    async with Producer(cluster.bootstrap) as p:
        sent = await first(cluster, p, w, streams, 150)
        cid = start_canary(cluster, "hoeffding_tree", "cl-*", 0.1)
        c = await drive(cluster, p, streams, sent, cid, lambda c: c.status in FINISHED)
        for k in keys:
            await wait_learned(w, k, sent[k], timeout=60)

    assert c.status == "rolled_back", c.to_json()
    assert c.verdicts[-1]["action"] == "rollback" and c.step < len(c.steps) - 1     # never at every key
    assert c.members and {m.state for m in c.members.values()} == {"rolled_back"}
    for k in keys:            # every key answers with logreg again, which lost nothing it learned meanwhile
        status, body = w.get(f"/models/{k}")
        assert (status, body["spec"], body["learned"]) == (200, "logreg", sent[k]), body

    own, changes = await canary_audit(cluster, cid)
    assert [r["action"] for r in own][-2:] == ["canary_rollback", "canary_rolled_back"]
    assert sorted(r["keys"] for r in own if r["action"] == "canary_rolled_back")[0] == sorted(c.members)
    by_key: dict[str, list[str]] = {}
    for r in changes:
        by_key.setdefault(r["model"], []).append(r["action"])
    assert by_key == {k: ["promote", "rollback"] for k in c.members}     # each promoted key went back, once
