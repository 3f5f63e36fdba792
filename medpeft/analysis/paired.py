"""Paired comparisons of two methods over the cells they share, and Holm's correction: plain functions over arrays.

A *cell* is one (shots, sampling) setting both methods ran; its *difference* is one method's score minus the other's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binomtest, wilcoxon


@dataclass(frozen=True)
class PairedComparison:
    """What :func:`paired_comparison` gives: counts, centre and two-sided p-values of the differences."""

    n: int  #: finite differences
    wins: int  #: differences > 0
    losses: int  #: differences < 0
    median: float  #: median difference (nan when n = 0)
    mean: float  #: mean difference (nan when n = 0)
    p_wilcoxon: float  #: Wilcoxon signed-rank test on the non-zero differences (1.0 when there is none)
    p_sign: float  #: exact sign test: binomial(wins, wins + losses, ½) (1.0 when there is no non-zero difference)


def paired_comparison(differences: ArrayLike) -> PairedComparison:
    """Summarise paired differences (a − b per shared cell; non-finite ones dropped).

    The Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`, two-sided; its exact distribution for small
    samples without ties) drops zero differences first; the sign test counts wins against losses, ties left out.
    """
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    nonzero = d[d != 0]
    return PairedComparison(
        n=len(d),
        wins=wins,
        losses=losses,
        median=float(np.median(d)) if len(d) else np.nan,
        mean=float(np.mean(d)) if len(d) else np.nan,
        p_wilcoxon=float(wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0,
        p_sign=float(binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0,
    )


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input's order.

    With the m p-values sorted ascending, p₍ᵢ₎ (i = 1..m) becomes max over j ≤ i of min(1, (m − j + 1) p₍ⱼ₎): a
    family-wise error rate of α holds when those below α are rejected.
    """
    pvalues = np.asarray(pvalues, dtype=float)
    adjusted, running = np.empty(len(pvalues)), 0.0
    for rank, i in enumerate(np.argsort(pvalues, kind="stable")):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
