"""medpeft: parameter-efficient fine-tuning of vision foundation models for few-shot medical image classification."""

from .errors import UserError
from .methods import available_methods
from .model import PeftClassifier, build_model, count_parameters, load_trainable, save_trainable

__version__ = "0.1.0"

__all__ = [
    "PeftClassifier",
    "UserError",
    "available_methods",
    "build_model",
    "count_parameters",
    "load_trainable",
    "save_trainable",
]
