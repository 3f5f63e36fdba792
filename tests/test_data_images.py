"""Image decoding, transforms, the eval image cache and ImageDataset."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import medpeft.data.cache as cache_module
from medpeft.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TASKS,
    ImageDataset,
    ResizedImageCache,
    Samples,
    eval_dataset,
    eval_transform,
    read_image,
    train_dataset,
    train_transform,
)
from medpeft.errors import UserError


@pytest.fixture
def images(tmp_path):
    """Non-square images in several PIL modes, with random content."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    paths = {}
    for mode in ("RGB", "L", "RGBA", "P"):
        img = Image.fromarray(rgb).convert(mode)
        paths[mode] = tmp_path / f"{mode}.png"
        img.save(paths[mode])
    Image.fromarray(rgb).save(tmp_path / "jpeg.jpg", quality=90)
    paths["jpeg"] = tmp_path / "jpeg.jpg"
    return paths


def test_read_image_gives_rgb(images):
    for path in images.values():
        img = read_image(path)
        assert img.mode == "RGB" and img.size == (53, 37)
    gray = np.asarray(read_image(images["L"]))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(np.asarray(read_image(array))[..., 2], array)


def test_16_bit_and_float_greyscale_use_their_own_range(tmp_path):
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # a 12-bit X-ray's values in a 16-bit PNG
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    grey = np.asarray(read_image(tmp_path / "ramp.png"))
    assert Image.open(tmp_path / "ramp.png").mode == "I;16" and (grey == grey[..., :1]).all()
    assert len(np.unique(grey)) >= 200 and np.array_equal(grey[..., 0], np.rint(ramp / 4095 * 255))
    rng = np.random.default_rng(0)
    arrays = {
        "I;16": ramp[::2] // 3 + 20000,  # 20000..21365, nowhere near 65,535
        "I": rng.integers(-70000, 90000, (9, 7)).astype(np.int32),
        "F": np.where(rng.random((9, 7)) < 0.1, np.nan, rng.normal(0, 3, (9, 7))).astype(np.float32),
    }
    for mode, values in arrays.items():
        name = f"{mode.replace(';', '_')}.tif"
        Image.fromarray(values).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == mode
        lo, hi = np.nanmin(values), np.nanmax(values)
        expected = np.nan_to_num(np.rint((values.astype(np.float64) - lo) / (hi - lo) * 255), nan=0)
        assert np.array_equal(np.asarray(read_image(tmp_path / name))[..., 0], expected), name
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "flat.png")
    assert not np.asarray(read_image(tmp_path / "flat.png")).any()  # no range: black


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match=r"cannot read image .*missing\.png: no such file"):
        read_image(tmp_path / "missing.png")
    garbage = tmp_path / "x.png"
    garbage.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(UserError, match=r"cannot read image .*x\.png") as info:
        read_image(garbage)
    assert "\n" not in str(info.value)
    truncated = tmp_path / "cut.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(UserError, match="cut.png"):
        read_image(truncated)
    with pytest.raises(UserError, match="uint8"):
        read_image(np.zeros((4, 4), dtype=np.float32))


def test_eval_transform_is_a_square_bicubic_resize(images):
    img = read_image(images["RGB"])
    expected = np.asarray(img.resize((24, 24), Image.BICUBIC), dtype=np.float32) / 255
    expected = (expected - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    out = eval_transform(24)(img)
    assert out.dtype == torch.float32 and out.shape == (3, 24, 24)
    assert torch.allclose(out, torch.from_numpy(expected).permute(2, 0, 1), atol=1e-5)


def test_train_transform_crops_and_normalises(images):
    img = read_image(images["RGB"])
    torch.manual_seed(0)
    outs = [train_transform(16)(img) for _ in range(3)]
    assert all(o.shape == (3, 16, 16) and o.dtype == torch.float32 for o in outs)
    assert not torch.equal(outs[0], outs[1])


def test_cached_eval_tensors_equal_uncached(images, tmp_path):
    arrays = [np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)]
    samples = Samples(list(images) + ["array"], [str(p) for p in images.values()] + arrays)
    for cache in (ResizedImageCache(), ResizedImageCache(tmp_path / "cache")):
        plain, cached = eval_dataset(samples, 32), eval_dataset(samples, 32, cache)
        for i in range(len(samples)):
            assert torch.equal(plain[i][0], cached[i][0])
            assert torch.equal(plain[i][0], cached[i][0])  # served from the cache the second time


def test_memory_cache_decodes_once(images, monkeypatch):
    calls = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: calls.append(a[0]) or real_open(*a, **k))
    cache = ResizedImageCache()
    first = cache.get(images["RGB"], 16)
    assert first.shape == (16, 16, 3) and first.dtype == np.uint8 and len(calls) == 1
    os.remove(images["RGB"])
    assert cache.get(images["RGB"], 16) is first and len(calls) == 1
    assert cache.get(images["L"], 16).shape == (16, 16, 3) and len(calls) == 2
    array = np.zeros((5, 5), np.uint8)
    assert cache.get(array, 8) is cache.get(array, 8)
    assert cache.get(array.copy(), 8) is cache.get(array, 8)  # arrays are keyed by content, not identity
    other = array.copy()
    other[2, 2] = 1
    assert not np.array_equal(cache.get(other, 8), cache.get(array, 8))


def test_memory_caches_are_bounded_least_recently_used_first():
    from medpeft.evaluate import FeatureCache

    cache = ResizedImageCache(memory_mb=3 * 16 * 16 * 3 / 2**20)  # room for three 16-px images
    arrays = [np.full((4, 4), i, np.uint8) for i in range(5)]
    for a in arrays:
        cache.get(a, 16)
    assert len(cache._memory) == 3 and cache._memory.currsize <= cache._memory.maxsize
    first = cache.get(arrays[-1], 16)
    assert cache.get(arrays[-1].copy(), 16) is first  # the most recent is kept
    huge = np.zeros((64, 64), np.uint8)
    assert cache.get(huge, 64).shape == (64, 64, 3)  # larger than the whole budget: returned, not kept
    features = FeatureCache(memory_mb=2 * 400 / 2**20)
    for i in range(4):
        assert features.get(str(i), lambda i=i: np.full(100, i, np.float32))[0] == i
    assert len(features._memory) == 2


def test_disk_cache_is_reused_by_a_fresh_cache(images, tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    first = ResizedImageCache(directory).get(images["jpeg"], 20)
    assert len(list(directory.glob("*.npy"))) == 1 and not list(directory.glob("*.tmp"))

    def no_decoding(source):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_module, "read_image", no_decoding)
    assert np.array_equal(ResizedImageCache(directory).get(images["jpeg"], 20), first)
    monkeypatch.undo()
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(images["jpeg"])  # new content, size and mtime
    os.utime(images["jpeg"], ns=(1, 1))
    assert ResizedImageCache(directory).get(images["jpeg"], 20).max() == 0
    assert len(list(directory.glob("*.npy"))) == 2


def test_image_dataset_targets(images):
    paths = [str(images["RGB"]), str(images["L"])]
    multi = ImageDataset(Samples(["a", "b"], paths, np.array([[0, 1, 1], [1, 0, 0]], np.uint8)), eval_transform(8))
    image, target, index = multi[1]
    assert image.shape == (3, 8, 8) and target.dtype == torch.float32 and target.tolist() == [1, 0, 0] and index == 1
    single = train_dataset(Samples(["a", "b"], paths, np.array([1, 0])), 8)
    assert single[0][1].dtype == torch.int64 and single[0][1].item() == 1
    unlabelled = Samples(["a", "b"], paths)
    assert eval_dataset(unlabelled, 8)[0][1].item() == -1
    assert eval_dataset(unlabelled, 8, task=TASKS["endo"])[0][1].tolist() == [0, 0, 0, 0]
    batch = next(iter(torch.utils.data.DataLoader(multi, batch_size=2)))
    assert batch[0].shape == (2, 3, 8, 8) and batch[1].shape == (2, 3) and batch[2].tolist() == [0, 1]
