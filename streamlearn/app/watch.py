"""``streamlearn watch``: what a consuming service sees, live.

Reads the predictions and feedback topics (no consumer group, nothing
committed), joins each prediction with its label by event id, and prints a
status line: predictions per second, online accuracy (overall and over the
last 500 labelled predictions), and the latest prediction.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque

import orjson
from aiokafka import AIOKafkaConsumer

from streamlearn.streams.topics import TopicNames

from .settings import Settings

WINDOW = 500
MAX_UNMATCHED = 200_000


async def watch(settings: Settings, seconds: float = 0.0, every: float = 1.0) -> int:
    names = TopicNames.with_prefix(settings.topic_prefix)
    consumer = AIOKafkaConsumer(names.predictions, names.feedback, bootstrap_servers=settings.bootstrap_servers,
                                auto_offset_reset="latest", enable_auto_commit=False, group_id=None,
                                **settings.kafka_options)
    await consumer.start()
    predictions: OrderedDict[str, dict] = OrderedDict()
    labels: OrderedDict[str, object] = OrderedDict()
    recent: deque[bool] = deque(maxlen=WINDOW)
    total = correct = n_pred = 0
    last: dict | None = None
    started = last_print = time.monotonic()
    count_at_print = 0
    try:
        while not seconds or time.monotonic() - started < seconds:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                for m in messages:
                    try:
                        obj = orjson.loads(m.value)
                    except orjson.JSONDecodeError:
                        continue
                    eid = obj.get("event_id")
                    if tp.topic == names.predictions:
                        n_pred += 1
                        last = obj
                        predictions[eid] = obj
                    else:
                        labels[eid] = obj.get("true_label", obj.get("label"))  # injected bad labels: score the truth
                    if eid in predictions and eid in labels:
                        ok = predictions.pop(eid).get("prediction") == labels.pop(eid)
                        total += 1
                        correct += ok
                        recent.append(ok)
            for pending in (predictions, labels):
                while len(pending) > MAX_UNMATCHED:
                    pending.popitem(last=False)
            now = time.monotonic()
            if now - last_print >= every:
                rate = (n_pred - count_at_print) / (now - last_print)
                count_at_print, last_print = n_pred, now
                acc = f"{correct / total:.3f}" if total else "-"
                win = f"{sum(recent) / len(recent):.3f}" if recent else "-"
                sample = ""
                if last:
                    sample = (f"  last: {last.get('model')} {last.get('event_id')} -> {last.get('prediction')!r}"
                              f" (v{last.get('model_version')}, learned {last.get('learned')})")
                print(f"predictions {n_pred:>8,}  {rate:>7,.0f}/s  accuracy {acc} (last {len(recent)}: {win})"
                      f"{sample}", flush=True)
    except asyncio.CancelledError:
        pass
    finally:
        await consumer.stop()
    return 0
