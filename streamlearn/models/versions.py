"""Model versions: the snapshot index of one model key, and how versions change.

Pure River and Python: the Kafka side (streams/snapshots.py, streams/commands.py) stores what this
module decides.

Versions. A live model has a version number; predictions carry it. Taking a
snapshot freezes the live model as its current version ``v`` and the live
model goes on as ``v + 1`` with parent ``v``. A restore of ``V`` first
snapshots the model it replaces, then makes a new live version whose parent
is ``V``. So every version number is either a snapshot or the live model, and
a snapshot's content never changes.

A promotion is a version change like a restore: the live model is first
snapshotted (``replaced``), then one of its challengers becomes the live
model, and the old champion stays on as a challenger; rolling back restores
the replaced snapshot and makes the promoted model a challenger again.

Retention keeps the last K automatic snapshots and every other one (manual,
taken before a restore, or pinned).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Protocol

from streamlearn.core.cadence import Cadence

from .blobs import Blobs, CheckpointError
from .gate import GateSettings, QualityGate, error_of
from .promotion import PromotionPolicy, PromotionSettings

from .state import LiveModel, retire
from .watch import Alert, Watch

AUTO = "auto"          # taken by the snapshot policy
MANUAL = "manual"      # asked for by an operator
REPLACED = "replaced"  # the live model, taken just before a restore replaced it


class VersionError(Exception):
    """A version command that cannot be done; ``reason`` is a stable word for results and metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class SnapshotInfo:
    """What the index records of one snapshot."""

    version: int
    parent_version: int | None
    created_at: float
    learned: int
    metric: float | None
    metric_name: str
    kind: str
    reason: str
    by: str
    size: int = 0
    pinned: bool = False
    spec: str | None = None   # the spec of the frozen model (None in indexes of before promotions)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VersionIndex:
    """The snapshots of one model key, oldest first, and the next version number to hand out."""

    model: str
    snapshots: list[SnapshotInfo] = field(default_factory=list)
    next_version: int = 1
    reference: int | None = None  # the quality gate's reference snapshot

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "VersionIndex":
        return cls(model=obj["model"], snapshots=[SnapshotInfo(**s) for s in obj["snapshots"]],
                   next_version=obj["next_version"], reference=obj.get("reference"))

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "snapshots": [s.to_json() for s in self.snapshots],
                "next_version": self.next_version, "reference": self.reference}

    def get(self, version: int) -> SnapshotInfo:
        for s in self.snapshots:
            if s.version == version:
                return s
        known = ", ".join(str(s.version) for s in self.snapshots) or "none"
        raise VersionError("unknown_version", f"model {self.model!r} has no snapshot of version {version} "
                                              f"(snapshots: {known})")

    def freeze(self, live: LiveModel, *, kind: str, reason: str, by: str,
               now: float | None = None) -> SnapshotInfo:
        """Record a snapshot of the live model and move the live model to the next version.

        The snapshot's version is the live model's, unless the index already
        handed that number out (a checkpoint older than the index, after a
        crash): version numbers are never reused.
        """
        version = max(live.version, self.next_version)
        info = SnapshotInfo(version=version, parent_version=live.parent_version,
                            created_at=time.time() if now is None else now, learned=live.learned,
                            metric=live.metric.get(), metric_name=type(live.metric).__name__,
                            kind=kind, reason=reason, by=by, spec=live.spec.name)
        self.snapshots.append(info)
        self.next_version = version + 1
        live.version, live.parent_version = version + 1, version
        return info

    def successor(self, live: LiveModel, restored: LiveModel, target: int) -> LiveModel:
        """The new live model made from snapshot ``target`` (already frozen: ``live`` was snapshotted)."""
        restored.key = live.key
        restored.version = self.next_version
        restored.parent_version = target
        restored.offset = live.offset          # it starts where the replaced model stopped
        restored.recent = live.recent          # ... and never learns again what the replaced one learned
        restored.label_type = live.label_type or restored.label_type
        # challengers follow the stream, not the champion's versions; a replaced champion of another
        # spec (say, undoing a promotion) goes on as a challenger
        challengers = {n: c for n, c in live.challengers.items() if n != restored.spec.name}
        if live.spec.name != restored.spec.name:
            challengers[live.spec.name] = retire(live)
        restored.challengers = challengers
        return restored

    def promoted(self, live: LiveModel, spec: str) -> LiveModel:
        """The new live model made from challenger ``spec`` (``live`` was just snapshotted); ``live`` retires."""
        c = live.challengers[spec]
        new = LiveModel(key=live.key, spec=c.spec, model=c.model, version=self.next_version,
                        parent_version=live.parent_version, learned=c.learned, metric=c.metric,
                        offset=live.offset, recent=live.recent, label_type=live.label_type)
        new.challengers = {n: other for n, other in live.challengers.items() if n != spec}
        new.challengers[live.spec.name] = retire(live)
        return new

    def rollback_target(self, live: LiveModel) -> int:
        """The previous version: the newest snapshot that is not the live model's own state.

        The live model is its parent's state while it has learned nothing
        since it was made from it (just after a snapshot or a restore).
        """
        for s in reversed(self.snapshots):
            if (s.version == live.parent_version and s.learned == live.learned
                    and s.spec in (None, live.spec.name)):
                continue
            return s.version
        raise VersionError("no_earlier_version", f"model {self.model!r} has no earlier version to roll back to")

    def set_pinned(self, version: int, pinned: bool) -> SnapshotInfo:
        info = self.get(version)
        info.pinned = pinned
        return info

    def expired(self, keep_auto: int) -> list[int]:
        """Drop what retention no longer keeps (all but the last ``keep_auto`` unpinned automatic ones).

        The quality gate's reference is kept too. Returns the versions dropped.
        """
        auto = [s for s in self.snapshots if s.kind == AUTO and not s.pinned and s.version != self.reference]
        drop = {s.version for s in auto[:max(len(auto) - keep_auto, 0)]}
        self.snapshots = [s for s in self.snapshots if s.version not in drop]
        return sorted(drop)


# ---- the versions of the models a worker owns -------------------------------

@dataclass(frozen=True)
class Change:
    """A version change, for the audit trail: who or what asked, from which version to which, why."""

    action: str    # snapshot | restore | rollback | auto_rollback | promote | auto_promote | backfill | warm_start | pin | unpin
    model: str
    from_version: int | None
    to_version: int | None
    by: str
    reason: str
    restored_version: int | None = None
    spec: str | None = None         # promotions: the challenger promoted
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Store(Protocol):
    """Where snapshots live (a changelog-backed table on the Kafka side, a dict in tests)."""

    def load_index(self, model: str) -> VersionIndex | None: ...
    def save_index(self, index: VersionIndex) -> None: ...
    def load_blob(self, model: str, version: int) -> bytes | None: ...
    def save_blob(self, model: str, version: int, blob: bytes) -> None: ...
    def delete_blob(self, model: str, version: int) -> None: ...


@dataclass(frozen=True)
class VersionSettings:
    snapshot_every_examples: int = 1000   # 0: never by count
    snapshot_every_seconds: float = 0.0   # 0: never by time
    keep_auto: int = 10
    gate: GateSettings | None = field(default_factory=GateSettings)  # None: no automatic rollback
    promotion: PromotionSettings | None = field(default_factory=PromotionSettings)  # None: no automatic promotion


class ModelVersions:
    """Snapshots, restores, rollbacks and the quality gate of the live models of one worker.

    Every method runs in the agent that owns the model key, in order with its
    learning; it returns the :class:`Change` records for the audit trail.
    """

    def __init__(self, store: Store, blobs: Blobs, settings: VersionSettings,
                 clock: Callable[[], float] = time.time,
                 on_snapshot: Callable[[SnapshotInfo, float], None] | None = None,
                 on_alert: Callable[[Alert], None] | None = None) -> None:
        self.store = store
        self.blobs = blobs
        self.on_snapshot = on_snapshot
        self.on_alert = on_alert   # told each alert raised while learning
        self.settings = settings
        self.clock = clock
        self.gates: dict[str, QualityGate] = {}
        self.promotions: dict[str, PromotionPolicy] = {}
        self.watches: dict[str, Watch] = {}   # alert episodes, while someone listens (on_alert)
        self.cadence: Cadence[str] = Cadence(settings.snapshot_every_examples, settings.snapshot_every_seconds,
                                             clock)   # per model: automatic snapshots

    # ---- index --------------------------------------------------------
    def index(self, model: str) -> VersionIndex:
        return self.store.load_index(model) or VersionIndex(model)

    def _load(self, model: str, version: int) -> LiveModel:
        blob = self.store.load_blob(model, version)
        if blob is None:
            raise VersionError("unknown_version", f"the blob of {model!r} v{version} is missing")
        try:
            return self.blobs.load(blob)
        except CheckpointError as exc:
            raise VersionError("bad_snapshot", f"snapshot v{version} of {model!r} was refused: {exc}") from None

    # ---- changes ------------------------------------------------------
    def snapshot(self, live: LiveModel, *, kind: str = MANUAL, reason: str = "", by: str = "operator",
                 index: VersionIndex | None = None) -> tuple[SnapshotInfo, list[Change]]:
        """Freeze the live model as a snapshot; the live model goes on as the next version."""
        idx = index or self.index(live.key)
        now = self.clock()
        started = time.perf_counter()
        from_version = live.version
        # the blob is the live model as it is, under the snapshot's version number
        version = max(live.version, idx.next_version)
        live.version = version
        blob = self.blobs.dump(live, now)
        info = idx.freeze(live, kind=kind, reason=reason, by=by, now=now)
        info.size = len(blob)
        self.store.save_blob(live.key, info.version, blob)
        gate = self.gates.get(live.key)
        if kind == AUTO and gate is not None and (gate.reference is None or gate.steady):
            gate.set_reference(self.blobs.load(blob), info.version)
            idx.reference = info.version
        for version in idx.expired(self.settings.keep_auto):
            self.store.delete_blob(live.key, version)
        self.store.save_index(idx)
        self.cadence.done(live.key)
        if self.on_snapshot is not None:
            self.on_snapshot(info, time.perf_counter() - started)
        return info, [Change("snapshot", live.key, from_version, live.version, by,
                             reason or f"{kind} snapshot v{info.version}")]

    def restore(self, live: LiveModel, version: int, *, by: str = "operator", reason: str = "",
                action: str = "restore") -> tuple[LiveModel, SnapshotInfo, list[Change]]:
        """Replace the live model by snapshot ``version``, after snapshotting the live one (so it can be undone)."""
        idx = self.index(live.key)
        idx.get(version)
        restored = self._load(live.key, version)    # verified before anything changes
        from_version = live.version
        replaced, _ = self.snapshot(live, kind=REPLACED, by=by, index=idx,
                                    reason=f"replaced by {action} to v{version}")
        new = idx.successor(live, restored, version)
        self.store.save_index(idx)
        self._replaced(new, action)
        return new, replaced, [Change(action, live.key, from_version, new.version, by,
                                      reason or f"{action} to v{version}", restored_version=version)]

    def promote(self, live: LiveModel, spec: str, *, by: str = "operator", reason: str = "",
                action: str = "promote") -> tuple[LiveModel, SnapshotInfo, list[Change]]:
        """Make challenger ``spec`` the live model, after snapshotting the champion (so ``rollback`` undoes it)."""
        if spec == live.spec.name:
            raise VersionError("already_champion", f"{spec!r} is already the champion of model {live.key!r}")
        challenger = live.challengers.get(spec)
        if challenger is None:
            raise VersionError("no_such_challenger", f"model {live.key!r} has no challenger {spec!r} "
                                                     f"(challengers: {', '.join(live.challengers) or 'none'})")
        if challenger.error is not None:
            raise VersionError("challenger_failed", f"challenger {spec!r} of {live.key!r} stopped learning: "
                                                    f"{challenger.error}")
        idx = self.index(live.key)
        from_version, champion = live.version, live.spec.name
        replaced, _ = self.snapshot(live, kind=REPLACED, by=by, index=idx,
                                    reason=f"replaced by {action} of challenger {spec}")
        new = idx.promoted(live, spec)
        self.store.save_index(idx)
        self._replaced(new, action)
        return new, replaced, [Change(action, live.key, from_version, new.version, by,
                                      reason or f"{action} of challenger {spec} (champion {champion} "
                                                f"v{replaced.version} retires as a challenger)", spec=spec)]

    def _replaced(self, new: LiveModel, action: str) -> None:
        """After a version change: the gate, the promotion windows and the alert episodes start over."""
        watch = self.watches.get(new.key)
        if watch is not None:
            alert = watch.replaced(new, action)
            if alert is not None and self.on_alert is not None:
                self.on_alert(alert)
        gate = self.gates.get(new.key)
        if gate is not None:
            gate.reset()
        policy = self.promotions.get(new.key)
        if policy is not None:
            policy.reset()
        self.cadence.done(new.key)

    def rollback(self, live: LiveModel, *, by: str = "operator", reason: str = "",
                 action: str = "rollback") -> tuple[LiveModel, SnapshotInfo, list[Change]]:
        target = self.index(live.key).rollback_target(live)
        return self.restore(live, target, by=by, reason=reason or f"{action} to the previous version v{target}",
                            action=action)

    def pin(self, model: str, version: int, pinned: bool, *, by: str = "operator") -> tuple[SnapshotInfo, list[Change]]:
        idx = self.index(model)
        info = idx.set_pinned(version, pinned)
        self.store.save_index(idx)
        action = "pin" if pinned else "unpin"
        return info, [Change(action, model, version, version, by, f"{action} v{version}")]

    # ---- the learn agent's hooks ---------------------------------------
    def learned(self, live: LiveModel, x: dict[str, Any], y: Any, y_pred: Any,
                shadow: Mapping[str, Any] | None = None) -> tuple[LiveModel | None, list[Change]]:
        """After the live model learned one example: the gate's verdict, the promotion policy's, then snapshots.

        ``shadow``: the challengers' predictions for the example. Returns the
        new live model when the gate rolled back or a challenger was promoted
        (else None).
        """
        if self.on_alert is not None:
            watch = self.watches.get(live.key)
            if watch is None:
                watch = self.watches[live.key] = Watch()
            alert = watch.observe(live, error_of(live.spec.is_classifier, y, y_pred))
            if alert is not None:
                self.on_alert(alert)
        gate = self._gate(live)
        if gate is not None:
            verdict = gate.observe(x, y, y_pred)
            if verdict is not None:
                new, _, changes = self.restore(live, verdict.version, by="quality-gate", reason=verdict.reason,
                                               action="auto_rollback")
                return new, changes
        if shadow:   # the windows are kept without automatic promotion too: a canary judges by them
            promote = self.policy(live).observe(y, y_pred, shadow, live.challengers)
            if promote is not None and self.settings.promotion is not None:
                new, _, changes = self.promote(live, promote.spec, by="promotion-policy", reason=promote.reason,
                                               action="auto_promote")
                return new, changes
        self.cadence.count(live.key)
        if self.cadence.due_by_count(live.key):
            return None, self.snapshot(live, kind=AUTO, by="policy",
                                       reason=f"every {self.cadence.every} examples")[1]
        return None, []

    def due_by_time(self, live: LiveModel) -> bool:
        return self.cadence.due_by_time(live.key)

    def _gate(self, live: LiveModel) -> QualityGate | None:
        if self.settings.gate is None:
            return None
        gate = self.gates.get(live.key)
        if gate is None:
            gate = self.gates[live.key] = QualityGate(self.settings.gate, live.spec.is_classifier)
            ref = self.index(live.key).reference
            if ref is not None:
                try:
                    gate.set_reference(self._load(live.key, ref), ref)
                except VersionError:
                    pass
        return gate

    def policy(self, live: LiveModel) -> PromotionPolicy:
        """The key's promotion policy (its windows live in memory, made on first use)."""
        policy = self.promotions.get(live.key)
        if policy is None:
            policy = self.promotions[live.key] = PromotionPolicy(self.settings.promotion or PromotionSettings(),
                                                                 live.spec.is_classifier)
        return policy

    def forget_model(self, key: str) -> None:
        """Drop one model's in-memory state (it left memory): its gate restarts from the index's reference."""
        for d in (self.gates, self.promotions, self.watches):
            d.pop(key, None)
        self.cadence.forget(key)

    def forget(self) -> None:
        """Drop in-memory state (after a rebalance): gates restart from the index's reference."""
        self.gates.clear()
        self.promotions.clear()
        self.watches.clear()
        self.cadence.clear()
