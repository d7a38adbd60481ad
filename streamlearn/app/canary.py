"""Canary promotion, run by the worker owning partition 0: promote a spec on a share of keys, widen, or undo.

``streamlearn models canary SPEC --keys PATTERN --share 0.1`` writes a new
canary on the canaries' topic; ``streamlearn models canary status`` reads it
back. The controller is whichever worker owns partition 0 of the internal
topics: every ``CANARY_CHECK_SECONDS`` it takes what the topic gained (read
in full when it takes charge), and
for each running canary promotes the keys its step takes in (signed
``promote`` commands, audited, by ``canary:<id>``), reads the paired test
since each promotion from the cluster's model list (``GET /models`` with
each key's promotion windows: one request per worker, whatever the number
of keys), and acts on
``core.canary.judge``: widen, finish, or send every key back (a ``rollback``
to the replaced champion, which went on learning as a challenger). Every
change is written to the topic before the next action, so a new controller
(after a restart or a rebalance) goes on from it; a command it repeats is
refused or changes nothing (a key already promoted is skipped, a key already
back is left alone).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from streamlearn.core.canary import (DONE, FAILED, ROLLED_BACK, ROLLING_BACK, RUNNING, Canary, Member, Window,
                                     judge, steps_from)
from streamlearn.streams import codec
from streamlearn.streams.canary import CanaryLog

from .control import TIMEOUT, ControlClient

if TYPE_CHECKING:
    from .settings import Settings
    from .worker import Worker

log = logging.getLogger("streamlearn.canary")

PARALLEL = 32                 # commands in flight at once (a step of 100,000 keys is 100,000 commands)
RETRY = (TIMEOUT, "expired")   # the owner did not answer in time: asked again at the next check


def log_of(s: Settings) -> CanaryLog:
    from streamlearn.streams.topics import TopicNames

    return CanaryLog(s.bootstrap_servers, TopicNames.with_prefix(s.topic_prefix).canaries, s.command_key,
                     s.kafka_options)


class Controller:
    """Drives the canaries while ``in_charge()``; ``check()`` once per ``CANARY_CHECK_SECONDS``."""

    def __init__(self, s: Settings, canaries: CanaryLog, control: ControlClient,
                 models: Callable[[], Awaitable[list[dict[str, Any]]]], audit: Callable[[Canary, str, str], None],
                 in_charge: Callable[[], bool]) -> None:
        self.s = s
        self.log = canaries
        self.control = control
        self.models = models          # the cluster's models, with their promotion windows (GET /models)
        self.audit = audit            # (canary, action, reason): a record on the audit topic
        self.in_charge = in_charge
        self.canaries: dict[str, Canary] | None = None   # None: not in charge (read again on taking over)

    async def check(self) -> None:
        if not self.in_charge():
            if self.canaries is not None:
                self.canaries = None
                await self.log.unfollow()
            return
        found = await self.log.follow()
        if self.canaries is None:
            self.canaries = {}
        for cid, c in found.items():        # new canaries; and what another controller wrote meanwhile
            mine = self.canaries.get(cid)
            if mine is None or c.updated_at > mine.updated_at:
                self.canaries[cid] = c
        for c in list(self.canaries.values()):
            if c.status == RUNNING:
                await self._run(c)
            if c.status == ROLLING_BACK:
                await self._roll_back(c)

    async def _save(self, c: Canary) -> None:
        c.updated_at = time.time()
        await self.log.write(c)

    async def _calls(self, command: str, keys: list[str], **kwargs: Any) -> dict[str, dict[str, Any]]:
        """``command`` on each key, ``PARALLEL`` at a time: the answers by key."""
        limit = asyncio.Semaphore(PARALLEL)

        async def one(key: str) -> tuple[str, dict[str, Any]]:
            async with limit:
                return key, await self.control.call(command, key, timeout=self.s.command_timeout_seconds, **kwargs)

        return dict(await asyncio.gather(*(one(k) for k in keys)))

    async def _listed(self, c: Canary) -> dict[str, dict[str, Any]]:
        """The cluster's models by key; a key this step deals with that its owner lists from its checkpoint
        only (no challengers shown: not loaded since a restart or a rebalance) as its ``status`` shows it."""
        models = {m["model"]: m for m in await self.models()}
        unknown = [k for k in {*c.promoting, *c.entering(models)} if k in models and "challengers" not in models[k]]
        for key, r in (await self._calls("status", unknown)).items():
            if r["ok"]:
                models[key] = {**r["result"], "model": key}
        return models

    async def _run(self, c: Canary) -> None:
        by = f"canary:{c.id}"
        models = await self._listed(c)
        before = (len(c.members), len(c.skipped), tuple(c.promoting))
        promote = c.sort_out(models)
        if promote:
            c.promoting += promote
            await self._save(c)          # first: a successor knows these may have been promoted
            reason = f"canary {c.id} step {c.step + 1}/{len(c.steps)}: {c.share:.0%} of {c.pattern}"
            answers = await self._calls("promote", promote, spec=c.spec, by=by, reason=reason)
            c.promoting = [k for k in c.promoting if k not in answers]
            for key, r in answers.items():
                if r["ok"]:
                    replaced = r["result"]["replaced"]
                    c.members[key] = Member(c.step, replaced["version"], replaced["spec"])
                elif r["error"] in RETRY:
                    c.promoting.append(key)      # it may still run: looked at again at the next check
                else:
                    c.skipped[key] = f"{r['error']}: {r['detail']}"
            models = {m["model"]: m for m in await self.models()}
        if before != (len(c.members), len(c.skipped), tuple(c.promoting)):
            await self._save(c)
        windows = {}
        for key in c.promoted():
            m = models.get(key)
            if m is not None:      # the replaced champion's window against the promoted spec, on the key's owner
                window = (m.get("promotion_windows") or {}).get(c.members[key].replaced_spec) or {}
                windows[key] = Window(m["spec"], window.get("examples", 0), window.get("challenger_better", 0),
                                      window.get("champion_better", 0))
        verdict = judge(c, windows, min_examples=self.s.canary_examples, z_threshold=self.s.promote_z_threshold,
                        min_discordant=self.s.promote_min_discordant)
        if verdict.action == "wait":
            if c.detail != verdict.reason:
                c.detail = verdict.reason
                await self._save(c)
            return
        c.record(verdict, time.time())
        c.detail = verdict.reason
        if verdict.action == "widen":
            c.step += 1
            self.audit(c, "canary_widen", f"{verdict.reason}: widened to {c.share:.0%}")
        elif verdict.action == "done" and not c.members:
            c.status = FAILED
            c.detail = (f"no key matching {c.pattern} had a challenger {c.spec} to promote"
                        + (f" ({len(c.skipped)} refused, e.g. {next(iter(c.skipped.values()))})" if c.skipped else ""))
            self.audit(c, "canary_failed", c.detail)
        elif verdict.action == "done":
            c.status = DONE
            self.audit(c, "canary_done", verdict.reason)
        else:
            c.status = ROLLING_BACK
            self.audit(c, "canary_rollback", verdict.reason)
        await self._save(c)

    async def _roll_back(self, c: Canary) -> None:
        """Every key the canary promoted goes back to the champion it replaced (which learned on meanwhile);
        a key whose champion is no longer the canary's spec is left as it is."""
        by, reason = f"canary:{c.id}", f"canary {c.id} rolled back: {c.detail}"
        keys, models = c.promoted(), {m["model"]: m for m in await self.models()}
        back = [k for k in keys if k in models and models[k]["spec"] == c.spec]
        for k in keys:
            if k in models and k not in back:
                c.members[k].state = "went_back"
        for spec in {c.members[k].replaced_spec for k in back}:
            mine = [k for k in back if c.members[k].replaced_spec == spec]
            for key, r in (await self._calls("rollback", mine, spec=spec, by=by, reason=reason)).items():
                if not r["ok"] and r["error"] in ("no_such_challenger", "challenger_failed"):
                    # the replaced champion no longer learns in the shadow: its snapshot, then
                    r = await self.control.call("rollback", key, version=c.members[key].replaced_version, by=by,
                                                reason=reason, timeout=self.s.command_timeout_seconds)
                if r["ok"]:
                    c.members[key].state = "rolled_back"
                elif r["error"] not in RETRY:
                    log.warning("canary %s: key %s could not be rolled back: %s: %s", c.id, key, r["error"],
                                r["detail"])
                    c.members[key].state = f"rollback_failed: {r['error']}"
        if not c.promoted():
            c.status = ROLLED_BACK
            self.audit(c, "canary_rolled_back", f"{len(c.members)} keys back to the champions they had")
        await self._save(c)


def bind(w: Worker, models: Callable[[], Awaitable[list[dict[str, Any]]]]) -> Controller:
    """The worker's canary controller, checking on a timer; in charge while it owns partition 0."""
    s = w.settings

    def audit(c: Canary, action: str, reason: str) -> None:
        log.info("canary %s %s: %s", c.id, action, reason, extra={"canary": c.id, "action": action})
        w.topics.audit.send_soon(key=f"canary:{c.id}".encode(), value=codec.dumps({
            "action": action, "canary": c.id, "spec": c.spec, "pattern": c.pattern, "step": c.step,
            "share": c.share, "keys": c.promoted() if action != "canary_rolled_back" else sorted(c.members),
            "by": f"canary:{c.id}", "reason": reason, "at": time.time()}))

    controller = Controller(s, log_of(s), w.control, models, audit,
                            lambda: 0 in w.ownership.owned and not w.app.rebalancing)

    @w.app.timer(s.canary_check_seconds)
    async def check_canaries() -> None:
        try:
            await controller.check()
        except Exception as exc:  # noqa: BLE001 - Kafka unreachable, a rebalance: checked again next time
            log.warning("canary check failed (again in %gs): %s: %s", s.canary_check_seconds, type(exc).__name__, exc)

    return controller


# ---- the CLI -------------------------------------------------------------------------------------------
def cmd_canary(args: argparse.Namespace, s: Settings) -> int:
    """``models canary SPEC --keys PATTERN --share S`` starts one; ``models canary status`` shows them."""
    import json

    if s.command_key is None:
        print("streamlearn models canary: STREAMLEARN_COMMAND_SECRET is not set: workers follow only signed "
              "canaries", file=sys.stderr)
        return 2
    canaries = log_of(s)
    if args.model in (None, "status"):
        try:
            found = asyncio.run(canaries.read())
        except Exception as exc:  # noqa: BLE001 - Kafka unreachable, topic missing: say so
            print(f"streamlearn models canary status: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        newest = sorted(found.values(), key=lambda c: c.started_at, reverse=True)
        if args.json:
            print(json.dumps([c.to_json() for c in newest], indent=2))
        else:
            print("\n\n".join(describe(c) for c in newest) or "no canaries")
        return 0
    if s.registry.get(args.model) is None:
        print(f"streamlearn models canary: unknown spec {args.model!r} (streamlearn specs list)", file=sys.stderr)
        return 2
    try:
        shares = steps_from(args.share, s.canary_shares)
    except ValueError as exc:
        print(f"streamlearn models canary: {exc}", file=sys.stderr)
        return 2
    now = time.time()
    c = Canary(uuid.uuid4().hex[:12], args.model, args.keys or "*", shares, by=args.by, reason=args.reason or "",
               started_at=now, updated_at=now)

    async def start() -> None:
        try:
            await canaries.write(c)
        finally:
            await canaries.stop()

    try:
        asyncio.run(start())
    except Exception as exc:  # noqa: BLE001
        print(f"streamlearn models canary: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(c.to_json(), indent=2) if args.json else
          f"canary {c.id}: {c.spec} on {', '.join(f'{x:.0%}' for x in shares)} of the keys matching {c.pattern}, "
          f"widened while no worse (streamlearn models canary status)")
    return 0


def describe(c: Canary) -> str:
    """A canary for a terminal: its step, its keys, its verdicts."""
    lines = [f"canary {c.id}: {c.spec} on {c.pattern}, {c.status}, step {c.step + 1}/{len(c.steps)} "
             f"({c.share:.0%}), by {c.by}" + (f": {c.detail}" if c.detail else "")]
    for v in c.verdicts:
        lines.append(f"  step {v['step'] + 1} ({v['share']:.0%}, {v['keys']} keys): {v['action']}: {v['reason']}")
    states: dict[str, list[str]] = {}
    for key, m in sorted(c.members.items()):
        states.setdefault(m.state, []).append(key)
    for state, keys in states.items():
        lines.append(f"  {state} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
    if c.skipped:
        lines.append(f"  not promoted ({len(c.skipped)}): " + "; ".join(f"{k}: {why}" for k, why in
                                                                         list(c.skipped.items())[:5]))
    return "\n".join(lines)


