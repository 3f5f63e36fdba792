"""A small synthetic dataset in the MedFMC layout, for an offline demo and for tests.

Two tasks, deterministic for a seed (byte-identical files):

- ``endo``: 64x64 "endoscopy" frames, multi-label over ulcer/erosion/polyp/tumor. Each present class draws its own
  mark at a random place on a noisy mucosa-coloured background (ulcer: pale yellow disc; erosion: dark red streaks;
  polyp: shaded pink dome; tumor: irregular dark purple mass). Names follow the real style
  ``13333_2021.11_0002_54971718.png``, so the first 18 characters are the study.
- ``colon``: 64x64 "pathology" patches, binary. Stained tissue with purple nuclei; positive regions have more, larger
  and darker nuclei. Names follow the real style ``2019-...-1-1-1_2019-05-28 17_55_39-lv1-...p0003.png`` (a space
  inside, region = name minus ``pNNNN.png``); all patches of a region share its label.

Each task gets ``trainval.txt``, ``test_WithLabel.txt``, ``test_WithoutLabel.txt`` and 1/5-shot splits for
experiments 1 and 2, written by :func:`write_medfmc_splits`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from .annotations import write_annotations
from .medfmc import write_medfmc_splits
from .tasks import TASKS

SIZE = 64
SHOTS = (1, 5)
EXPS = (1, 2)
MARKER = ".medpeft-demo"


def _stamp(img: np.ndarray, cy: float, cx: float, r: float, color, alpha: float = 1.0) -> None:
    """Blend a soft-edged disc of ``color`` into ``img`` (in place)."""
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, SIZE)
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, SIZE)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    a = alpha * np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0.0, 1.0)[..., None]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + np.asarray(color, dtype=np.float64) * a


def _background(rng, base, tint) -> np.ndarray:
    low = rng.normal(0, 12, (4, 4, 3))
    low = np.asarray(Image.fromarray(np.uint8(np.clip(low + 128, 0, 255))).resize((SIZE, SIZE), Image.BICUBIC))
    return np.asarray(base, float) + tint + (low.astype(float) - 128) + rng.normal(0, 10, (SIZE, SIZE, 3))


def _endo_image(rng, label, tint) -> np.ndarray:
    img = _background(rng, (190, 95, 85), tint)
    strength = rng.uniform(0.55, 1.0)
    if label[0]:  # ulcer
        _stamp(img, *rng.uniform(12, 52, 2), rng.uniform(5, 9), (235, 220, 150), strength)
    if label[1]:  # erosion
        for _ in range(rng.integers(3, 6)):
            (y0, x0), angle, length = rng.uniform(8, 56, 2), rng.uniform(0, np.pi), rng.uniform(8, 16)
            for t in np.linspace(0, length, 12):
                _stamp(img, y0 + t * np.sin(angle), x0 + t * np.cos(angle), 1.2, (120, 20, 25), strength)
    if label[2]:  # polyp
        cy, cx, r = *rng.uniform(14, 50, 2), rng.uniform(7, 11)
        _stamp(img, cy, cx, r, (235, 150, 150), strength)
        _stamp(img, cy - r / 3, cx - r / 3, r / 3, (255, 225, 225), strength)
    if label[3]:  # tumor
        cy, cx = rng.uniform(16, 48, 2)
        for _ in range(5):
            _stamp(img, cy + rng.normal(0, 4), cx + rng.normal(0, 4), rng.uniform(4, 7), (85, 40, 95), strength)
    return img


def _colon_image(rng, positive, tint) -> np.ndarray:
    img = _background(rng, (225, 160, 195), tint)
    count, radius, color = (
        (rng.integers(28, 50), (1.8, 3.2), (70, 30, 110))
        if positive
        else (rng.integers(10, 26), (1.0, 2.0), (130, 80, 160))
    )
    for _ in range(count):
        _stamp(img, *rng.uniform(0, SIZE, 2), rng.uniform(*radius), color, rng.uniform(0.6, 1.0))
    return img


def _save(img: np.ndarray, path: Path) -> None:
    Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8)).save(path, format="PNG")


def _unique(used: set, draw):
    """A value of ``draw()`` not yet in ``used`` (then added to it)."""
    value = draw()
    while value in used:
        value = draw()
    used.add(value)
    return value


def _endo(rng, images: Path, studies: int, per_study: int, used: set) -> list:
    items = []
    for _ in range(studies):
        study = _unique(
            used, lambda: f"{rng.choice([13333, 14251])}_2021.{rng.integers(1, 13):02d}_{rng.integers(1, 10000):04d}"
        )
        tint = rng.normal(0, 12, 3)
        for _ in range(per_study):
            name = f"{study}_{rng.integers(10**7, 10**8)}.png"
            label = (rng.random(4) < 0.3).astype(np.uint8)
            _save(_endo_image(rng, label, tint), images / name)
            items.append((name, label))
    return items


def _colon(rng, images: Path, regions: int, per_region: int, used: set) -> list:
    items = []
    for r in range(regions):
        case = _unique(used, lambda: int(rng.integers(10000, 100000)))
        y, x, h, w = (*rng.integers(1000, 60000, 2), *rng.integers(2000, 10000, 2))
        time = f"{rng.integers(0, 24):02d}_{rng.integers(0, 60):02d}_{rng.integers(0, 60):02d}"
        region = f"2019-{case:05d}-1-1-1_2019-05-{rng.integers(10, 29)} {time}-lv1-{y}-{x}-{h}-{w}"
        positive, tint = r % 2, rng.normal(0, 10, 3)
        for p in sorted(rng.choice(100, per_region, replace=False)):
            name = f"{region}p{p:04d}.png"
            _save(_colon_image(rng, positive, tint), images / name)
            items.append((name, int(positive)))
    return items


def make_demo_data(root: str | Path, seed: int = 0) -> list[str]:
    """Write the demo tasks under ``root`` (``<root>/endo``, ``<root>/colon``); returns their names.

    A task folder written earlier by this function is replaced; any other existing, non-empty one is left alone
    (UserError).
    """
    root = Path(root)
    makers = {"endo": (_endo, (12, 7), (9, 8), (4, 5)), "colon": (_colon, (14, 6), (10, 7), (4, 5))}
    for name in makers:
        folder = root / name
        if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
            raise UserError(f"{folder} exists and is not a medpeft demo folder; choose another demo root")
    for i, (name, (make, trainval, test, unlabelled)) in enumerate(makers.items()):
        rng, used = np.random.default_rng((seed, i)), set()
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "images").mkdir(parents=True)
        (folder / MARKER).write_text("written by medpeft.data.make_demo_data\n")
        write_annotations(folder / "trainval.txt", make(rng, folder / "images", *trainval, used), TASKS[name])
        write_annotations(folder / "test_WithLabel.txt", make(rng, folder / "images", *test, used), TASKS[name])
        names = [n for n, _ in make(rng, folder / "images", *unlabelled, used)]
        (folder / "test_WithoutLabel.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        write_medfmc_splits(root, name, SHOTS, EXPS, seed)
    return list(makers)


UPSTREAM_SHAPES = ("disc", "ring", "streak", "cluster")
UPSTREAM_COLORS = ((200, 40, 40), (230, 210, 90), (80, 40, 120), (240, 160, 170))


def upstream_images(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A generic upstream task for pretraining the demo's backbone: ``n`` images (n, 64, 64, 3) uint8, labels (n,).

    Class = shape (disc, ring, streak, dot cluster) × colour (red, yellow, purple, pink): 16 classes, drawn at a
    random place and size on a random plain-coloured noisy background. It shares primitives, not labels, with the
    demo tasks, as an ImageNet-style pretraining shares them with medical images.
    """
    images, labels = np.empty((n, SIZE, SIZE, 3), np.uint8), rng.integers(0, 16, n)
    for i, label in enumerate(labels):
        shape, color = UPSTREAM_SHAPES[label // 4], UPSTREAM_COLORS[label % 4]
        background = rng.uniform(60, 200, 3)
        img = _background(rng, background, 0)
        cy, cx, r = *rng.uniform(14, 50, 2), rng.uniform(5, 11)
        if shape == "disc":
            _stamp(img, cy, cx, r, color)
        elif shape == "ring":
            _stamp(img, cy, cx, r, color)
            _stamp(img, cy, cx, r - 2.5, background)
        elif shape == "streak":
            angle = rng.uniform(0, np.pi)
            for t in np.linspace(-r, r, 12):
                _stamp(img, cy + t * np.sin(angle), cx + t * np.cos(angle), 1.5, color)
        else:
            for _ in range(7):
                _stamp(img, cy + rng.normal(0, r / 2), cx + rng.normal(0, r / 2), 1.8, color)
        images[i] = np.clip(np.round(img), 0, 255)
    return images, labels
