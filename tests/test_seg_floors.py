"""Segmentation floors against an exhaustive Otsu search and a logistic regression fitted here with scikit-learn."""

import itertools

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medpeft import seg_floors
from medpeft.seg_metrics import segmentation_metrics


def three_tissue_image(rng, shape=(12, 12), step=8):
    """A label map of three bands and a noisy image whose grey level rises with the label (multiples of ``step``,
    so that the exhaustive search stays small)."""
    mask = np.zeros(shape, np.int64)
    mask[:, shape[1] // 3 :] = 1
    mask[:, 2 * shape[1] // 3 :] = 2
    mask[rng.random(shape) < 0.1] = rng.integers(0, 3)
    image = np.clip(40 + 70 * mask + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)
    return image // step * step, mask


def between_class_variance(values, thresholds):
    values = values.astype(np.float64).ravel()
    edges = [-1, *thresholds, 256]
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        member = [v for v in values if lo < v <= hi]
        if member:
            total += len(member) / len(values) * (sum(member) / len(member) - values.mean()) ** 2
    return total


def exhaustive_otsu(values, n_regions):
    levels = sorted(set(values.ravel().tolist()))
    best, best_t = -1.0, None
    for ts in itertools.combinations(levels[:-1], n_regions - 1):
        v = between_class_variance(values, ts)
        if v > best + 1e-9:
            best, best_t = v, ts
    return best_t, best


@pytest.mark.parametrize("n_regions", [2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_otsu_thresholds_match_exhaustive_search(n_regions, seed):
    image, _ = three_tissue_image(np.random.default_rng(seed), (12, 10), step=1)
    expected, best = exhaustive_otsu(image, n_regions)
    got = seg_floors.otsu_thresholds(image, n_regions)
    assert abs(between_class_variance(image, got) - best) < 1e-9
    assert tuple(got.tolist()) == expected


def test_otsu_few_levels_and_regions():
    image = np.array([[3, 3, 9], [9, 9, 3]], np.uint8)
    assert seg_floors.otsu_thresholds(image, 3).tolist() == [3]
    assert seg_floors.otsu_regions(image, 3).tolist() == [[0, 0, 1], [1, 1, 0]]


def test_otsu_floor_names_regions_by_training_majority():
    rng = np.random.default_rng(2)
    train = [three_tissue_image(rng) for _ in range(2)]
    test = [three_tissue_image(rng) for _ in range(3)]
    got = seg_floors.otsu_floor(
        ([i for i, _ in train], [m for _, m in train]), ([i for i, _ in test], [m for _, m in test]), 3
    )
    votes = np.zeros((3, 3))
    for image, mask in train:
        ts, _ = exhaustive_otsu(image, 3)
        for v, c in zip(image.ravel(), mask.ravel()):
            votes[sum(v > t for t in ts), c] += 1
    preds = []
    for image, _ in test:
        ts, _ = exhaustive_otsu(image, 3)
        preds.append(np.array([[votes[sum(v > t for t in ts)].argmax() for v in row] for row in image]))
    expected = segmentation_metrics(preds, [m for _, m in test], 3)
    assert got.keys() == expected.keys() and all(abs(got[k] - expected[k]) < 1e-9 for k in expected)
    assert "ECE" not in got and got["mIoU"] > 0.5


def test_logistic_floor_matches_sklearn():
    rng = np.random.default_rng(3)
    train, val, test = ([three_tissue_image(rng) for _ in range(n)] for n in (2, 2, 2))
    pair = lambda split: ([i for i, _ in split], [m for _, m in split])
    grid = (0.01, 1.0)
    got = seg_floors.logistic_floor(pair(train), pair(val), pair(test), 3, c_grid=grid)

    def features(image):
        h, w = image.shape
        return np.array([[image[r, c] / 255, (r + 0.5) / h, (c + 0.5) / w] for r in range(h) for c in range(w)])

    x = np.vstack([features(i) for i, _ in train])
    y = np.concatenate([m.ravel() for _, m in train])
    results = []
    for c in grid:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(x, y)
        probs = {
            name: [model.predict_proba(features(i)).T.reshape(3, *i.shape) for i, _ in split]
            for name, split in (("val", val), ("test", test))
        }
        val_miou = segmentation_metrics([p.argmax(0) for p in probs["val"]], [m for _, m in val], 3)["mIoU"]
        test_metrics = segmentation_metrics(
            [p.argmax(0) for p in probs["test"]], [m for _, m in test], 3, probs=probs["test"]
        )
        results.append((val_miou, c, test_metrics))
    best = max(results, key=lambda r: r[0])  # first of equal maxima
    assert got["C"] == best[1]
    assert all(abs(got[k] - best[2][k]) < 1e-9 for k in best[2]) and "ECE" in got


def test_run_seg_floors_scores_the_bench_splits(tmp_path):
    from PIL import Image

    from medpeft.bench import BenchConfig
    from medpeft.experiment import load_splits

    rng = np.random.default_rng(5)
    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    for i in range(10):
        image, mask = three_tissue_image(rng, (16, 16), step=1)
        Image.fromarray(image).save(tmp_path / "d" / "images" / f"im{i}.png")
        Image.fromarray((mask == 2).astype(np.uint8) * 255).save(tmp_path / "d" / "masks" / f"im{i}.png")
    config = BenchConfig.from_dict(
        {
            "methods": ["linear"],
            "tasks": ["seg-folder"],
            "data_root": str(tmp_path / "d"),
            "shots": [2],
            "exps": [1, 2],
            "backbone": "vit_tiny_patch16_224",
            "pretrained": False,
            "img_size": 32,
        }
    )
    rows = seg_floors.run_seg_floors(config, tmp_path / "out", progress=False)
    assert [(r["exp"], r["floor"]) for r in rows] == [(1, "otsu"), (1, "logreg"), (2, "otsu"), (2, "logreg")]
    assert (tmp_path / "out" / "floors.jsonl").is_file() and "logistic" in (tmp_path / "out" / "floors.md").read_text()
    spec = next(config.specs())
    data = load_splits(spec)

    def read(samples):  # the files themselves: grey levels, and the 0/255 masks as class indices 0/1
        images = [np.array(Image.open(tmp_path / "d" / "images" / f"{n}.png")) for n in samples.names]
        return images, [np.array(Image.open(tmp_path / "d" / "masks" / f"{n}.png")) // 255 for n in samples.names]

    train, val, test = read(data.train), read(data.val), read(data.test)
    assert not set(data.train.names) & set(data.test.names)
    expected = seg_floors.logistic_floor(train, val, test, 2, class_names=["background", "foreground"])
    assert rows[1]["setting"] == expected.pop("C") and rows[1]["test"] == expected
