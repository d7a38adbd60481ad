"""The messages the pipeline decides on, as typed values, and why one is refused.

Kafka bytes become these in ``streamlearn.streams.codec`` (and only there);
the decisions of ``streamlearn.core`` take and return them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Reasons a message is rejected: stable words, used as metric labels.
OVERSIZED = "oversized"
NOT_JSON = "not_json"
NON_FINITE = "non_finite_number"
NOT_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
BAD_KEY = "bad_key"
UNKNOWN_SPEC = "unknown_spec"
SPEC_MISMATCH = "spec_mismatch"
BAD_LABEL = "bad_label"
UNKNOWN_EVENT = "unknown_event"
EXPIRED_EVENT = "expired_event"
LATE_LABEL = "late_label"   # the event learned its default label (no label came within the rule's wait)
MODEL_ERROR = "model_error"
INTERNAL_ERROR = "internal_error"
UNKNOWN_COMMAND = "unknown_command"
UNKNOWN_MODEL = "unknown_model"
EXPIRED_COMMAND = "expired"
UNAUTHENTICATED = "unauthenticated"


class Rejected(Exception):
    """A message we will not process, and why."""

    def __init__(self, reason: str, detail: str, event_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.event_id = event_id


@dataclass(slots=True)
class FeatureEvent:
    event_id: str
    model: str
    features: dict[str, Any]
    ts: float | None = None
    spec: str | None = None


@dataclass(slots=True)
class Label:
    event_id: str
    model: str
    label: Any
    features: dict[str, Any] | None = None
    ts: float | None = None


@dataclass(slots=True)
class Example:
    """A training example: an event's features joined with its label.

    ``origin`` is where its label was first consumed (topic, partition, offset
    of the producer's message), for tracing a repeat to its source.
    """

    event_id: str
    model: str
    features: dict[str, Any]
    label: Any
    ts: float | None = None
    origin: list | None = None
