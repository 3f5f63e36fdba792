"""What every fine-tuning method is: a set of options, an injection into a frozen backbone, and a head."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UserError


@dataclasses.dataclass
class Method:
    """Base class: the backbone stays frozen and only a linear head on the pooled feature trains.

    Subclasses are dataclasses whose fields are the method's options (with defaults). Every check an option
    allows without the model belongs in :meth:`__post_init__` (extend it, calling ``super().__post_init__()``
    first, and raise :func:`option_error`), so a mistake fails when the method is constructed; fields with a fixed
    set of values list them in ``field(metadata={"choices": ...})``, lower bounds in ``metadata={"min": ...}``.
    Subclasses override :meth:`inject` to add or unfreeze parameters and, where the head differs,
    :meth:`make_head`; the hooks :meth:`frozen_stages`, :meth:`init_from_data`, :meth:`after_load`,
    :meth:`token_maps` and :meth:`prepare_export` let evaluation, training, checkpoints, analysis and export ask the
    method without knowing it.
    """

    name: ClassVar[str] = ""
    #: whether the method is a whole segmenter of its own (:meth:`standalone`), not a method on a backbone
    standalone_segmenter: ClassVar[bool] = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            _check_type(self.full_name, field.name, value, hints[field.name])
            choices = field.metadata.get("choices")
            if choices and value not in choices:
                raise self.option_error(field.name, f"is not one of {list(choices)}")
            low = field.metadata.get("min")
            if low is not None and value is not None and value < low:
                raise self.option_error(field.name, f"must be at least {low}")

    @property
    def full_name(self) -> str:
        """The name ``build_model`` takes for this method (``peft:<tuner>`` for the peft wrapper)."""
        return self.name

    def option_error(self, option: str, problem: str) -> UserError:
        """The one-line error for a bad option value: ``method 'lora': option r=0 must be at least 1``."""
        return UserError(f"method {self.full_name!r}: option {option}={getattr(self, option)!r} {problem}")

    def inject(self, backbone: nn.Module) -> None:
        """Add this method's modules to the frozen ``backbone`` in place and unfreeze what it trains. Where the
        backbone keeps things (blocks, attention, MLP branch, prefix tokens) is asked of its family
        (:func:`medpeft.families.family_of`), never of its class."""

    def make_head(self, in_features: int, num_classes: int) -> nn.Module:
        """The classifier on the pooled feature: ``nn.Linear`` initialised N(0, 0.01²), bias 0 (as mmcls)."""
        return linear_head(in_features, num_classes)

    def frozen_stages(self, backbone: nn.Module) -> int:
        """How many leading stages compute exactly what the frozen backbone computes (so evaluation may cache their
        output): stage i < depth is block i, stage depth the final norm and pooling. None here."""
        return 0

    def init_from_data(self, model: nn.Module, images: torch.Tensor) -> None:
        """Called by training once, with the first training batch, before the first step (data-dependent inits)."""

    def after_load(self, model: nn.Module) -> None:
        """Called after trained tensors were loaded into ``model`` (data-dependent inits are then done)."""

    def token_maps(self, model: nn.Module) -> TokenMaps | None:
        """Per-token quantities the analysis draws over the patch grid (e.g. EPT's patch-wise scaling); None here."""
        return None

    def prompt_mass(self, model: nn.Module) -> dict[int, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]]:
        """Per block whose attention logits carry a prompt: ``(module, fn)``, where ``fn(module_input)`` gives the
        share of each attention row's softmax mass that the prompt's columns take (B, heads, tokens); {} here."""
        return {}

    def prepare_export(self, model: nn.Module) -> None:
        """Called on a loaded model about to be exported to ONNX (never trained again): rewrite in place what the
        exporter cannot trace as plain operations computing the same function (fold weight updates into the
        frozen weights, swap a fused kernel for explicit operations). Nothing here."""

    def standalone(self, num_classes: int) -> nn.Module | None:
        """A whole segmenter of the method's own ((B, 3, S, S) images → (B, C, S, S) logits, every weight trained)
        in place of a backbone and head; None here: the method works on a backbone."""
        return None

    def options(self) -> dict[str, Any]:
        """The resolved options, JSON-ready."""
        return dataclasses.asdict(self)


@dataclass
class TokenMaps:
    """A per-token quantity of a method, per block: ``probes[i] = (module, fn)``, where ``fn(module_input)`` gives
    (B, N) values for the module's input batch (one per image and token, CLS and prefix tokens first)."""

    name: str
    title: str
    probes: dict[int, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]]


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
        if origin in (bool, str, dict) and isinstance(value, origin):
            return
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise UserError(f"method {method!r}: option {option}={value!r} should be {names}")
