"""Is prompt tuning a distribution calibrator? Features, scatter, separability and figures of trained runs.

Zu et al. 2024 explain EPT's gains by its patch-wise scaling pulling the samples of a class together (smaller
intra-class scatter, Eq. 11) and by prompt tuning separating classes better than frozen pretrained features.
This package measures that on any run:

- numbers over arrays (:mod:`.scatter`): :func:`intra_class_scatter`, :func:`inter_class_scatter`,
  :func:`scatter_ratio`, :func:`linear_separability`, :func:`class_statistics`;
- what a model gives (:mod:`.extract`): :func:`extract_features`, :func:`token_maps` (the method's per-token maps,
  such as EPT's patch-wise scaling), :func:`prompt_mass` (the attention mass a prompt takes, per block);
- paired comparisons of two methods (:mod:`.paired`): :func:`paired_comparison` (wins, median, Wilcoxon and sign
  tests), :func:`holm`;
- :func:`analyze` / ``medpeft analyze`` (:mod:`.analyze`): which runs (:mod:`.runs`), their numbers
  (:mod:`.measure`), figures (:mod:`.plots`, drawn by :mod:`.figures`) and the report (:mod:`.report`).
"""

from .analyze import analyze
from .extract import MassShare, extract_features, forward_pass, prompt_mass, token_maps
from .paired import PairedComparison, holm, paired_comparison
from .report import report_markdown
from .runs import RunRef, collect_runs
from .scatter import (
    class_statistics,
    inter_class_scatter,
    intra_class_scatter,
    linear_separability,
    per_class,
    scatter_ratio,
)

__all__ = [
    "MassShare",
    "PairedComparison",
    "RunRef",
    "analyze",
    "class_statistics",
    "collect_runs",
    "extract_features",
    "forward_pass",
    "holm",
    "inter_class_scatter",
    "intra_class_scatter",
    "linear_separability",
    "paired_comparison",
    "per_class",
    "prompt_mass",
    "report_markdown",
    "scatter_ratio",
    "token_maps",
]
