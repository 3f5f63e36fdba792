"""Is prompt tuning a distribution calibrator? Features, scatter, separability and figures of trained runs.

Zu et al. 2024 explain EPT's gains by its patch-wise scaling pulling the samples of a class together (smaller
intra-class scatter, Eq. 11) and by prompt tuning separating classes better than frozen pretrained features.
This package measures that on any run:

- numbers over arrays (:mod:`.scatter`): :func:`intra_class_scatter`, :func:`inter_class_scatter`,
  :func:`scatter_ratio`, :func:`linear_separability`, :func:`class_statistics`;
- features and EPT's scaling factors of a model (:mod:`.extract`): :func:`extract_features`, :func:`patch_scaling`;
- :func:`analyze` / ``medpeft analyze``: all of it for benches and run directories, with figures and a report.
"""

from .core import analyze, command, report_markdown
from .extract import RunRef, collect_runs, extract_features, forward_pass, patch_scaling
from .scatter import (class_statistics, inter_class_scatter, intra_class_scatter, linear_separability, per_class,
                      scatter_ratio)

__all__ = [
    "RunRef", "analyze", "class_statistics", "collect_runs", "command", "extract_features", "forward_pass",
    "inter_class_scatter", "intra_class_scatter", "linear_separability", "patch_scaling", "per_class",
    "report_markdown", "scatter_ratio",
]
