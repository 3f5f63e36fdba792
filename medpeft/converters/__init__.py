"""Checkpoints of foundation models in their own formats, read as timm ViT weights with their architecture and
preprocessing: :func:`read_checkpoint`.

A folder is read by its config: ``config.json`` of ``transformers`` (:mod:`.transformers_vit`) or of a timm hub
model (``architecture``, ``model_args``, ``pretrained_cfg``), or ``open_clip_config.json`` (an OpenAI-layout visual
tower or a timm trunk). A single file (``.safetensors``, ``.pth``/``.bin``/…) holds no config: its layout is read
from its keys (timm's converters, :mod:`.timm_layout`: OpenAI CLIP, ``visual.trunk.``, DINOv2's original layout,
MAE/RETFound's ``model`` dict) and its architecture, as far as they tell it, from its tensor shapes; the named
backbone supplies the rest (heads, activation). The architecture is never guessed from a file name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ParameterError, UserError
from ..preprocessing import Preprocessing, from_hf_processor, from_open_clip, from_timm_cfg
from .architecture import Architecture
from .timm_layout import shape_facts, to_timm_layout

#: Weight files looked for in a folder, in this order.
WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
    "model.pth",
    "checkpoint.pth",
)
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


@dataclass
class Checkpoint:
    """A checkpoint read as timm ViT tensors: ``state`` (timm keys), the ``layout`` it came in (in words),
    ``arch`` (what it says of its architecture; ``complete`` when a config said all of it, and then ``base`` is the
    timm model it is built on and ``img_size`` its resolution) and the ``preprocessing`` its config states (None
    for a bare file)."""

    path: Path
    state: dict[str, torch.Tensor]
    layout: str
    arch: Architecture
    complete: bool = False
    base: str | None = None
    img_size: int | None = None
    preprocessing: Preprocessing | None = None

    @property
    def is_vit(self) -> bool:
        return self.arch.embed_dim is not None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at ``path`` (a folder with a config, or one weight file); one-line errors for what is not."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    state = read_state(path)
    state, layout = to_timm_layout(state)
    return Checkpoint(path, state, layout, shape_facts(state))


EXPECTED_FORMATS = "a PyTorch state dict (.pth/.pt/.bin/.ckpt), a safetensors file or a Google ViT .npz"


def sniff(path: Path) -> str:
    """What a file looks like from its first bytes, in words."""
    head = path.open("rb").read(64)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive that is not one of these (or is damaged)"
    if head[:1] == b"\x80":
        return "a Python pickle that holds no tensors (or is damaged)"
    if len(head) > 8 and head[8:9] == b"{":
        return "a damaged safetensors file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"{path.stat().st_size:,} bytes of unknown binary data"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"text starting {first[:30]!r}"


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one weight file (``model``/``state_dict`` dicts unwrapped by timm's reader)."""
    import timm

    if not path.is_file():
        raise UserError(f"weights file {path} not found")
    if path.suffix not in FILE_SUFFIXES:
        raise UserError(
            f"weights file {path}: unknown format {path.suffix!r}, expected one of "
            f"{FILE_SUFFIXES + ('.npz',)} or a folder with a config.json"
        )
    try:
        return timm.models.load_state_dict(str(path))
    except Exception as err:  # corrupt or foreign file: say what was expected and what is there
        raise UserError(
            f"cannot read weights file {path}: expected {EXPECTED_FORMATS}, found {sniff(path)} ({type(err).__name__})"
        ) from err


def _read_folder(folder: Path) -> Checkpoint:
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise UserError(
            f"weights folder {folder} holds none of {', '.join(WEIGHT_FILES)} (sharded checkpoints "
            "are not read: save the model as one file)"
        )
    if (folder / "open_clip_config.json").is_file():
        return _open_clip(folder, weights, _json(folder / "open_clip_config.json"))
    if not (folder / "config.json").is_file():
        raise ParameterError(
            "weights",
            "weights folder {folder} has no config.json or open_clip_config.json: pass the weight file ({file}) "
            "itself, with {backbone} naming its architecture",
            folder=folder,
            file=weights.name,
        )
    config = _json(folder / "config.json")
    if "architecture" in config:
        return _timm_hub(folder, weights, config)
    from . import transformers_vit

    state, arch, img_size, base = transformers_vit.convert(read_state(weights), config, str(folder))
    processor = folder / "preprocessor_config.json"
    preprocessing = from_hf_processor(_json(processor), str(processor)) if processor.is_file() else None
    kind = transformers_vit.vision_config(config).get("model_type")
    return Checkpoint(folder, state, f"transformers {kind}", arch, True, base, img_size, preprocessing)


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({err})") from None


def _timm_hub(folder: Path, weights: Path, config: dict[str, Any]) -> Checkpoint:
    """A timm hub model folder: ``architecture`` and its ``model_args`` (the plain values; a layer class, which a
    JSON file cannot hold, is read from the tensor shapes), with ``pretrained_cfg``'s preprocessing."""
    import timm

    base = config["architecture"]
    if not timm.is_model(base):
        raise UserError(f"{folder / 'config.json'}: architecture {base!r} is not a timm model")
    size = (config.get("model_args") or {}).get("img_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    args = {
        k: v
        for k, v in (config.get("model_args") or {}).items()
        if (isinstance(v, (int, float, bool)) or k == "global_pool") and k not in ("num_classes", "pretrained")
    }
    state, layout = to_timm_layout(read_state(weights))
    with torch.device("meta"):
        named = timm.create_model(base, pretrained=False, num_classes=0, **args)
    if type(named).__name__ != "VisionTransformer":
        return Checkpoint(
            folder,
            state,
            f"timm {base}",
            Architecture(),
            False,
            base,
            preprocessing=from_timm_cfg(config.get("pretrained_cfg") or {}, str(folder / "config.json")),
        )
    arch = Architecture(**{**Architecture.of_model(named).known(), **shape_facts(state).known()})
    cfg = config.get("pretrained_cfg") or {}
    size = size or (cfg.get("input_size") or [None])[-1]
    return Checkpoint(
        folder, state, f"timm {base}", arch, True, base, size, from_timm_cfg(cfg, str(folder / "config.json"))
    )


def _open_clip(folder: Path, weights: Path, config: dict[str, Any]) -> Checkpoint:
    """An open_clip model: its ``model_cfg.vision_cfg`` says the tower (a timm trunk by name, or OpenAI's layout:
    width, layers, patch size, head width, MLP ratio, QuickGELU)."""
    import timm

    vision = (config.get("model_cfg") or {}).get("vision_cfg") or {}
    state, layout = to_timm_layout(read_state(weights))
    facts = shape_facts(state)
    size = vision.get("image_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    name = str(folder / "open_clip_config.json")
    if vision.get("timm_model_name"):
        base = vision["timm_model_name"]
        with torch.device("meta"):
            trunk = timm.create_model(base, pretrained=False, num_classes=0)
        arch = Architecture(**{**Architecture.of_model(trunk).known(), **facts.known()})
    else:
        if not facts.embed_dim:
            raise UserError(f"{weights}: no OpenAI-layout visual tower (visual.class_embedding, visual.conv1) in it")
        quick = (config.get("model_cfg") or {}).get("quick_gelu", False)
        base = "vit_base_patch16_clip_quickgelu_224" if quick else "vit_base_patch16_clip_224"
        arch = Architecture(
            **{
                **facts.known(),
                "num_heads": facts.embed_dim // vision.get("head_width", 64),
                "act": "quick_gelu" if quick else "gelu",
                "norm_eps": 1e-5,
                "global_pool": "token",
                "fc_norm": False,
            }
        )
    return Checkpoint(folder, state, f"open_clip ({layout})", arch, True, base, size, from_open_clip(config, name))
