"""``streamlearn bench``: the pipeline against two baselines, in one run.

Baselines: ``raw``, one aiokafka consumer that forwards every message of a
topic to another topic (the fastest consume-and-produce anyone would write by
hand); ``loop``, the same job as the pipeline written by hand on aiokafka, as
a user without streamlearn would (feature events and labels in, a River model
per key in a dict, the join by event id in a dict, predictions out; no fault
tolerance, no exactly-once, nothing survives a restart). Pipeline: ``streamlearn worker`` processes; feature events and their labels
in, predictions out. Throughput is events from the first one sent to the
last prediction received; latency is from the event's ``ts`` (set when it is
produced) to the moment its prediction is consumed; CPU is the workers'
user+system seconds per 1,000 events (from /proc).

Many keys (``--keys 20,10000,100000``): the pipeline runs once per key count,
events spread round-robin over the keys. Before the timed part every run sends
a warm-up pass (as many labelled events as the largest key count, over its own
keys) and waits until it is predicted, learned and checkpointed, so every key
has a live, checkpointed model when timing starts: the figure is the steady state of a worker serving
that many models, not the one-off cost of building them. ``vs keys`` is
events/s against the first key count's run of the same spec, workers and rate;
``rss MB`` is the workers' resident memory after the run, and ``B/model`` the
extra resident bytes per extra key against that first run (both runs got the
same warm-up, so the pending and checkpoint traffic is the same).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from typing import Any, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from .benchreport import Table, freshness, waterfall
from .local import get_buckets, start_worker, stop_workers, wait_metric, wait_split, worst_within
from .settings import Settings


@dataclass
class Result:
    name: str
    spec: str
    workers: int
    target_rate: float
    events: int
    events_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_s_per_1k: float
    ratio_to_baseline: float | None = None   # events/s against the raw passthrough
    ratio_to_loop: float | None = None       # events/s against the hand-written loop
    keys: int = 20                           # model keys the events are spread over
    rss_mb: float | None = None              # the workers' resident memory after the run
    ratio_to_keys: float | None = None       # events/s against the first key count's run
    bytes_per_model: float | None = None     # extra resident bytes per extra key, against that run
    stall_ms: float | None = None            # the workers' longest event-loop stall in the run was at most this
    producers: str = "keyed"                 # keyed by model (the router's shortcut) or unkeyed (the hop)
    waterfall: dict | None = None            # where a traced event's time went (``waterfall``)
    freshness: dict | None = None            # how soon a label counted (``freshness``)


def _features(i: int) -> dict:
    return {"amount": (i * 7919) % 1000 / 10.0, "age": (i * 104729) % 90, "score": ((i * 31) % 97) / 97.0,
            "country": ("FR", "DE", "US", "BR")[i % 4], "new": i % 5 == 0}


def _rss_mb(pids: list[int]) -> float:
    """The processes' resident memory (VmRSS), in MB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])   # kB
        except (FileNotFoundError, ValueError):
            pass
    return total / 1024


def _cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return total


async def _send_paced(producer: AIOKafkaProducer, messages, rate: float) -> float:
    """Send (topic, key, value-builder[, headers]), at ``rate`` per second (0: flat out); returns start time."""
    started = time.monotonic()
    for i, (topic, key, build, *headers) in enumerate(messages):
        await producer.send(topic, build(), key=key, headers=headers[0] if headers else None)
        if rate and i % 50 == 0:
            ahead = (i + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    await producer.flush()
    return started


async def _collect(consumer: AIOKafkaConsumer, n: int, timeout: float) -> list[tuple[float, bytes, Any]]:
    """(consumed at, value, headers) of up to ``n`` records."""
    got: list[tuple[float, bytes, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=200)
        now = time.time()
        for msgs in batch.values():
            got.extend((now, m.value, m.headers) for m in msgs)
    return got


async def _create(bootstrap: str, names: list[str], partitions: int, kafka: Mapping[str, Any]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


def _stats(name, spec, workers, rate, n, first_sent, received, cpu) -> Result:
    lat = np.array([(t - orjson.loads(v)["ts"]) * 1000 for t, v, _ in received])
    last = max(t for t, _, _ in received) if received else time.time()
    eps = len(received) / max(last - first_sent, 1e-9)
    p50, p95, p99 = (np.percentile(lat, q) if len(lat) else float("nan") for q in (50, 95, 99))
    return Result(name, spec, workers, rate, len(received), eps, p50, p95, p99, cpu / max(n, 1) * 1000)


async def _hand_written(bootstrap: str, name: str, spec: str, n: int, rate: float, partitions: int,
                        inputs: list[str], output: str, messages: list, handle,
                        kafka: Mapping[str, Any], warm: list = ()) -> Result:
    """A consume-handle-produce loop on aiokafka in this process: ``handle(producer, topic, records)``
    for each partition's records of each fetch; n results expected on ``output``. Its CPU includes the
    client's (sending and collecting): an upper bound."""
    await _create(bootstrap, [*inputs, output], partitions, kafka)
    consumer = AIOKafkaConsumer(*inputs, bootstrap_servers=bootstrap, group_id=f"{output}-group",
                                auto_offset_reset="earliest", **kafka)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, **kafka)
    out = AIOKafkaConsumer(output, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                           **kafka)
    sender = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, **kafka)
    for c in (consumer, producer, out, sender):
        await c.start()

    async def job() -> None:
        while True:
            for tp, records in (await consumer.getmany(timeout_ms=100)).items():
                await handle(producer, tp.topic, records)

    task = asyncio.create_task(job())
    await _warm_up(sender, out, warm)
    cpu0 = time.process_time()
    collecting = asyncio.create_task(_collect(out, n, timeout=300))
    first = time.time()
    await _send_paced(sender, messages, rate * len(messages) / n)   # rate: events/s; messages per event
    received = await collecting
    cpu = time.process_time() - cpu0
    task.cancel()
    for c in (consumer, producer, out, sender):
        await c.stop()
    return _stats(name, spec, 1, rate, n, first, received, cpu)


async def baseline(bootstrap: str, n: int, rate: float, partitions: int,
                   kafka: Mapping[str, Any] | None = None) -> Result:
    """``raw``: every message of one topic forwarded to another."""
    prefix = f"bench-{uuid.uuid4().hex[:6]}."

    async def forward(producer: AIOKafkaProducer, topic: str, records: list) -> None:
        for m in records:
            await producer.send(f"{prefix}out", m.value, key=m.key)

    msgs = [(f"{prefix}in", f"m{i % 20}".encode(),
             (lambda i=i: orjson.dumps({"event_id": str(i), "features": _features(i), "ts": time.time()})))
            for i in range(n)]
    return await _hand_written(bootstrap, "raw", "-", n, rate, partitions, [f"{prefix}in"], f"{prefix}out",
                               msgs, forward, kafka or {})


def _job_messages(prefix: str, n: int, keys: int = 20, tag: str = "", *, keyed: bool = True,
                  trace_every: int = 0, labels_sent: dict[str, list[float]] | None = None) -> list:
    """The pipeline's job: n feature events over ``keys`` model keys (round-robin), each followed by
    its label; event ids are ``tag`` + the event's number. ``keyed``: published with the model key as
    the Kafka key, else without a key (the model named in the body); ``trace_every``: every so many
    events ask the workers for latency stamps (0: none); ``labels_sent``: filled, per model key, with
    each label's produce time (its ``ts``), in order, as it is sent."""
    return list(itertools.islice(job_stream(prefix, keys, tag, keyed=keyed, trace_every=trace_every,
                                            labels_sent=labels_sent), 2 * n))


def job_stream(prefix: str, keys: int = 20, tag: str = "", *, keyed: bool = True, trace_every: int = 0,
               labels_sent: dict[str, list[float]] | None = None):
    """``_job_messages`` without an end, built as it is sent (a soak sends millions)."""
    from streamlearn.streams.routing import TRACE_HEADER

    traced = [(TRACE_HEADER, b"")]

    def label(i: int, model: str, named: dict) -> bytes:
        ts = time.time()
        if labels_sent is not None:
            labels_sent.setdefault(model, []).append(ts)
        return orjson.dumps({"event_id": f"{tag}{i}", **named, "label": _features(i)["amount"] > 50, "ts": ts})

    for i in itertools.count():
        model = f"m{i % keys}"
        key = model.encode() if keyed else None
        named = {} if keyed else {"model": model}
        headers = traced if trace_every and i % trace_every == 0 else None
        yield (f"{prefix}features", key, (lambda i=i, named=named: orjson.dumps(
            {"event_id": f"{tag}{i}", **named, "features": _features(i), "ts": time.time()})), headers)
        yield (f"{prefix}feedback", key, (lambda i=i, model=model, named=named: label(i, model, named)))


async def _warm_up(sender: AIOKafkaProducer, out: AIOKafkaConsumer, messages: list) -> None:
    """Send the warm-up pass and wait for its predictions, untimed: its feature events first, then
    their labels (were they interleaved, a worker building many new models could fall further behind
    on features than labels wait for them, STREAMLEARN_LABEL_WAIT_SECONDS)."""
    if not messages:
        return
    features, labels = messages[0::2], messages[1::2]
    collecting = asyncio.create_task(_collect(out, len(features), timeout=max(300, len(features) / 100)))
    await _send_paced(sender, features, 0)
    got = await collecting
    if len(got) < len(features):
        raise RuntimeError(f"bench warm-up: {len(got)} of {len(features)} predictions came back")
    await _send_paced(sender, labels, 0)


async def loop_baseline(bootstrap: str, spec: str, n: int, rate: float, partitions: int,
                        kafka: Mapping[str, Any] | None = None) -> Result:
    """``loop``: the pipeline's job written by hand, models and join in dicts (no fault tolerance)."""
    from streamlearn.models import get_spec

    prefix = f"bench-{uuid.uuid4().hex[:6]}."
    build = get_spec(spec).build
    models: dict[bytes, object] = {}
    waiting: dict[str, dict] = {}     # event id -> features, until its label
    early: dict[str, object] = {}     # event id -> label that came first

    async def job(producer: AIOKafkaProducer, topic: str, records: list) -> None:
        for m in records:
            obj = orjson.loads(m.value)
            model = models.get(m.key) or models.setdefault(m.key, build())
            eid = obj["event_id"]
            if topic.endswith(".features"):
                x = obj["features"]
                proba = model.predict_proba_one(x)
                await producer.send(f"{prefix}predictions", orjson.dumps(
                    {"event_id": eid, "prediction": max(proba, key=proba.get) if proba else None,
                     "ts": obj.get("ts")}), key=m.key)
                if eid in early:
                    model.learn_one(x, early.pop(eid))
                else:
                    waiting[eid] = x
            elif eid in waiting:
                model.learn_one(waiting.pop(eid), obj["label"])
            else:
                early[eid] = obj["label"]

    return await _hand_written(bootstrap, "loop", spec, n, rate, partitions,
                               [f"{prefix}features", f"{prefix}feedback"], f"{prefix}predictions",
                               _job_messages(prefix, n), job, kafka or {}, warm=_job_messages(prefix, 20, 20, "warm-"))


# One event in so many asks for latency stamps: the waterfall's sample, at a cost the run does not feel.
TRACE_EVERY = 10


async def pipeline(settings: Settings, spec: str, workers: int, n: int, rate: float, workdir: Path,
                   keys: int = 20, warm: int = 20, keyed: bool = True) -> Result:
    """``streamlearn worker`` processes on n events over ``keys`` keys, after ``warm`` untimed labelled
    events over the same keys; ``keyed``: producers key events by model (else the routers route each)."""
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench-{tag}."
    procs, ports = start_workers(settings, spec, workers, tag, workdir)
    try:
        await asyncio.to_thread(wait_split, ports, settings.partitions)
        bootstrap = settings.bootstrap_servers
        out = AIOKafkaConsumer(f"{prefix}predictions", bootstrap_servers=bootstrap, group_id=None,
                               auto_offset_reset="earliest", **settings.kafka_options)
        sender = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, **settings.kafka_options)
        await out.start()
        await sender.start()
        await _warm_up(sender, out, _job_messages(prefix, warm, keys, "warm-"))
        # ... and learned, and checkpointed: a model's first examples cost most (River builds its plan),
        # which must not spill into the timed part
        await asyncio.to_thread(wait_metric, ports, "streamlearn_examples_learned_total", warm)
        await asyncio.sleep(settings.checkpoint_every_seconds + 1)
        labels_sent: dict[str, list[float]] = {}
        msgs = _job_messages(prefix, n, keys, keyed=keyed, trace_every=TRACE_EVERY, labels_sent=labels_sent)
        pids = [p.pid for p in procs]
        cpu0 = _cpu_seconds(pids)
        lag0 = [get_buckets(p, "streamlearn_event_loop_lag_seconds") for p in ports]
        collecting = asyncio.create_task(_collect(out, n, timeout=300))
        first = time.time()
        await _send_paced(sender, msgs, rate * 2)  # two messages per event
        received = await collecting
        cpu = _cpu_seconds(pids) - cpu0
        rss = _rss_mb(pids)
        stalls = [worst_within(b, get_buckets(p, "streamlearn_event_loop_lag_seconds")) for p, b in zip(ports, lag0)]
        await out.stop()
        await sender.stop()
        r = _stats("pipeline", spec, workers, rate, n, first, received, cpu)
        r.keys, r.rss_mb = keys, rss
        r.producers, r.waterfall = "keyed" if keyed else "unkeyed", waterfall(received)
        r.freshness = freshness(received, labels_sent)
        known = [s for s in stalls if s is not None]
        r.stall_ms = max(known) * 1000 if known else None
        return r
    finally:
        stop_workers(procs)


def start_workers(settings: Settings, spec: str, workers: int, tag: str, workdir: Path
                  ) -> tuple[list, list[int]]:
    """Throwaway ``streamlearn worker`` processes of a local measurement (development mode), on topics
    ``bench-{tag}.*``: their processes and web ports."""
    env = {**os.environ, "STREAMLEARN_BROKER": settings.broker, "STREAMLEARN_APP_ID": f"bench-{tag}",
           "STREAMLEARN_TOPIC_PREFIX": f"bench-{tag}.", "STREAMLEARN_DEFAULT_SPEC": spec,
           "STREAMLEARN_LOG_LEVEL": "warning", "STREAMLEARN_PARTITIONS": str(settings.partitions),
           "STREAMLEARN_DEV": "true"}
    procs, ports = [], []
    for i in range(workers):
        proc, port = start_worker(env, workdir, f"{tag}-{i}")
        procs.append(proc)
        ports.append(port)
    return procs, ports


async def run_bench(settings: Settings, *, events: int, specs: list[str], workers: list[int],
                    rates: list[float | str], as_json: bool, plot: Path | None = None,
                    keys: list[int] = (20,), producers: list[str] = ("keyed",)) -> int:
    """Every run of the bench, in order: ``raw``; then per spec and rate, ``loop`` and the pipeline runs (per
    worker count, producers and key count). A rate of ``"half"``: half the spec's first flat-out pipeline
    run's events/s (so ``0`` must come before it)."""
    results: list[Result] = []
    table = Table(sys.stderr if as_json else sys.stdout)
    with tempfile.TemporaryDirectory() as d:
        base = await baseline(settings.bootstrap_servers, events, 0, settings.partitions, settings.kafka_options)
        results.append(base)
        table.row(base)
        for spec in specs:
            flat_out = None
            for asked in rates:   # the hand-written loop at each rate, then the pipeline at that rate
                rate = resolve_rate(asked, flat_out)
                loop = await loop_baseline(settings.bootstrap_servers, spec, events, rate, settings.partitions,
                                           settings.kafka_options)
                results.append(loop)
                table.row(loop)
                for w in workers:
                    for keyed in (p == "keyed" for p in producers):
                        reference = None
                        for k in keys:
                            r = await pipeline(settings, spec, w, events, rate, Path(d), keys=k, warm=max(keys),
                                               keyed=keyed)
                            if rate == 0 and k == keys[0]:
                                r.ratio_to_baseline = r.events_per_s / base.events_per_s
                                r.ratio_to_loop = r.events_per_s / loop.events_per_s
                                flat_out = flat_out or r.events_per_s
                            if reference is None:
                                reference = r
                            else:
                                r.ratio_to_keys = r.events_per_s / reference.events_per_s
                                r.bytes_per_model = (r.rss_mb - reference.rss_mb) * 2**20 / (k - reference.keys)
                            results.append(r)
                            table.row(r)
    if as_json:
        print(json.dumps({"machine": _machine(), "results": [asdict(r) for r in results]}, indent=2))
    if plot is not None:
        from .plot import render_bench
        print(f"wrote {render_bench(results, plot)}", file=sys.stderr if as_json else sys.stdout)
    return 0


def parse_rates(text: str) -> list[float | str]:
    """``--rates``: events/s per run (0: flat out), or ``half`` (of the flat-out run before it)."""
    rates: list[float | str] = []
    for r in text.split(","):
        try:
            rates.append(r if r == "half" and 0.0 in rates else float(r))
        except ValueError:
            raise SystemExit(f"streamlearn bench --rates: {r!r} is neither a number nor 'half' after a 0") from None
    return rates


def parse_producers(text: str) -> list[str]:
    if any(k not in ("keyed", "unkeyed") for k in text.split(",")):
        raise SystemExit("streamlearn bench --producers: 'keyed', 'unkeyed' or both, comma-separated")
    return text.split(",")


def resolve_rate(asked: float | str, flat_out: float | None) -> float:
    """A ``--rates`` entry as events/s: a number, or ``half`` of the measured flat-out rate."""
    if asked == "half":
        if flat_out is None:
            raise SystemExit("streamlearn bench --rates: 'half' needs a flat-out run (0) before it")
        return round(flat_out / 2)
    return float(asked)


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
