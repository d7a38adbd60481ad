"""The River side: model specs, live model state, predict and learn. No Kafka here."""

from .specs import CLASSIFICATION, REGRESSION, SPECS, Spec, SpecError, Specs, UnknownSpec, get_spec, task_of
from .state import (Challenger, LiveModel, Prediction, RecentEvents, Scored, learn, new_model, predict,
                    set_challengers)
from . import versions
from .promotion import PromotionSettings
from .versions import ModelVersions, VersionError, VersionSettings

__all__ = [
    "CLASSIFICATION",
    "Challenger",
    "REGRESSION",
    "SPECS",
    "LiveModel",
    "ModelVersions",
    "VersionError",
    "VersionSettings",
    "Prediction",
    "PromotionSettings",
    "RecentEvents",
    "Scored",
    "Spec",
    "SpecError",
    "Specs",
    "UnknownSpec",
    "get_spec",
    "task_of",
    "learn",
    "new_model",
    "predict",
    "set_challengers",
    "versions",
]
