"""The classifier every method produces, how to build it, and small checkpoints of what it trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .backbones import DEFAULT_BACKBONE, build_backbone, feature_dim
from .errors import ParameterError, UserError
from .families import family_of
from .heads import make_dense_head
from .methods import Method, get_method
from .preprocessing import Preprocessing
from .seeding import seeded
from .types import ModelConfig


class PeftClassifier(nn.Module):
    """A (partly) frozen timm backbone and a head on its pooled feature: images (B, 3, H, W) → logits (B, C); or,
    with a dense head (``config.head``, :mod:`medpeft.heads`), on its patch map: per-pixel logits (B, C, H, W).

    ``backbone`` is the timm model with the method's modules injected; ``head`` is the classifier; ``method`` the
    :class:`~medpeft.methods.Method` that built it. ``config`` records how it was built (method, options, backbone,
    classes, image size); ``added`` names the parameters the method added (trainable or not) — with the trainable
    ones, what :func:`save_trainable` writes.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        method: Method,
        config: ModelConfig,
        added: frozenset[str] = frozenset(),
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.method = method
        self.config = config
        self.added = added

    @property
    def preprocessing(self) -> Preprocessing:
        """What the backbone's weights expect of an image (``config.preprocessing``)."""
        return self.config.preprocessing

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature the head reads: the backbone's own pooling (:meth:`~medpeft.families.Family.pool`; ViT: the CLS
        token after the final norm; Swin: the mean of the final-norm tokens; EVA, BEiT and GAP ViTs: their
        ``global_pool``, e.g. the mean of the patch tokens and ``fc_norm``), or for a dense head the patch map
        (:meth:`~medpeft.families.Family.patch_map`)."""
        features = self.backbone.forward_features(x)
        if self.config.head is not None:
            return family_of(self.backbone).patch_map(features)
        return self.backbone.forward_head(features, pre_logits=True)

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """What :meth:`forward_features` gives, from the last block's output (the pooled feature or the patch map)."""
        family = family_of(self.backbone)
        return family.pool(x) if self.config.head is None else family.dense(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class WholeSegmenter(PeftClassifier):
    """A method's own segmenter (:meth:`~medpeft.methods.Method.standalone`, e.g. the U-Net) as the model: ``head`` is
    the whole network, trained from scratch; there is no backbone (an identity)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _whole_segmenter(spec: Method, num_classes: int, img_size, seed, mean, std, head) -> WholeSegmenter:
    if head is None:
        raise UserError(f"method {spec.full_name!r} is a whole segmenter: it takes segmentation tasks only")
    size = img_size or 224
    if size % 32 or size < 64:
        raise ParameterError(
            "img_size",
            "{img_size} {value}: method 'unet' needs a multiple of 32, at least 64 (its encoder halves the image five "
            "times; a 1 × 1 bottleneck cannot be batch-normalised over a batch of one image)",
            value=size,
        )
    with seeded(seed):
        net = spec.standalone(num_classes)
    config = ModelConfig(
        method=spec.full_name,
        options=spec.options(),
        backbone=spec.full_name,
        num_classes=num_classes,
        img_size=size,
        preprocessing=Preprocessing(img_size=size).override(mean, std),
        head=spec.full_name,
    )
    return WholeSegmenter(nn.Identity(), net, spec, config, frozenset(f"head.{n}" for n, _ in net.named_parameters()))


def build_model(
    method: str,
    backbone: str | nn.Module = DEFAULT_BACKBONE,
    num_classes: int = 2,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    img_size: int | None = None,
    seed: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    head: str | None = None,
    **options: Any,
) -> PeftClassifier:
    """Build ``method`` on a timm backbone: frozen backbone, the method's trainable tensors, a fresh head.

    ``backbone`` is a timm model name or a built timm model (used in place) of a supported family
    (:mod:`medpeft.families`: ViT, Swin, EVA, BEiT). ``pretrained`` takes
    timm's hub weights; ``weights`` a local checkpoint instead. ``img_size`` resizes the position embeddings and
    sizes token-indexed parameters. ``seed`` draws every random initial value (a random backbone, the method's new
    tensors, the head) from a generator of its own, leaving the global one untouched: the same seed rebuilds the
    same model whatever ran before; None draws from torch's global generator. ``mean``/``std`` override the
    normalisation the weights state (:func:`~medpeft.backbones.build_backbone`). ``head`` names a dense head of
    :data:`medpeft.heads.HEADS` on the patch map (segmentation) instead of the method's head on the pooled feature.
    ``options`` are the method's own (see ``available_methods``).
    """
    if num_classes < 1:
        raise UserError(f"num_classes={num_classes} must be at least 1")
    spec = get_method(method, **options)
    if spec.standalone_segmenter:
        return _whole_segmenter(spec, num_classes, img_size, seed, mean, std, head)
    with seeded(seed):
        model, preprocessing = build_backbone(backbone, pretrained=pretrained, weights=weights, img_size=img_size)
        model.requires_grad_(False)
        frozen = {id(p) for p in model.parameters()}
        spec.inject(model)
        if head is None:
            classifier = spec.make_head(feature_dim(model), num_classes)
        else:
            if type(spec).make_head is not Method.make_head:
                raise ParameterError(
                    "head",
                    "method {method!r} brings its own head on the pooled feature: no dense {head}",
                    method=method,
                )
            classifier = make_dense_head(
                head, family_of(model).dense_dim, num_classes, int(model.patch_embed.img_size[0])
            )
    config = ModelConfig(
        method=method,
        options=spec.options(),
        backbone=backbone if isinstance(backbone, str) else model.default_cfg.get("architecture", "custom"),
        num_classes=num_classes,
        img_size=int(model.patch_embed.img_size[0]),
        preprocessing=preprocessing.override(mean, std),
        head=head,
    )
    added = frozenset(f"backbone.{n}" for n, p in model.named_parameters() if id(p) not in frozen)
    heads = {f"head.{n}" for n, _ in classifier.named_parameters()}
    return PeftClassifier(model, classifier, spec, config, added | heads)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of parameter elements; shared tensors are counted once."""
    params = list(model.parameters())  # parameters() already de-duplicates shared tensors
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def head_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The head's persistent buffers by name (a dense head's BatchNorm statistics): training changes them too."""
    head = getattr(model, "head", None)
    if head is None:
        return {}
    return {
        f"head.{n}": b for n, b in head.state_dict(keep_vars=True).items() if n not in dict(head.named_parameters())
    }


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors (and the head's buffers) by name, detached."""
    state = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    return {**state, **{name: b.detach() for name, b in head_buffers(model).items()}}


def saved_names(model: PeftClassifier) -> set[str]:
    """What a checkpoint of ``model`` holds: its trainable tensors, every tensor its method added and the head's
    buffers."""
    names = {name for name, p in model.named_parameters() if p.requires_grad or name in model.added}
    return names | set(head_buffers(model))


def _saved_tensors(model: PeftClassifier) -> dict[str, torch.Tensor]:
    names = saved_names(model)
    return {name: t for name, t in [*model.named_parameters(), *head_buffers(model).items()] if name in names}


def save_trainable(model: PeftClassifier, path: str | Path) -> None:
    """Write the trainable tensors and the method's added ones (e.g. frozen prompts; safetensors) with the build
    config in the file's metadata."""
    state = {name: t.detach().contiguous().cpu() for name, t in _saved_tensors(model).items()}
    save_file(state, str(path), metadata={"medpeft_config": json.dumps(model.config.to_dict())})


def read_trainable_config(path: str | Path) -> ModelConfig:
    """The build config stored in a :func:`save_trainable` file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return ModelConfig.from_dict(json.loads((f.metadata() or {})["medpeft_config"]))
    except (OSError, KeyError, ValueError, TypeError, SafetensorError) as err:
        raise UserError(f"{path} is not a medpeft trainable-weights file ({err})") from err


def load_trainable(
    path: str | Path,
    model: PeftClassifier | None = None,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    backbone: str | nn.Module | None = None,
    seed: int | None = None,
) -> PeftClassifier:
    """Restore a :func:`save_trainable` file onto ``model``, or onto a fresh model built from its config.

    A fresh model needs the frozen backbone weights: from the hub (``pretrained``), a local file (``weights``),
    or a built ``backbone``; a random backbone is rebuilt from ``seed`` (see :func:`build_model`). Tensors must
    match exactly in names and shapes.
    """
    config = read_trainable_config(path)
    if model is None:
        model = build_model(
            config.method,
            backbone or config.backbone,
            config.num_classes,
            pretrained=pretrained,
            weights=weights,
            img_size=config.img_size,
            seed=seed,
            head=config.head,
            **config.options,
        )
    elif model.config.method != config.method:
        raise UserError(f"{path} holds a {config.method!r} model, not {model.config.method!r}")
    state = load_file(str(path))
    params = _saved_tensors(model)
    expected = saved_names(model)
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise UserError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise UserError(
                    f"{path}: {name} has shape {tuple(tensor.shape)}, the model {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor)
    model.method.after_load(model)
    model.config.preprocessing = config.preprocessing  # what it was trained with
    return model
