"""medpeft.analysis.paired against independent definitions: the exact Wilcoxon and sign tests enumerated by hand
(every sign assignment, binomial sums with math.comb) and Holm's correction worked out on paper."""

import itertools
import math

import numpy as np
import pytest

from medpeft.analysis import holm, paired_comparison


def _exact_wilcoxon(d) -> float:
    """Two-sided exact p of the signed-rank statistic W+ (no ties, no zeros): 2 × the smaller tail over all 2ⁿ sign
    assignments of the ranks, capped at 1."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    observed = ranks[np.asarray(d) > 0].sum()
    totals = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=len(d))]
    low = sum(t <= observed for t in totals) / len(totals)
    high = sum(t >= observed for t in totals) / len(totals)
    return min(1.0, 2 * min(low, high))


def _exact_sign(wins: int, losses: int) -> float:
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(
    "d", [[1.5, -0.5, 2.0, 3.5, 0.25, 4.0, -1.0], [-3.0, -1.0, 2.0, -4.5, -6.0, 0.5, -7.0, -2.5, -8.0], [0.1, 0.2, 0.3]]
)
def test_wilcoxon_and_sign_test_equal_their_enumerated_definitions(d):
    t = paired_comparison(d)
    wins, losses = sum(x > 0 for x in d), sum(x < 0 for x in d)
    assert (t.n, t.wins, t.losses) == (len(d), wins, losses)
    assert t.median == pytest.approx(sorted(d)[len(d) // 2]) and t.mean == pytest.approx(sum(d) / len(d))
    assert t.p_wilcoxon == pytest.approx(_exact_wilcoxon(d))
    assert t.p_sign == pytest.approx(_exact_sign(wins, losses))


def test_zero_and_non_finite_differences():
    t = paired_comparison([0.0, 2.0, np.nan, 1.0, 0.0, 3.0, np.inf])
    # nan and inf dropped: n 5, median of 0, 0, 1, 2, 3; zeros out of both tests: ranks 1-3 all positive
    assert (t.n, t.wins, t.losses, t.median, t.mean) == (5, 3, 0, 1.0, 1.2)
    assert t.p_wilcoxon == pytest.approx(2 / 2**3) and t.p_sign == pytest.approx(2 / 2**3)
    nothing = paired_comparison([0.0, 0.0])
    assert (nothing.wins, nothing.losses, nothing.p_wilcoxon, nothing.p_sign) == (0, 0, 1.0, 1.0)
    empty = paired_comparison([])
    assert empty.n == 0 and math.isnan(empty.median) and math.isnan(empty.mean)


def test_holm_by_hand():
    # sorted: 0.005 (×5), 0.01 (×4), 0.02 (×3), 0.04 (×2), 0.3 (×1), each at least the one before, capped at 1
    p = [0.04, 0.005, 0.3, 0.02, 0.01]
    assert holm(p) == pytest.approx([0.08, 0.025, 0.3, 0.06, 0.04])
    # a running maximum: 0.012 × 3 = 0.036, then 0.013 × 2 = 0.026 is raised to 0.036; 0.9 × 1
    assert holm([0.013, 0.012, 0.9]) == pytest.approx([0.036, 0.036, 0.9])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([]).shape == (0,)
