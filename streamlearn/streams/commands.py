"""Operator commands, run by the learn agent of the model's partition, in order with its learning.

Commands reach the learn agent on the training topic itself (the control
router puts them there, see agents/routers.py), so a command is applied in
order with the model's learning, and a version change is checkpointed at
once, before the next example. A command inside the model's checkpoint (run
before a crash) is not run again. Answers go to the control-results topic.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import faust

from streamlearn.core.registry import ModelRegistry
from streamlearn.models import LiveModel
from streamlearn.models.versions import Change, ModelVersions, VersionError, VersionIndex

from . import codec
from .codec import EXPIRED_COMMAND, UNKNOWN_MODEL, Command, Rejected
from .health import InputHealth
from .history import Backfiller
from .snapshots import Audit, VersionCounters

log = logging.getLogger("streamlearn.commands")


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
                 audit: Audit, answers: Answers, inputs: codec.Inputs, health: InputHealth | None = None,
                 backfiller: Backfiller | None = None) -> None:
        self.versions = versions
        self.registry = registry
        self.restore = restore
        self.audit = audit
        self.answers = answers
        self.inputs = inputs    # the router verified the signature; checked again: trust no topic blindly
        self.health = health
        self.backfiller = backfiller

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
            if cmd.command == "backfill":
                result, new, changes = await self._backfill(partition, cmd, live, msg.offset)
            else:
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

    async def _backfill(self, partition: int, cmd: Command, live: LiveModel,
                        offset: int) -> tuple[dict[str, Any], None, list[Change]]:
        """A challenger of ``cmd.spec`` taught the key's history up to this command, then in the champion's
        shadow like any other (replacing one of that spec). Its promotion window is filled from the history's
        last examples whose champion's answer is known. Run again after a crash before the checkpoint that
        follows it: the key then has no such challenger, or a complete one."""
        if self.backfiller is None:
            raise VersionError("unavailable", "this worker cannot read the training history")
        challenger, pairs, n = await self.backfiller.challenger(partition, live, cmd.spec, offset)
        name = challenger.spec.name
        live.challengers[name] = challenger
        self.versions.policy(live).seed(name, pairs)
        change = Change("backfill", live.key, live.version, live.version, cmd.by,
                        cmd.reason or f"challenger {name} taught the {n} examples of the key's history", spec=name)
        return {"challenger": challenger.describe(), "history": n, "compared": len(pairs),
                "champion_learned": live.learned, "promotion_z": self.versions.policy(live).z_of(name)}, None, [change]

    def _execute(self, cmd: Command, live: LiveModel) -> tuple[dict[str, Any], LiveModel | None, list[Change]]:
        v, by = self.versions, cmd.by
        if cmd.command == "status":
            return status(live, v.index(live.key), v, self.health), None, []
        if cmd.command == "versions":
            return versions_of(live, v.index(live.key)), None, []
        if cmd.command == "snapshot":
            info, changes = v.snapshot(live, reason=cmd.reason or "asked for", by=by)
            return {"snapshot": info.to_json(), "live": live.describe()}, None, changes
        if cmd.command in ("restore", "rollback"):
            if cmd.command == "restore":
                new, replaced, changes = v.restore(live, cmd.version, by=by, reason=cmd.reason)
            elif cmd.spec is not None:       # back to the replaced champion that learned on as challenger spec
                new, replaced, changes = v.promote(live, cmd.spec, by=by, action="rollback",
                                                   reason=cmd.reason or f"rollback to challenger {cmd.spec}")
            elif cmd.version is not None:    # back to a given version
                new, replaced, changes = v.restore(live, cmd.version, by=by, action="rollback",
                                                   reason=cmd.reason or f"rollback to v{cmd.version}")
            else:
                new, replaced, changes = v.rollback(live, by=by, reason=cmd.reason)
            return {"restored": new.parent_version, "replaced": replaced.to_json(),
                    "live": new.describe()}, new, changes
        if cmd.command == "promote":
            new, replaced, changes = v.promote(live, cmd.spec, by=by, reason=cmd.reason)
            return {"promoted": cmd.spec, "replaced": replaced.to_json(), "live": new.describe()}, new, changes
        info, changes = v.pin(live.key, cmd.version, cmd.command == "pin", by=by)
        return {"snapshot": info.to_json()}, None, changes


def status(live: LiveModel, index: VersionIndex, versions: ModelVersions,
           health: InputHealth | None = None) -> dict[str, Any]:
    policy = versions.promotions.get(live.key)
    return {**live.describe(), **label_health(live.key, health), "snapshots": len(index.snapshots),
            "gate_reference": index.reference,
            "latest_snapshot": index.snapshots[-1].version if index.snapshots else None,
            # each challenger's sign-test z against the champion over the current window (> 0: it is better)
            "promotion_z": {name: policy.z_of(name) for name in live.challengers} if policy else {},
            # each challenger's window: examples compared, where it did better, where the champion did
            "promotion_windows": policy.windows(live.challengers) if policy else {}}


def label_health(key: str, health: InputHealth | None) -> dict[str, Any]:
    """``{"labels": ..., "alerts": [...]}``: the key's label health and recent alerts on its owner."""
    return health.describe(key, time.time()) if health is not None else {}


def versions_of(live: LiveModel | None, index: VersionIndex) -> dict[str, Any]:
    """Every version of a model: the snapshots, newest last, and the live one."""
    return {"model": index.model, "live": None if live is None else live.describe(),
            "snapshots": [s.to_json() for s in index.snapshots], "gate_reference": index.reference}
