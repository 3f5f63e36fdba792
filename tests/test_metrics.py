"""Metrics checked against independent definitions (naive loops, scikit-learn, hand-computed numbers)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medpeft.errors import UserError
from medpeft.metrics import (
    accuracy,
    auc,
    average_precision,
    brier_score,
    expected_calibration_error,
    mean_ap,
    reliability_curve,
    task_metrics,
)


def naive_map(scores, targets):
    """mmcls mAP as a double loop: precision at each positive rank, averaged per class, then over classes."""
    aps = []
    for c in range(scores.shape[1]):
        tp, total = 0, 0.0
        for rank, i in enumerate(np.argsort(-scores[:, c]), start=1):
            if targets[i, c] == 1:
                tp += 1
                total += tp / rank
        positives = int(np.sum(targets[:, c] == 1))
        aps.append(total / positives if positives else 0.0)
    return float(np.mean(aps))


def multilabel_data(seed, n=60, c=5, ties=False):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(int)
    targets[0] = 1  # every class has a positive
    scores = np.clip(0.4 * targets + 0.6 * rng.random((n, c)), 0, 1)
    return (np.round(scores, 1) if ties else scores), targets


def softmax_data(seed, n=80, c=4):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % c
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels


# ---- mAP ----


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_ap_matches_naive_loop(seed, ties):
    scores, targets = multilabel_data(seed, ties=ties)
    assert mean_ap(scores, targets) == pytest.approx(naive_map(scores, targets), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_ap_matches_sklearn_without_ties(seed):
    scores, targets = multilabel_data(seed)
    expected = average_precision_score(targets, scores, average="macro")
    assert mean_ap(scores, targets) == pytest.approx(expected, abs=1e-12)


def test_class_without_positives_counts_as_zero():
    scores, targets = multilabel_data(3, c=4)
    targets[:, 2] = 0
    others = [average_precision_score(targets[:, c], scores[:, c]) for c in (0, 1, 3)]
    assert mean_ap(scores, targets) == pytest.approx(np.mean(others) * 3 / 4, abs=1e-12)
    assert average_precision(scores[:, 2], targets[:, 2]) == 0.0


def test_mean_ap_hand_example():
    # class 0: ranks 1..4 have labels 1,0,1,0 -> AP = (1/1 + 2/3) / 2 = 5/6
    # class 1: order by score is samples 1,2,3,0 with labels 0,0,1,0 -> AP = (1/3) / 1 = 1/3
    scores = [[0.9, 0.1], [0.8, 0.4], [0.7, 0.3], [0.6, 0.2]]
    targets = [[1, 0], [0, 0], [1, 0], [0, 1]]
    assert mean_ap(scores, targets) == pytest.approx((5 / 6 + 1 / 3) / 2, abs=1e-12)


def test_difficult_labels_are_not_counted():
    # ranked labels -1, 0, 1: the positive is 2nd among the non-difficult ones -> precision 1/2
    assert average_precision([0.9, 0.8, 0.7], [-1, 0, 1]) == pytest.approx(0.5, abs=1e-12)


# ---- AUC ----


def test_auc_multilabel_matches_sklearn():
    scores, targets = multilabel_data(4)
    expected = roc_auc_score(targets, scores, average="macro")
    assert auc(scores, targets, multilabel=True) == pytest.approx(expected, abs=1e-12)


def test_auc_multilabel_skips_undefined_class():
    scores, targets = multilabel_data(5, c=4)
    targets[:, 1] = 0
    expected = np.mean([roc_auc_score(targets[:, c], scores[:, c]) for c in (0, 2, 3)])
    assert auc(scores, targets, multilabel=True) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(auc(scores, np.zeros_like(targets), multilabel=True))


def test_auc_medfmc_quirk_repeats_previous_class():
    # Endo test list: the last class (tumour) has no positives; MedFMC repeats class 2's AUC for it
    scores, targets = multilabel_data(6, c=4)
    targets[:, 3] = 0
    a = [roc_auc_score(targets[:, c], scores[:, c]) for c in range(3)]
    assert auc(scores, targets, multilabel=True, undefined="medfmc") == pytest.approx(
        (a[0] + a[1] + a[2] + a[2]) / 4, abs=1e-12
    )
    targets[:, 0] = 0
    with pytest.raises(UserError):
        auc(scores, targets, multilabel=True, undefined="medfmc")
    with pytest.raises(UserError):
        auc(scores, targets, multilabel=True, undefined="ignore")


def test_auc_binary_is_roc_auc_of_positive_column():
    probs, labels = softmax_data(7, c=2)
    assert auc(probs, labels, multilabel=False) == pytest.approx(roc_auc_score(labels, probs[:, 1]), abs=1e-12)


def test_auc_multiclass_is_macro_ovr():
    probs, labels = softmax_data(8, c=4)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert auc(probs, labels, multilabel=False) == pytest.approx(expected, abs=1e-12)


def test_auc_multiclass_skips_absent_class():
    probs, labels = softmax_data(9, c=4)
    keep = labels != 3
    probs, labels = probs[keep], labels[keep]
    expected = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(3)])
    assert auc(probs, labels, multilabel=False) == pytest.approx(expected, abs=1e-12)


# ---- accuracy ----


def test_accuracy_hand_example():
    # argmax: 1, 0, 0 (tie -> lowest index), 1; labels 1, 1, 0, 0 -> 2 of 4 correct
    scores = [[0.1, 0.9], [0.6, 0.4], [0.5, 0.5], [0.3, 0.7]]
    assert accuracy(scores, [1, 1, 0, 0]) == 0.5


# ---- calibration ----


def test_ece_zero_when_perfectly_calibrated():
    # multi-label: 10 entries at each probability p, exactly 10*p of them positive
    probs = np.repeat([0.1, 0.3, 0.5, 0.7, 0.9], 10).reshape(-1, 2)
    labels = np.concatenate([np.arange(10) < 10 * p for p in (0.1, 0.3, 0.5, 0.7, 0.9)]).astype(int).reshape(-1, 2)
    assert expected_calibration_error(probs, labels, multilabel=True, n_bins=5) == pytest.approx(0, abs=1e-12)
    # multi-class: confidence 0.8 right 8 of 10 times, confidence 0.6 right 3 of 5 times
    probs = np.array([[0.8, 0.2]] * 10 + [[0.6, 0.4]] * 5)
    labels = np.array([0] * 8 + [1] * 2 + [0] * 3 + [1] * 2)
    assert expected_calibration_error(probs, labels, multilabel=False, n_bins=5) == pytest.approx(0, abs=1e-12)


def test_ece_multiclass_hand_example():
    # bins (0, .5] and (.5, 1]; confidences .9 (right), .8 (wrong), .6 (right) | .4 (wrong)
    # upper bin: 3/4 * |2/3 - 2.3/3| = 0.075; lower bin: 1/4 * |0 - 0.4| = 0.1
    scores = [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.4, 0.3, 0.3]]
    labels = [0, 0, 0, 1]
    assert expected_calibration_error(scores, labels, multilabel=False, n_bins=2) == pytest.approx(0.175, abs=1e-12)


def test_ece_multilabel_hand_example():
    # 3 bins over 4 entries: (0,1/3]: p .1,.2 labels 0,1 -> 2/4*|.5-.15| = .175
    # (1/3,2/3]: p .5 label 0 -> 1/4*.5 = .125; (2/3,1]: p .9 label 1 -> 1/4*.1 = .025
    scores = [[0.1, 0.9], [0.2, 0.5]]
    targets = [[0, 1], [1, 0]]
    assert expected_calibration_error(scores, targets, multilabel=True, n_bins=3) == pytest.approx(0.325, abs=1e-12)


def test_reliability_curve_bins_and_counts():
    # bin i is (i/n, (i+1)/n]; 0 goes into the first bin
    conf, acc, count = reliability_curve([[0.0, 0.5, 0.51, 1.0]], [[0, 1, 1, 1]], multilabel=True, n_bins=2)
    assert count.tolist() == [2, 2]
    np.testing.assert_allclose(conf, [0.25, 0.755])
    np.testing.assert_allclose(acc, [0.5, 1.0])
    scores, targets = multilabel_data(10, n=40, c=3)
    conf, acc, count = reliability_curve(scores, targets, multilabel=True)
    assert count.sum() == 40 * 3 and len(conf) == len(acc) == 15
    assert np.array_equal(np.isnan(conf), count == 0)
    probs, labels = softmax_data(11, n=50)
    assert reliability_curve(probs, labels, multilabel=False, n_bins=10)[2].sum() == 50


def test_brier_score_matches_explicit_formula():
    probs, labels = softmax_data(12)
    expected = np.mean(
        [sum((probs[i, c] - (labels[i] == c)) ** 2 for c in range(probs.shape[1])) for i in range(len(labels))]
    )
    assert brier_score(probs, labels, multilabel=False) == pytest.approx(expected, abs=1e-12)
    scores, targets = multilabel_data(13)
    expected = (
        sum((scores[i, c] - targets[i, c]) ** 2 for i in range(scores.shape[0]) for c in range(scores.shape[1]))
        / scores.size
    )
    assert brier_score(scores, targets, multilabel=True) == pytest.approx(expected, abs=1e-12)


# ---- task-level helpers ----


def test_task_metrics_keys():
    scores, targets = multilabel_data(14)
    assert set(task_metrics(scores, targets, multilabel=True)) == {"mAP", "AUC", "ECE", "Brier"}
    probs, labels = softmax_data(15)
    assert set(task_metrics(probs, labels, multilabel=False)) == {"accuracy", "AUC", "ECE", "Brier"}


def test_selection_and_report_metrics():
    from medpeft.data import TaskSpec, get_task

    assert [get_task(t).selection_metric for t in ("chest", "colon", "endo", "isic")] == [
        "mAP",
        "accuracy",
        "AUC",
        "accuracy",
    ]
    assert [get_task(t).report_metric for t in ("chest", "colon", "endo")] == ["mAP", "accuracy", "mAP"]
    assert TaskSpec("mine", ("a", "b", "c"), multilabel=True).selection_metric == "mAP"


# ---- validation ----


@pytest.mark.parametrize(
    "call",
    [
        lambda: mean_ap(np.zeros((5, 3)), np.zeros((5, 4))),
        lambda: average_precision(np.zeros(5), np.zeros(4)),
        lambda: auc(np.zeros((5, 3)), np.zeros((5, 2)), multilabel=True),
        lambda: auc(np.full((5, 2), 0.5), np.zeros((5, 2), dtype=int), multilabel=False),
        lambda: accuracy(np.zeros((5, 3)), np.zeros(4, dtype=int)),
        lambda: accuracy(np.zeros((5, 3)), np.full(5, 3)),
        lambda: expected_calibration_error(np.zeros(5), np.zeros(5), multilabel=True),
        lambda: brier_score(np.zeros((5, 3)), np.zeros((4, 3)), multilabel=True),
        lambda: reliability_curve(np.full((2, 2), 1.5), np.zeros((2, 2)), multilabel=True),
    ],
)
def test_bad_shapes_raise_user_error(call):
    with pytest.raises(UserError):
        call()
