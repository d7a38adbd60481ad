"""Default labels (implicit feedback) against the producer's record, across a SIGKILL and a rebalance.

``m*=false@3s``: an event that got no label within 3 s learns ``false``,
exactly once; a label that comes after is dead-lettered ``late_label`` and not
learned. The producer leaves every fourth event without a label, and sends
half of those a label later, once their defaults are learned.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

import orjson
import pytest

from streamlearn.streams.codec import decode_examples

from .harness import Producer
from .test_durability import SETTINGS, Sent, assert_exact, delivered, learned_everywhere, make_event, read_topic, \
    wait_learning, wait_metric_rise

pytestmark = pytest.mark.integration
N_KEYS = 10
DEFAULTS = dict(SETTINGS, default_label_rules="m*=false@3s")


def unlabelled(i: int) -> bool:
    return i % 4 == 1


def late(i: int) -> bool:
    return i % 8 == 1     # of the unlabelled: a label comes long after the wait


async def publish(cluster, p: Producer, start: int, stop: int, sent: Sent) -> None:
    """Events, keyed (two in three) or not, and the labels of three in four: every fifth label before its event's
    features, every seventh with the features too. ``sent.events`` holds what each event should learn: its label,
    or ``false`` for an event sent without one."""
    t = cluster.topics
    rng = random.Random(start)
    sending: list = []
    for i in range(start, stop):
        key, x, y = make_event(rng, i, N_KEYS)
        eid, keyed = f"e{i}", bool(i % 3)
        body = {} if keyed else {"model": key}
        msgs = [(t.features, {"event_id": eid, "features": x, **body})]
        if not unlabelled(i):
            label = {"event_id": eid, "label": y, **body, **({"features": x} if i % 7 == 0 else {})}
            msgs.append((t.feedback, label))
            if i % 5 == 0:
                msgs.reverse()
        for topic, msg in msgs:
            raw, k = orjson.dumps(msg), key.encode() if keyed else None
            sending.append((await p._p.send(topic, raw, key=k), topic, raw, k))
        sent.events[eid] = (key, x, False if unlabelled(i) else y)
        if i % 250 == 0:
            await delivered(p, sending, sent)
            await asyncio.sleep(0.2)    # about 1,000 events/s: defaults are given while events still come
    await delivered(p, sending, sent)


async def diagnose(cluster, ids: list[str]) -> str:
    """Where the events went: their examples, dead letters and join-state records."""
    t, lines = cluster.topics, []
    examples = [(m.partition, m.offset, ex) for m in await read_topic(cluster.bootstrap, t.training)
                if m.value and not any(h == "streamlearn-command" for h, _ in m.headers or ())
                for ex in decode_examples(m.value)]
    dead = [orjson.loads(m.value) for m in await read_topic(cluster.bootstrap, t.deadletter)]
    history = [(m.partition, m.offset, m.key, m.value) for m in
               await read_topic(cluster.bootstrap, f"{cluster.app_id}-pending-changelog")]
    for eid in ids:
        tail = b"\x1f" + eid.encode()
        lines.append(f"{eid}: examples {[(p, o, ex.label, ex.origin) for p, o, ex in examples if ex.event_id == eid]}; "
                     f"dead letters {[d['reason'] for d in dead if d.get('event_id') == eid]}; join state "
                     f"{[(p, o, v and v[-90:]) for p, o, k, v in history if k and k.endswith(tail)]}")
    ticks: dict[int, list] = {}
    for m in await read_topic(cluster.bootstrap, t.labels):
        if any(h == "streamlearn-tick" for h, _ in m.headers or ()):
            ticks.setdefault(m.partition, []).append(m.timestamp / 1000)
    lines.append("ticks per partition (count, last): "
                 + str({p: (len(v), round(max(v), 1)) for p, v in sorted(ticks.items())}))
    for w in cluster.workers:
        lines.append(f"--- {w.name}: " + "\n".join(line for line in w.log.read_text(errors="replace").splitlines()
                                                  if "assigned partitions" in line or "ERROR" in line)[-3000:])
    return "\n".join(lines)


async def dead_letters(cluster, reason: str) -> dict[str, dict]:
    return {d["event_id"]: d for d in (orjson.loads(m.value) for m in await read_topic(cluster.bootstrap,
                                                                                       cluster.topics.deadletter))
            if d["reason"] == reason}


@pytest.mark.timeout(600)
async def test_events_without_a_label_learn_the_default_exactly_once_across_a_sigkill_and_a_rebalance(cluster):
    n = 6_000
    sent = Sent()
    w0, w1 = cluster.start_worker("w0", **DEFAULTS), cluster.start_worker("w1", **DEFAULTS)
    cluster.wait_ready()
    async with Producer(cluster.bootstrap) as p:
        publishing = asyncio.create_task(publish(cluster, p, 0, n, sent))
        killed = await wait_metric_rise([w0, w1], "streamlearn_default_labels_total")
        killed.stop(signal.SIGKILL)                   # while it gives defaults, examples on their way
        survivor = w1 if killed is w0 else w0
        again = cluster.start_worker(f"{killed.name}-again", **DEFAULTS)
        await asyncio.sleep(2.0)
        w2 = cluster.start_worker("w2", **DEFAULTS)   # and a rebalance: partitions move with their waiting events
        await publishing
        workers = [survivor, again, w2]
        await cluster.ready(workers, timeout=90)
        try:
            await wait_learning(workers, n, timeout=120)   # every event: its label, or its default
        except AssertionError:
            have = learned_everywhere(workers)
            examples = {ex.event_id for m in await read_topic(cluster.bootstrap, cluster.topics.training)
                        if m.value and not any(h == "streamlearn-command" for h, _ in m.headers or ())
                        for ex in decode_examples(m.value)}
            missing = sorted((e for e in sent.events if e not in examples), key=lambda e: int(e[1:]))
            raise AssertionError(f"learned {have}; {len(missing)} events have no example (unlabelled: "
                                 f"{sum(unlabelled(int(e[1:])) for e in missing)})\n"
                                 + await diagnose(cluster, missing[:10])) from None

        # the late labels: their events learned the default long ago
        late_ids = {f"e{i}" for i in range(n) if late(i)}
        for eid in sorted(late_ids):
            await p._p.send(cluster.topics.feedback, orjson.dumps({"event_id": eid, "label": True}),
                            key=sent.events[eid][0].encode())
        await p._p.flush()
    deadline = time.monotonic() + 60
    while not late_ids <= set(refused := await dead_letters(cluster, "late_label")) and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
    if not late_ids <= set(refused):
        raise AssertionError(f"{len(late_ids - set(refused))} late labels not refused as late\n"
                             + await diagnose(cluster, sorted(late_ids - set(refused))[:10]))
    # A label that came after its event's wait (the join lagged behind the producer, a worker restarted)
    # is late too: its event learned the default. Only events sent with a label can be such.
    lagged = set(refused) - late_ids
    assert all(not unlabelled(int(eid[1:])) for eid in lagged), lagged
    for eid in lagged:
        key, x, _ = sent.events[eid]
        sent.events[eid] = (key, x, False)
    defaults = sum(w.metric("streamlearn_default_labels_total") for w in workers if w.alive)
    print(f"\n{sum(unlabelled(i) for i in range(n))} events sent without a label, {len(late_ids)} of them "
          f"labelled late; {len(lagged)} labels came after their event's wait; defaults given by the live "
          f"workers: {defaults:.0f} ({killed.name} was killed after giving some)")
    await assert_exact(cluster, workers, sent, crashes=1)
    assert all(v == n // N_KEYS for v in learned_everywhere(workers).values())
