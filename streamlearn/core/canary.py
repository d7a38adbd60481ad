"""Canary promotion: a challenger spec made champion on a growing share of keys while it does no worse.

A canary promotes ``spec`` on the keys matching ``pattern`` whose
``share_of(canary id, key)`` is below the current step's share (10%, then
25%, 50%, 100%): the share of a key is a hash, so a step's keys are the
previous step's and more, and the same on every worker. Each promoted key's
replaced champion goes on as a challenger, and the promotion policy's paired
test compares the two on every example after the promotion. ``judge``
pools those tests over the canary's keys: if the replaced champions did
significantly better (the sign test's z at least the threshold), every key
goes back; once every promoted key has ``min_examples`` compared examples
and they did not, the canary widens to the next step, and is done after the
last. A key whose champion is no longer the spec (the automatic promotion
took its old champion back, or an operator did) sends them all back too.

Decisions only: the controller (app/canary.py) promotes, rolls back and
keeps the canary's state on its topic.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

STEPS = (0.1, 0.25, 0.5, 1.0)

RUNNING, ROLLING_BACK, ROLLED_BACK, DONE, FAILED = "running", "rolling_back", "rolled_back", "done", "failed"
FINISHED = (ROLLED_BACK, DONE, FAILED)


def share_of(canary_id: str, key: str) -> float:
    """Where ``key`` falls in ``[0, 1)`` for this canary: a key is in a step of share s when this is below s."""
    digest = hashlib.blake2b(f"{canary_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def steps_from(first: float, steps: Iterable[float] = STEPS) -> list[float]:
    """The canary's shares: ``first``, then each of ``steps`` above it, ending at 1.0."""
    if not 0.0 < first <= 1.0:
        raise ValueError(f"the share must be above 0 and at most 1, not {first}")
    shares = [first, *sorted(s for s in set(steps) if first < s < 1.0)]
    return shares if first == 1.0 else [*shares, 1.0]


@dataclass
class Member:
    """A key the canary promoted: at which step, and what it replaced (the version a rollback restores)."""

    step: int
    replaced_version: int
    replaced_spec: str
    state: str = "promoted"      # promoted | rolled_back | went_back (its champion changed by other hands)


@dataclass(frozen=True)
class Window:
    """A promoted key's paired test since its promotion, as its owner reports it."""

    champion: str           # the key's champion spec now
    examples: int           # examples both models were scored on
    replaced_better: int    # of those, where the replaced champion had the smaller error
    promoted_better: int    # ... and where the promoted spec had


@dataclass(frozen=True)
class Verdict:
    action: str             # wait | widen | done | rollback
    reason: str
    z: float = 0.0          # pooled: > 0 when the replaced champions did better
    replaced_better: int = 0
    promoted_better: int = 0
    waiting: tuple[str, ...] = ()


@dataclass
class Canary:
    """One canary: what it promotes where, how far it got, and every step's verdict (JSON on its topic)."""

    id: str
    spec: str
    pattern: str
    steps: list[float]
    by: str = "operator"
    reason: str = ""
    started_at: float = 0.0
    updated_at: float = 0.0
    step: int = 0
    status: str = RUNNING
    detail: str = ""
    members: dict[str, Member] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)      # key -> why the spec was not promoted there
    promoting: list[str] = field(default_factory=list)         # keys being promoted (saved before the commands)
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.steps[self.step]

    def promoted(self) -> list[str]:
        return sorted(k for k, m in self.members.items() if m.state == "promoted")

    def entering(self, keys: Iterable[str]) -> list[str]:
        """Keys of the cluster this step promotes that it has not tried yet."""
        return sorted(k for k in set(keys) if k not in self.members and k not in self.skipped
                      and fnmatch.fnmatchcase(k, self.pattern) and share_of(self.id, k) < self.share)

    def sort_out(self, models: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Of the keys this step takes in (``models``: the cluster's list by key), those to promote now.

        Keys whose champion is already the spec, or that have no challenger of it, are skipped (no command).
        A key left in ``promoting`` (by a controller that stopped mid-step, or a promotion unanswered in time)
        whose champion is now the spec was promoted: it becomes a member, its replaced champion the retired
        challenger; one whose champion is not is tried again; one missing from ``models`` stays undecided."""
        unseen = []
        for key in self.promoting:
            m = models.get(key)
            if m is None:
                unseen.append(key)      # its owner did not answer: still undecided
            elif m.get("spec") == self.spec:
                retired = [c for c in m.get("challengers") or () if c.get("retired_version") is not None]
                if retired:
                    last = max(retired, key=lambda c: c["retired_version"])
                    self.members[key] = Member(self.step, last["retired_version"], last["spec"])
        self.promoting = unseen
        promote = []
        for key in self.entering(models):
            if key in unseen:
                continue
            m = models[key]
            if m.get("spec") == self.spec:
                self.skipped[key] = f"already_champion: {self.spec} was its champion before the canary"
            elif self.spec not in {c.get("spec") for c in m.get("challengers") or ()}:
                self.skipped[key] = f"no_such_challenger: {key} has no challenger {self.spec}"
            else:
                promote.append(key)
        return promote

    def record(self, verdict: Verdict, at: float) -> None:
        self.verdicts.append({"step": self.step, "share": self.share, "action": verdict.action,
                              "reason": verdict.reason, "z": round(verdict.z, 3), "keys": len(self.promoted()),
                              "replaced_better": verdict.replaced_better,
                              "promoted_better": verdict.promoted_better, "at": at})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Canary":
        fields_ = dict(obj)
        fields_["members"] = {k: Member(**m) for k, m in obj.get("members", {}).items()}
        return cls(**fields_)


def judge(canary: Canary, windows: Mapping[str, Window | None], *, min_examples: int, z_threshold: float,
          min_discordant: int) -> Verdict:
    """The verdict on the current step from its promoted keys' ``windows`` (None: its owner did not answer)."""
    if canary.promoting:
        return Verdict("wait", f"the promotion of {_keys(len(canary.promoting))} is not answered yet",
                       waiting=tuple(canary.promoting))
    keys = canary.promoted()
    went_back = [k for k in keys if (w := windows.get(k)) is not None and w.champion != canary.spec]
    if went_back:
        return Verdict("rollback", f"the champion of {', '.join(went_back[:5])} is no longer {canary.spec} "
                                   f"(taken back by the promotion policy or an operator)")
    known = [w for k in keys if (w := windows.get(k)) is not None]
    a, b = sum(w.replaced_better for w in known), sum(w.promoted_better for w in known)
    z = 0.0 if a + b == 0 else (a - b) / math.sqrt(a + b)
    if a + b >= min_discordant and z >= z_threshold:
        return Verdict("rollback", f"the replaced champions did better than {canary.spec} on the canary's "
                                   f"{_keys(len(keys))} (better on {a} examples, worse on {b}, z={z:.1f})",
                       z, a, b)
    waiting = tuple(k for k in keys if (w := windows.get(k)) is None or w.examples < min_examples)
    if waiting:
        return Verdict("wait", f"{len(waiting)} of {len(keys)} keys have fewer than {min_examples} examples "
                               f"compared", z, a, b, waiting)
    last = canary.step == len(canary.steps) - 1
    return Verdict("done" if last else "widen",
                   f"{canary.spec} did no worse on {_keys(len(keys))} at {canary.share:.0%} (better on {b} "
                   f"examples, worse on {a}, z={z:.1f})", z, a, b)


def _keys(n: int) -> str:
    return "1 key" if n == 1 else f"{n} keys"
