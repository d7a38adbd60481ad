"""Publish a dataset as feature events and labels, like a producing service would.

Sources: River's bundled datasets (by name, e.g. ``phishing``), a JSONL file
(one object per line: ``{"features": {...}, "label": ...}``, or flat with a
``--target`` field) or a CSV file (``--target`` names the label column).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import orjson
from aiokafka import AIOKafkaProducer
from river import datasets, stream

BUNDLED = {
    "phishing": datasets.Phishing,
    "bananas": datasets.Bananas,
    "trump_approval": datasets.TrumpApproval,
    "chick_weights": datasets.ChickWeights,
    # an endless synthetic stream (use --limit): SEA concepts, a linear boundary with 10% noise
    "sea": lambda: datasets.synth.SEA(variant=0, seed=42),
    # endless too: Agrawal's loan function 2 (salary and age thresholds), where a tree beats a linear model
    "agrawal": lambda: datasets.synth.Agrawal(classification_function=2, seed=42),
}


class ReplayError(ValueError):
    pass


def dataset_size(name: str) -> int | None:
    """How many examples a dataset holds: a bundled one's count, a file's lines (a CSV's less its header);
    None for an endless one (River's synthetic streams)."""
    if name.lower() in BUNDLED:
        return BUNDLED[name.lower()]().n_samples
    path = Path(name)
    if not path.is_file():
        raise ReplayError(f"{name!r} is neither a bundled dataset ({', '.join(BUNDLED)}) nor a file")
    with path.open("rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    return max(lines - 1, 0) if path.suffix == ".csv" else lines


def iter_dataset(name: str, target: str | None = None) -> Iterator[tuple[dict[str, Any], Any]]:
    """``(features, label)`` pairs of a bundled dataset or a JSONL/CSV file."""
    if name.lower() in BUNDLED:
        yield from BUNDLED[name.lower()]()
        return
    path = Path(name)
    if not path.exists():
        raise ReplayError(f"{name!r} is neither a bundled dataset ({', '.join(BUNDLED)}) nor a file")
    if path.suffix == ".csv":
        if not target:
            raise ReplayError("a CSV file needs --target, the label column")
        yield from stream.iter_csv(path, target=target, converters=None, drop_nones=True)
        return
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = orjson.loads(line)
            if "features" in row:
                yield row["features"], row.get("label")
            elif target:
                y = row.pop(target)
                yield row, y
            else:
                raise ReplayError(f"{path}:{n}: no 'features' field and no --target given")


def _numeric(features: dict[str, Any]) -> dict[str, Any]:
    """CSV values arrive as strings: turn the numeric-looking ones into numbers (names are strings in JSON)."""
    out = {}
    for k, v in features.items():
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                pass
        out[k if isinstance(k, str) else str(k)] = v
    return out


def _label(y: Any) -> Any:
    if isinstance(y, str):
        low = y.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        try:
            return float(y)
        except ValueError:
            return y
    return y


async def replay(pairs: Iterable[tuple[dict[str, Any], Any]], *, bootstrap_servers: str,
                 features_topic: str, feedback_topic: str, keys: int = 1, key_prefix: str = "replay",
                 label_delay: int = 0, rate: float = 0.0, limit: int | None = None,
                 keyed: bool = True, run_id: str | None = None, progress: bool = True, total: int | None = None,
                 flip: range = range(0), kafka: Mapping[str, Any] | None = None) -> int:
    """Publish events and their labels; returns how many events were sent.

    ``label_delay`` is counted in events: the label of event *i* is sent right
    after event *i + label_delay*. ``rate`` is events per second (0: as fast as
    the producer goes). Events whose index is in ``flip`` get a wrong label
    (boolean labels negated), with the true one in ``true_label``: bad data
    injected on purpose, to watch the quality gate roll back. ``kafka``: the
    connection options (``Settings.kafka_options``). ``progress``: a bar on
    stderr, with ``total`` (how many will be sent, if known), the rate and the
    time left, when stderr is a terminal.
    """
    from tqdm import tqdm

    run_id = run_id or uuid.uuid4().hex[:8]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5, acks="all", **(kafka or {}))
    await producer.start()
    waiting: deque[tuple[bytes | None, bytes]] = deque()
    sent = 0
    started = time.monotonic()
    bar = tqdm(total=total, unit=" events", disable=None if progress else True, smoothing=0.1, mininterval=0.5)
    try:
        for i, (x, y) in enumerate(itertools.islice(pairs, limit)):
            model = f"{key_prefix}-{i % keys}" if keys > 1 else key_prefix
            eid = f"{run_id}-{i}"
            key = model.encode() if keyed else None
            event = {"event_id": eid, "features": _numeric(x), "ts": time.time()}
            label = {"event_id": eid, "label": _label(y)}
            if i in flip:
                if not isinstance(label["label"], bool):
                    raise ReplayError("--flip needs boolean labels")
                label.update(label=not label["label"], true_label=label["label"])
            if not keyed:
                event["model"] = label["model"] = model
            await producer.send(features_topic, orjson.dumps(event), key=key)
            waiting.append((key, orjson.dumps(label)))
            while len(waiting) > label_delay:
                k, v = waiting.popleft()
                await producer.send(feedback_topic, v, key=k)
            sent += 1
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            bar.update()
        while waiting:
            k, v = waiting.popleft()
            await producer.send(feedback_topic, v, key=k)
        await producer.flush()
    finally:
        bar.close()
        await producer.stop()
    return sent
