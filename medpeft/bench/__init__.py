"""The bench: methods × tasks × shots × experiments × seeds, with validation-set hyper-parameter search, on any
executor, resumable, summarised as mean ± std of the selected runs.

- :mod:`.config`: the grid (:class:`BenchConfig`, :class:`MethodEntry`, the paper's search grids);
- :mod:`.selection`: which candidate of a cell counts (validation only);
- :mod:`.store`: the bench folder (run directories, ``runs.jsonl``, lock);
- :mod:`.summary`: ``summary.md`` / ``summary.csv``;
- :mod:`.executors`, :mod:`.worker`, :mod:`.runner`: running the runs; :mod:`.ray_executor` and
  :mod:`.slurm_executor` spread them over a Ray cluster or SLURM jobs (imported when chosen by
  :mod:`.executor_choice`);
- :mod:`.tracking`: the bench as an MLflow parent run, its runs as children.
"""

from .config import PAPER_GRIDS, BenchConfig, MethodEntry, read_config
from .executor_choice import make_executor
from .executors import Executor, LocalExecutor, Outcome
from .runner import collect, run_bench
from .selection import choose, selection
from .store import BenchStore, read_index
from .summary import aggregate, summary_markdown, write_summary
from .worker import RunJob, execute

__all__ = [
    "PAPER_GRIDS",
    "BenchConfig",
    "BenchStore",
    "Executor",
    "LocalExecutor",
    "MethodEntry",
    "Outcome",
    "RunJob",
    "aggregate",
    "choose",
    "collect",
    "execute",
    "make_executor",
    "read_config",
    "read_index",
    "run_bench",
    "selection",
    "summary_markdown",
    "write_summary",
]
