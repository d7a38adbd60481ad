"""The agents under Faust's test_context: no broker; output topics replaced by recorders."""

from __future__ import annotations

import orjson
import pytest

from streamlearn.app.settings import Settings
from streamlearn.app.worker import create_worker
from streamlearn.streams.routing import partition_for


class Recorder:
    """Stands in for an output topic: records what the agent sends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[dict] = []

    async def send(self, **kwargs):
        self.sent.append(kwargs)

    def values(self) -> list:
        return [orjson.loads(s["value"]) for s in self.sent]


class RecordingOutbox:
    """Stands in for the producer: hands each send to the topic's recorder, acks at once."""

    async def send(self, topic, **kwargs):
        await topic.send(**kwargs)

    def ack_when_delivered(self, stream, events):
        for event in events:
            event.ack()


@pytest.fixture
def worker(tmp_path):
    w = create_worker(Settings.from_env({}, data_dir=str(tmp_path), label_wait_seconds=60))
    for name in ("predictions", "deadletter", "events", "labels", "training"):
        setattr(w.topics, name, Recorder(name))
    w.agents.topics = w.topics
    w.agents.outbox = RecordingOutbox
    w.agents.dead.topic = w.topics.deadletter
    for table in (w.pending.table, w.early.table):
        table.send_changelog = lambda *a, **k: None  # no broker to write the changelog to
    return w


async def test_router_sends_each_event_to_the_owner_partition(worker):
    async with worker.app.agents["route-features"].test_context() as agent:
        await agent.put(orjson.dumps({"event_id": "e", "model": "tenant-7", "features": {}}), key=None, partition=5)
        await agent.put(b"{broken", key=b"tenant-7", partition=2)
    [routed] = worker.topics.events.sent
    assert routed["key"] == b"tenant-7" and routed["partition"] == partition_for("tenant-7", 8)
    assert routed["headers"][0][1].endswith(b"/5/0")
    [dead] = worker.topics.deadletter.values()
    assert dead["reason"] == "not_json" and dead["partition"] == 2


async def test_routers_answer_at_once_what_already_sits_in_its_owners_partition(worker):
    p = partition_for("tenant-7", 8)
    worker.agents.owned = {p}
    async with worker.app.agents["route-features"].test_context() as agent:
        await agent.put(orjson.dumps({"event_id": "e1", "features": {"a": 1.0}}), key=b"tenant-7", partition=p)
        await agent.put(orjson.dumps({"event_id": "e2", "features": {"a": 1.0}}), key=b"tenant-7",
                        partition=(p + 1) % 8)   # elsewhere (another partitioner): routed
    assert [pr["event_id"] for pr in worker.topics.predictions.values()] == ["e1"]
    assert [orjson.loads(r["value"])["event_id"] for r in worker.topics.events.sent] == ["e2"]
    async with worker.app.agents["route-feedback"].test_context() as agent:
        await agent.put(orjson.dumps({"event_id": "e1", "label": True}), key=b"tenant-7", partition=p)
    [example] = worker.topics.training.sent
    assert example["partition"] == p and orjson.loads(example["value"])["event_id"] == "e1"
    assert worker.topics.labels.sent == []

    worker.agents.owned = set()  # the partition is not (or no longer) this worker's: route
    async with worker.app.agents["route-features"].test_context() as agent:
        await agent.put(orjson.dumps({"event_id": "e3", "features": {"a": 1.0}}), key=b"tenant-7", partition=p)
    assert len(worker.topics.predictions.sent) == 1 and len(worker.topics.events.sent) == 2


async def test_predict_join_learn(worker):
    p = partition_for("m", 8)
    async with worker.app.agents["predict"].test_context() as predict:
        await predict.put(orjson.dumps({"event_id": "e1", "features": {"a": 1.0}}), key=b"m", partition=p)
    [pred] = worker.topics.predictions.values()
    assert pred["event_id"] == "e1" and pred["learned"] == 0 and pred["model_version"] == 1
    assert worker.pending.get(b"m\x1fe1")["f"] == {"a": 1.0}

    async with worker.app.agents["join"].test_context() as join:
        await join.put(orjson.dumps({"event_id": "e1", "label": True}), key=b"m", partition=p)
        await join.put(orjson.dumps({"event_id": "e1", "label": False}), key=b"m", partition=p)  # duplicate
        await join.put(orjson.dumps({"event_id": "e2", "label": True}), key=b"m", partition=p)   # too early
    [example] = worker.topics.training.sent
    assert example["partition"] == p
    assert worker.metrics.duplicate_labels._value.get() == 1
    assert worker.early.get(b"m\x1fe2")["label"] is True

    # the features of e2 arrive after its label: the example is made then
    async with worker.app.agents["predict"].test_context() as predict:
        await predict.put(orjson.dumps({"event_id": "e2", "features": {"a": 2.0}}), key=b"m", partition=p)
    assert len(worker.topics.training.sent) == 2 and worker.early.get(b"m\x1fe2") is None

    async with worker.app.agents["learn"].test_context() as learn:
        for ex in worker.topics.training.sent:
            await learn.put(ex["value"], key=b"m", partition=p)
    assert worker.registry.find("m").learned == 2


async def test_control_router_answers_malformed_commands_and_routes_valid_ones_to_training(worker):
    results = Recorder("control-results")
    worker.agents.commands.results = results
    async with worker.app.agents["route-control"].test_context() as agent:
        await agent.put(orjson.dumps({"request_id": "r1", "command": "rollback", "model": "tenant-7"}),
                        key=None, partition=3)
        await agent.put(orjson.dumps({"request_id": "r2", "command": "restore", "model": "tenant-7"}),
                        key=None, partition=0)
        await agent.put(b"{nope", key=b"tenant-7", partition=1)
    [routed] = worker.topics.training.sent
    assert routed["partition"] == partition_for("tenant-7", 8) and routed["key"] == b"tenant-7"
    assert ("streamlearn-command", b"1") in routed["headers"]
    answers = results.values()
    assert [(a["request_id"], a["ok"], a["error"]) for a in answers] == [
        ("r2", False, "missing_field"), (None, False, "not_json")]
    assert [d["reason"] for d in worker.topics.deadletter.values()] == ["missing_field", "not_json"]
