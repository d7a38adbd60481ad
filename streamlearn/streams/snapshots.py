"""Model versions on the Kafka side: snapshot tables, the audit trail, alerts, warm starts.

* ``snapshot-index`` (model key -> JSON index) and ``snapshots`` ([model key,
  version] -> signed blob) are changelog-backed tables written by the learn
  agent, in the context of the key's own training partition: they are
  co-partitioned with the model and move with it.
* Every version change is a record on the audit topic and a log line; every
  alert, a record on the alerts topic and a log line. Both are best-effort
  (sent without waiting: a crash may lose the last ones; the log has them).
* Templates: the latest snapshot of every key named as a warm-start template
  is also written to a global table that every worker reads, so a new key
  matching a template's pattern starts from it on whichever worker owns it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from typing import Callable, MutableMapping, Protocol

import faust
import orjson

from streamlearn.models import LiveModel
from streamlearn.models.blobs import Blobs, CheckpointError
from streamlearn.models.state import RecentEvents, new_metric
from streamlearn.models.versions import Change, SnapshotInfo, VersionIndex
from streamlearn.models.watch import Alert

from . import codec

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
    """Alerts (``models.watch.Alert``): one record on the alerts topic, one log line and a count each; the
    last ``RECENT`` of each key kept for its status (of the last ``RECENT_KEYS`` keys alerted)."""

    RECENT, RECENT_KEYS = 5, 10_000

    def __init__(self, topic: faust.TopicT, counted: Callable[[str], None]) -> None:
        self.topic = topic
        self.counted = counted
        self._recent: OrderedDict[str, deque[Alert]] = OrderedDict()

    def recent(self, key: str) -> list[dict]:
        """The key's last alerts, newest last: kind, detail, at."""
        return [{"kind": a.kind, "detail": a.detail, "at": a.at} for a in self._recent.get(key, ())]

    def record(self, alert: Alert) -> None:
        kept = self._recent.pop(alert.model, None) or deque(maxlen=self.RECENT)
        kept.append(alert)
        self._recent[alert.model] = kept
        if len(self._recent) > self.RECENT_KEYS:
            self._recent.popitem(last=False)
        self.counted(alert.kind)
        log.warning("alert %s model=%s v%s: %s", alert.kind, alert.model, alert.version, alert.detail,
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


def index_position(raw: bytes) -> float:
    """A snapshot index's place in its model's history: the next version number it hands out, which only
    grows (-inf: one that cannot be read). A late write of a worker that lost the partition is behind."""
    try:
        return orjson.loads(raw)["next_version"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return float("-inf")


def snapshot_metrics(metrics: VersionCounters) -> Callable[[SnapshotInfo, float], None]:
    return lambda info, seconds: metrics.snapshot_written(info.kind, info.size, seconds)
