"""The canaries' topic: one partition, compacted, the latest state of each canary under its id, signed.

Written by the CLI (a new canary) and by the controller (every change of
it); read in full by ``canary status``, and followed by the controller (in
full when it takes over, then what its consumer fetched since). A record whose signature does not
verify under the command secret is ignored (and logged): anyone who can
write to the topic could otherwise promote a spec across the cluster.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Mapping

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamlearn.core.canary import Canary

from .codec import Rejected, sign, signature_of
from .codec.commands import SIGNATURE_HEADER, verify

log = logging.getLogger("streamlearn.canary")


class CanaryLog:
    def __init__(self, bootstrap_servers: str, topic: str, secret: bytes | None,
                 kafka: Mapping[str, Any] | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.tp = TopicPartition(topic, 0)
        self.secret = secret
        self.kafka = dict(kafka or {})
        self._producer: AIOKafkaProducer | None = None
        self._following: AIOKafkaConsumer | None = None

    async def read(self, timeout: float = 10.0) -> dict[str, Canary]:
        """Every canary's latest state, by id (read from the start to the end the topic has now)."""
        consumer = await self._consumer()
        try:
            return await self._to_end(consumer, timeout)
        finally:
            await consumer.stop()

    async def follow(self, timeout: float = 10.0) -> dict[str, Canary]:
        """The latest state of each canary the topic gained since the last call: on the first call (or the
        first after ``unfollow``) all of them, read to the end; then what its consumer fetched meanwhile."""
        if self._following is None:
            consumer = await self._consumer()
            try:
                found = await self._to_end(consumer, timeout)
            except BaseException:
                await consumer.stop()
                raise
            self._following = consumer
            return found
        found: dict[str, Canary] = {}
        for msgs in (await self._following.getmany(self.tp, timeout_ms=0)).values():
            self._keep(msgs, found)
        return found

    async def unfollow(self) -> None:
        if self._following is not None:
            await self._following.stop()
            self._following = None

    async def _consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
                                    **self.kafka)
        await consumer.start()
        consumer.assign([self.tp])
        await consumer.seek_to_beginning(self.tp)
        return consumer

    async def _to_end(self, consumer: AIOKafkaConsumer, timeout: float) -> dict[str, Canary]:
        found: dict[str, Canary] = {}
        end = (await consumer.end_offsets([self.tp]))[self.tp]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await consumer.position(self.tp) < end:
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {self.tp.topic} to its end within {timeout:g}s")
            for msgs in (await consumer.getmany(self.tp, timeout_ms=500)).values():
                self._keep(msgs, found)
        return found

    def _keep(self, msgs: list, found: dict[str, Canary]) -> None:
        for msg in msgs:
            canary = self._decode(msg)
            if canary is not None:
                found[canary.id] = canary

    def _decode(self, msg: Any) -> Canary | None:
        try:
            if self.secret is not None:
                verify(msg.value, signature_of(msg.headers), self.secret)
            return Canary.from_json(orjson.loads(msg.value))
        except Rejected as exc:
            log.warning("canary record at offset %d ignored: %s", msg.offset, exc.detail)
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
            log.warning("canary record at offset %d ignored: not a canary (%s)", msg.offset, exc)
        return None

    async def write(self, canary: Canary) -> None:
        """The canary's new state, signed, acknowledged by the broker before this returns."""
        if self._producer is None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, linger_ms=0, acks="all",
                                        **self.kafka)
            await producer.start()
            self._producer = producer
        value = orjson.dumps(canary.to_json())
        headers = [] if self.secret is None else [(SIGNATURE_HEADER, sign(value, self.secret))]
        await self._producer.send_and_wait(self.tp.topic, value, key=canary.id.encode(), partition=0,
                                           headers=headers)

    async def stop(self) -> None:
        await self.unfollow()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
