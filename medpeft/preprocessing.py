"""What a backbone expects of its input, read from where its weights came from: :class:`Preprocessing`.

A foundation model is trained on images normalised with its own mean and std (CLIP's, SigLIP's 0.5, a chest X-ray
set's), at its own resolution. These travel with the weights: Hugging Face ``preprocessor_config.json``, open_clip's
``preprocess_cfg``, timm's ``pretrained_cfg``. The run records them, trains and predicts with them, keys its
feature cache on them and writes them into the exported ONNX graph; ``--mean/--std`` override them (recorded too).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's and transformers' CLIP defaults
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: PIL's resampling codes, as Hugging Face image processors store them
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class Preprocessing:
    """Per-channel ``mean`` and ``std`` (of pixel values scaled to [0, 1]), the resolution ``img_size`` and resize
    ``interpolation`` the weights were trained with (None where the source does not say), ``source`` (where these
    were read: a file, a timm tag, or the default) and ``overridden`` (the mean/std came from ``--mean/--std``)."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    img_size: int | None = None
    interpolation: str | None = None
    source: str = "default (ImageNet statistics)"
    overridden: bool = False

    def __post_init__(self):
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        if min(self.std) <= 0:
            raise UserError(f"std {list(self.std)} of {self.source}: every value must be positive")

    def override(self, mean=None, std=None) -> Preprocessing:
        """These settings with ``mean`` and/or ``std`` replaced (``--mean/--std``); unchanged when both are None."""
        if mean is None and std is None:
            return self
        return dataclasses.replace(
            self, mean=self.mean if mean is None else mean, std=self.std if std is None else std, overridden=True
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        return cls(**values)


def _triple(values, what: str) -> tuple[float, float, float]:
    """Three floats: one value per RGB channel (a single value, as grey-scale configs give it, is repeated)."""
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise UserError(f"{what} {values}: expected 3 values (R, G, B) or 1")
    return tuple(values)


def from_hf_processor(config: dict[str, Any], source: str) -> Preprocessing:
    """A Hugging Face image processor's ``preprocessor_config.json``: ``image_mean``, ``image_std``, the crop (or
    resize) size and PIL ``resample`` code. A processor that does not normalise reads as mean 0, std 1."""
    normalise = config.get("do_normalize", True)
    mean = config.get("image_mean", IMAGENET_MEAN) if normalise else (0.0, 0.0, 0.0)
    std = config.get("image_std", IMAGENET_STD) if normalise else (1.0, 1.0, 1.0)
    size = config.get("crop_size") if config.get("do_center_crop") else config.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    resample = config.get("resample")
    return Preprocessing(mean, std, int(size) if size else None, PIL_RESAMPLE.get(resample, resample), source)


def from_open_clip(config: dict[str, Any], source: str) -> Preprocessing:
    """An ``open_clip_config.json``: ``preprocess_cfg`` (mean, std, interpolation; open_clip's defaults are OpenAI
    CLIP's statistics, bicubic) and the vision tower's ``image_size``."""
    pre = config.get("preprocess_cfg") or {}
    size = (config.get("model_cfg") or {}).get("vision_cfg", {}).get("image_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    return Preprocessing(
        pre.get("mean", OPENAI_CLIP_MEAN),
        pre.get("std", OPENAI_CLIP_STD),
        size,
        pre.get("interpolation", "bicubic"),
        source,
    )


def from_timm_cfg(cfg: dict[str, Any], source: str) -> Preprocessing:
    """A timm ``pretrained_cfg``: ``mean``, ``std``, ``input_size`` (C, H, W) and ``interpolation``."""
    size = cfg.get("input_size")
    return Preprocessing(
        cfg.get("mean", IMAGENET_MEAN),
        cfg.get("std", IMAGENET_STD),
        int(size[-1]) if size else None,
        cfg.get("interpolation"),
        source,
    )
