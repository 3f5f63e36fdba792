"""Random models of every backbone family (tensors that start at zero or one moved off their init, so that they
matter) and their trainable-parameter counts from the methods' definitions, for the family suite
(``test_families.py``) and the family-specific tests."""

import timm
import torch
from test_methods import width

import medpeft

C = 3
#: medpeft's own methods and two peft tuners (the other tuners wrap the same Linear layers: see test_methods)
TRAINED = [m for m in medpeft.available_methods() if not m.startswith("peft:")] + ["peft:lora", "peft:ia3"]

BEIT = "beit_base_patch16_224"
EVA = "eva02_tiny_patch14_224"
SWIN = "swin_tiny_patch4_window7_224"
DINOV2 = {"vit_small_patch14_dinov2": 0, "vit_small_patch14_reg4_dinov2": 4}  # name: register tokens
REG4 = "vit_small_patch14_reg4_dinov2"


def beit(img_size=48, dtype=torch.float32, **kwargs):
    """A random BEiT-B/16 (timm ``kwargs`` shrink it); relative position tables (zero at init), γ and q/v biases
    moved off their init."""
    torch.manual_seed(0)
    model = timm.create_model(BEIT, num_classes=0, img_size=img_size, **kwargs).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or name.endswith(("q_bias", "v_bias")):
                p.normal_(0, 0.5)
            elif name.endswith(("gamma_1", "gamma_2")):
                p.uniform_(0.2, 1.0)
    return model


BEIT_SMALL = dict(depth=3, embed_dim=192, num_heads=3)


def expected_beit(method, D, depth, grid, S, heads, classes=C, **o):
    """Trainable parameter count from the definitions on a BEiT block: fused qkv without bias beside q/v biases, a
    relative position table of (2h − 1)(2w − 1) + 3 rows (the 3: CLS to token, token to CLS, CLS to CLS) per head,
    LayerScale γ₁, γ₂; the final norm is ``fc_norm`` (average pooling)."""
    table = ((2 * grid - 1) ** 2 + 3) * heads
    block = 2 * D + 3 * D * D + 2 * D + table + (D * D + D) + 2 * D + (4 * D * D + 4 * D) + (4 * D * D + D) + 2 * D
    r, L, N = o.get("r", 8), o.get("prompt_length", 100 if method == "ept" else 10), 1 + grid * grid
    return (
        D * classes
        + classes
        + {
            "linear": lambda: 0,
            "partial": lambda: o.get("k", 1) * block + 2 * D,
            "mlp": lambda: (o.get("k", 3) - 1) * (D * D + D),
            "bitfit": lambda: D + depth * (D + 2 * D + D + D + 4 * D + D) + D,
            "lora": lambda: depth * 2 * (r * D + D * r),
            "adapter": lambda: depth * (2 * D * width(o, D) + width(o, D) + D),
            "vp": lambda: 2 * 3 * o["prompt_size"] * S + 2 * 3 * (S - 2 * o["prompt_size"]) * o["prompt_size"],
            "vpt": lambda: (depth if o.get("deep", True) else 1) * L * D,
            "ept": lambda: len(o.get("layers") or range(depth)) * N * L,
            "ssf": lambda: 2 * D + depth * 2 * (D + 3 * D + D + D + 4 * D + D) + 2 * D,
            "peft:lora": lambda: depth * 8 * ((D + 3 * D) + (D + D) + (D + 4 * D) + (4 * D + D)),
            "peft:ia3": lambda: depth * (3 * D + D + 4 * D + 4 * D),
        }[method]()
    )


BEIT_CASES = [
    ("linear", {}),
    ("partial", {}),
    ("partial", {"k": 2}),
    ("mlp", {}),
    ("bitfit", {}),
    ("lora", {}),
    ("adapter", {}),
    ("adapter", {"reduction": 8}),
    ("vp", {"prompt_size": 5}),
    ("vpt", {}),
    ("vpt", {"deep": False}),
    ("ept", {}),
    ("ept", {"prompt_length": 20, "layers": [1]}),
    ("ssf", {}),
    ("peft:lora", {}),
    ("peft:ia3", {}),
]


def eva(img_size=56, dtype=torch.float32, **kwargs):
    """A random EVA-02 Ti/14 (timm ``kwargs`` may add registers, LayerScale, or shrink it); γ and the prefix tokens
    moved off their init."""
    torch.manual_seed(0)
    model = timm.create_model(EVA, num_classes=0, img_size=img_size, **kwargs).to(dtype)
    with torch.no_grad():
        for block in model.blocks:
            for gamma in (block.gamma_1, block.gamma_2):
                if gamma is not None:
                    gamma.uniform_(0.2, 1.0)
            if block.attn.q_bias is not None:
                block.attn.q_bias.normal_(0, 0.1)
                block.attn.v_bias.normal_(0, 0.1)
        model.cls_token.normal_()
        if model.reg_token is not None:
            model.reg_token.normal_()
    return model


REGS = dict(num_reg_tokens=2, init_values=0.5, depth=3)  # registers and LayerScale on the EVA-02 Ti blocks


def expected_eva(method, D, depth, N, S, hidden, layer_scale=False, classes=C, **o):
    """Trainable parameter count from the definitions on an EVA-02 block: fused qkv without bias beside q/v biases,
    packed SwiGLU (fc1: D → 2·hidden, fc2: hidden → D); the final norm is ``fc_norm`` (average pooling)."""
    block = (
        2 * D
        + 3 * D * D
        + 2 * D
        + (D * D + D)
        + 2 * D
        + (D * 2 * hidden + 2 * hidden)
        + (hidden * D + D)
        + 2 * D * layer_scale
    )
    r, L = o.get("r", 8), o.get("prompt_length", 100 if method == "ept" else 10)
    return (
        D * classes
        + classes
        + {
            "linear": lambda: 0,
            "partial": lambda: o.get("k", 1) * block + 2 * D,
            "mlp": lambda: (o.get("k", 3) - 1) * (D * D + D),
            "bitfit": lambda: D + depth * (D + 2 * D + D + D + 2 * hidden + D) + D,
            "lora": lambda: depth * 2 * (r * D + D * r),
            "adapter": lambda: depth * (2 * D * width(o, D) + width(o, D) + D),
            "vp": lambda: 2 * 3 * o["prompt_size"] * S + 2 * 3 * (S - 2 * o["prompt_size"]) * o["prompt_size"],
            "vpt": lambda: (depth if o.get("deep", True) else 1) * L * D,
            "ept": lambda: len(o.get("layers") or range(depth)) * N * L,
            "ssf": lambda: 2 * D + depth * 2 * (D + 3 * D + D + D + 2 * hidden + D) + 2 * D,
            "peft:lora": lambda: depth * 8 * ((D + 3 * D) + (D + D) + (D + 2 * hidden) + (hidden + D)),
            "peft:ia3": lambda: depth * (3 * D + D + 2 * hidden + hidden),
        }[method]()
    )


EVA_CASES = [
    ("linear", {}),
    ("partial", {}),
    ("partial", {"k": 3}),
    ("mlp", {}),
    ("bitfit", {}),
    ("lora", {}),
    ("adapter", {}),
    ("adapter", {"reduction": 8}),
    ("vp", {"prompt_size": 5}),
    ("vpt", {}),
    ("vpt", {"deep": False}),
    ("ept", {}),
    ("ept", {"prompt_length": 20, "layers": [0, -1]}),
    ("ssf", {}),
    ("peft:lora", {}),
    ("peft:ia3", {}),
]


def swin(img_size=64, dtype=torch.float32, **kwargs):
    """A random Swin-T (timm ``kwargs`` may shrink it), no stochastic depth, relative position tables off zero."""
    torch.manual_seed(0)
    model = timm.create_model(SWIN, num_classes=0, img_size=img_size, drop_path_rate=0.0, **kwargs).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    return model


SWIN_SMALL = dict(embed_dim=24, depths=(2, 2), num_heads=(1, 2))  # 64 px: 16×16 then 8×8 grids, 7×7 windows, padding


def blocks_of(model):
    """(width D, heads, window, starts a later stage, tokens) of every block of a timm Swin, in order."""
    return [
        (b.dim, b.attn.num_heads, b.window_size, s > 0 and j == 0, b.input_resolution[0] * b.input_resolution[1])
        for s, stage in enumerate(model.layers)
        for j, b in enumerate(stage.blocks)
    ]


def swin_block_params(D, heads, window):
    """norm1, qkv, relative position table, proj, norm2, fc1 (4D), fc2 of one Swin block."""
    table = (2 * window[0] - 1) * (2 * window[1] - 1) * heads
    return 2 * D + (3 * D * D + 3 * D) + table + (D * D + D) + 2 * D + (4 * D * D + 4 * D) + (4 * D * D + D)


def merging_params(D):
    """A patch merging into width D: LayerNorm over 4·(D/2) channels, bias-free reduction 4·(D/2) → D."""
    return 2 * 2 * D + 2 * D * D


def expected_swin(method, model, S, classes=C, **o):
    """Trainable parameter count of ``method`` on a timm Swin from the definitions, head included (S px): blocks
    counted across stages, a patch merging belongs to the first block of its stage; deep VPT prompts have their
    stage's width; EPT has one prompt row per token of the block's stage."""
    blocks = blocks_of(model)
    E, F_ = blocks[0][0], blocks[-1][0]
    head = F_ * classes + classes
    r, L = o.get("r", 8), o.get("prompt_length", 100 if method == "ept" else 10)
    prompted = blocks if o.get("deep", True) else blocks[:1]
    return (
        head
        + {
            "linear": lambda: 0,
            "partial": lambda: (
                sum(
                    swin_block_params(D, h, w) + (merging_params(D) if m else 0)
                    for D, h, w, m, _ in blocks[-o.get("k", 1) :]
                )
                + 2 * F_
            ),
            "mlp": lambda: (o.get("k", 3) - 1) * (F_ * F_ + F_),
            "bitfit": lambda: E + E + sum(11 * D + (2 * D if m else 0) for D, _, _, m, _ in blocks) + F_,
            "lora": lambda: sum(2 * (r * D + D * r) for D, *_ in blocks),
            "adapter": lambda: sum(2 * D * width(o, D) + width(o, D) + D for D, *_ in blocks),
            "vp": lambda: 2 * 3 * o["prompt_size"] * S + 2 * 3 * (S - 2 * o["prompt_size"]) * o["prompt_size"],
            "vpt": lambda: sum(L * D for D, *_ in prompted),
            "ept": lambda: sum(blocks[i][4] * L for i in (o.get("layers") or range(len(blocks)))),
            "ssf": lambda: 2 * E + sum(2 * 11 * D + (2 * 3 * D if m else 0) for D, _, _, m, _ in blocks) + 2 * F_,
            "peft:lora": lambda: sum(8 * ((D + 3 * D) + (D + D) + (D + 4 * D) + (4 * D + D)) for D, *_ in blocks),
            "peft:ia3": lambda: sum(3 * D + D + 4 * D + 4 * D for D, *_ in blocks),
        }[method]()
    )


SWIN_CASES = [
    ("linear", {}),
    ("partial", {}),
    ("partial", {"k": 3}),
    ("mlp", {}),
    ("bitfit", {}),
    ("lora", {}),
    ("adapter", {}),
    ("adapter", {"reduction": 8}),
    ("vp", {"prompt_size": 5}),
    ("vpt", {}),
    ("vpt", {"deep": False}),
    ("ept", {}),
    ("ept", {"prompt_length": 20, "layers": [0, 3]}),
    ("ssf", {}),
    ("peft:lora", {}),
    ("peft:ia3", {}),
]


def dinov2(name: str, img_size: int = 56, depth: int = 2, dtype=torch.float32, **kwargs):
    """A small random DINOv2 ViT-S/14 (timm ``kwargs`` may shrink it further); LayerScale γ and the prefix tokens
    moved off their (near-)zero init."""
    torch.manual_seed(0)
    vit = timm.create_model(name, num_classes=0, img_size=img_size, depth=depth, **kwargs).to(dtype)
    with torch.no_grad():
        for block in vit.blocks:
            block.ls1.gamma.uniform_(0.2, 1.0)
            block.ls2.gamma.uniform_(0.2, 1.0)
        vit.cls_token.normal_()
        if vit.reg_token is not None:
            vit.reg_token.normal_()
    return vit


DINOV2_CASES = [
    ("linear", {}),
    ("partial", {}),
    ("partial", {"k": 3}),
    ("mlp", {}),
    ("bitfit", {}),
    ("lora", {}),
    ("adapter", {}),
    ("adapter", {"bottleneck": 8}),
    ("vp", {}),
    ("vpt", {}),
    ("vpt", {"deep": False}),
    ("ept", {}),
    ("ept", {"prompt_length": 20, "layers": [0]}),
    ("ept", {"layers": [2, 0]}),
    ("ssf", {}),
    ("peft:lora", {}),
    ("peft:ia3", {}),
]
