"""Named medical and biomedical foundation models (``medpeft models``): where each is, under which licence, what it
is, and how to load it: ``--backbone NAME`` from the Hugging Face hub, or ``--backbone NAME --weights PATH`` from a
local download (the checkpoint's architecture is checked against the entry's).

Each entry builds its timm model from ``timm_name`` and ``kwargs`` (the architecture the model's own card gives);
the tests build every one with random weights. Facts not checked against the model's card are marked unverified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ParameterError
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

HUB = "https://huggingface.co"
#: Files a hub snapshot needs: configs and single-file weights.
HUB_FILES = [
    "*.json",
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
    "open_clip_model.safetensors",
]


@dataclass(frozen=True)
class FoundationModel:
    """One named model. ``kwargs`` are timm ``VisionTransformer`` arguments (``mlp="swiglu"`` for timm's packed
    SwiGLU MLP with SiLU); ``mean``/``std`` None: read from the checkpoint's own config."""

    name: str
    domain: str
    hub_id: str | None
    licence: str
    gated: bool
    architecture: str
    checkpoint_format: str
    timm_name: str
    resolution: int
    pretraining: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    notes: str = ""

    def timm_kwargs(self) -> dict[str, Any]:
        """The timm arguments with ``mlp="swiglu"`` made timm's ``SwiGLUPacked`` and ``SiLU``."""
        from timm.layers import SwiGLUPacked
        from torch import nn

        kwargs = {k: v for k, v in self.kwargs.items() if k != "mlp"}
        if self.kwargs.get("mlp") == "swiglu":
            kwargs.update(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
        return {"img_size": self.resolution, **kwargs}

    @property
    def normalisation(self) -> str:
        if self.mean is None:
            return "from the checkpoint's config"
        return f"mean {list(self.mean)}, std {list(self.std)}"

    def commands(self) -> list[str]:
        """How to load it: online (with the login a gated model needs) and offline."""
        online = (
            f"--backbone {self.name}"
            + (
                f"  (gated: accept its terms at {HUB}/{self.hub_id}, then `hf auth login` or set HF_TOKEN)"
                if self.gated
                else ""
            )
            if self.hub_id
            else "(not on the hub: download it from its authors)"
        )
        return [
            f"online:  {online}",
            f"offline: --backbone {self.name} --weights DIR_OR_FILE  ({self.checkpoint_format})",
        ]


MODELS = [
    FoundationModel(
        "rad-dino",
        "chest X-ray",
        "microsoft/rad-dino",
        "MIT (per its model card; earlier revisions: MSRLA)",
        False,
        "DINOv2 ViT-B/14 (no registers)",
        "transformers Dinov2Model folder (config.json, preprocessor_config.json)",
        "vit_base_patch14_dinov2",
        518,
        "chest X-rays from public and private sets (see the RAD-DINO paper)",
        notes="normalisation from its preprocessor_config.json",
    ),
    FoundationModel(
        "biomedclip",
        "biomedical (figures of PubMed Central)",
        "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        "MIT",
        False,
        "open_clip with a timm ViT-B/16 image trunk",
        "open_clip folder (open_clip_config.json, open_clip_pytorch_model.bin)",
        "vit_base_patch16_224",
        224,
        "PMC-15M: 15M figure-caption pairs",
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        notes="mean/std: open_clip's (OpenAI CLIP) unless its config says",
    ),
    FoundationModel(
        "uni",
        "pathology",
        "MahmoodLab/UNI",
        "CC BY-NC-ND 4.0",
        True,
        "ViT-L/16 with LayerScale",
        "timm folder (config.json, pytorch_model.bin)",
        "vit_large_patch16_224",
        224,
        "Mass-100K: over 100M tissue patches from about 100K H&E whole-slide images",
        kwargs={"init_values": 1e-5},
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
    FoundationModel(
        "uni2-h",
        "pathology",
        "MahmoodLab/UNI2-h",
        "CC BY-NC-ND 4.0",
        True,
        "ViT-H/14 (width 1536, 24 blocks, 24 heads) with SwiGLU, 8 registers, LayerScale",
        "timm folder (config.json, pytorch_model.bin)",
        "vit_giant_patch14_224",
        224,
        "over 200M tissue images from over 350K H&E and IHC whole-slide images",
        kwargs={
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "embed_dim": 1536,
            "init_values": 1e-5,
            "mlp_ratio": 2.66667 * 2,
            "mlp": "swiglu",
            "no_embed_class": True,
            "reg_tokens": 8,
        },
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
    FoundationModel(
        "retfound",
        "retina (colour fundus)",
        "YukunZhou/RETFound_mae_natureCFP",
        "CC BY-NC 4.0 (unverified)",
        True,
        "MAE ViT-L/16",
        "MAE checkpoint (.pth with a 'model' dict; encoder, and decoder which is dropped)",
        "vit_large_patch16_224",
        224,
        "about 904K colour fundus photographs (MAE)",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        notes="hub id unverified; an OCT model exists too",
    ),
    FoundationModel(
        "virchow",
        "pathology",
        "paige-ai/Virchow",
        "Apache 2.0 with usage restrictions (unverified)",
        True,
        "ViT-H/14 with SwiGLU and LayerScale (632M parameters)",
        "timm folder (config.json, pytorch_model.bin)",
        "vit_huge_patch14_224",
        224,
        "about 1.5M H&E whole-slide images (MSKCC)",
        kwargs={"init_values": 1e-5, "mlp_ratio": 5.3375, "mlp": "swiglu"},
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
    FoundationModel(
        "virchow2",
        "pathology",
        "paige-ai/Virchow2",
        "CC BY-NC-ND 4.0 (unverified)",
        True,
        "ViT-H/14 with SwiGLU, LayerScale and 4 registers",
        "timm folder (config.json, pytorch_model.bin)",
        "vit_huge_patch14_224",
        224,
        "about 3.1M whole-slide images (MSKCC)",
        kwargs={"init_values": 1e-5, "mlp_ratio": 5.3375, "mlp": "swiglu", "reg_tokens": 4},
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
    FoundationModel(
        "prov-gigapath",
        "pathology",
        "prov-gigapath/prov-gigapath",
        "Apache 2.0 (unverified)",
        True,
        "tile encoder: DINOv2 ViT-g/14 (width 1536, 40 blocks, SwiGLU, LayerScale)",
        "timm folder (config.json, pytorch_model.bin)",
        "vit_giant_patch14_dinov2",
        224,
        "about 1.3B tiles from 171K whole-slide images (Providence)",
        kwargs={"init_values": 1e-5},
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
    FoundationModel(
        "chexzero",
        "chest X-ray",
        None,
        "MIT code licence; weights from the authors (unverified)",
        False,
        "CLIP ViT-B/32, OpenAI layout",
        "OpenAI CLIP state dict (.pt, keys visual.*)",
        "vit_base_patch32_clip_quickgelu_224",
        224,
        "MIMIC-CXR images with their reports",
        mean=(101.48761 / 255,) * 3,
        std=(83.43944 / 255,) * 3,
        notes="mean/std: CheXzero's code normalises 0-255 pixels with 101.48761 and 83.43944 (unverified); "
        "pass them with --mean/--std, a bare state dict states none",
    ),
]
_BY_NAME = {m.name: m for m in MODELS}


def get_foundation_model(name: str) -> FoundationModel | None:
    """The registry entry called ``name``, or None (a timm model name)."""
    return _BY_NAME.get(name)


def describe(m: FoundationModel) -> list[str]:
    """The lines ``medpeft models`` prints for ``m``."""
    lines = [
        f"{m.name}: {m.domain}; {m.architecture}",
        f"  source: {f'{HUB}/{m.hub_id}' if m.hub_id else 'not on the hub'}; licence: {m.licence}"
        f"{'; gated' if m.gated else ''}",
        f"  resolution {m.resolution} px; normalisation: {m.normalisation}; pretraining: {m.pretraining}",
        f"  timm: {m.timm_name}{' ' + str(m.kwargs) if m.kwargs else ''}",
        *(f"  {line}" for line in m.commands()),
    ]
    return lines + ([f"  note: {m.notes}"] if m.notes else [])


def fetch(model: FoundationModel) -> Path:
    """A local copy of ``model``'s hub repository (configs and weights), downloaded once by ``huggingface_hub``."""
    if model.hub_id is None:
        raise ParameterError(
            "weights",
            "{name} is not on the Hugging Face hub: download it from its authors and pass {weights} FILE ({format})",
            name=model.name,
            format=model.checkpoint_format,
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model.hub_id, allow_patterns=HUB_FILES))
    except GatedRepoError:
        raise ParameterError(
            "weights",
            "{name} ({hub_id}) is gated: accept its terms at {hub}/{hub_id}, then log in with `hf auth login` (or set "
            "HF_TOKEN), or pass {weights} DIR of a download",
            name=model.name,
            hub_id=model.hub_id,
            hub=HUB,
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise ParameterError(
            "weights",
            "cannot download {name} ({hub_id}: {err}): pass {weights} DIR of a local download, or {pretrained=False}",
            name=model.name,
            hub_id=model.hub_id,
            err=type(err).__name__,
        ) from None
