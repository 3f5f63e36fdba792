"""The numbers of the analysis: per run (and once per frozen backbone, ``pretrain``) the test features, their
scatter and separability, the test ECE and the method's per-token maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..data import ResizedImageCache
from ..errors import UserError
from ..experiment import load_run, load_splits
from ..families import family_of
from ..metrics import expected_calibration_error, task_metrics
from ..model import build_model
from ..record import RunRecord
from .extract import MassShare, extract_features, forward_pass, prompt_mass
from .report import PRETRAIN
from .runs import RunRef
from .scatter import class_statistics


@dataclass
class Measured:
    """What one analysed model leaves in memory for the figures: its features and predictions on the test list."""

    name: str
    label: str
    task: str
    shots: int | str | None
    exp: int
    seed: int
    features: np.ndarray
    labels: np.ndarray
    probs: np.ndarray | None
    test_key: tuple
    multilabel: bool
    classes: list[str]
    report_metric: str
    record: RunRecord | None = None
    maps: dict = field(default_factory=dict)
    maps_title: str | None = None
    grid: tuple | None = None
    num_prefix: int = 1
    prompt_mass: dict[str, dict[int, MassShare]] = field(default_factory=dict)


def small_blas():
    """One BLAS thread for the many tiny matrix problems (PCA, t-SNE, logistic regression on ~100 × D): several
    threads make them many times slower, most of all on a busy machine. Restored on exit."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _pretrain_key(record: RunRecord) -> tuple:
    spec = record.spec
    random_init = not spec.pretrained and not spec.weights
    return (spec.task, spec.data_root, spec.test_list, *_backbone_setup(record), spec.seed if random_init else None)


def _backbone_setup(record: RunRecord) -> tuple:
    """What a run's frozen backbone is (a random init of any seed counts as one setup)."""
    spec = record.spec
    return spec.backbone, spec.pretrained, spec.weights, record.model.img_size


def check_one_backbone(refs: list[RunRef]) -> None:
    """Refuse runs of different backbones in one analysis: their rows and ``pretrain`` would be pooled."""
    setups: dict[tuple, RunRef] = {}
    for ref in refs:
        setups.setdefault(_backbone_setup(ref.record), ref)
    if len(setups) > 1:
        (a, first), (b, second) = list(setups.items())[:2]
        raise UserError(
            f"{first.run_dir} ({_setup_name(a)}) and {second.run_dir} ({_setup_name(b)}) use different "
            "backbones: analyse each backbone's runs with its own medpeft analyze --out"
        )


def _setup_name(setup: tuple) -> str:
    backbone, pretrained, weights, img_size = setup
    return f"{backbone} at {img_size} px, {weights or ('pretrained' if pretrained else 'random init')}"


def measure(
    refs: list[RunRef], *, n_splits: int, device, batch_size: int, progress: bool
) -> tuple[dict[str, Measured], dict[str, dict[str, Any]]]:
    """(models in memory, JSON numbers) for every run of ``refs`` and every distinct frozen backbone (the runs share
    one backbone setup: :func:`check_one_backbone`)."""
    cache = ResizedImageCache()
    results: dict[str, Measured] = {}
    numbers: dict[str, dict[str, Any]] = {}
    pretrain_names: dict[tuple, str] = {}
    bar = tqdm(refs, desc="analyze", disable=not progress or None)
    for ref in bar:
        bar.set_postfix_str(ref.name)
        model, record = load_run(ref.run_dir, device=str(device))
        spec = record.spec
        data = load_splits(spec)
        test = data.test
        if test is None or test.labels is None or len(test) < 2:
            raise UserError(f"{ref.run_dir}: its test list has no labelled images; the analysis needs them")
        img_size = model.config.img_size
        common = dict(
            task=spec.task,
            exp=spec.exp,
            seed=spec.seed,
            labels=test.labels,
            test_key=(spec.task, tuple(test.names)),
            multilabel=data.task.multilabel,
            classes=list(data.task.classes),
            report_metric=data.task.report_metric,
            num_prefix=family_of(model.backbone).num_prefix_tokens,
        )
        fwd = forward_pass(
            model, test, data.task, img_size, batch_size=batch_size, cache=cache, device=device, mass=True
        )
        mass = {}
        if fwd.prompt_mass:  # and at the run's initialisation: the same seed rebuilds it exactly
            initial = build_model(
                spec.method,
                spec.backbone,
                data.task.num_classes,
                pretrained=spec.pretrained,
                weights=spec.weights,
                img_size=img_size,
                seed=spec.seed,
                **spec.options,
            )
            mass = {
                "init": prompt_mass(
                    initial, test, data.task, img_size, batch_size=batch_size, cache=cache, device=device
                ),
                "trained": fwd.prompt_mass,
            }
            del initial
        results[ref.name] = Measured(
            ref.name,
            ref.label,
            shots=spec.shots,
            features=fwd.features,
            probs=fwd.probabilities,
            record=record,
            maps=fwd.maps,
            maps_title=fwd.maps_title,
            grid=family_of(model.backbone).patch_grid,
            prompt_mass=mass,
            **common,
        )
        numbers[ref.name] = numbers_of(
            results[ref.name],
            n_splits,
            method=spec.method,
            run_dir=str(ref.run_dir),
            options=spec.options,
            maps_name=fwd.maps_name,
        )
        key = _pretrain_key(record)
        if key in pretrain_names:
            continue
        del model
        frozen = build_model(
            "linear",
            spec.backbone,
            data.task.num_classes,
            pretrained=spec.pretrained,
            weights=spec.weights,
            img_size=img_size,
            seed=spec.seed,
            mean=spec.mean,
            std=spec.std,
        )
        feats = extract_features(frozen, test, data.task, img_size, batch_size=batch_size, cache=cache, device=device)
        name = f"{PRETRAIN}/{spec.task}"
        if name in numbers:
            name = f"{name}/{spec.backbone}@{img_size}/seed{spec.seed}"
        pretrain_names[key] = name
        results[name] = Measured(name, PRETRAIN, shots=None, features=feats, probs=None, **common)
        numbers[name] = numbers_of(
            results[name],
            n_splits,
            method=PRETRAIN,
            backbone=spec.backbone,
            pretrained=spec.pretrained,
            weights=spec.weights,
            img_size=img_size,
        )
    return results, numbers


def numbers_of(res: Measured, n_splits: int, maps_name: str | None = None, **extra) -> dict[str, Any]:
    """The JSON record of one model: scatter numbers, separability, test ECE and metrics, per-token map summary."""
    with small_blas():
        stats = class_statistics(res.features, res.labels, n_splits=n_splits)
    out = {
        "label": res.label,
        "task": res.task,
        "shots": res.shots,
        "exp": res.exp,
        "seed": res.seed,
        "report_metric": res.report_metric,
        **extra,
        "n_test": len(res.features),
        "feature_dim": res.features.shape[1],
        **stats,
        "ECE": None,
    }
    if res.probs is not None:
        out["ECE"] = expected_calibration_error(res.probs, res.labels, res.multilabel)
        out["test_metrics"] = task_metrics(res.probs, res.labels, res.multilabel)
    if res.maps:
        layers = sorted(res.maps)
        s = np.stack([res.maps[i] for i in layers])
        p = res.num_prefix
        out[maps_name] = {
            "blocks": layers,
            "cls_mean": s[:, 0].tolist() if p else None,
            "patch_mean": s[:, p:].mean(axis=1).tolist(),
            "patch_min": s[:, p:].min(axis=1).tolist(),
            "patch_max": s[:, p:].max(axis=1).tolist(),
        }
    if res.prompt_mass:
        out["prompt_mass"] = {
            "blocks": sorted(res.prompt_mass["trained"]),
            **{
                when: {stat: [getattr(shares[i], stat) for i in sorted(shares)] for stat in ("mean", "min", "max")}
                for when, shares in res.prompt_mass.items()
            },
        }
    return out
