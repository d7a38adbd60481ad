"""A key's live model, as the agents ask for it (the registry of the partitions this worker owns)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from streamlearn import models
from streamlearn.core.registry import ModelRegistry
from streamlearn.models import LiveModel, Spec

from ..codec import MODEL_ERROR, SPEC_MISMATCH, Rejected
from ..deadletter import Counters
from .loop import agent_log


class LiveModels:
    """The live models of a worker's partitions: found, made from their spec (``spec_for`` a key, or the one an
    event asks for among ``specs``), and run so that River's errors become rejections."""

    def __init__(self, registry: ModelRegistry, spec_for: Callable[[str], Spec], specs: Mapping[str, Spec],
                 metrics: Counters) -> None:
        self.registry = registry
        self.spec_for = spec_for
        self.specs = specs
        self.metrics = metrics

    def get(self, partition: int, key: str) -> LiveModel:
        """The key's live model, made from its spec if it has none yet."""
        return self.registry.get(partition, key) or self.registry.get_or_create(partition, key, self.spec_for(key))

    def for_event(self, partition: int, key: str, requested: str | None, event_id: str) -> LiveModel:
        """The model an event asks for: refused when it asks for another spec than the key's model is."""
        live = self.registry.get(partition, key)
        if live is None:
            spec = self.specs[requested] if requested else self.spec_for(key)
            return self.registry.get_or_create(partition, key, spec)
        if requested is not None and requested != live.spec.name:
            raise Rejected(SPEC_MISMATCH, f"model {key!r} is a {live.spec.name!r}, "
                                          f"the event asks for {requested!r}", event_id)
        return live

    def spec_of(self, partition: int, key: str) -> Spec:
        """The spec of the key's model (its live model's, else the one it would be made from)."""
        live = self.registry.get(partition, key)
        return live.spec if live is not None else self.spec_for(key)

    def predict(self, live: LiveModel, features: dict[str, Any], event_id: str) -> models.Prediction:
        """The model's answer; River's exception becomes a rejection (``model_error``), not a crash."""
        try:
            return models.predict(live, features)
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the agent
            self.model_failed("predict", event_id)
            raise Rejected(MODEL_ERROR, f"predict failed: {type(exc).__name__}: {exc}", event_id) from None

    def model_failed(self, step: str, event_id: str, exc: BaseException | None = None) -> None:
        """Count and log River's failure of one step on one event."""
        self.metrics.error(step)
        agent_log().error("model %s failed on event_id=%s", step, event_id,
                          exc_info=exc if exc is not None else True)
