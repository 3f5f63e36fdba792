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
    """Every method name ``build_model`` accepts, own methods first, then the ``peft:<tuner>`` ones."""
    from .hf_peft import PEFT_TUNERS

    return list(_REGISTRY) + [f"peft:{t}" for t in PEFT_TUNERS]


def get_method(name: str, **options: Any) -> Method:
    """The method ``name`` configured with ``options``; one-line errors for unknown names or options."""
    if name.startswith("peft:"):
        from .hf_peft import HFPeft

        return HFPeft(tuner=name.split(":", 1)[1], config=options)
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r}: choose from {', '.join(available_methods())}")
    cls = _REGISTRY[name]
    try:
        return cls(**options)
    except TypeError:
        valid = [f.name for f in cls.__dataclass_fields__.values()]
        unknown = sorted(set(options) - set(valid))
        raise UserError(f"method {name!r}: unknown option(s) {unknown}; valid options: {valid or 'none'}") from None
