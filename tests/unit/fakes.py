"""The unit tests' stand-ins and readers, in one place: stores, counters, a producer, streams, a trained
model, metrics as scraped."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace

import orjson
from prometheus_client.parser import text_string_to_metric_families
from river.datasets import synth
from aiokafka.errors import KafkaTimeoutError

from streamlearn.models import get_spec, learn, new_model
from streamlearn.models.versions import VersionIndex


class DictStore:
    """The snapshot store as dicts."""

    def __init__(self) -> None:
        self.indexes: dict[str, VersionIndex] = {}
        self.blobs: dict[tuple[str, int], bytes] = {}

    def load_index(self, model):
        return self.indexes.get(model)

    def save_index(self, index):
        self.indexes[index.model] = index

    def load_blob(self, model, version):
        return self.blobs.get((model, version))

    def save_blob(self, model, version, blob):
        self.blobs[(model, version)] = blob

    def delete_blob(self, model, version):
        del self.blobs[(model, version)]


class Counted:
    """Checkpoint counters, recorded."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def checkpoint_written(self, size, seconds):
        self.events.append(("written", size))

    def checkpoint_refused(self, reason):
        self.events.append(("refused", reason))

    def checkpoint_restored(self, seconds):
        assert seconds >= 0
        self.events.append(("restored",))


class Recorder:
    """What was sent to one topic."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[dict] = []

    async def send(self, **kwargs):
        self.sent.append(kwargs)

    def values(self) -> list:
        return [orjson.loads(s["value"]) for s in self.sent]


class Producer:
    """Stands in for the app's producer: records each send by topic and delivers it at once, at offsets
    counting up per topic-partition."""

    def __init__(self, names) -> None:
        self.names = names
        self.topics: dict[str, Recorder] = {}
        self.offsets: dict[tuple, int] = {}
        self.order: list[tuple[str, bytes | None]] = []   # (topic, key) of every send, in order
        self._held: dict[str, list] = {}                    # topic -> deliveries held back (``hold``)

    def __getattr__(self, short: str) -> Recorder:     # sent.training: what went to the training topic
        name = getattr(self.__dict__["names"], short)
        return self.topics.setdefault(name, Recorder(name))

    async def send(self, topic, key, value, partition, timestamp, headers):
        self.topics.setdefault(topic, Recorder(topic)).sent.append(
            {"key": key, "value": value, "partition": partition, "headers": headers})
        self.order.append((topic, key))
        offset = self.offsets[topic, partition] = self.offsets.get((topic, partition), -1) + 1
        done = asyncio.get_running_loop().create_future()
        delivery = SimpleNamespace(topic=topic, partition=partition, offset=offset)
        if topic in self._held:
            self._held[topic].append((done, delivery))
        else:
            done.set_result(delivery)
        return done

    def hold(self, topic: str) -> "Held":
        """Deliver nothing sent to ``topic`` from now until ``release()``."""
        self._held[topic] = []
        return Held(self, topic)


class Held:
    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer, self.topic = producer, topic

    def release(self) -> None:
        for done, delivery in self.producer._held.pop(self.topic):
            done.set_result(delivery)


class FlakyProducer:
    """Delivery futures we resolve by hand; the first send to a topic in ``fail_first`` fails."""

    def __init__(self, fail_first: set[str]) -> None:
        self.fail_first = set(fail_first)
        self.sent: list[tuple] = []
        self.futures: list[asyncio.Future] = []

    async def send(self, topic, key, value, partition, timestamp, headers):
        self.sent.append((topic, value))
        future = asyncio.get_running_loop().create_future()
        if topic in self.fail_first:
            self.fail_first.discard(topic)
            future.set_exception(KafkaTimeoutError("batch expired"))
        self.futures.append(future)
        return future


class Stream:
    """What the commit uses of a Faust stream: ``ack``, recorded."""

    def __init__(self) -> None:
        self.acked: list[str] = []

    async def ack(self, event) -> None:
        self.acked.append(event)


class FakeStream:
    """Just what the batch loop uses of a Faust stream."""

    def __init__(self, events: list, acked: list) -> None:
        self._events = events
        self.acked = acked
        self.app = SimpleNamespace(flow_control=SimpleNamespace(is_active=lambda: True), consumer_generation_id=0)

    def noack(self) -> "FakeStream":
        return self

    async def events(self):
        for event in self._events:
            yield event

    async def ack(self, event) -> None:
        self.acked.append(event.message.offset)


def trained(spec: str, n: int):
    """A model of ``spec`` that learned ``n`` rows of a synthetic stream, at offset 1234; and 300 rows after."""
    data = list(itertools.islice(synth.Agrawal(seed=3), n + 300))
    live = new_model("m", get_spec(spec))
    for x, y in data[:n]:
        learn(live, x, y)
    live.offset = 1234
    return live, data[n:]


def samples(metrics) -> dict[str, list]:
    """Every sample of a worker's metrics as Prometheus scrapes them, by name."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


class AlertsKept:
    """The alerts sink, recorded: ``kept`` in order."""

    def __init__(self) -> None:
        self.kept: list = []

    def record(self, alert) -> None:
        self.kept.append(alert)

    def recent(self, key: str) -> list[dict]:
        return [{"kind": a.kind, "detail": a.detail, "at": a.at} for a in self.kept if a.model == key][-5:]
