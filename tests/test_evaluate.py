"""Evaluation from cached frozen features: the same numbers, bit for bit, at a fraction of the cost."""

import numpy as np
import pytest
import torch

from medpeft import build_model
from medpeft.data import Samples, get_task, make_demo_data
from medpeft.evaluate import FeatureCache, forward_prefix, forward_suffix, predict
from medpeft.experiment import run_experiment
from medpeft.record import RunSpec

COLON = get_task("colon")


def samples(n=10, size=40, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    return Samples([f"s{i}" for i in range(n)], images, rng.integers(0, 2, n))


@pytest.mark.parametrize(
    "method,options,stages", [("linear", {}, 13), ("mlp", {"k": 2}, 13), ("partial", {"k": 2}, 10), ("ept", {}, 0)]
)
def test_prefix_then_suffix_is_the_model(method, options, stages):
    model = build_model(method, "vit_tiny_patch16_224", 2, pretrained=False, img_size=32, seed=0, **options).eval()
    assert model.method.frozen_stages(model.backbone) == stages
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(forward_suffix(model, forward_prefix(model, x, stages), stages), model(x))


@pytest.mark.parametrize("method,options", [("linear", {}), ("mlp", {}), ("partial", {"k": 3})])
def test_cached_predictions_are_bit_identical(method, options):
    model = build_model(method, "vit_tiny_patch16_224", 2, pretrained=False, img_size=32, seed=0, **options)
    data = samples()
    plain = predict(model, data, COLON, img_size=32, batch_size=4)
    cache = FeatureCache()
    first = predict(model, data, COLON, img_size=32, batch_size=4, features=cache)
    with torch.no_grad():  # the head moves: the cached prefix is still right, only the rest is recomputed
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    moved = predict(model, data, COLON, img_size=32, batch_size=4)
    again = predict(model, data, COLON, img_size=32, batch_size=4, features=cache)
    assert np.array_equal(plain, first) and np.array_equal(moved, again) and not np.array_equal(first, again)
    assert len(cache._memory) == 1


def test_other_weights_images_or_settings_never_hit():
    cache = FeatureCache()
    a = build_model("linear", "vit_tiny_patch16_224", 2, pretrained=False, img_size=32, seed=0)
    b = build_model("linear", "vit_tiny_patch16_224", 2, pretrained=False, img_size=32, seed=1)
    data = samples()
    key = lambda m, s=data, **kw: cache.key(
        m,
        13,
        s,
        **{
            "img_size": 32,
            "batch_size": 4,  # noqa: E731
            "device": torch.device("cpu"),
            "bf16": False,
            **kw,
        },
    )
    assert key(a) != key(b)  # another random backbone
    assert key(a) != key(a, samples(seed=1))  # other images
    assert key(a) != key(a, batch_size=8) and key(a) != key(a, img_size=48)
    assert key(a) == key(build_model("mlp", "vit_tiny_patch16_224", 2, pretrained=False, img_size=32, seed=0))


def test_on_disk_entries_are_shared(tmp_path):
    model = build_model("linear", "vit_tiny_patch16_224", 2, pretrained=False, img_size=32, seed=0)
    data = samples()
    first = predict(model, data, COLON, img_size=32, batch_size=4, features=FeatureCache(tmp_path))
    assert len(list(tmp_path.glob("*.npy"))) == 1
    fresh = FeatureCache(tmp_path)
    fresh_model = build_model("linear", "vit_tiny_patch16_224", 2, pretrained=False, img_size=32, seed=0)
    calls = []
    key = fresh.key(fresh_model, 13, data, img_size=32, batch_size=4, device=torch.device("cpu"), bf16=False)
    fresh.get(key, lambda: calls.append(1))
    assert calls == []  # read from disk, not computed
    assert np.array_equal(predict(fresh_model, data, COLON, img_size=32, batch_size=4, features=fresh), first)


@pytest.mark.parametrize("method", ["linear", "partial"])
def test_runs_give_identical_records_with_and_without_the_cache(tmp_path, method):
    make_demo_data(tmp_path / "data")
    spec = RunSpec(
        method=method,
        task="endo",
        data_root=str(tmp_path / "data"),
        shots=5,
        backbone="vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        train={"epochs": 3, "lr": 0.05},
    )
    plain = run_experiment(spec, tmp_path / "plain", progress=False)
    cached = run_experiment(spec, tmp_path / "cached", progress=False, features=FeatureCache())
    assert plain.result.history == cached.result.history and plain.test == cached.test
    assert plain.result.selected_epoch == cached.result.selected_epoch
