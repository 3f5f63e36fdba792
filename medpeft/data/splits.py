"""Few-shot split generation. Validation images are always disjoint from training images.

The original MedFMC generator let chest/endo val files overlap their train files (it compared a file name with
``[name, label]`` pairs); the generators here exclude every training image from val.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .shots import check_shots, parse_shots
from .tasks import TaskSpec, get_task


def study_id(name: str) -> str:
    """Endo study (patient examination): the first 18 characters, e.g. ``13333_2021.12_0007``."""
    return name[:18]


def region_id(name: str) -> str:
    """Colon region (slide crop): the name minus its last 9 characters ``pNNNN.png``."""
    return name[:-9]


GROUP_KEYS = {"endo": study_id, "colon": region_id}
"""How MedFMC tasks group images into shots; a task not listed here samples single images (as chest does)."""


def few_shot_split(
    labels: ArrayLike, shots: int | str, seed: int, val_per_class: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`per_class_few_shot` for K-shot, :func:`fraction_split` for a percentage (``"20%"``)."""
    value = parse_shots(shots)
    if isinstance(value, float):
        return fraction_split(labels, value, seed, val_per_class)
    return per_class_few_shot(labels, value, seed, val_per_class)


def fraction_split(
    labels: ArrayLike, fraction: float, seed: int, val_per_class: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified draw of ``fraction`` of the images as ``(train_idx, val_idx)``, val disjoint from train.

    Strata are the classes (single-label) or the distinct label vectors (multi-label); the total is
    round(fraction · n), shared out over the strata by largest remainder (so each stratum keeps its share), every
    stratum drawn at random (seeded). Val is as in :func:`per_class_few_shot`: ``val_per_class`` further images per
    class of the rest, or all of it when None.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = [row.tobytes() for row in labels] if labels.ndim == 2 else labels.tolist()
    strata: dict = {}
    for i, key in enumerate(keys):
        strata.setdefault(key, []).append(i)
    members = [np.array(strata[k]) for k in sorted(strata, key=str)]
    quotas = np.array([fraction * len(m) for m in members])
    counts = np.floor(quotas).astype(int)
    short = max(int(round(fraction * len(labels))), 1) - counts.sum()
    counts[np.argsort(-(quotas - counts), kind="stable")[:short]] += 1
    train = np.sort(np.concatenate([np.empty(0, np.int64)] + [rng.permutation(m)[:c] for m, c in zip(members, counts)]))
    rest = np.setdiff1d(np.arange(len(labels)), train)
    if val_per_class is None:
        return train, rest
    classes = (
        [np.flatnonzero(labels[rest, c] == 1) for c in range(labels.shape[1])]
        if labels.ndim == 2
        else [np.flatnonzero(labels[rest] == c) for c in np.unique(labels[rest])]
    )
    val = np.concatenate([np.empty(0, np.int64)] + [rest[rng.permutation(idx)[:val_per_class]] for idx in classes])
    return train, np.unique(val)


def medfmc_few_shot(items: list, task: str | TaskSpec, shots: int, seed: int) -> tuple[list, list]:
    """Draw a K-shot ``(train_items, val_items)`` from a trainval pool, by the MedFMC grouping rules.

    For each class c in order, the groups (``GROUP_KEYS``: endo study, colon region, else the single image) holding
    a c-positive image are shuffled and K kept (all when there are at most K); train gets every c-positive image of
    those groups. An image can thus appear once per class it is drawn for (duplicate lines, as in the original chest
    and endo files). Val is the pool minus every train image (by name). ``seed``: anything
    ``numpy.random.default_rng`` accepts.
    """
    task = get_task(task)
    check_shots(shots)
    rng = np.random.default_rng(seed)
    key = GROUP_KEYS.get(task.name)
    train = []
    for c in range(task.num_classes):
        groups: dict = {}
        for i, (name, label) in enumerate(items):
            if (label[c] == 1) if task.multilabel else (label == c):
                groups.setdefault(key(name) if key else i, []).append(i)
        chosen = list(groups)
        if len(chosen) > shots:
            chosen = [chosen[j] for j in rng.permutation(len(chosen))[:shots]]
        train += [items[i] for g in chosen for i in groups[g]]
    taken = {name for name, _ in train}
    return train, [item for item in items if item[0] not in taken]


def per_class_few_shot(
    labels: ArrayLike, shots: int, seed: int, val_per_class: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train_idx, val_idx)`` of a K-shot split of ``labels`` ((n,) class indices or (n, C) 0/1).

    Single-label: K images per class. Multi-label: K positives per class, drawn independently per class like chest,
    so ``train_idx`` may repeat an image. Val holds no train image: ``val_per_class`` further images per class (the
    positives of each class, for multi-label), or every remaining image when None. For a fixed seed, the K-shot
    train set contains the smaller-K ones. ``train_idx`` is in class order, ``val_idx`` sorted.
    """
    check_shots(shots)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if labels.ndim == 2:
        members = [np.flatnonzero(labels[:, c] == 1) for c in range(labels.shape[1])]
    else:
        members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    perms = [rng.permutation(m) for m in members]
    train = np.concatenate([np.empty(0, np.int64), *(p[:shots] for p in perms)])
    rest = np.ones(len(labels), dtype=bool)
    rest[train] = False
    if val_per_class is None:
        return train, np.flatnonzero(rest)
    val = np.concatenate([np.empty(0, np.int64), *(p[rest[p]][:val_per_class] for p in perms)])
    return train, np.unique(val)
