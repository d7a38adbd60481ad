"""Sending operator commands and waiting for their results: used by the CLI and by every worker's HTTP API.

A command is a JSON message on the control topic; the model's owner executes
it in its learn agent and answers on the control-results topic with the same
``request_id``. The client reads the results topic from its end (all
partitions, no consumer group), so it sees only answers to what it sends.
Each command carries a deadline: an owner that gets it later (say, after a
rebalance) refuses it, so a command the caller gave up on never runs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any, Mapping

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamlearn.streams import codec
from streamlearn.streams.topics import TopicNames

if TYPE_CHECKING:
    from .settings import Settings

TIMEOUT = "timeout"

# HTTP status of an error result, by reason
HTTP_STATUS = {"unknown_model": 404, "unknown_version": 404, "no_earlier_version": 409, "bad_snapshot": 422,
               "no_such_challenger": 404, "already_champion": 409, "challenger_failed": 409,
               TIMEOUT: 504, "expired": 504}


class ControlClient:
    def __init__(self, bootstrap_servers: str, names: TopicNames, timeout: float, *,
                 secret: bytes | None = None, kafka: Mapping[str, Any] | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.names = names
        self.timeout = timeout
        self.secret = secret            # signs each command (the control topic only runs signed ones)
        self.kafka = dict(kafka or {})  # connection options: security protocol, TLS, SASL
        self._waiting: dict[str, asyncio.Future] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task | None = None
        self._starting = asyncio.Lock()

    @classmethod
    def of(cls, settings: Settings, timeout: float | None = None) -> "ControlClient":
        """The control client the settings describe (topics, timeout, command secret, Kafka connection)."""
        return cls(settings.bootstrap_servers, TopicNames.with_prefix(settings.topic_prefix),
                   settings.command_timeout_seconds if timeout is None else timeout,
                   secret=settings.command_key, kafka=settings.kafka_options)

    async def start(self) -> None:
        async with self._starting:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, linger_ms=0, **self.kafka)
            await producer.start()
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
                                        **self.kafka)
            try:
                topic = self.names.control_results
                parts = await asyncio.wait_for(producer.partitions_for(topic), 10)
                tps = [TopicPartition(topic, p) for p in sorted(parts)]
                await consumer.start()
                consumer.assign(tps)
                await consumer.seek_to_end(*tps)
                for tp in tps:                       # pin the positions now, before anything is sent
                    await consumer.position(tp)
            except BaseException:
                await producer.stop()
                await consumer.stop()
                raise
            self._consumer, self._producer = consumer, producer
            self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        async for msg in self._consumer:
            try:
                result = orjson.loads(msg.value)
            except orjson.JSONDecodeError:
                continue
            waiter = self._waiting.get(result.get("request_id")) if isinstance(result, dict) else None
            if waiter is not None and not waiter.done():
                waiter.set_result(result)

    async def call(self, command: str, model: str, *, version: int | None = None, spec: str | None = None,
                   reason: str = "", by: str = "operator", timeout: float | None = None) -> dict[str, Any]:
        """Send a command and wait for its result (an error result with reason ``timeout`` if none comes)."""
        wait = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait      # one budget for connecting, sending and the answer
        cmd = codec.Command(request_id=uuid.uuid4().hex, command=command, model=model, version=version,
                            reason=reason, by=by, deadline=time.time() + wait, spec=spec)
        waiter = self._waiting[cmd.request_id] = loop.create_future()
        try:
            await asyncio.wait_for(self.start(), wait)
            assert self._producer is not None
            value = codec.encode_command(cmd)
            headers = [] if self.secret is None else [(codec.SIGNATURE_HEADER, codec.sign(value, self.secret))]
            await asyncio.wait_for(self._producer.send_and_wait(self.names.control, value, key=model.encode(),
                                                                headers=headers),
                                   max(deadline - loop.time(), 0.001))
            return await asyncio.wait_for(waiter, max(deadline - loop.time(), 0.001))
        except asyncio.TimeoutError:
            return {"request_id": cmd.request_id, "model": model, "command": command, "ok": False,
                    "error": TIMEOUT, "detail": f"no owner of model {model!r} answered within {wait:g}s "
                                                f"(Kafka unreachable, workers down or rebalancing?); "
                                                f"the command will not run",
                    "result": None}
        finally:
            self._waiting.pop(cmd.request_id, None)

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for client in (self._producer, self._consumer):
            if client is not None:
                await client.stop()
        self._producer = self._consumer = self._reader = None
