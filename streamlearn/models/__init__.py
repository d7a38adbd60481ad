"""The River side: model specs, live model state, predict and learn. No Kafka here."""

from .specs import CLASSIFICATION, REGRESSION, SPECS, Spec, UnknownSpec, get_spec
from .state import LiveModel, ModelRegistry, Prediction, Scored, learn, new_model, predict

__all__ = [
    "CLASSIFICATION",
    "REGRESSION",
    "SPECS",
    "LiveModel",
    "ModelRegistry",
    "Prediction",
    "Scored",
    "Spec",
    "UnknownSpec",
    "get_spec",
    "learn",
    "new_model",
    "predict",
]
