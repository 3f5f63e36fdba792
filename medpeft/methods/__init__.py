"""The fine-tuning methods and their registry.

Each method is a small dataclass of options (see :class:`Method`) registered under a name with
:func:`register`; ``peft:<tuner>`` names wrap Hugging Face ``peft`` tuners. Adding a method means adding
one module here: the model wrapper and the training loop never change.
"""

from __future__ import annotations

from . import adapter, bitfit, ept, full, linear, lora, mlp, partial, ssf, unet, vp, vpt  # noqa: F401  (registration)
from .base import Method
from .registry import available_methods, get_method, register, standalone_methods

__all__ = ["Method", "available_methods", "get_method", "register", "standalone_methods"]
