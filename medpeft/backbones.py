"""timm backbones (ViT, Swin, EVA, BEiT families): creation, local checkpoints, token count and feature width."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors import safe_open
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .converters import EXPECTED_FORMATS, Checkpoint, read_checkpoint, sniff
from .converters.architecture import Architecture
from .errors import ParameterError, UserError
from .families import family_class, family_of
from .preprocessing import Preprocessing, from_timm_cfg

DEFAULT_BACKBONE = "vit_base_patch16_224.orig_in21k"
#: ``--backbone auto``: the architecture the ``--weights`` checkpoint's config states
AUTO = "auto"


def create_backbone(
    backbone: str | nn.Module = DEFAULT_BACKBONE,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    img_size: int | None = None,
) -> nn.Module:
    """A headless timm model of a supported family (:mod:`medpeft.families`); see :func:`build_backbone`."""
    return build_backbone(backbone, pretrained=pretrained, weights=weights, img_size=img_size)[0]


def build_backbone(
    backbone: str | nn.Module = DEFAULT_BACKBONE,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    img_size: int | None = None,
) -> tuple[nn.Module, Preprocessing]:
    """A headless timm model of a supported family (:mod:`medpeft.families`) and the preprocessing its weights
    expect: by name (a timm model, or a foundation model of :mod:`medpeft.foundation_models`, with hub weights, a
    local checkpoint or random init) or a built model used in place.

    ``weights`` loads a local checkpoint with no network access, whatever the model tag: a Google ``.npz``, a state
    dict (``.pth``/``.pt``/``.bin``/``.ckpt``, ``.safetensors``; timm's keys, OpenAI CLIP's, open_clip's timm trunk,
    DINOv2's original layout, MAE's) or a folder saved by ``transformers``, open_clip or timm
    (:mod:`medpeft.converters`). The checkpoint's architecture, as far as it states it, must be the named one's (a
    one-line error says what differs); ``backbone`` :data:`AUTO` takes it from a checkpoint whose config states it
    all (another checkpoint is read as :data:`DEFAULT_BACKBONE`). ``img_size`` resizes the position embeddings;
    without it a named backbone with ``weights`` is built at the checkpoint's own size (not timm's default: 518 px
    for DINOv2 would resample a 224 px checkpoint's grid and run ~6x slower). The preprocessing is the checkpoint's
    config's, else the timm tag's ``pretrained_cfg`` for pretrained or local weights, else (random init) ImageNet's
    statistics.
    """
    if isinstance(backbone, torch.nn.Module):
        model = backbone
        family_class(model).prepare(model)
        preprocessing = Preprocessing(img_size=int(model.patch_embed.img_size[0]))
        if weights is not None:
            preprocessing = load_weights(model, weights) or preprocessing
    else:
        model, preprocessing = _named_backbone(backbone, pretrained=pretrained, weights=weights, img_size=img_size)
    if model.num_classes:
        model.reset_classifier(0)
    if img_size:
        _check_img_size(model, img_size)
    if img_size and tuple(model.patch_embed.img_size) != (img_size, img_size):
        model.set_input_size(img_size=(img_size, img_size))
    return model, preprocessing


def _named_backbone(
    backbone: str, *, pretrained: bool, weights, img_size: int | None
) -> tuple[nn.Module, Preprocessing]:
    from .foundation_models import fetch, get_foundation_model

    entry = get_foundation_model(backbone)
    if entry is not None and weights is None and pretrained:
        weights = fetch(entry)
    if weights is not None and Path(weights).suffix != ".npz":
        return _from_checkpoint(backbone, read_checkpoint(weights), img_size)
    if backbone == AUTO:
        backbone = DEFAULT_BACKBONE
    name, kwargs = (entry.timm_name, entry.timm_kwargs()) if entry else (backbone, {})
    _check_name(name)
    if img_size:
        kwargs["img_size"] = img_size
    hub = pretrained and weights is None
    try:
        model = timm.create_model(name, pretrained=hub, num_classes=0, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:  # hub unreachable, or no weights under that tag
        if not hub:
            raise
        raise ParameterError(
            "pretrained",
            "cannot fetch pretrained weights for {name!r} ({err}): pass {weights} PATH (a local checkpoint) or "
            "{pretrained=False}",
            name=backbone,
            err=type(err).__name__,
        ) from err
    family_class(model, backbone).prepare(model)
    if weights is not None:
        size = None if img_size else checkpoint_img_size(weights, model)
        if size and (size, size) != tuple(model.patch_embed.img_size):
            model.set_input_size(img_size=(size, size))
        load_weights(model, weights)
    if hub or weights is not None:
        return model, from_timm_cfg(model.pretrained_cfg, f"timm pretrained_cfg of {name}")
    return model, Preprocessing(img_size=int(model.patch_embed.img_size[0]))


def _from_checkpoint(backbone: str, ckpt: Checkpoint, img_size: int | None) -> tuple[nn.Module, Preprocessing]:
    """The named backbone (or, for :data:`AUTO`, the checkpoint's own) with the checkpoint's weights, after checking
    that the checkpoint's architecture is the named one's."""
    from .foundation_models import get_foundation_model

    if backbone == AUTO and not ckpt.complete:  # a bare file: the default backbone, as before there was a choice
        backbone = DEFAULT_BACKBONE
    if backbone == AUTO:
        name, kwargs = ckpt.base, ckpt.arch.timm_kwargs()
    else:
        entry = get_foundation_model(backbone)
        name, kwargs = (entry.timm_name, entry.timm_kwargs()) if entry else (backbone, {})
        _check_name(name)
    named = None
    if ckpt.is_vit:
        with torch.device("meta"):
            named = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    # a bare weight file of another family with ViT-like keys (EVA, BEiT) is checked tensor by tensor by load_state
    if named is not None and (ckpt.complete or isinstance(named, VisionTransformer)):
        if not isinstance(named, VisionTransformer):
            raise ParameterError(
                "backbone",
                "weights {path} ({layout}) hold a {arch}; {backbone} {name} is a {kind}",
                path=ckpt.path,
                layout=ckpt.layout,
                arch=ckpt.arch.describe(),
                name=backbone,
                kind=type(named).__name__,
            )
        differences = ckpt.arch.differences(Architecture.of_model(named))
        if differences:
            raise ParameterError(
                "backbone",
                "weights {path} ({layout}) hold a {arch}, not {backbone} {name}: {differences}",
                path=ckpt.path,
                layout=ckpt.layout,
                arch=ckpt.arch.describe(),
                name=backbone,
                differences="; ".join(differences),
            )
        kwargs = {**kwargs, **ckpt.arch.timm_kwargs()}
    size = img_size or ckpt.img_size
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs, **({"img_size": size} if size else {}))
    family_class(model, backbone).prepare(model)
    if not size:  # a bare file: the size its position embeddings were made at
        pos = ckpt.state.get("pos_embed")
        size = checkpoint_img_size(ckpt.path, model) or _grid_size(None if pos is None else pos.shape[-2], model)
        if size and (size, size) != tuple(model.patch_embed.img_size):
            model.set_input_size(img_size=(size, size))
    load_state(model, ckpt.state, ckpt.path)
    if ckpt.preprocessing is not None:
        return model, ckpt.preprocessing
    entry = get_foundation_model(backbone)
    size = int(model.patch_embed.img_size[0])  # the checkpoint's, not the tag's default
    if entry is not None and entry.mean is not None:
        return model, Preprocessing(entry.mean, entry.std, size, None, f"`medpeft models` entry {backbone}")
    cfg = from_timm_cfg(model.pretrained_cfg, f"timm pretrained_cfg of {name} (no preprocessing in {ckpt.path.name})")
    return model, dataclasses.replace(cfg, img_size=size)


def check_backbone(backbone: str, *, img_size: int | None = None, weights: str | Path | None = None) -> None:
    """What can fail before any data is read: the backbone name, the weights path and the image size (a multiple of
    the patch size). The model is built on the ``meta`` device (no memory, no weights)."""
    from .foundation_models import get_foundation_model

    if weights is not None and not Path(weights).exists():
        raise UserError(f"weights file {weights} not found")
    if backbone == AUTO:
        if weights is None:
            raise ParameterError(
                "backbone", "{backbone} {auto} takes the architecture of {weights}: pass {weights} PATH", auto=AUTO
            )
        return
    entry = get_foundation_model(backbone)
    name, kwargs = (entry.timm_name, entry.timm_kwargs()) if entry else (backbone, {})
    _check_name(name)
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    family_class(model, backbone)
    if img_size is not None:
        _check_img_size(model, img_size)


def _check_name(backbone: str) -> None:
    if not timm.is_model(backbone):
        raise UserError(
            f"unknown backbone {backbone!r}: pass a timm model name such as {DEFAULT_BACKBONE!r} "
            "(see timm.list_models('vit_*'), 'swin_*', 'eva*', 'beit*') or one of `medpeft models`"
        )


def _check_img_size(model: nn.Module, img_size: int) -> None:
    patch = model.patch_embed.patch_size[0]
    if img_size < patch or img_size % patch:
        lower, upper = max(patch, img_size // patch * patch), (img_size // patch + 1) * patch
        nearest = f"{lower} or {upper}" if lower != upper and img_size > patch else f"{upper}"
        raise ParameterError(
            "img_size",
            "{img_size} {value} is not a multiple of the model's patch size {patch}: use {nearest}",
            value=img_size,
            patch=patch,
            nearest=nearest,
        )


def load_weights(model: nn.Module, path: str | Path) -> Preprocessing | None:
    """Load a local checkpoint (a file or a folder, :func:`build_backbone`) into ``model`` in place; the classifier
    head, if any, is dropped. Returns the preprocessing the checkpoint's config states, if any.

    Google ``.npz`` (ViTs) goes through timm's own converter; other layouts through :mod:`medpeft.converters`, then
    the timm checkpoint filter of the model's family (position embeddings and relative position tables resampled
    to the model's size). Nothing touches the network.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"weights file {path} not found")
    if path.suffix == ".npz":
        if not hasattr(model, "load_pretrained"):
            raise UserError(
                f"weights file {path}: Google .npz checkpoints are for ViTs; give this "
                f"{type(model).__name__} a PyTorch or safetensors state dict"
            )
        try:
            model.load_pretrained(str(path))
        except Exception as err:  # corrupt or foreign file
            raise UserError(
                f"cannot read weights file {path}: expected {EXPECTED_FORMATS}, found {sniff(path)} "
                f"({type(err).__name__})"
            ) from err
        return None
    ckpt = read_checkpoint(path)
    load_state(model, ckpt.state, path)
    return ckpt.preprocessing


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load timm-keyed ``state`` (from ``path``, named in errors) into ``model`` through its family's checkpoint
    filter; every tensor must fit, key for key and shape for shape."""
    try:
        state = family_class(model).checkpoint_filter(
            {k: v for k, v in state.items() if not k.startswith("head.")}, model
        )
    except Exception as err:  # shapes timm cannot adapt
        raise UserError(f"weights file {path} does not fit this backbone: {err}".splitlines()[0]) from err
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing = [k for k in own if k not in state and not k.startswith("head.")]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise UserError(
            f"weights file {path} does not fit this backbone: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}), {len(wrong)} of another shape (e.g. {wrong[:2]})"
        )
    model.load_state_dict(state, strict=False)


def checkpoint_img_size(path: str | Path, model: nn.Module) -> int | None:
    """The image size a checkpoint for ``model`` was made at, or None if unknown (unreadable: load_weights says why).

    A safetensors ``img_size`` metadata entry (files written by ``medpeft weights``) wins; otherwise the side of
    the ``pos_embed`` grid (its rows less the prefix rows it holds) times the model's patch size; None for a
    checkpoint without absolute position embeddings (Swin, BEiT), which is read at the model's size.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                if "img_size" in (f.metadata() or {}):
                    return int(f.metadata()["img_size"])
                key = next((k for k in f.keys() if k.endswith("pos_embed")), None)
                rows = key and f.get_slice(key).get_shape()[-2]
        elif path.suffix == ".npz":
            with np.load(path) as f:
                rows = f["Transformer/posembed_input/pos_embedding"].shape[-2]
        else:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            state = state.get("model", state) if isinstance(state, dict) else {}
            state = state.get("state_dict", state)
            rows = next((v.shape[-2] for k, v in state.items() if k.endswith("pos_embed")), None)
    except Exception:  # noqa: BLE001  (load_weights reports unreadable files)
        return None
    return _grid_size(rows, model)


def _grid_size(rows: int | None, model: nn.Module) -> int | None:
    """The image side of a ``pos_embed`` of ``rows`` rows for ``model`` (its prefix rows, none or one removed)."""
    own = 0 if getattr(model, "no_embed_class", False) else family_of(model).num_prefix_tokens
    for prefix in dict.fromkeys((own, 0, 1)):
        side = math.isqrt(rows - prefix) if rows and rows > prefix else 0
        if side and side * side == rows - prefix:
            return side * model.patch_embed.patch_size[0]
    return None


def num_tokens(model: nn.Module) -> int:
    """Tokens the first block sees at the model's image size: prefix tokens (CLS, registers) plus patches."""
    return family_of(model).tokens(0)


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled feature the head reads."""
    return family_of(model).feature_dim
