"""``streamlearn soak``: a labelled stream at a fixed share of the measured maximum, for a long while.

Workers are started as in ``streamlearn bench`` (local processes, development
mode, topics of their own). First a flat-out pass of ``probe`` labelled events
measures the maximum, from its first send until every event is answered
and every label learned (it is also the warm-up); then events and their labels are
sent at ``share`` of that rate (or at ``rate``) for ``minutes``. Once a minute,
and once more at the end after the backlog drained, it reports: throughput
(predictions received per second), p50/p99 from an event's ``ts`` to its
prediction, the workers' resident memory, the pending (join) table, the
consumer group's lag on the input topics, and examples learned against labels
sent.

The verdict, in the exit code: 0 when every event sent was answered and every
label learned exactly once (learned equals sent), and the workers' memory
stayed under ``max_rss_mb`` (when given); 1 otherwise, with the reason.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from .bench import _rss_mb, _send_paced, job_stream, start_workers
from .local import get_metric, stop_workers, wait_split
from .settings import Settings


@dataclass
class Minute:
    at_s: float              # seconds since the soak began
    events_per_s: float      # predictions received per second since the last report
    p50_ms: float
    p99_ms: float
    rss_mb: float
    pending: float           # events waiting in the join table
    lag: int                 # input messages the group has not committed
    sent: int                # labelled events sent so far
    learned: float           # examples the workers learned so far


@dataclass
class Soak:
    spec: str
    workers: int
    max_events_per_s: float  # measured by the flat-out probe (0 when a rate was given)
    rate: float
    minutes: float
    reports: list[Minute] = field(default_factory=list)
    answered: int = 0        # distinct events predicted
    ok: bool = False
    why: str = ""


class Predictions:
    """Reads the predictions topic: latencies since the last report, and which events were answered."""

    def __init__(self, consumer: AIOKafkaConsumer, n: int, tag: str) -> None:
        self.consumer, self.tag = consumer, tag
        self.answered = np.zeros(n, dtype=bool)
        self.latencies: list[float] = []
        self.count = 0

    async def run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            now = time.time()
            for msgs in batch.values():
                for m in msgs:
                    obj = orjson.loads(m.value)
                    eid = obj.get("event_id", "")
                    if eid.startswith(self.tag):
                        self.answered[int(eid[len(self.tag):])] = True
                        self.latencies.append((now - obj["ts"]) * 1000)
                        self.count += 1

    def take(self) -> tuple[int, list[float]]:
        count, lat = self.count, self.latencies
        self.count, self.latencies = 0, []
        return count, lat


async def _lag(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> int:
    """The group's uncommitted input messages (end offset less committed offset, per partition)."""
    end = await consumer.end_offsets(tps)
    total = 0
    for tp in tps:
        committed = await consumer.committed(tp)
        total += end[tp] - (committed or 0)
    return total


async def run_soak(settings: Settings, *, spec: str, workers: int, minutes: float, share: float, rate: float,
                   probe: int, keys: int, report_every: float, drain: float, max_rss_mb: float | None,
                   as_json: bool) -> int:
    out = sys.stderr if as_json else sys.stdout
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench-{tag}."
    bootstrap, kafka = settings.bootstrap_servers, settings.kafka_options
    with tempfile.TemporaryDirectory() as d:
        procs, ports = start_workers(settings, spec, workers, tag, Path(d))
        try:
            await asyncio.to_thread(wait_split, ports, settings.partitions)
            sender = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, **kafka)
            preds = AIOKafkaConsumer(f"{prefix}predictions", bootstrap_servers=bootstrap, group_id=None,
                                     auto_offset_reset="earliest", **kafka)
            group = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"bench-{tag}", enable_auto_commit=False,
                                     **kafka)
            for c in (sender, preds, group):
                await c.start()
            try:
                return await _soak(settings, spec, workers, minutes, share, rate, probe, keys, report_every, drain,
                                   max_rss_mb, as_json, out, prefix, procs, ports, sender, preds, group)
            finally:
                for c in (sender, preds, group):
                    await c.stop()
        finally:
            stop_workers(procs)


async def _soak(settings, spec, workers, minutes, share, rate, probe, keys, report_every, drain, max_rss_mb,
                as_json, out, prefix, procs, ports, sender, preds, group) -> int:
    pids = [p.pid for p in procs]
    tps = [TopicPartition(f"{prefix}{t}", p) for t in ("features", "feedback") for p in range(settings.partitions)]

    def learned() -> float:
        return sum(get_metric(p, "streamlearn_examples_learned_total") or 0.0 for p in ports)

    # the maximum: a flat-out pass, timed from its first send to its last prediction
    probing = Predictions(preds, probe, "probe-")
    reading = asyncio.create_task(probing.run())
    started = time.monotonic()
    await _send_paced(sender, itertools.islice(job_stream(prefix, keys, "probe-"), 2 * probe), 0)
    while not probing.answered.all():
        if time.monotonic() - started > 600:
            raise RuntimeError(f"soak probe: {probing.answered.sum()} of {probe} predictions in 600 s")
        await asyncio.sleep(0.05)
    reading.cancel()
    while learned() < probe:          # the maximum of the whole job: its labels learned too
        await asyncio.sleep(0.05)
    measured = probe / (time.monotonic() - started)
    base_learned = learned()

    rate = rate or share * measured
    n = int(rate * minutes * 60)
    result = Soak(spec, workers, measured, rate, minutes)
    print(f"soak: {spec}, {workers} worker(s), {keys} keys; maximum {measured:,.0f} events/s "
          f"(flat-out probe of {probe:,}); {n:,} events at {rate:,.0f}/s for {minutes:g} min", file=out, flush=True)
    print(f"{'min':>6}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'rss MB':>8}{'pending':>9}{'lag':>8}"
          f"{'sent':>10}{'learned':>10}", file=out, flush=True)
    tracker = Predictions(preds, n, "s")
    reading = asyncio.create_task(tracker.run())
    began = last = time.monotonic()
    sent = 0

    def counted(stream):
        """The messages as they are handed to the producer, counting the labels (``sent``)."""
        nonlocal sent
        for message in stream:
            if message[0].endswith("feedback"):
                sent += 1
            yield message

    async def send() -> None:
        stream = counted(itertools.islice(job_stream(prefix, keys, "s"), 2 * n))
        step = max(1, int(rate))       # a second's events at a time, each second on its schedule
        for chunk_start in range(0, n, step):
            ahead = chunk_start / rate - (time.monotonic() - began)
            if ahead > 0:
                await asyncio.sleep(ahead)
            await _send_paced(sender, itertools.islice(stream, 2 * min(step, n - chunk_start)), rate * 2)

    async def report() -> Minute:
        nonlocal last
        now = time.monotonic()
        count, lat = tracker.take()
        m = Minute(now - began, count / max(now - last, 1e-9),
                   float(np.percentile(lat, 50)) if lat else float("nan"),
                   float(np.percentile(lat, 99)) if lat else float("nan"), _rss_mb(pids),
                   sum(get_metric(p, "streamlearn_pending_events") or 0.0 for p in ports), await _lag(group, tps),
                   sent, learned() - base_learned)
        last = now
        result.reports.append(m)
        print(f"{m.at_s / 60:>6.1f}{m.events_per_s:>10,.0f}{m.p50_ms:>9.1f}{m.p99_ms:>9.1f}{m.rss_mb:>8.0f}"
              f"{m.pending:>9.0f}{m.lag:>8}{m.sent:>10,}{m.learned:>10,.0f}", file=out, flush=True)
        return m

    sending = asyncio.create_task(send())
    while not sending.done():
        await asyncio.wait([sending], timeout=max(0.0, report_every - (time.monotonic() - last)))
        if not sending.done() or time.monotonic() - last >= report_every:
            await report()
    await sending
    # drain: until every event is answered and every label learned, or ``drain`` seconds
    deadline = time.monotonic() + drain
    while time.monotonic() < deadline and not (tracker.answered.all() and learned() - base_learned >= n):
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)          # a late extra example would show now
    final = await report()
    reading.cancel()
    result.answered = int(tracker.answered.sum())
    problems = []
    if result.answered != n:
        problems.append(f"{n - result.answered} of {n} events not answered")
    if final.learned != n:
        problems.append(f"learned {final.learned:.0f} examples for {n} labels sent")
    peak = max(m.rss_mb for m in result.reports)
    if max_rss_mb is not None and peak > max_rss_mb:
        problems.append(f"worker memory reached {peak:.0f} MB (bound {max_rss_mb:g} MB)")
    result.ok, result.why = not problems, "; ".join(problems)
    print(f"soak {'passed' if result.ok else 'FAILED'}: {n:,} events sent, {result.answered:,} answered, "
          f"{final.learned:,.0f} learned; peak worker memory {peak:.0f} MB"
          + (f"; {result.why}" if problems else ""), file=out, flush=True)
    if as_json:
        print(json.dumps(asdict(result), indent=2))
    return 0 if result.ok else 1
