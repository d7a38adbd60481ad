"""Model versions on the Kafka side: snapshot tables, operator commands, the audit trail, warm starts.

* ``snapshot-index`` (model key -> JSON index) and ``snapshots`` ([model key,
  version] -> signed blob) are changelog-backed tables written by the learn
  agent, in the context of the key's own training partition: they are
  co-partitioned with the model and move with it.
* Operator commands reach the learn agent on the training topic itself (the
  control router puts them there, see agents/routers.py), so a command is applied
  in order with the model's learning, and a version change is checkpointed
  at once, before the next example.
* Every version change is a record on the audit topic and a log line.
* Templates: the latest snapshot of every key named as a warm-start template
  is also written to a global table that every worker reads, so a new key
  matching a template's pattern starts from it on whichever worker owns it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, MutableMapping, Protocol

import faust
import orjson

from streamlearn.models import LiveModel, ModelRegistry
from streamlearn.models.checkpoint import Blobs, CheckpointError
from streamlearn.models.state import RecentEvents, new_metric
from streamlearn.models.versions import Alert, Change, ModelVersions, SnapshotInfo, VersionError, VersionIndex

from . import codec
from .codec import EXPIRED_COMMAND, UNKNOWN_MODEL, Command, Rejected

log = logging.getLogger("streamlearn.versions")


class VersionCounters(Protocol):
    def snapshot_written(self, kind: str, size: int, seconds: float) -> None: ...
    def version_changed(self, action: str) -> None: ...
    def command_answered(self, command: str, outcome: str) -> None: ...


class TableStore:
    """The models' Store, on Faust tables (bytes keys and values)."""

    def __init__(self, index: MutableMapping[bytes, bytes], blobs_table: MutableMapping[bytes, bytes],
                 templates: MutableMapping[bytes, bytes], template_keys: set[str]) -> None:
        self.index_table = index
        self.blobs = blobs_table
        self.templates = templates
        self.template_keys = template_keys

    @staticmethod
    def blob_key(model: str, version: int) -> bytes:
        return orjson.dumps([model, version])

    @staticmethod
    def model_of_blob_key(key: bytes) -> str:
        return orjson.loads(key)[0]

    def load_index(self, model: str) -> VersionIndex | None:
        raw = self.index_table.get(model.encode())
        return None if raw is None else VersionIndex.from_json(orjson.loads(raw))

    def save_index(self, index: VersionIndex) -> None:
        self.index_table[index.model.encode()] = orjson.dumps(index.to_json())

    def load_blob(self, model: str, version: int) -> bytes | None:
        return self.blobs.get(self.blob_key(model, version))

    def save_blob(self, model: str, version: int, blob: bytes) -> None:
        self.blobs[self.blob_key(model, version)] = blob
        if model in self.template_keys:
            self.templates[model.encode()] = blob

    def delete_blob(self, model: str, version: int) -> None:
        self.blobs.pop(self.blob_key(model, version), None)


class Audit:
    """Version changes: one record on the audit topic and one log line each."""

    def __init__(self, topic: faust.TopicT, metrics: VersionCounters) -> None:
        self.topic = topic
        self.metrics = metrics

    def record(self, changes: list[Change], request_id: str | None = None) -> None:
        for change in changes:
            self.metrics.version_changed(change.action)
            log.info("version change model=%s action=%s v%s -> v%s by=%s: %s", change.model, change.action,
                     change.from_version, change.to_version, change.by, change.reason,
                     extra={"model": change.model, "action": change.action, "by": change.by,
                            "from_version": change.from_version, "to_version": change.to_version})
            self.topic.send_soon(key=change.model.encode(),
                                 value=codec.dumps({**change.to_json(), "request_id": request_id}))


class Alerts:
    """Alerts (``models.versions.Alert``): one record on the alerts topic, one log line and a count each."""

    def __init__(self, topic: faust.TopicT, counted: Callable[[str], None]) -> None:
        self.topic = topic
        self.counted = counted

    def record(self, alert: Alert) -> None:
        self.counted(alert.kind)
        log.warning("alert %s model=%s v%d: %s", alert.kind, alert.model, alert.version, alert.detail,
                    extra={"model": alert.model, "reason": alert.kind})
        self.topic.send_soon(key=alert.model.encode(), value=codec.dumps(alert.to_json()))


class WarmStart:
    """New keys matching a pattern start from a template key's latest snapshot."""

    def __init__(self, template_for: Callable[[str], str | None], templates: MutableMapping[bytes, bytes],
                 blobs: Blobs, audit: Audit) -> None:
        self.template_for = template_for
        self.templates = templates
        self.blobs = blobs
        self.audit = audit

    def start(self, key: str) -> LiveModel | None:
        """A new model for key from its template's latest snapshot; None when no rule or no snapshot."""
        template = self.template_for(key)
        if template is None:
            return None
        blob = self.templates.get(template.encode())
        if blob is None:
            log.info("model=%s matches template %s, which has no snapshot yet: starting empty", key, template)
            return None
        try:
            live = self.blobs.load(blob)
        except CheckpointError as exc:
            log.error("refused the template snapshot of %s for model=%s: %s", template, key, exc)
            return None
        source = live.version
        live.key, live.version, live.parent_version, live.offset = key, 1, None, -1
        live.metric = new_metric(live.spec)      # its own online metric, from its own examples
        live.recent = RecentEvents(live.recent.size)   # the template's events are not this key's
        for challenger in live.challengers.values():    # scored from here on, like the champion
            challenger.metric = new_metric(challenger.spec)
        live.created_at = time.time()
        live.warm_start = {"template": template, "version": source, "learned": live.learned}
        self.audit.record([Change("warm_start", key, None, 1, "warm-start",
                                  f"started from template {template} v{source} ({live.learned} examples)")])
        return live


class Answers:
    """Answers to operator commands, on the results topic, signed with the answering worker's name."""

    def __init__(self, topic: faust.TopicT, worker: str, metrics: VersionCounters) -> None:
        self.topic = topic
        self.worker = worker
        self.metrics = metrics

    async def send(self, cmd: Command | None, request_id: str | None, *, ok: bool, error: str | None = None,
                   detail: str = "", result: Any = None) -> None:
        name = cmd.command if cmd else None
        self.metrics.command_answered(name or "invalid", "ok" if ok else error or "error")
        model = cmd.model if cmd else None
        await self.topic.send(key=model.encode() if model else None, value=codec.encode_result(
            request_id=request_id, model=model, command=name, ok=ok, error=error, detail=detail,
            result=result, worker=self.worker))


class Commands:
    """Operator commands, executed by the learn agent of the model's partition."""

    def __init__(self, versions: ModelVersions, registry: ModelRegistry, restore: Callable[[str], LiveModel | None],
                 audit: Audit, answers: Answers, inputs: codec.Inputs) -> None:
        self.versions = versions
        self.registry = registry
        self.restore = restore
        self.audit = audit
        self.answers = answers
        self.inputs = inputs    # the router verified the signature; checked again: trust no topic blindly

    async def run(self, partition: int, msg) -> LiveModel | None:
        """Execute one command from the training topic; the live model when its version changed."""
        try:
            cmd = self.inputs.command(msg.value, msg.key, codec.signature_of(msg.headers))
        except Rejected as rejected:   # the router checked it: only a foreign writer gets here
            await self.answers.send(None, rejected.event_id, ok=False, error=rejected.reason, detail=rejected.detail)
            return None
        live = self.registry.get(partition, cmd.model)
        if live is None:
            live = self.restore(cmd.model)
            if live is not None:
                self.registry.put(partition, live)
        if live is not None and msg.offset <= live.offset:
            return None                  # applied before a crash: inside the model's checkpoint
        try:
            if cmd.deadline is not None and time.time() > cmd.deadline:
                raise VersionError(EXPIRED_COMMAND, f"the command reached its model's owner after its deadline "
                                                    f"({time.time() - cmd.deadline:.1f}s late): not executed")
            if live is None:
                raise VersionError(UNKNOWN_MODEL, f"no model {cmd.model!r} (it has learned nothing yet)")
            live.offset = msg.offset
            result, new, changes = self._execute(cmd, live)
        except VersionError as exc:
            log.warning("command %s %s model=%s request_id=%s failed: %s", cmd.command, cmd.version or cmd.spec or "",
                        cmd.model, cmd.request_id, exc,
                        extra={"model": cmd.model, "reason": exc.reason, "request_id": cmd.request_id})
            await self.answers.send(cmd, cmd.request_id, ok=False, error=exc.reason, detail=exc.detail)
            return None
        if new is not None:
            self.registry.put(partition, new)
        self.audit.record(changes, cmd.request_id)
        await self.answers.send(cmd, cmd.request_id, ok=True, result=result)
        return (new or live) if changes else None

    def _execute(self, cmd: Command, live: LiveModel) -> tuple[dict[str, Any], LiveModel | None, list[Change]]:
        v, by = self.versions, cmd.by
        if cmd.command == "status":
            return status(live, v.index(live.key), v), None, []
        if cmd.command == "versions":
            return versions_of(live, v.index(live.key)), None, []
        if cmd.command == "snapshot":
            info, changes = v.snapshot(live, reason=cmd.reason or "asked for", by=by)
            return {"snapshot": info.to_json(), "live": live.describe()}, None, changes
        if cmd.command in ("restore", "rollback"):
            if cmd.command == "restore":
                new, replaced, changes = v.restore(live, cmd.version, by=by, reason=cmd.reason)
            else:
                new, replaced, changes = v.rollback(live, by=by, reason=cmd.reason)
            return {"restored": new.parent_version, "replaced": replaced.to_json(),
                    "live": new.describe()}, new, changes
        if cmd.command == "promote":
            new, replaced, changes = v.promote(live, cmd.spec, by=by, reason=cmd.reason)
            return {"promoted": cmd.spec, "replaced": replaced.to_json(), "live": new.describe()}, new, changes
        info, changes = v.pin(live.key, cmd.version, cmd.command == "pin", by=by)
        return {"snapshot": info.to_json()}, None, changes


def index_position(raw: bytes) -> float:
    """A snapshot index's place in its model's history: the next version number it hands out, which only
    grows (-inf: one that cannot be read). A late write of a worker that lost the partition is behind."""
    try:
        return orjson.loads(raw)["next_version"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return float("-inf")


def status(live: LiveModel, index: VersionIndex, versions: ModelVersions) -> dict[str, Any]:
    policy = versions.promotions.get(live.key)
    return {**live.describe(), "snapshots": len(index.snapshots), "gate_reference": index.reference,
            "latest_snapshot": index.snapshots[-1].version if index.snapshots else None,
            # each challenger's sign-test z against the champion over the current window (> 0: it is better)
            "promotion_z": {name: policy.z_of(name) for name in live.challengers} if policy else {}}


def versions_of(live: LiveModel | None, index: VersionIndex) -> dict[str, Any]:
    """Every version of a model: the snapshots, newest last, and the live one."""
    return {"model": index.model, "live": None if live is None else live.describe(),
            "snapshots": [s.to_json() for s in index.snapshots], "gate_reference": index.reference}


def snapshot_metrics(metrics: VersionCounters) -> Callable[[SnapshotInfo, float], None]:
    return lambda info, seconds: metrics.snapshot_written(info.kind, info.size, seconds)
