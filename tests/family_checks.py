"""Checks every backbone family's tests run the same way: training moves exactly the trainable tensors, a
checkpoint rebuilds the trained model, gradient checkpointing changes nothing, ``medpeft train`` runs end to end."""

import copy
import json

import torch
import torch.nn.functional as F

import medpeft
from medpeft import load_trainable, save_trainable
from medpeft.data import make_demo_data

C = 3
#: medpeft's own methods and two peft tuners (the other tuners wrap the same Linear layers: see test_methods)
TRAINED = [m for m in medpeft.available_methods() if not m.startswith("peft:")] + ["peft:lora", "peft:ia3"]


def two_sgd_steps(model, images, seed=0):
    """Two plain SGD steps (no weight decay: only a gradient can move a tensor); lr 0.01, so that the first step
    does not saturate the softmax of a random head on wide pooled features (whose gradients would then vanish)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    targets = torch.randint(0, C, (images.shape[0],))
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(images), targets).backward()
        optimizer.step()


def assert_trains_saves_and_loads(model, tmp_path, shape, **rebuild):
    """Two SGD steps on a float64 ``model`` (second-step movements of zero-started branches register in the first
    blocks) move every trainable tensor and no frozen one; the trained model, in float32, saved and loaded onto a
    float32 model rebuilt with ``rebuild`` (:func:`medpeft.load_trainable`), gives the same logits."""
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("head.") for n in trainable)
    two_sgd_steps(model, torch.randn(*shape, dtype=torch.double))
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{model.config.method}: trainable {name} never moved"
        else:
            assert torch.equal(p, before[name]), f"{model.config.method}: frozen {name} moved"
    model.float().eval()
    save_trainable(model, tmp_path / "m.safetensors")
    loaded = load_trainable(tmp_path / "m.safetensors", **rebuild).eval()
    images = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def assert_checkpointing_changes_nothing(plain, images):
    """timm's gradient checkpointing runs the blocks one by one: the same outputs and gradients (float64)."""
    checkpointed = copy.deepcopy(plain)
    checkpointed.backbone.set_grad_checkpointing(True)
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


def train_end_to_end(tmp_path, capsys, backbone: str, img_size: int, method: str = "ept", *opts: str) -> dict:
    """``medpeft train`` on the demo colon task (1-shot, one epoch, random init); the run record."""
    from test_cli import run_cli

    make_demo_data(tmp_path / "data")
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        [
            "train",
            "--task",
            "colon",
            "--data-root",
            str(tmp_path / "data"),
            "--shots",
            "1",
            "--exp",
            "1",
            "--method",
            method,
            *[a for o in opts for a in ("--opt", o)],
            "--backbone",
            backbone,
            "--no-pretrained",
            "--img-size",
            str(img_size),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--lr",
            "0.01",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, stderr
    assert "selected epoch 1" in stdout
    record = json.loads((out / "run.json").read_text())
    assert record["spec"]["backbone"] == backbone and record["model"]["img_size"] == img_size
    assert set(record["result"]["test_metrics"]) == {"accuracy", "AUC", "ECE", "Brier"}
    return record
