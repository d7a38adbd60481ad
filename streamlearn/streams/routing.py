"""Routing: which partition of the internal topics owns a model key.

Producers may publish with any client and partitioner, keyed or not, so the
partition an event arrives on says nothing about its model. The router agents
re-publish every event to ``partition_for(model_key)`` of the co-partitioned
internal topics. The hash is Kafka's own default (murmur2 of the UTF-8 key,
as the Java client and aiokafka compute it), so Faust's table routing of web
requests by key agrees with ours.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Iterable

import orjson
from aiokafka.partitioner import murmur2

ORIGIN_HEADER = "streamlearn-origin"
TICK_HEADER = "streamlearn-tick"
COMMAND_HEADER = "streamlearn-command"
ANSWERED_HEADER = "streamlearn-answered"   # an event answered over HTTP: only its features are kept
# An event that carries this header is stamped at each step (``trace_of``); its prediction carries the stamps.
TRACE_HEADER = "streamlearn-trace"


@lru_cache(maxsize=1 << 16)   # murmur2 in Python costs ~10 µs; agents ask it for every event
def partition_for(model_key: str, partitions: int) -> int:
    return (murmur2(model_key.encode("utf-8")) & 0x7FFFFFFF) % partitions


def origin_header(topic: str, partition: int, offset: int) -> tuple[str, bytes]:
    """A header recording where a routed message was first consumed."""
    return ORIGIN_HEADER, f"{topic}/{partition}/{offset}".encode()


def _items(headers) -> Iterable[tuple[str, bytes]]:
    """A message's headers as (name, value) pairs, without copying them (each event's are looked through)."""
    return headers.items() if isinstance(headers, dict) else (headers or ())


def is_tick(headers) -> bool:
    """Whether a message on an internal topic is a timer's tick, not data."""
    return any(name == TICK_HEADER for name, _ in _items(headers))


def is_answered(headers) -> bool:
    """Whether an event on the internal events topic was answered already (over HTTP)."""
    return any(name == ANSWERED_HEADER for name, _ in _items(headers))


def is_command(headers) -> bool:
    """Whether a message on the training topic is an operator's command, not an example."""
    return any(name == COMMAND_HEADER for name, _ in _items(headers))


def trace_of(headers) -> list | None:
    """The latency stamps an event carries, ``[[step, wall-clock seconds], ...]``; None: it asks for none.

    An event asks for stamps with a ``streamlearn-trace`` header (any value; a list of stamps when routed).
    Each step that handles it appends one: ``fetched`` (its fetch handed to the agent), ``handled`` (the
    agent began on it), ``routed`` (sent to its owner's partition), ``predicted``, ``sent`` (its prediction
    handed to the producer). ``streamlearn bench`` turns them into a waterfall (docs/benchmarks.md)."""
    if not headers:
        return None
    for name, value in _items(headers):
        if name == TRACE_HEADER:
            try:
                stamps = orjson.loads(value) if value else []
            except orjson.JSONDecodeError:
                return []
            return stamps if isinstance(stamps, list) else []
    return None


def trace_header(stamps: list) -> tuple[str, bytes]:
    return TRACE_HEADER, orjson.dumps(stamps)


def origin_of(headers, topic: str, partition: int, offset: int) -> tuple[str, int, int]:
    """The (topic, partition, offset) a message was first consumed at.

    Falls back to the message's own position when it has no origin header.
    """
    for name, value in _items(headers):
        if name == ORIGIN_HEADER and value:
            t, p, o = value.decode().rsplit("/", 2)
            return t, int(p), int(o)
    return topic, partition, offset


class Ownership:
    """The one record of what this worker owns.

    ``owned``: the partitions of the internal topics, as the agents see
    them: set on each assignment, emptied on a revocation (until the next
    assignment, everything is routed). ``assigned()``: every topic-partition
    the consumer holds now, as Faust's assignor has them (the tables'
    changelog partitions among them: a delivered table write is stored only
    while its partition is one; consumer lag is reported for each).
    """

    def __init__(self, partitions: int, assigned: Callable[[], set] = set) -> None:
        self.partitions = partitions
        self.owned: frozenset[int] = frozenset()
        self.assigned = assigned

    def owner(self, model_key: str) -> int:
        """The partition of the internal topics that owns a model key."""
        return partition_for(model_key, self.partitions)

    def here(self, partition: int, owner: int) -> bool:
        """Whether a message of an input topic already sits in its owner's partition, on this worker.

        Producers that key by model with Kafka's default partitioner (and input
        topics with as many partitions as the internal ones) put every message
        there; handling it at once saves a hop through the internal topic.
        """
        return partition == owner and owner in self.owned
