"""Every method: what trains (counted against the definitions), that it learns, and where it starts."""

import copy

import pytest
import timm
import torch

import medpeft
from medpeft import UserError, build_model, count_parameters
from medpeft.methods.lora import LoraQKV

C = 5


def block_params(D, layer_scale=False):
    """norm1, qkv, proj, norm2, fc1 (4D), fc2 of one pre-norm ViT block, and its two LayerScale γ (DINOv2)."""
    return (
        2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * D + (4 * D * D + 4 * D) + (4 * D * D + D) + 2 * D * layer_scale
    )


def width(o, D):
    """The adapter's bottleneck: ``bottleneck``, or D // ``reduction`` (the paper's grid), default 64."""
    return D // o["reduction"] if "reduction" in o else o.get("bottleneck", 64)


def expected_trainable(method, D, depth=12, N=197, S=224, layer_scale=False, classes=C, **o):
    """Trainable parameter count from the method's definition (DESIGN §3), head included; N tokens (CLS, registers,
    patches) at S px. LayerScale γ are no biases (BitFit leaves them), no operation outputs (SSF adds nothing for
    them), and part of a block (partial-k trains them)."""
    head = D * classes + classes
    return (
        head
        + {
            "linear": lambda: 0,
            "partial": lambda: o.get("k", 1) * block_params(D, layer_scale) + 2 * D,
            "mlp": lambda: (o.get("k", 3) - 1) * (D * D + D),
            "bitfit": lambda: depth * (3 * D + D + 4 * D + D + 2 * D) + D + D,
            "lora": lambda: depth * 2 * (o.get("r", 8) * D + D * o.get("r", 8)),
            "adapter": lambda: depth * (2 * D * width(o, D) + width(o, D) + D),
            "vp": lambda: (
                2 * 3 * o.get("prompt_size", 30) * S
                + 2 * 3 * (S - 2 * o.get("prompt_size", 30)) * o.get("prompt_size", 30)
            ),
            "vpt": lambda: (depth if o.get("deep", True) else 1) * o.get("prompt_length", 10) * D,
            "ept": lambda: len(o.get("layers") or range(depth)) * N * o.get("prompt_length", 100),
            "ssf": lambda: depth * 2 * (D + D + 3 * D + D + 4 * D + D) + 2 * D + 2 * D,
            "peft:lora": lambda: depth * 8 * ((D + 3 * D) + (D + D) + (D + 4 * D) + (4 * D + D)),
            "peft:ia3": lambda: depth * (3 * D + D + 4 * D + 4 * D),
        }[method]()
    )


CASES = [
    ("linear", {}),
    ("partial", {}),
    ("partial", {"k": 3}),
    ("mlp", {}),
    ("mlp", {"k": 2}),
    ("bitfit", {}),
    ("lora", {}),
    ("lora", {"r": 4}),
    ("adapter", {}),
    ("adapter", {"bottleneck": 8}),
    ("adapter", {"reduction": 8}),
    ("vp", {}),
    ("vp", {"prompt_size": 5}),
    ("vpt", {}),
    ("vpt", {"prompt_length": 50, "deep": False}),
    ("ept", {}),
    ("ept", {"prompt_length": 20, "layers": [0]}),
    ("ept", {"layers": [11, 10, 9]}),
    ("ssf", {}),
    ("peft:lora", {}),
    ("peft:ia3", {}),
]


@pytest.mark.parametrize("backbone,D", [("vit_tiny_patch16_224", 192), ("vit_base_patch16_224", 768)])
def test_trainable_counts_match_definitions(backbone, D):
    template = timm.create_model(backbone, num_classes=0)  # built once; every case gets its own copy
    frozen = sum(p.numel() for p in template.parameters())
    for method, options in CASES:
        model = build_model(method, copy.deepcopy(template), C, **options)
        trainable, total = count_parameters(model)
        assert trainable == expected_trainable(method, D, **options), (method, options)
        added = D * C + C if method in ("partial", "bitfit") else trainable  # these only unfreeze
        assert total == frozen + added, (method, options)
    full = build_model("full", template, C)
    assert count_parameters(full)[0] == count_parameters(full)[1] == frozen + D * C + C


def test_ept_rows_follow_image_size():
    model = build_model("ept", "vit_tiny_patch16_224", C, pretrained=False, img_size=384, prompt_length=10)
    assert model.backbone.blocks[0].attn.prompt.shape == (577, 10)
    assert count_parameters(model)[0] == expected_trainable("ept", 192, N=577, prompt_length=10)
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, C)


def two_sgd_steps(model, images, seed=0):
    """Two plain SGD steps (no weight decay: only a gradient can move a tensor)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    targets = torch.randint(0, C, (images.shape[0],))
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), targets).backward()
        optimizer.step()


@pytest.mark.parametrize("method", medpeft.available_methods())
def test_frozen_stays_frozen_and_trainable_learns(method):
    torch.manual_seed(0)
    model = build_model(method, "vit_tiny_patch16_224", C, pretrained=False, img_size=64)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("head.") for n in trainable)
    two_sgd_steps(model, torch.randn(4, 3, 64, 64))
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{method}: trainable {name} never moved"
        else:
            assert torch.equal(p, before[name]), f"{method}: frozen {name} moved"


@pytest.mark.parametrize("method", ["lora", "adapter", "ssf", "peft:lora"])
def test_zero_initialised_methods_start_as_the_frozen_model(method):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64)
    frozen = build_model("linear", copy.deepcopy(vit), C)
    model = build_model(method, vit, C)
    model.head.load_state_dict(frozen.head.state_dict())
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images), frozen(images))


def test_prompt_tensors_are_named_prompt():
    for method in ("vp", "vpt", "ept"):
        model = build_model(method, "vit_tiny_patch16_224", C, pretrained=False, img_size=64)
        names = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
        assert names and all("prompt" in n for n in names), (method, names)


def test_vpt_deep_and_shallow_equal_naive_loop():
    from reference import naive_vpt_features

    for deep in (True, False):
        vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64).double()
        reference = copy.deepcopy(vit)
        model = build_model("vpt", vit, C, prompt_length=3, deep=deep).double()
        prompt = model.backbone.prompt_tokens.prompt
        images = torch.randn(2, 3, 64, 64, dtype=torch.double)
        ours, theirs = model.forward_features(images), naive_vpt_features(reference, prompt, images)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
        g1 = torch.autograd.grad(ours.square().sum(), prompt)[0]
        g2 = torch.autograd.grad(theirs.square().sum(), prompt)[0]
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)


def test_vp_changes_only_border_pixels():
    model = build_model("vp", "vit_tiny_patch16_224", C, pretrained=False, prompt_size=5)
    seen = {}
    conv = model.backbone.patch_embed.proj.proj
    conv.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    images = torch.randn(2, 3, 224, 224)
    model(images)
    delta = (seen["x"] - images).abs()
    interior = torch.zeros(224, 224, dtype=torch.bool)
    interior[5:-5, 5:-5] = True
    assert delta[..., interior].max() == 0
    assert (delta[..., ~interior] > 0).all()


def test_user_mistakes_are_one_line_errors():
    with pytest.raises(UserError, match="unknown method 'nope'.*ept"):
        build_model("nope", "vit_tiny_patch16_224", C, pretrained=False)
    with pytest.raises(UserError, match="unknown option.*'rank'.*valid options.*'r'"):
        build_model("lora", "vit_tiny_patch16_224", C, pretrained=False, rank=4)
    with pytest.raises(UserError, match="way='sum' is not one of"):
        build_model("ept", "vit_tiny_patch16_224", C, pretrained=False, way="sum")
    with pytest.raises(UserError, match="prompt_length='ten' should be int"):
        build_model("ept", "vit_tiny_patch16_224", C, pretrained=False, prompt_length="ten")
    with pytest.raises(UserError, match="layers=\\[12\\]"):
        build_model("ept", "vit_tiny_patch16_224", C, pretrained=False, layers=[12])
    with pytest.raises(UserError, match="unknown backbone 'vit_nope'"):
        build_model("linear", "vit_nope", C, pretrained=False)
    with pytest.raises(
        UserError,
        match="backbone 'resnet18' is a ResNet, not a timm Beit, Eva, SwinTransformer or VisionTransformer: use e.g. "
        "beit_base_patch16_224, eva02_tiny_patch14_224, swin_tiny_patch4_window7_224, vit_base_patch16_224$",
    ):
        build_model("linear", "resnet18", C, pretrained=False)
    with pytest.raises(UserError, match="unknown peft tuner 'nope'"):
        build_model("peft:nope", "vit_tiny_patch16_224", C, pretrained=False)
    with pytest.raises(UserError, match="peft:lora"):
        build_model("peft:lora", "vit_tiny_patch16_224", C, pretrained=False, bogus=1)


@pytest.mark.parametrize(
    "method,options,culprit",
    [
        ("lora", {"r": 0}, "r=0"),
        ("adapter", {"bottleneck": 0}, "bottleneck=0"),
        ("vpt", {"prompt_length": 0}, "prompt_length=0"),
        ("ept", {"prompt_length": 0}, "prompt_length=0"),
        ("mlp", {"k": 0}, "k=0"),
        ("partial", {"k": -1}, "k=-1"),
        ("vp", {"prompt_size": 0}, "prompt_size=0"),
        ("vpt", {"dropout": 1.5}, "dropout=1.5"),
        ("ept", {"layers": []}, "layers=[]"),
        ("ept", {"way": "add", "init": "zero"}, "init='zero'"),
        ("peft:lora", {"bogus": 1}, "bogus"),
    ],
)
def test_options_are_checked_when_the_method_is_constructed(method, options, culprit):
    from medpeft.methods import get_method

    with pytest.raises(UserError) as err:
        get_method(method, **options)
    message = str(err.value)
    assert f"method {method!r}" in message and culprit in message and "\n" not in message


def test_out_of_range_layers_fail_at_build():
    with pytest.raises(UserError, match="layers=\\[99\\]"):
        build_model("ept", "vit_tiny_patch16_224", C, pretrained=False, img_size=32, layers=[99])
    with pytest.raises(UserError, match="k=13 exceeds the backbone depth 12"):
        build_model("partial", "vit_tiny_patch16_224", C, pretrained=False, img_size=32, k=13)


@pytest.mark.parametrize("method", medpeft.available_methods())
def test_gradient_checkpointing_changes_nothing(method):
    """timm's grad checkpointing runs the blocks one by one: every method must give the same outputs and gradients."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64, depth=3).double()
    plain = build_model(method, vit, C, seed=0).double()
    checkpointed = copy.deepcopy(plain)
    checkpointed.backbone.set_grad_checkpointing(True)
    images = torch.randn(2, 3, 64, 64, dtype=torch.double)
    outputs = []
    for model in (plain, checkpointed):
        model.train()
        out = model(images)
        out.square().sum().backward()
        outputs.append((out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=0, atol=1e-12)
    assert outputs[0][1].keys() == outputs[1][1].keys()
    for name, grad in outputs[0][1].items():
        assert grad is not None, name
        torch.testing.assert_close(grad, outputs[1][1][name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["vpt", "ept"])
def test_frozen_prompts_stay_at_their_init_and_are_saved(method, tmp_path):
    model = build_model(method, "vit_tiny_patch16_224", C, pretrained=False, img_size=32, train_prompt=False, seed=3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"} and count_parameters(model)[0] == 192 * C + C
    prompts = {n: p.detach().clone() for n, p in model.named_parameters() if "prompt" in n}
    assert prompts
    two_sgd_steps(model, torch.randn(4, 3, 32, 32))
    for name, p in model.named_parameters():
        if name in prompts:
            assert torch.equal(p, prompts[name])
    medpeft.save_trainable(model, tmp_path / "m.safetensors")
    loaded = medpeft.load_trainable(tmp_path / "m.safetensors", pretrained=False, seed=4)  # another random init
    for name, p in loaded.named_parameters():
        if name in prompts:
            assert torch.equal(p, prompts[name])


def test_offline_hub_weights_say_what_to_pass():  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(UserError, match="pass weights PATH \\(a local checkpoint\\) or pretrained=False$"):
        build_model("linear", "vit_tiny_patch16_224.augreg_in21k", C, pretrained=True)


@pytest.mark.parametrize("base_trains", [False, True])
def test_lora_fast_path_is_the_slice_formulation(base_trains):
    """medpeft's LoRA (one in-place rank-2r update) against the plain q/v slice updates, values and gradients."""
    torch.manual_seed(0)
    layer = LoraQKV(torch.nn.Linear(12, 36).double().requires_grad_(base_trains), r=2, alpha=3.0).double()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 5, 12, dtype=torch.double, requires_grad=True)
    A, B, s = layer.lora_A, layer.lora_B, layer.scaling
    zeros = torch.zeros(2, 5, 12, dtype=torch.double)
    update = torch.cat([s * x @ A[0].T @ B[0].T, zeros, s * x @ A[1].T @ B[1].T], -1)
    expected = layer.base_layer(x) + update
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    params = [x, A, B] + ([layer.base_layer.weight] if base_trains else [])
    g = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad(layer(x), params, g), torch.autograd.grad(expected, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_partial_trains_the_final_norm_of_a_gap_vit():
    import timm

    gap = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, global_pool="avg", fc_norm=True, num_classes=0
    )
    model = build_model("partial", backbone=gap, num_classes=2)
    trained = {n.split(".")[0] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trained == {"blocks", "fc_norm"}  # norm is an identity on a GAP model: fc_norm is its final norm
