"""``streamlearn watch``: what a consuming service sees, live.

Reads the predictions, feedback and audit topics (no consumer group,
nothing committed), joins each prediction with its label by event id, and
prints a status line: predictions per second, online accuracy (overall and
over the last 500 labelled predictions, scored against the true label where
a replay injected a wrong one), and the latest prediction. And it tells what
happens as it happens: bad labels beginning and ending (a replay's
``--flip``), every alert (the quality gate seeing a model's error rise), and
every version change on the audit trail (a rollback by the quality gate, a
promotion, an operator's restore), with its reason.
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
BAD_LABELS_END = 50     # this many right labels in a row after wrong ones: the bad labels ended


def narrate(change: dict) -> str | None:
    """An audit record as a sentence (None for the routine: automatic snapshots)."""
    action, model = change.get("action"), change.get("model")
    if action == "snapshot" and change.get("by") == "policy":
        return None
    before, after = change.get("from_version"), change.get("to_version")
    what = {"auto_rollback": f"the quality gate rolled it back to v{change.get('restored_version')}",
            "rollback": f"rolled back to v{change.get('restored_version')}",
            "restore": f"restored v{change.get('restored_version')}",
            "auto_promote": f"challenger {change.get('spec')} promoted by the promotion policy",
            "promote": f"challenger {change.get('spec')} promoted",
            "snapshot": f"snapshot v{before}",
            "warm_start": "started from a template"}.get(action, action)
    versions = f" (v{before} -> v{after})" if before is not None and after is not None and before != after else ""
    reason = str(change.get("reason") or "").removeprefix("quality gate: ")
    if action in ("auto_rollback", "auto_promote"):     # who did it is in what was done
        return f"{model}: {what}{versions}: {reason}"
    return f"{model}: {what}{versions}, by {change.get('by')}: {reason}"


async def watch(settings: Settings, seconds: float = 0.0, every: float = 1.0) -> int:
    names = TopicNames.with_prefix(settings.topic_prefix)
    consumer = AIOKafkaConsumer(names.predictions, names.feedback, names.audit, names.alerts,
                                bootstrap_servers=settings.bootstrap_servers,
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
    bad, right_since_bad = 0, 0     # wrong labels seen in the current run of them; right ones since
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
                    if tp.topic == names.audit:
                        said = narrate(obj)
                        if said:
                            print(f">> {said}", flush=True)
                        continue
                    if tp.topic == names.alerts:
                        print(f">> {obj.get('model')}: {obj.get('kind')} alert: {obj.get('detail')}", flush=True)
                        continue
                    if tp.topic == names.predictions:
                        n_pred += 1
                        last = obj
                        predictions[eid] = obj
                    else:
                        labels[eid] = obj.get("true_label", obj.get("label"))  # injected bad labels: score the truth
                        if "true_label" in obj:
                            if not bad:
                                print(f">> bad labels begin: {obj.get('model') or m.key.decode(errors='replace')} "
                                      f"{eid} is labelled {obj.get('label')!r}, truly {obj['true_label']!r}",
                                      flush=True)
                            bad, right_since_bad = bad + 1, 0
                        elif bad:
                            right_since_bad += 1
                            if right_since_bad == BAD_LABELS_END:
                                print(f">> bad labels ended after {bad:,} wrong ones", flush=True)
                                bad = right_since_bad = 0
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
