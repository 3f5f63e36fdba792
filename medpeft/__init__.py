"""medpeft: parameter-efficient fine-tuning of vision foundation models for few-shot medical image classification."""

from .errors import UserError
from .methods import available_methods
from .model import PeftClassifier, build_model, count_parameters, load_trainable, save_trainable
from .version import __version__

__all__ = [
    "PeftClassifier",
    "UserError",
    "__version__",
    "available_methods",
    "build_model",
    "count_parameters",
    "load_trainable",
    "save_trainable",
]
