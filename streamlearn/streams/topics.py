"""Topic names, their Faust declarations, and creating them on the broker.

Input topics (features, feedback, control) may have any partition count:
the routers re-key everything onto the internal topics, which all have the
same partition count so that Faust's co-partitioning assignor gives one
worker all the work of a model key. Topics we create get that count.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


class TopicLayoutError(RuntimeError):
    """An existing topic cannot be used as it is (e.g. wrong partition count)."""


@dataclass(frozen=True)
class TopicNames:
    features: str
    feedback: str
    control: str
    predictions: str
    control_results: str
    deadletter: str
    audit: str
    alerts: str
    # internal, co-partitioned, keyed by model key
    events: str
    labels: str
    training: str
    # one partition, compacted: the latest state of each canary (app/canary.py)
    canaries: str

    INTERNAL = ("events", "labels", "training")
    LOGS = ("canaries",)

    @classmethod
    def with_prefix(cls, prefix: str) -> "TopicNames":
        return cls(
            features=f"{prefix}features",
            feedback=f"{prefix}feedback",
            control=f"{prefix}control",
            predictions=f"{prefix}predictions",
            control_results=f"{prefix}control-results",
            deadletter=f"{prefix}deadletter",
            audit=f"{prefix}audit",
            alerts=f"{prefix}alerts",
            events=f"{prefix}internal.events",
            labels=f"{prefix}internal.labels",
            training=f"{prefix}internal.training",
            canaries=f"{prefix}canaries",
        )

    def all(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def internal(self) -> list[str]:
        return [getattr(self, n) for n in self.INTERNAL]

    def logs(self) -> list[str]:
        return [getattr(self, n) for n in self.LOGS]


@dataclass
class Topics:
    """The Faust topic objects of one app, all with raw bytes keys and values."""

    names: TopicNames
    features: faust.TopicT
    feedback: faust.TopicT
    control: faust.TopicT
    predictions: faust.TopicT
    control_results: faust.TopicT
    deadletter: faust.TopicT
    audit: faust.TopicT
    alerts: faust.TopicT
    events: faust.TopicT
    labels: faust.TopicT
    training: faust.TopicT

    @classmethod
    def declare(cls, app: faust.App, names: TopicNames, partitions: int) -> "Topics":
        def topic(name: str, internal_partitions: int | None = None) -> faust.TopicT:
            return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                             value_serializer="raw", partitions=internal_partitions)

        return cls(
            names=names,
            features=topic(names.features),
            feedback=topic(names.feedback),
            control=topic(names.control),
            predictions=topic(names.predictions),
            control_results=topic(names.control_results),
            deadletter=topic(names.deadletter),
            audit=topic(names.audit),
            alerts=topic(names.alerts),
            events=topic(names.events, partitions),
            labels=topic(names.labels, partitions),
            training=topic(names.training, partitions),
        )


@dataclass(frozen=True)
class Changelog:
    """A table's changelog topic: compacted, with as many partitions as the table."""

    name: str
    partitions: int


async def ensure_topics(bootstrap_servers: str, names: TopicNames, partitions: int,
                        replication_factor: int = 1, timeout: float = 30.0,
                        changelogs: Sequence[Changelog] = (), kafka: Mapping[str, Any] | None = None) -> list[str]:
    """Create the missing topics, table changelogs included; check partition counts.

    Returns the names created. Raises :class:`TopicLayoutError` when an
    internal topic or a changelog exists with another partition count:
    co-partitioning would silently break, so we refuse to start instead.

    Changelogs are created here too, before Faust starts: left to Faust, a
    worker started seconds after a fresh broker could see a changelog with no
    partitions yet in its metadata, and the first table write of an agent then
    raised ``PartitionsMismatch`` (its agent crash-looping) until a restart.
    ``kafka``: the connection options (security; ``Settings.kafka_options``).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000),
                                **(kafka or {}))
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await admin.start()
            break
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise TopicLayoutError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from None
            await asyncio.sleep(1.0)
    try:
        counts = {n: partitions for n in names.all().values()}
        counts.update({c.name: c.partitions for c in [*changelogs, *(Changelog(n, 1) for n in names.logs())]})
        wanted = list(counts)
        existing = await _partition_counts(admin, wanted)
        for name in [*names.internal(), *(c.name for c in changelogs)]:
            if name in existing and existing[name] != counts[name]:
                raise TopicLayoutError(
                    f"topic {name} has {existing[name]} partitions but settings say {counts[name]}; "
                    "internal topics and table changelogs must all have the configured partition count")
        missing = [n for n in wanted if n not in existing]
        compacted = {*(c.name for c in changelogs), *names.logs()}
        if missing:
            response = await admin.create_topics(
                [NewTopic(n, counts[n], replication_factor,
                          topic_configs={"cleanup.policy": "compact"} if n in compacted else {})
                 for n in missing])
            for topic, code, message in getattr(response, "topic_errors", []):
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise TopicLayoutError(f"could not create topic {topic}: error {code} {message}")
            log.info("created topics: %s", ", ".join(missing))
        # Faust's assignor ignores topics its metadata does not show yet, and
        # would not see them for minutes: wait until every topic has leaders.
        while True:
            ready = await _partition_counts(admin, wanted, with_leaders=True)
            if all(n in ready for n in wanted):
                return missing
            if asyncio.get_running_loop().time() > deadline:
                raise TopicLayoutError(f"topics not ready in time: {sorted(set(wanted) - set(ready))}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def cluster_id(bootstrap_servers: str, kafka: Mapping[str, Any] | None = None, timeout: float = 30.0) -> str:
    """The Kafka cluster's id (a new cluster, say a broker started on fresh storage, has a new one)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000),
                                **(kafka or {}))
    await admin.start()
    try:
        return str((await admin.describe_cluster())["cluster_id"])
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str],
                            with_leaders: bool = False) -> dict[str, int]:
    """Partition count of each existing topic (only those whose partitions all have a leader)."""
    present = set(await admin.list_topics())
    query = [t for t in topics if t in present]
    if not query:
        return {}
    described = await admin.describe_topics(query)
    return {
        d["topic"]: len(d["partitions"])
        for d in described
        if d.get("error_code", 0) == 0 and d["partitions"]
        and (not with_leaders or all(p.get("leader", -1) >= 0 for p in d["partitions"]))
    }


async def ensure_committed(bootstrap_servers: str, group: str, topics: list[str],
                           kafka: Mapping[str, Any] | None = None) -> int:
    """Give every partition of ``topics`` a committed offset for ``group`` (its log start).

    Why: after a rebalance Faust drops the messages fetched in the previous
    generation and seeks each partition back to its committed offset. A
    partition with no committed offset yet is not sought back, so the dropped
    messages would never be seen again. With a committed offset from the
    start, nothing is skipped. Only done while the group has no members (the
    first worker to start); later workers find the offsets there. Returns
    how many partitions got one.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group,
                                enable_auto_commit=False, **(kafka or {}))
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        missing = [tp for tp in tps if await consumer.committed(tp) is None]
        if not missing:
            return 0
        start = await consumer.beginning_offsets(missing)
        try:
            await consumer.commit({tp: start[tp] for tp in missing})
        except KafkaError as exc:  # the group is active: its first member did this
            log.info("did not set start offsets for group %s (%s)", group, exc)
            return 0
        log.info("set start offsets of %d partitions for group %s", len(missing), group)
        return len(missing)
    finally:
        await consumer.stop()
