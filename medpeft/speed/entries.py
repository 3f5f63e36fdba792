"""What the speed benchmark builds: its entries and targets (``speed.yaml``) and the ``floor`` reference."""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import torch
import yaml
from torch import nn

from ..errors import UserError
from ..families import family_of
from ..model import PeftClassifier, build_model

NUM_CLASSES = 10


@cache
def settings() -> dict:
    """``speed.yaml``: ``entries`` (label → method and options), ``targets`` and ``ratio_references``."""
    return yaml.safe_load((Path(__file__).with_name("speed.yaml")).read_text())


def default_labels() -> list[str]:
    return list(settings()["entries"])


def resolve_label(label: str) -> tuple[str, dict]:
    """(method, options) of an entry label, or of any method name at its defaults."""
    entry = settings()["entries"].get(label)
    if entry is not None:
        return entry["method"], dict(entry.get("options") or {})
    from ..methods import available_methods

    if label in available_methods():
        return label, {}
    raise UserError(
        f"unknown speed entry {label!r}: choose from {', '.join(settings()['entries'])} or any of "
        f"{', '.join(available_methods())}"
    )


class InputShift(nn.Module):
    """The floor's single trainable tensor: a (D,) vector added to every token entering the first block (a forward
    pre-hook, bound to this module so that a deep copy of the model shifts by its own copy)."""

    def __init__(self, first_block: nn.Module, dim: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim))
        first_block.register_forward_pre_hook(self._before)

    def _before(self, module, args):
        return (args[0] + self.shift, *args[1:])


def build_floor(
    backbone: str | nn.Module, num_classes: int = NUM_CLASSES, *, img_size: int | None = None
) -> PeftClassifier:
    """The frozen backbone (fused attention), a frozen head, and one trainable (D,) vector at the blocks' input:
    a forward and a backward through every block and nothing more."""
    model = build_model("linear", backbone, num_classes, pretrained=False, img_size=img_size)
    model.head.requires_grad_(False)
    family = family_of(model.backbone)
    model.backbone.input_shift = InputShift(family.blocks()[0], family.dim(0))
    model.config = dataclasses.replace(model.config, method="floor")
    return model


def build_entry(
    label: str, backbone: str | nn.Module, num_classes: int = NUM_CLASSES, *, img_size: int | None = None
) -> PeftClassifier:
    """The model benchmarked under ``label`` (an entry of ``speed.yaml``, or any method name at its defaults)."""
    method, options = resolve_label(label)
    if method == "floor":
        return build_floor(backbone, num_classes, img_size=img_size)
    return build_model(method, backbone, num_classes, pretrained=False, img_size=img_size, **options)
