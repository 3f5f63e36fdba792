"""What every fine-tuning method is: a set of options, an injection into a frozen backbone, and a head."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..errors import UserError


@dataclasses.dataclass
class Method:
    """Base class: the backbone stays frozen and only a linear head on the pooled CLS feature trains.

    Subclasses are dataclasses whose fields are the method's options (with defaults); they override
    :meth:`inject` to add or unfreeze parameters and, where the head differs, :meth:`make_head`.
    Fields that accept a fixed set of values list them in ``field(metadata={"choices": ...})``.
    """

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            _check_type(self.name, field.name, value, hints[field.name])
            choices = field.metadata.get("choices")
            if choices and value not in choices:
                raise UserError(f"method {self.name!r}: option {field.name}={value!r} is not one of {list(choices)}")

    def inject(self, backbone: VisionTransformer) -> None:
        """Add this method's modules to the frozen ``backbone`` in place and unfreeze what it trains."""

    def make_head(self, in_features: int, num_classes: int) -> nn.Module:
        """The classifier on the pooled feature: ``nn.Linear`` initialised N(0, 0.01²), bias 0 (as mmcls)."""
        return linear_head(in_features, num_classes)

    def options(self) -> dict[str, Any]:
        """The resolved options, JSON-ready."""
        return dataclasses.asdict(self)


def linear_head(in_features: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(in_features, num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def _check_type(method: str, option: str, value: Any, hint: Any) -> None:
    """Reject an option value of the wrong type with a one-line error (ints are accepted where floats are)."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for tp in allowed:
        if tp is type(None) and value is None:
            return
        origin = typing.get_origin(tp) or tp
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if origin is list and isinstance(value, (list, tuple)):
            (item,) = typing.get_args(tp) or (object,)
            if all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                return
        if origin in (bool, str) and isinstance(value, origin):
            return
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise UserError(f"method {method!r}: option {option}={value!r} should be {names}")
