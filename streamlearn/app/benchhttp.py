"""``streamlearn bench --http RATE``: predictions over HTTP against a hand-written server, in one run.

``http-loop``: an aiohttp server written by hand in a process of its own
(``python -m streamlearn.app.benchhttp PORT SPEC KEYS WARM``), a River model
per key in a dict, each trained on the same warm-up examples, answering
``POST /models/{key}/predict`` with the prediction and its probabilities: no
forwarding, no versions, no join, no gate. ``http``: one ``streamlearn
worker`` (so the owner of every key), its models warmed up through the
topics as the pipeline runs are, asked the same requests. Requests go out
at ``RATE`` per second whatever the answers do (an open loop: a slow answer
does not slow the senders), one key after the other; latency is from a
request's send to its answer's arrival, at the client.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from .bench import Result, _cpu_seconds, _features, _job_messages, _warm_up, start_workers
from .local import free_port, get_json, stop_workers, wait_metric, wait_split
from .settings import Settings


async def _requests(port: int, n: int, rate: float, keys: int) -> tuple[list[float], float]:
    """n predictions asked of ``port`` at ``rate`` per second: each one's latency (ms), and the run's seconds."""
    latencies: list[float] = []

    async def ask(session: aiohttp.ClientSession, i: int) -> None:
        body = orjson.dumps({"features": _features(i)})
        sent = time.perf_counter()
        async with session.post(f"http://127.0.0.1:{port}/models/m{i % keys}/predict", data=body,
                                headers={"Content-Type": "application/json"}) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"bench --http: {response.status} for event {i}: {await response.text()}")
        latencies.append((time.perf_counter() - sent) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        started = time.perf_counter()
        asking = []
        for i in range(n):
            ahead = started + i / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
            asking.append(asyncio.create_task(ask(session, i)))
        await asyncio.gather(*asking)
        return latencies, time.perf_counter() - started


def _result(name: str, spec: str, rate: float, latencies: list[float], seconds: float, cpu: float) -> Result:
    lat = np.array(latencies)
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
    return Result(name, spec, 1, rate, len(lat), len(lat) / seconds, p50, p95, p99, cpu / len(lat) * 1000,
                  producers="http")


async def http_loop(spec: str, n: int, rate: float, keys: int, warm: int) -> Result:
    """The hand-written server, asked n predictions at ``rate``."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlearn.app.benchhttp", str(port), spec, str(keys),
                             str(warm)])
    try:
        deadline = time.monotonic() + 60
        while get_json(port, "/ready") is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("bench --http: the hand-written server did not start")
            await asyncio.sleep(0.2)
        cpu0 = _cpu_seconds([proc.pid])
        latencies, seconds = await _requests(port, n, rate, keys)
        return _result("http-loop", spec, rate, latencies, seconds, _cpu_seconds([proc.pid]) - cpu0)
    finally:
        proc.terminate()
        proc.wait(10)


async def http_pipeline(settings: Settings, spec: str, n: int, rate: float, workdir: Path, keys: int,
                        warm: int) -> Result:
    """One worker, its keys' models learned from ``warm`` labelled events through the topics, asked n
    predictions over HTTP at ``rate``."""
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench-{tag}."
    procs, ports = start_workers(settings, spec, 1, tag, workdir)
    try:
        await asyncio.to_thread(wait_split, ports, settings.partitions)
        out = AIOKafkaConsumer(f"{prefix}predictions", bootstrap_servers=settings.bootstrap_servers,
                               group_id=None, auto_offset_reset="earliest", **settings.kafka_options)
        sender = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=1,
                                  **settings.kafka_options)
        await out.start()
        await sender.start()
        try:
            await _warm_up(sender, out, _job_messages(prefix, warm, keys, "warm-"))
        finally:
            await out.stop()
            await sender.stop()
        await asyncio.to_thread(wait_metric, ports, "streamlearn_examples_learned_total", warm)
        await asyncio.sleep(settings.checkpoint_every_seconds + 1)
        cpu0 = _cpu_seconds([procs[0].pid])
        latencies, seconds = await _requests(ports[0], n, rate, keys)
        return _result("http", spec, rate, latencies, seconds, _cpu_seconds([procs[0].pid]) - cpu0)
    finally:
        stop_workers(procs)


def serve(port: int, spec: str, keys: int, warm: int) -> None:
    """The hand-written server: River models in a dict, each learned on its key's share of ``warm`` examples."""
    from aiohttp import web

    from streamlearn.models import get_spec

    build = get_spec(spec).build
    models = {f"m{k}": build() for k in range(keys)}
    for i in range(warm):
        x = _features(i)
        models[f"m{i % keys}"].learn_one(x, x["amount"] > 50)

    async def predict(request: web.Request) -> web.Response:
        model = models[request.match_info["key"]]
        x = orjson.loads(await request.read())["features"]
        proba = model.predict_proba_one(x)
        return web.Response(body=orjson.dumps({"prediction": max(proba, key=proba.get) if proba else None,
                                               "proba": proba}, option=orjson.OPT_NON_STR_KEYS),
                            content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application()
    app.router.add_post("/models/{key}/predict", predict)
    app.router.add_get("/ready", ready)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def run_http_bench(settings: Settings, *, events: int, specs: list[str], rate: float, as_json: bool = False,
                         keys: int = 20, warm: int = 200) -> int:
    """Per spec: the hand-written server, then the worker, each asked ``events`` predictions at ``rate``."""
    import json
    import tempfile
    from dataclasses import asdict

    from .bench import _machine
    from .benchreport import Table

    table, results = Table(sys.stderr if as_json else sys.stdout), []
    with tempfile.TemporaryDirectory() as d:
        for spec in specs:
            loop = await http_loop(spec, events, rate, keys, warm)
            served = await http_pipeline(settings, spec, events, rate, Path(d), keys, warm)
            served.ratio_to_loop = served.events_per_s / loop.events_per_s
            for r in (loop, served):
                table.row(r)
                results.append(r)
    if as_json:
        print(json.dumps({"machine": _machine(), "results": [asdict(r) for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
