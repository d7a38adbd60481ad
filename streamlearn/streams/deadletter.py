"""Rejected input goes here: a deadletter record, a log line, a metric."""

from __future__ import annotations

import logging
from typing import Protocol

import faust

from .codec import Rejected, encode_deadletter
from .outbox import Outbox
from .routing import origin_of

log = logging.getLogger("streamlearn.deadletter")


class Counters(Protocol):
    """What the streams layer reports; app/metrics.py implements it."""

    def consumed(self, topic: str) -> None: ...
    def deadletter(self, reason: str) -> None: ...
    def predicted(self, model: str, latency: float, end_to_end: float | None) -> None: ...
    def learned(self, model: str, correct: bool | None) -> None: ...
    def duplicate_label(self) -> None: ...
    def default_label(self) -> None: ...
    def label_joined(self, delay: float) -> None: ...
    def error(self, stage: str) -> None: ...
    def replay_skipped(self) -> None: ...
    def repeat_skipped(self) -> None: ...
    def agent_crashed(self, agent: str) -> None: ...


class DeadLetters:
    def __init__(self, topic: faust.TopicT, metrics: Counters) -> None:
        self.topic = topic
        self.metrics = metrics

    async def send(self, rejected: Rejected, message, out: Outbox, *, model: str | None = None) -> None:
        """Dead-letter the message being processed, with where it first came from."""
        topic, partition, offset = origin_of(message.headers, message.topic, message.partition, message.offset)
        await self.send_record(rejected, out, topic=topic, partition=partition, offset=offset,
                               key=message.key, value=message.value, model=model)

    async def send_record(self, rejected: Rejected, out: Outbox, *, topic: str, partition: int, offset: int,
                          key: bytes | None, value: bytes | None, model: str | None = None) -> None:
        """Dead-letter bytes first consumed at topic/partition/offset."""
        self.metrics.deadletter(rejected.reason)
        log.warning("rejected event_id=%s model=%s reason=%s source=%s/%d/%d: %s",
                    rejected.event_id, model, rejected.reason, topic, partition, offset, rejected.detail,
                    extra={"event_id": rejected.event_id, "model": model, "reason": rejected.reason,
                           "source": f"{topic}/{partition}/{offset}"})
        await out.send(
            self.topic,
            key=key,
            value=encode_deadletter(
                reason=rejected.reason, detail=rejected.detail, topic=topic, partition=partition,
                offset=offset, key=key, value=value, event_id=rejected.event_id),
        )
