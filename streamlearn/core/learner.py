"""Learning one training example: skip it, or learn it and say what learning it changed.

The training topic is each model's write-ahead log, and a live model's
``offset`` is the last training message it learned (its checkpoint records
it). Given a live model and an example of the training message at
``offset``, ``learn_example`` decides and does the step; the shell carries
out the outcome (metrics, dead letters, the new live model, the audit, the
checkpoint policy). The invariants:

1. A training message at or below the model's offset is inside its
   checkpoint: its examples for that model are skipped (``Replayed``). A
   checkpoint covers whole messages, so this is decided once per model per
   message (``inside``), not per example.
2. A model learns an event once: an example of an event it learned already
   (a label sent again after a crash) is ``Repeated``.
3. The model's offset moves to the message whether its example was learned
   or failed (``Failed``: dead-lettered, never retried).
4. After learning, the model's versions decide (``ModelVersions.learned``:
   the quality gate, the promotion policy, the snapshot cadence); a change
   comes back with the outcome, and a new live model when a rollback or a
   promotion replaced the one that learned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, MutableMapping, Protocol, Union

from streamlearn.models import LiveModel, learn

from .messages import MODEL_ERROR, Example, Rejected


class Versions(Protocol):
    def learned(self, live: LiveModel, x: dict[str, Any], y: Any, y_pred: Any,
                shadow: Mapping[str, Any] | None = None) -> tuple[LiveModel | None, list]: ...


@dataclass(frozen=True, slots=True)
class Replayed:
    """The message is inside the model's checkpoint: nothing learned."""


@dataclass(frozen=True, slots=True)
class Repeated:
    """The model learned this event already: nothing learned."""


@dataclass(frozen=True, slots=True)
class Failed:
    """River failed on the example: refuse it (``rejected``); ``error`` is what River raised."""

    rejected: Rejected
    error: BaseException


@dataclass(frozen=True, slots=True)
class Learned:
    """Learned; ``correct``: whether the model's prediction before learning was right (None: a regressor, or
    no prediction yet). ``changes``: version changes it caused; ``new``: the live model that replaced it."""

    correct: bool | None
    changes: list = field(default_factory=list)
    new: LiveModel | None = None


Outcome = Union[Replayed, Repeated, Failed, Learned]
REPLAYED, REPEATED = Replayed(), Repeated()


def learn_example(live: LiveModel, example: Example, offset: int, inside: MutableMapping[str, bool],
                  versions: Versions) -> Outcome:
    """Learn ``example`` of the training message at ``offset`` (``inside``: per model, whether this message is
    inside its checkpoint, filled in on the model's first example of the message)."""
    if inside.setdefault(example.model, offset <= live.offset):
        return REPLAYED
    try:
        scored = learn(live, example.features, example.label, example.event_id)
    except Exception as exc:  # noqa: BLE001 - River's error on one example must not stop the others
        return Failed(Rejected(MODEL_ERROR, f"learn failed: {type(exc).__name__}: {exc}", example.event_id), exc)
    finally:
        live.offset = offset
    if scored is None:
        return REPEATED
    new, changes = versions.learned(live, example.features, example.label, scored.y_pred, scored.shadow)
    return Learned(scored.correct, changes, new)
