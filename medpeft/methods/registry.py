"""The method registry: every method registers its class under its name; ``build_model`` asks for it by name."""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` buildable by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    """Every method name ``build_model`` accepts on a backbone, own methods first, then the ``peft:<tuner>`` ones
    (the whole segmenters of :func:`standalone_methods` aside)."""
    from .hf_peft import PEFT_TUNERS

    return [n for n, c in _REGISTRY.items() if not c.standalone_segmenter] + [f"peft:{t}" for t in PEFT_TUNERS]


def standalone_methods() -> list[str]:
    """The methods that are a whole segmenter of their own (segmentation tasks only, e.g. ``unet``)."""
    return [n for n, c in _REGISTRY.items() if c.standalone_segmenter]


def get_method(name: str, **options: Any) -> Method:
    """The method ``name`` configured with ``options``; one-line errors for unknown names or options."""
    if name.startswith("peft:"):
        from .hf_peft import HFPeft

        return HFPeft(tuner=name.split(":", 1)[1], config=options)
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r}: choose from {', '.join(available_methods() + standalone_methods())}")
    cls = _REGISTRY[name]
    try:
        return cls(**options)
    except TypeError:
        valid = [f.name for f in cls.__dataclass_fields__.values()]
        unknown = sorted(set(options) - set(valid))
        raise UserError(f"method {name!r}: unknown option(s) {unknown}; valid options: {valid or 'none'}") from None
