"""The join of an event's features with its label: what each arrival decides.

Features and labels travel on different topics, so either may come first,
either may come again (a replay: its input was not committed before a
crash), and a second, different label for an event may come. The join state
of one event is at most two entries, kept by the shell in changelog-backed
tables under the event's key:

- ``Waiting``: the event's features, predicted and waiting for a label; once
  a label came, also the label and where it came from (its *origin*: topic,
  partition, offset of the producer's message). Kept after the join so that
  a replay is told from a duplicate.
- ``Parked``: a label that came before its event's features.

Each function here takes an arrival and the entries as they are, and
returns an outcome: what to write, what to learn, what to refuse and why.
The invariants:

1. An event is learned from one label: the first one joined. Another label
   for it is a ``DuplicateLabel``; the same label again (same origin) is a
   replay, whose example is sent again (the learner learns an event once).
2. A label is never lost while its features may still come: it is parked
   until they come or its time is up; features of an event whose label is
   parked release it.
3. A label is refused as expired when its event's features waited longer
   than ``features_ttl``; an evicted parked label is refused as unknown
   unless its features released it.
4. An event of a key with a default-label rule (``core.defaults``) that got
   no label within the rule's wait learns the rule's label
   (``on_wait_over``); a label that comes after is refused as late.

No I/O and no clock: ``now`` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from .messages import BAD_LABEL, EXPIRED_EVENT, LATE_LABEL, UNKNOWN_EVENT, Example, FeatureEvent, Label, Rejected

Origin = list   # [topic, partition, offset] of the producer's message that carried a label


@dataclass(slots=True)
class Waiting:
    """An event's features, and its label once joined (``origin`` None: no label yet)."""

    features: dict[str, Any]
    written: float = 0.0               # when the features came (its age decides expiry)
    origin: Origin | None = None
    label: Any = None
    label_ts: float | None = None
    released: bool = False             # the label came first and was parked; these features released it
    defaulted: bool = False            # no label came in time: the label is a rule's default (origin: its tick)

    def example(self, event_id: str, model: str) -> Example:
        return Example(event_id, model, self.features, self.label, self.label_ts, self.origin)


@dataclass(slots=True)
class Parked:
    """A label that came before its event's features (``value``: the producer's message, to dead-letter it)."""

    event_id: str
    model: str
    label: Any
    ts: float | None
    origin: Origin
    value: bytes | None
    written: float = 0.0


@dataclass(frozen=True, slots=True)
class Windows:
    """How long join state waits, in seconds."""

    features_ttl: float     # features for their label
    label_ttl: float        # a parked label for its features


# ---- outcomes ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Keep:
    """Nothing to learn yet: write this entry (new, so stamped now) and wait."""

    entry: Waiting | Parked


@dataclass(frozen=True, slots=True)
class Learn:
    """Send this example to the learner, after writing ``entry`` (None: nothing to write, a replay).

    ``restamp``: the entry is new and its age starts now (else it keeps its own).
    """

    example: Example
    entry: Waiting | None = None
    restamp: bool = False


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do: the arrival repeats what the join state has (``why`` says how)."""

    why: str


@dataclass(frozen=True, slots=True)
class DuplicateLabel:
    """A second, different label for an event already labelled: ignored, counted."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """The arrival is refused; dead-letter it with this reason."""

    rejected: Rejected


Outcome = Union[Keep, Learn, Skip, DuplicateLabel, Refuse]

FEATURES_AGAIN = "features again of an event already labelled"
LABEL_WAITS = "the label is parked already, waiting for its features"
LABELLED = "the event has its label, or left the join state"
NOT_YET = "the event's wait is not over"


def expired(entry: Waiting | Parked, ttl: float, now: float) -> bool:
    return now - entry.written > ttl


def on_features(ev: FeatureEvent, waiting: Waiting | None, parked: Parked | None, windows: Windows,
                now: float) -> Outcome:
    """An event's features came (and were answered): keep them for the label, or release a parked one."""
    if waiting is not None and waiting.origin is not None:
        if waiting.released:
            # These features released a parked label and come again (their input was not committed
            # before a crash): the example may not have reached the learner; send it again.
            return Learn(waiting.example(ev.event_id, ev.model))
        return Skip(FEATURES_AGAIN)
    if parked is not None and not expired(parked, windows.label_ttl, now):
        # The parked label stays until evicted (it is then known as released by this entry): were it
        # deleted now, a crash could keep the deletion and lose this entry, with the example unsent.
        entry = Waiting(ev.features, now, parked.origin, parked.label, parked.ts, released=True)
        return Learn(entry.example(ev.event_id, ev.model), entry, restamp=True)
    return Keep(Waiting(ev.features, now))


def on_label(label: Label, origin: Origin, waiting: Waiting | None, parked: Parked | None,
             value: bytes | None, windows: Windows, now: float) -> Outcome:
    """A label came (from ``origin``; ``value``: its message): join it, park it, or refuse it."""
    if waiting is not None and waiting.origin is not None:
        if waiting.defaulted:
            return Refuse(Rejected(LATE_LABEL, f"event {label.event_id!r} got no label within its wait and "
                                               f"learned the default label {waiting.label!r}", label.event_id))
        if waiting.origin != origin:
            return DuplicateLabel()
        return Learn(waiting.example(label.event_id, label.model))     # a replay: send its example again
    if label.features is not None:                                     # the label brings its own features
        entry = Waiting(label.features, now if waiting is None else waiting.written, origin, label.label,
                        label.ts)
        return Learn(entry.example(label.event_id, label.model), entry, restamp=waiting is None)
    if waiting is None:
        if parked is not None:
            return Skip(LABEL_WAITS) if parked.origin == origin else DuplicateLabel()
        return Keep(Parked(label.event_id, label.model, label.label, label.ts, origin, value, now))
    if expired(waiting, windows.features_ttl, now):
        return Refuse(Rejected(EXPIRED_EVENT, f"features of event {label.event_id!r} expired "
                                              f"(older than {windows.features_ttl:g}s)", label.event_id))
    entry = Waiting(waiting.features, waiting.written, origin, label.label, label.ts)
    return Learn(entry.example(label.event_id, label.model), entry)


def on_wait_over(event_id: str, model: str, waiting: Waiting | None, label: Any, wait: float, origin: Origin,
                 now: float) -> Learn | Skip:
    """An event's wait for its label may be over (a tick at ``now``, at ``origin``): learn the default
    ``label`` if no label came. ``Skip(NOT_YET)``: its features came again since, and it waits on."""
    if waiting is None or waiting.origin is not None:
        return Skip(LABELLED)
    if now - waiting.written < wait:
        return Skip(NOT_YET)
    entry = Waiting(waiting.features, waiting.written, origin, label, now, defaulted=True)
    return Learn(entry.example(event_id, model), entry)


def on_parked_evicted(parked: Parked, waiting: Waiting | None, windows: Windows) -> Rejected | None:
    """A parked label leaves the join state: refused as unknown, unless its features came and released it."""
    if waiting is not None and waiting.origin == parked.origin:
        return None
    return Rejected(UNKNOWN_EVENT, f"no features of event {parked.event_id!r} arrived within "
                                   f"{windows.label_ttl:g}s of its label", parked.event_id)


def label_refused(label: Label, is_classifier: bool) -> Rejected | None:
    """Why a label cannot train its model (None: it can): a regressor's label must be a number."""
    y = label.label
    if not is_classifier and (isinstance(y, bool) or not isinstance(y, (int, float))):
        return Rejected(BAD_LABEL, f"model {label.model!r} is a regressor; its label must be a number",
                        label.event_id)
    return None
