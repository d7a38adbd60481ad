"""A key's history, read back from Kafka: the examples its model learned, and the answers it gave.

The internal training topic is each model's write-ahead log: a key's
partition holds, in order, every example the model learned (and repeats of
some after a crash: the learner learns an event once, so only the first copy
counts here too), as far back as retention keeps. The predictions topic holds
what the live model answered each event, before it learned it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamlearn.models import LiveModel, Spec
from streamlearn.models.promotion import backfill
from streamlearn.models.state import Challenger
from streamlearn.models.versions import VersionError

from .codec import UNKNOWN_SPEC, decode_examples, loads
from .routing import is_command, is_tick, partition_for

FETCH_BYTES = 512 * 1024   # one fetch is parsed in one go on the event loop: small ones keep the other agents going
STEP = 200     # records read between yields to the event loop (a few ms each)


class History:
    """Reads a key's examples and answers with a client of its own (``options``: the connection's).

    The key's partition of each topic is its model key's (``partitions``: the count of the model-keyed topics,
    the predictions topic's too when streamlearn made it; with another count its answers are not found).
    """

    def __init__(self, bootstrap: str, options: dict[str, Any], training: str, predictions: str,
                 partitions: int) -> None:
        self.bootstrap = bootstrap
        self.options = options
        self.training = training
        self.predictions = predictions
        self.partitions = partitions

    async def examples(self, partition: int, key: str, before: int) -> list[tuple[str, dict[str, Any], Any]]:
        """``key``'s examples in the training partition before offset ``before``, in order, each event once:
        (event id, features, label)."""
        seen: set[str] = set()
        out: list[tuple[str, dict[str, Any], Any]] = []

        def take(record) -> None:
            if not record.value or is_tick(record.headers) or is_command(record.headers):
                return
            for ex in decode_examples(record.value):
                if ex.model == key and ex.event_id not in seen:
                    seen.add(ex.event_id)
                    out.append((ex.event_id, ex.features, ex.label))
        await self._read(TopicPartition(self.training, partition), take, before)
        return out

    async def answers(self, key: str) -> dict[str, Any]:
        """What the live models answered ``key``'s events (the first answer of each), by event id."""
        out: dict[str, Any] = {}
        wanted = key.encode()

        def take(record) -> None:
            if record.key == wanted and record.value:
                p = loads(record.value)
                if isinstance(p, dict) and "event_id" in p:
                    out.setdefault(p["event_id"], p.get("prediction"))
        await self._read(TopicPartition(self.predictions, partition_for(key, self.partitions)), take, None)
        return out

    async def _read(self, tp: TopicPartition, take: Callable[[Any], None], before: int | None) -> None:
        """Hand ``take`` each record of ``tp``, from the first retention kept up to offset ``before`` (None:
        the end as it is now)."""
        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                             max_partition_fetch_bytes=FETCH_BYTES, **self.options)
        await c.start()
        try:
            c.assign([tp])
            await c.seek_to_beginning(tp)
            last = (await c.end_offsets([tp]))[tp]
            end = last if before is None else min(before, last)
            while await c.position(tp) < end:
                for record in (await c.getmany(tp, timeout_ms=1000, max_records=STEP)).get(tp, []):
                    if record.offset >= end:
                        return
                    take(record)
                await asyncio.sleep(0)   # the other agents, between steps
        finally:
            await c.stop()


class Backfiller:
    """A challenger of a spec, taught its key's history before it goes on in the champion's shadow."""

    def __init__(self, history: History, specs: Mapping[str, Spec], params: Mapping[str, dict]) -> None:
        self.history = history
        self.specs = specs
        self.params = params

    async def challenger(self, partition: int, live: LiveModel, spec_name: str | None,
                         before: int) -> tuple[Challenger, list[tuple[float, float]], int]:
        """A new challenger ``spec_name`` of ``live``, taught the key's examples before training offset ``before``
        (all the champion learned, as far back as retention keeps); the (its error, the champion's) pairs of
        those whose champion's answer is known; how many examples it learned. VersionError says why not."""
        spec = self.specs.get(spec_name or "")
        if spec is None:
            raise VersionError(UNKNOWN_SPEC, f"no spec {spec_name!r}; known: {', '.join(sorted(self.specs))}")
        if spec.name == live.spec.name:
            raise VersionError("already_champion", f"{spec.name!r} is the champion of model {live.key!r}")
        if spec.task != live.spec.task:
            raise VersionError("wrong_task", f"{spec.name!r} is a {spec.task} spec; model {live.key!r} is a "
                                             f"{live.spec.task}")
        examples = await self.history.examples(partition, live.key, before)
        if not examples:
            raise VersionError("no_history", f"model {live.key!r} has no example in the training topic to learn "
                                             f"from (none learned yet, or retention kept none)")
        answers = await self.history.answers(live.key)
        challenger, pairs = Challenger(spec, spec.build(self.params.get(spec.name))), []
        # taught in a thread of its own (the new model is nobody else's until attached): the event loop, and
        # the other agents with it, go on meanwhile; this agent waits (learning is in order)
        await asyncio.to_thread(backfill, challenger, examples, answers, live.spec.is_classifier, pairs)
        if challenger.error is not None:
            raise VersionError("challenger_failed", f"{spec.name!r} failed on model {live.key!r}'s history: "
                                                    f"{challenger.error}")
        return challenger, pairs, len(examples)
