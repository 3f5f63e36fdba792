"""Conformal prediction: q̂ and sets against hand-computed values, and coverage over random exchangeable splits."""

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from scipy.special import expit, softmax

from medpeft.conformal import (
    ConformalConfig,
    ConformalWarning,
    calibrate,
    conformal_quantile,
    conformal_step,
    prediction_sets,
    quantile_rank,
    set_metrics,
    temper,
)
from medpeft.errors import ParameterError

CAL = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
CAL_Y = np.array([0, 1, 1, 2])
TEST = np.array([[0.6, 0.3, 0.1], [0.45, 0.45, 0.1], [0.34, 0.33, 0.33]])


def cfg(method="lac", alpha=0.1, **kw):
    return ConformalConfig(method, alpha, **kw)


@pytest.mark.parametrize("n,alpha", [(n, a) for n in (1, 4, 8, 9, 10, 19, 20, 99, 100) for a in (0.05, 0.1, 0.2, 0.3)])
def test_quantile_rank_is_the_exact_ceiling(n, alpha):
    assert quantile_rank(n, alpha) == math.ceil((n + 1) * (1 - Fraction(str(alpha))))


def test_lac_qhat_and_sets_by_hand():
    # LAC scores of the true classes: 0.3, 0.7, 0.4, 0.4; rank ⌈5(1 − α)⌉
    for alpha, expected in [(0.2, 0.7), (0.4, 0.4), (0.6, 0.4), (0.8, 0.3)]:
        assert calibrate(CAL, CAL_Y, cfg("lac", alpha), multilabel=False) == pytest.approx(expected)
    sets = prediction_sets(
        TEST, calibrate(CAL, CAL_Y, cfg("lac", 0.4), multilabel=False), cfg("lac", 0.4), multilabel=False
    )
    # row 0: 1 − 0.6 = q̂ exactly (a tie at the threshold is in the set); rows 1-2: every score above 0.4
    assert sets.tolist() == [[True, False, False], [False, False, False], [False, False, False]]
    sets = prediction_sets(TEST, 0.7, cfg("lac"), multilabel=False)
    assert sets.tolist() == [[True, True, False], [True, True, False], [True, True, True]]


def test_aps_qhat_and_sets_by_hand_with_ties():
    # APS scores Σ_{p_j ≥ p_y} p_j of the true classes: 0.7, 0.5 + 0.3, 0.6, 0.6 (class 2 of row 3 is not tied)
    assert calibrate(CAL, CAL_Y, cfg("aps", 0.2), multilabel=False) == pytest.approx(0.8)
    assert calibrate(CAL, CAL_Y, cfg("aps", 0.4), multilabel=False) == pytest.approx(0.7)
    sets = prediction_sets(TEST, 0.8, cfg("aps"), multilabel=False)
    # row 1's two tied classes both score 0.9: both out at 0.8, both in at 0.95
    assert sets.tolist() == [[True, False, False], [False, False, False], [True, False, False]]
    sets = prediction_sets(TEST, 0.95, cfg("aps"), multilabel=False)
    assert sets.tolist() == [[True, True, False], [True, True, False], [True, False, False]]
    # the tied calibration row: [0.2, 0.2, 0.6] with label 0 scores 1.0, as label 1 would
    assert calibrate(CAL[[3]].repeat(9, 0), np.zeros(9, int), cfg("aps", 0.1), multilabel=False) == pytest.approx(1.0)


def test_randomised_aps_by_hand_with_a_fixed_rng():
    u_cal, u_test = np.random.default_rng([7, 0]).random(4), np.random.default_rng([7, 1]).random(3)
    # Σ_{p_j > p_y} p_j + u · p_y
    cal_scores = [u_cal[0] * 0.7, 0.5 + u_cal[1] * 0.3, u_cal[2] * 0.6, u_cal[3] * 0.6]
    config = cfg("aps", 0.4, randomized=True)
    qhat = calibrate(CAL, CAL_Y, config, multilabel=False, seed=7)
    assert qhat == pytest.approx(sorted(cal_scores)[2])
    expected = [
        [sum(p for p in row if p > row[k]) + u * row[k] <= qhat for k in range(3)]
        for row, u in zip(TEST.tolist(), u_test)
    ]
    assert prediction_sets(TEST, qhat, config, multilabel=False, seed=7).tolist() == expected
    assert prediction_sets(TEST, qhat, config, multilabel=False, seed=7).tolist() == expected  # reproducible


def test_raps_by_hand():
    config = cfg("raps", 0.2, raps_lambda=0.1, raps_k_reg=1)
    # APS score + 0.1 · (rank − 1)⁺: 0.7 + 0, 0.8 + 0.1, 0.6 + 0, 0.6 + 0
    assert calibrate(CAL, CAL_Y, config, multilabel=False) == pytest.approx(0.9)
    # row 0: class 1 scores 0.9 + 0.1 = 1.0 > 0.9 (APS alone would take it at 0.9); row 2's tied classes rank 3
    sets = prediction_sets(TEST, 0.9, config, multilabel=False)
    assert sets.tolist() == [[True, False, False], [False, False, False], [True, False, False]]
    assert prediction_sets(TEST, 0.9, cfg("aps"), multilabel=False)[0].tolist() == [True, True, False]
    randomised = cfg("raps", 0.2, randomized=True, raps_lambda=0.5, raps_k_reg=0)
    u = np.random.default_rng([0, 1]).random(3)
    expected = [
        [
            sum(p for p in row if p > row[k]) + u_i * row[k] + 0.5 * (1 + sum(p > row[k] for p in row)) <= 1.6
            for k in range(3)
        ]
        for row, u_i in zip(TEST.tolist(), u)
    ]
    assert prediction_sets(TEST, 1.6, randomised, multilabel=False).tolist() == expected


def test_too_few_validation_images_give_every_class_and_one_warning_line():
    with pytest.warns(ConformalWarning) as caught:
        qhat = calibrate(CAL, CAL_Y, cfg("lac", 0.1), multilabel=False)
    assert qhat == math.inf and len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message and "n ≥ 9" in message and "1/(n + 1) = 0.2" in message
    assert prediction_sets(TEST, qhat, cfg("lac", 0.1), multilabel=False).all()
    # nine images are enough for α = 0.1: q̂ is the largest score, no warning
    probs = np.tile([[0.8, 0.2]], (9, 1)) * np.linspace(1, 0.9, 9)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConformalWarning)
        assert conformal_quantile(1 - probs[:, 0], 0.1) == pytest.approx(1 - probs[:, 0].min())


def test_mondrian_by_hand():
    probs = np.array(
        [
            [0.9, 0.1],
            [0.8, 0.2],
            [0.7, 0.3],
            [0.65, 0.35],  # class 0: LAC scores .1 .2 .3 .35
            [0.5, 0.5],
            [0.6, 0.4],
            [0.2, 0.8],
            [0.4, 0.6],
        ]
    )  # class 1: .5 .6 .2 .4
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    config = cfg("lac", 0.2, mondrian=True)
    qhat = calibrate(probs, labels, config, multilabel=False)
    assert qhat == pytest.approx([0.35, 0.6])
    sets = prediction_sets(np.array([[0.6, 0.4], [0.7, 0.3]]), qhat, config, multilabel=False)
    assert sets.tolist() == [[False, True], [True, False]]
    with pytest.warns(ConformalWarning) as caught:  # class 1 with 3 images cannot reach α = 0.2
        qhat = calibrate(probs[:7], labels[:7], config, multilabel=False, classes=["benign", "tumour"])
    assert qhat[0] == pytest.approx(0.35) and qhat[1] == math.inf
    assert len(caught) == 1 and "tumour (n = 3)" in str(caught[0].message) and "benign" not in str(caught[0].message)


def test_multilabel_per_label_by_hand():
    sig = np.array([[0.9, 0.1], [0.2, 0.3], [0.7, 0.8], [0.4, 0.5]])
    labels = np.array([[1, 0], [0, 0], [1, 1], [1, 0]])
    # label 0: scores 1 − P(true state) = .1 .2 .3 .6; label 1: .1 .3 .2 .5
    qhat = calibrate(sig, labels, cfg("lac", 0.2), multilabel=True)
    assert qhat == pytest.approx([0.6, 0.5])
    sets = prediction_sets(np.array([[0.5, 0.45]]), qhat, cfg("lac", 0.2), multilabel=True)
    assert sets.tolist() == [[[True, True], [True, False]]]  # label 0: both states; label 1: absent only
    metrics = set_metrics(sets, np.array([[1, 1]]), ["a", "b"])
    assert metrics == {
        "coverage": 0.5,
        "mean_set_size": 1.5,
        "singleton_rate": 0.5,
        "per_class_coverage": {"a": 1.0, "b": 0.0},
    }


def _huge_margins(val_margin, seed=3):
    """Binary logits: validation with the given margins of the true class, 200 test images with margins of class 1
    over class 0 in ±2000."""
    rng = np.random.default_rng(seed)
    test_margin = rng.uniform(-2000, 2000, 200)
    val_labels, test_labels = rng.integers(0, 2, len(val_margin)), rng.integers(0, 2, 200)
    val_z = np.zeros((len(val_margin), 2))
    val_z[np.arange(len(val_margin)), val_labels] = val_margin
    return val_z, val_labels, np.stack([np.zeros(200), test_margin], axis=1), test_labels, test_margin


def _sets_at(temperature, config, val_z, val_labels, test_z, test_labels):
    result = conformal_step(
        softmax(val_z / temperature, axis=1),
        val_labels,
        softmax(test_z / temperature, axis=1),
        test_labels,
        config,
        multilabel=False,
        classes=["no", "yes"],
    )
    sets = prediction_sets(
        softmax(test_z / temperature, axis=1), result.qhat, config, multilabel=False, threshold=result.threshold
    )
    assert result.test["mean_set_size"] == pytest.approx(sets.sum(1).mean())
    return sets


def test_lac_sets_of_huge_margins_are_those_of_exact_arithmetic():
    """Logit margins of hundreds (a run at a large learning rate): float64 probabilities round 1 − 10⁻²¹² to 1, yet
    the sets are those of exact arithmetic, which in a binary task keep class k iff its margin z_k − z_other is at
    least the calibration margin of rank ⌈(n + 1)(1 − α)⌉ by score, whatever the temperature."""
    val_margin = np.concatenate([[-786.0, -487.7, -436.8, -114.1], np.random.default_rng(0).uniform(10, 1200, 16)])
    val_z, val_labels, test_z, test_labels, test_margin = _huge_margins(val_margin)
    cut = np.sort(val_margin)[20 - quantile_rank(20, 0.1)]  # the 2nd-smallest margin: -487.7
    expected = np.stack([-test_margin >= cut, test_margin >= cut], axis=1)
    assert 0 < expected.sum(1).mean() < 2  # the float64 scores alone would keep both classes everywhere
    for temperature in (1.0, 50.0):
        assert _sets_at(temperature, cfg("lac"), val_z, val_labels, test_z, test_labels).tolist() == expected.tolist()


def test_aps_sets_of_huge_margins_are_those_of_exact_arithmetic():
    """Non-randomised APS in a binary task: the less likely class scores exactly 1, the likelier p_top; with every
    validation image right, the exact set holds the likelier class iff its margin is at most the rank-19 validation
    margin (p_top ≤ q̂), though every such p_top rounds to 1 in float64."""
    val_margin = np.random.default_rng(1).uniform(40, 700, 20)  # p_other ≥ 10⁻³⁰⁴: representable
    val_z, val_labels, test_z, test_labels, test_margin = _huge_margins(val_margin)
    cut = np.sort(val_margin)[quantile_rank(20, 0.1) - 1]
    top = np.abs(test_margin) <= cut
    expected = np.stack([top & (test_margin < 0), top & (test_margin > 0)], axis=1)
    assert 0 < expected.sum() < 200
    for temperature in (1.0, 50.0):
        assert _sets_at(temperature, cfg("aps"), val_z, val_labels, test_z, test_labels).tolist() == expected.tolist()


def test_set_metrics_by_hand():
    sets = np.array([[True, True, False], [False, False, True], [False, False, False], [True, False, False]])
    metrics = set_metrics(sets, np.array([1, 2, 0, 1]), ["x", "y", "z"])
    assert metrics == {
        "coverage": 0.5,
        "mean_set_size": 1.0,
        "singleton_rate": 0.5,
        "per_class_coverage": {"x": 0.0, "y": 0.5, "z": 1.0},
    }
    assert set_metrics(sets[:1], np.array([0]), ["x", "y", "z"])["per_class_coverage"]["y"] is None


def test_temper_from_probabilities_equals_scaled_logits():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, (50, 5))
    np.testing.assert_allclose(temper(softmax(z, axis=1), 2.5, False), softmax(z / 2.5, axis=1), atol=1e-12)
    np.testing.assert_allclose(temper(expit(z), 0.4, True), expit(z / 0.4), atol=1e-12)
    assert temper(np.array([[1.0, 0.0]]), 3.0, True).tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize(
    "bad,message,flag",
    [
        ({"method": "thr"}, "conformal 'thr': choose from", "--conformal 'thr'"),
        ({"alpha": 1.0}, "alpha 1.0 must be a number strictly between 0 and 1", "--alpha 1.0"),
        ({"raps_lambda": -1}, "raps_lambda -1 must be", "--raps-lambda -1"),
        ({"raps_k_reg": 1.5}, "raps_k_reg 1.5 must be an integer", "--raps-k-reg 1.5"),
    ],
)
def test_bad_settings_name_the_parameter_and_the_cli_its_flag(bad, message, flag):
    from medpeft.cli.options import flag_namer
    from medpeft.cli.train import train

    with pytest.raises(ParameterError, match=f"^{message}") as err:
        ConformalConfig(**bad)
    assert err.value.named(flag_namer(train)).startswith(flag)


# Coverage over 2,000 random exchangeable calibration/test splits of a synthetic problem --------------------------

TRIALS, N_TEST = 2000, 100


def synthetic(n_cal, classes=4, seed=0, hard=None):
    """TRIALS draws of n_cal + N_TEST images: over-confident softmax probabilities and labels from a tempered
    version of them (``hard``: that class's probabilities are shrunk, so marginal sets under-cover it)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, (TRIALS, n_cal + N_TEST, classes))
    truth = softmax(z / 2, axis=-1)
    labels = (truth.cumsum(-1) > rng.random(truth.shape[:2])[..., None]).argmax(-1)
    if hard is not None:
        z[..., hard] -= 2
    return softmax(z, axis=-1), labels


def coverages(probs, labels, n_cal, config, multilabel=False):
    """Per trial: (test coverage, its coverage per class) of sets calibrated on the trial's first n_cal images."""
    out, per_class = [], []
    for t in range(len(probs)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConformalWarning)
            qhat = calibrate(probs[t, :n_cal], labels[t, :n_cal], config, multilabel=multilabel, seed=t)
        sets = prediction_sets(probs[t, n_cal:], qhat, config, multilabel=multilabel, seed=t)
        classes = [str(k) for k in range(probs.shape[-1])]
        metrics = set_metrics(sets, labels[t, n_cal:], classes)
        out.append(metrics["coverage"])
        per_class.append([np.nan if v is None else v for v in metrics["per_class_coverage"].values()])
    return np.array(out), np.array(per_class)


def assert_in_band(values, n, alpha, exact=True):
    """Mean coverage within [1 − α, 1 − α + 1/(n + 1)] up to 3 standard errors, and (``exact``, scores without
    ties) at its expected value ⌈(n + 1)(1 − α)⌉ / (n + 1) within 4."""
    mean, se = np.nanmean(values), np.nanstd(values) / np.sqrt(np.isfinite(values).sum())
    assert 1 - alpha - 3 * se <= mean <= 1 - alpha + 1 / (n + 1) + 3 * se, (mean, se)
    if exact:
        assert abs(mean - quantile_rank(n, alpha) / (n + 1)) < 4 * se, (mean, se)


@pytest.mark.parametrize("n_cal", [20, 100])
@pytest.mark.parametrize(
    "config",
    [
        cfg("lac"),
        cfg("aps"),
        cfg("aps", randomized=True),
        cfg("raps", raps_lambda=0.05, raps_k_reg=1, randomized=True),
        cfg("lac", 0.2),
    ],
    ids=["lac", "aps", "aps-randomised", "raps-randomised", "lac-0.2"],
)
def test_marginal_coverage_over_random_splits(n_cal, config):
    probs, labels = synthetic(n_cal)
    covered, _ = coverages(probs, labels, n_cal, config)
    if config.method == "aps" and not config.randomized:
        # non-randomised APS ties at exactly 1 (the least likely class's score is the whole mass): the upper bound,
        # which needs scores without ties, does not apply; coverage is at least 1 − α
        mean, se = covered.mean(), covered.std() / np.sqrt(len(covered))
        assert mean >= 1 - config.alpha - 3 * se, (mean, se)
        return
    assert_in_band(covered, n_cal, config.alpha)


def test_mondrian_covers_every_class_where_marginal_sets_do_not():
    n_cal = 100
    probs, labels = synthetic(n_cal, classes=3, seed=1, hard=2)
    _, marginal = coverages(probs, labels, n_cal, cfg("lac"))
    assert np.nanmean(marginal[:, 2]) < 0.85  # the shrunk class is under-covered without Mondrian
    _, per_class = coverages(probs, labels, n_cal, cfg("lac", mondrian=True))
    for k in range(3):  # n per class varies with the split: each class's coverage is at least 1 − α
        values = per_class[:, k]
        mean, se = np.nanmean(values), np.nanstd(values) / np.sqrt(np.isfinite(values).sum())
        assert 0.9 - 3 * se <= mean <= 0.9 + 2 / (n_cal / 3) + 3 * se, (k, mean, se)


@pytest.mark.parametrize("n_cal", [20, 100])
def test_per_label_coverage_for_multilabel(n_cal):
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, (TRIALS, n_cal + N_TEST, 3))
    labels = (rng.random(z.shape) < expit(z / 2)).astype(np.uint8)
    _, per_label = coverages(expit(z), labels, n_cal, cfg("aps", randomized=True), multilabel=True)
    for c in range(3):
        assert_in_band(per_label[:, c], n_cal, 0.1)


@pytest.mark.parametrize("n_cal", [20, 100])
def test_lac_sets_equal_mapies_on_prefit_probabilities(n_cal):
    """MAPIE's split conformal classifier, given the probabilities as a prefit model, finds the same LAC sets (its
    APS conventions differ: randomised, last label; hence the exact formulas here)."""
    mapie = pytest.importorskip("mapie.classification")
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Probabilities(ClassifierMixin, BaseEstimator):
        def fit(self, x, y):
            self.classes_ = np.arange(x.shape[1])
            return self

        def predict_proba(self, x):
            return x

        def predict(self, x):
            return x.argmax(1)

    rng = np.random.default_rng(n_cal)
    probs, labels = softmax(rng.normal(0, 2, (n_cal + 200, 4)), axis=1), rng.integers(0, 4, n_cal + 200)
    reference = mapie.SplitConformalClassifier(
        Probabilities().fit(probs, labels), confidence_level=0.9, conformity_score="lac", prefit=True
    )
    reference.conformalize(probs[:n_cal], labels[:n_cal])
    _, expected = reference.predict_set(probs[n_cal:])
    qhat = calibrate(probs[:n_cal], labels[:n_cal], cfg("lac"), multilabel=False)
    np.testing.assert_array_equal(prediction_sets(probs[n_cal:], qhat, cfg("lac"), multilabel=False), expected[:, :, 0])
