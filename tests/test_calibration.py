"""Post-hoc temperature scaling: the fit, its invariants, degenerate validation sets, and the run records."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medpeft import metrics
from medpeft.calibration import CalibrationWarning, fit_temperature, nll
from medpeft.data import make_demo_data
from medpeft.experiment import run_experiment
from medpeft.record import RunSpec


def overconfident(multilabel: bool, temperature: float, n=4000, classes=4, seed=0):
    """Targets drawn from the calibrated probabilities of logits z; the model reports ``temperature`` · z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, classes))
    if multilabel:
        targets = (rng.random((n, classes)) < 1 / (1 + np.exp(-z))).astype(np.uint8)
    else:
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        targets = np.array([rng.choice(classes, p=row) for row in p])
    return temperature * z, targets


@pytest.mark.parametrize("multilabel", [False, True])
def test_nll_is_the_training_loss(multilabel):
    logits, targets = overconfident(multilabel, 2.0, n=50)
    x = torch.tensor(logits) / 1.7
    if multilabel:
        expected = F.binary_cross_entropy_with_logits(
            x, torch.tensor(targets, dtype=torch.float64), reduction="sum"
        ) / len(x)
    else:
        expected = F.cross_entropy(x, torch.tensor(targets))
    assert nll(logits, targets, multilabel, 1.7) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("multilabel,true_t", [(False, 3.0), (False, 0.5), (True, 2.5)])
def test_recovers_a_known_temperature(multilabel, true_t):
    logits, targets = overconfident(multilabel, true_t)
    fitted = fit_temperature(logits, targets, multilabel)
    assert fitted.temperature == pytest.approx(true_t, rel=0.06)
    assert fitted.val_nll_after < fitted.val_nll_before
    assert fitted.val_nll_after == pytest.approx(nll(logits, targets, multilabel, fitted.temperature))
    for t in (0.8 * fitted.temperature, 1.25 * fitted.temperature):  # a minimum, not just a decrease
        assert nll(logits, targets, multilabel, t) > fitted.val_nll_after


@pytest.mark.parametrize("multilabel,classes", [(False, 2), (False, 4), (True, 4)])
def test_scaling_keeps_accuracy_and_rankings_and_changes_ece(multilabel, classes):
    logits, targets = overconfident(multilabel, 3.0, n=600, classes=classes)
    t = fit_temperature(logits, targets, multilabel).temperature

    def probs(z):
        return 1 / (1 + np.exp(-z)) if multilabel else np.exp(z) / np.exp(z).sum(1, keepdims=True)

    before = metrics.task_metrics(probs(logits), targets, multilabel)
    after = metrics.task_metrics(probs(logits / t), targets, multilabel)
    # one-vs-rest AUC of softmax outputs keeps its ranking only with two classes
    for name in ("mAP", "AUC") if multilabel else ("accuracy", "AUC") if classes == 2 else ("accuracy",):
        assert after[name] == pytest.approx(before[name], abs=1e-12)
    assert after["ECE"] < before["ECE"] and after["Brier"] < before["Brier"]


@pytest.mark.parametrize("case", ["one class", "perfect", "multi-label perfect"])
def test_degenerate_validation_sets_warn_and_keep_t_1(case):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(12, 3))
    if case == "one class":
        targets, multilabel = np.zeros(12, dtype=int), False
    elif case == "perfect":
        targets, multilabel = logits.argmax(1), False
    else:
        targets, multilabel = (logits > 0).astype(np.uint8), True
    with pytest.warns(CalibrationWarning, match="T = 1"):
        fitted = fit_temperature(logits, targets, multilabel)
    assert fitted.temperature == 1.0 and fitted.val_nll_after == fitted.val_nll_before and fitted.note


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root)
    return root


@pytest.mark.parametrize("task,classes", [("colon", 2), ("endo", 4)])
def test_a_calibrated_run_records_both_and_submits_the_calibrated_probabilities(demo_root, tmp_path, task, classes):
    def spec(calibrate):
        return RunSpec(
            method="linear",
            task=task,
            data_root=str(demo_root),
            shots=5,
            exp=1,
            backbone="vit_tiny_patch16_224",
            pretrained=False,
            img_size=32,
            calibrate=calibrate,
            train={"epochs": 3, "lr": 0.05},
        )

    plain = run_experiment(spec("none"), tmp_path / "plain", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        record = run_experiment(spec("temperature"), tmp_path / "cal", progress=False)
    assert plain.result.calibration is None
    assert record.test == plain.test  # the uncalibrated metrics are untouched
    cal = json.loads((tmp_path / "cal" / "run.json").read_text())["result"]["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0
    assert cal["val_nll_after"] <= cal["val_nll_before"] + 1e-12
    rows = (tmp_path / "cal" / f"{task}_5-shot_submission.csv").read_text().splitlines()
    probs = np.array([[float(v) for v in r.rsplit(",", classes)[1:]] for r in rows])
    names = [r.rsplit(",", classes)[0] for r in rows]
    labels = np.array([get_label(demo_root, task, n) for n in names])
    recomputed = metrics.task_metrics(probs, labels, task == "endo")
    assert recomputed["ECE"] == pytest.approx(cal["test"]["ECE"], abs=1e-6)
    assert recomputed["Brier"] == pytest.approx(cal["test"]["Brier"], abs=1e-6)
    kept = ("mAP", "AUC") if task == "endo" else ("accuracy", "AUC")
    for name in kept:
        assert cal["test"][name] == pytest.approx(record.test[name], abs=1e-9)


def get_label(root, task, name):
    from medpeft.data import get_task, read_annotations

    labels = dict(read_annotations(root / task / "test_WithLabel.txt", get_task(task)))
    return labels[name]
