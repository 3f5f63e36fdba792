"""A bench's grid: method entries (with optional validation searches) × tasks × shots × experiments × seeds."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data import get_dataset
from ..errors import UserError
from ..experiment import check_spec
from ..methods import get_method
from ..record import RunSpec, method_label
from ..types import TrainConfig

GRID_KEYS = ("methods", "tasks", "shots", "exps", "seeds")
#: The RunSpec fields every run of a bench shares (the rest come from the grid and the method entry).
SHARED_KEYS = tuple(
    f.name
    for f in dataclasses.fields(RunSpec)
    if f.name not in ("method", "task", "shots", "exp", "options", "label", "candidate", "refit")
)
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
#: Where the runs are tracked: not a run setting (no run key or shared setting depends on it).
TRACKING_KEYS = ("mlflow", "mlflow_experiment")

#: The hyper-parameter grids of the paper's appendix A.1 (Zu et al. 2024), searched on validation.
PAPER_GRIDS: dict[str, dict[str, list]] = {
    "ept": {"prompt_length": [5, 10, 20, 50, 100, 200, 400, 600]},
    "vpt": {"prompt_length": [1, 5, 10, 50, 100, 150]},
    "vp": {"prompt_size": [1, 5, 10, 50, 100, 150]},
    "lora": {"r": [1, 4, 8, 32, 64]},
    "adapter": {"reduction": [1, 4, 8, 32, 64]},
}


@dataclass
class MethodEntry:
    """A method with options under a label, and optionally a grid searched on validation.

    ``search`` maps option names and/or training fields to the values to try (several keys: their product, in
    order); ``"paper"`` takes :data:`PAPER_GRIDS` (no search for a method without one). ``then`` is a second,
    staged search of the same form: once a cell's ``search`` candidates have ended, its values are tried at the
    candidate chosen so far (e.g. the prompt length at the chosen learning rate), and the cell's selection is
    redone over every candidate of both stages; a value that gives the chosen candidate's own run is not run
    twice. Every candidate of both stages is checked on construction.
    """

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    search: dict[str, list] | str | None = None
    then: dict[str, list] | None = None

    def __post_init__(self):
        get_method(self.method, **self.options)  # unknown methods and options fail before any run starts
        if not self.label:
            self.label = method_label(self.method, self.options)
        if self.search == "paper":
            self.search = dict(PAPER_GRIDS.get(self.method, {}))
        if self.search is not None and not isinstance(self.search, dict):
            raise UserError(f"method {self.label!r}: search must be a mapping of option -> values, or 'paper'")
        if self.then is not None and not isinstance(self.then, dict):
            raise UserError(f"method {self.label!r}: then must be a mapping of option -> values")
        self.search = {k: _as_list(v) for k, v in (self.search or {}).items()}
        self.then = {k: _as_list(v) for k, v in (self.then or {}).items()}
        for name, grid in (("search", self.search), ("then", self.then)):
            for key, values in grid.items():
                if not values:
                    raise UserError(f"method {self.label!r}: {name} {key} has no values")
        for candidate in self.candidates():
            self.split(candidate)
            for follow_up in self.then_candidates(candidate):
                self.split(follow_up)

    def candidates(self) -> list[dict[str, Any]]:
        """The searched values of every candidate, in grid order ([{}] without a search)."""
        return grid_product(self.search)

    def then_candidates(self, chosen: dict[str, Any]) -> list[dict[str, Any]]:
        """The staged search's candidates at the ``chosen`` candidate, in grid order, without those that set
        exactly what ``chosen`` does (its run already exists); [] without a ``then``."""
        if not self.then:
            return []
        same = self._setting(chosen)
        return [c for c in ({**chosen, **values} for values in grid_product(self.then)) if self._setting(c) != same]

    def _setting(self, candidate: dict[str, Any]) -> tuple:
        options, train = self.split(candidate)
        return get_method(self.method, **options), TrainConfig(**train)

    def split(self, candidate: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(method options, training fields) of a candidate, checked."""
        train = {k: v for k, v in candidate.items() if k in TRAIN_KEYS}
        options = {**self.options, **{k: v for k, v in candidate.items() if k not in TRAIN_KEYS}}
        try:
            get_method(self.method, **options)
            TrainConfig(**train)
        except UserError as err:
            raise UserError(f"search of {self.label!r}, candidate {candidate}: {err}") from None
        return options, train


@dataclass
class BenchConfig:
    """The grid and what every run shares (``shared``: :data:`SHARED_KEYS`, ``train`` a mapping of
    :class:`~medpeft.train.TrainConfig` fields). ``refit``: after a search, rerun the chosen candidate on
    train + val and report that run (VPT's protocol). ``mlflow``: log the bench to this MLflow tracking URI, in
    the experiment ``mlflow_experiment`` (default: the bench folder's name)."""

    methods: list[MethodEntry]
    tasks: list[str]
    shots: list[int | str] = field(default_factory=lambda: [1, 5, 10])
    exps: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    seeds: list[int] = field(default_factory=lambda: [0])
    refit: bool = False
    shared: dict[str, Any] = field(default_factory=dict)
    mlflow: str | None = None
    mlflow_experiment: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "bench config") -> BenchConfig:
        """From a parsed YAML mapping: the grid keys, ``search`` (a default for every method entry, e.g.
        ``paper``), ``refit``, the shared run settings (``data_root``, ``backbone``, ``train`` …) and the tracking
        (``mlflow``, ``mlflow_experiment``)."""
        if not isinstance(raw, dict):
            raise UserError(f"{source}: expected a mapping of bench settings")
        valid = set(GRID_KEYS) | set(SHARED_KEYS) | set(TRACKING_KEYS) | {"search", "refit"}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise UserError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
        missing = sorted(k for k in ("methods", "tasks") if not raw.get(k))
        if missing:
            raise UserError(f"{source}: missing {missing}")
        if not raw.get("data_root"):
            roots = {get_dataset(t).root(None) if get_dataset(t).default_root else None for t in _as_list(raw["tasks"])}
            if None in roots or len(roots) != 1:
                raise UserError(f"{source}: missing ['data_root']")
            raw = {**raw, "data_root": roots.pop()}
        default_search = raw.get("search")
        methods = [method_entry(m, source, default_search) for m in _as_list(raw["methods"])]
        shared = {k: raw[k] for k in SHARED_KEYS if raw.get(k) is not None}
        shared["train"] = dict(raw.get("train") or {})
        TrainConfig.from_dict(shared["train"])
        grid = {k: _as_list(raw[k]) for k in ("tasks", "shots", "exps", "seeds") if k in raw}
        tracking = {k: str(raw[k]) for k in TRACKING_KEYS if raw.get(k) is not None}
        if "mlflow_experiment" in tracking and "mlflow" not in tracking:
            raise UserError(f"{source}: mlflow_experiment applies with mlflow (the tracking URI)")
        config = cls(methods, refit=bool(raw.get("refit", False)), shared=shared, **grid, **tracking)
        first = next(config.specs(), None)  # the first spec checks the shared settings
        if first is not None:
            check_spec(first)  # the backbone, image size and weights file, before anything is run or written
        return config

    def setup(self) -> dict[str, Any]:
        """What every run shares and reruns into the same OUT must agree on (``bench.json``); without the data root
        where it is the one the tasks' package provides (the task names that data, wherever it is installed)."""
        return {**self.portable_shared(), "refit": self.refit}

    def portable_shared(self) -> dict[str, Any]:
        """``shared`` without a data root the tasks' package provides (:meth:`from_dict` finds it again)."""
        datasets = [get_dataset(t) for t in self.tasks]
        try:
            packaged = all(d.default_root for d in datasets) and {d.root(None) for d in datasets} == {
                self.shared.get("data_root")
            }
        except UserError:  # the package is not installed: the data root was given
            packaged = False
        return {k: v for k, v in self.shared.items() if not (packaged and k == "data_root")}

    def specs(self) -> Iterator[RunSpec]:
        """Every candidate run of the grid, cell by cell, candidates in grid order."""
        for entry, task, shots, exp, seed in itertools.product(
            self.methods, self.tasks, self.shots, self.exps, self.seeds
        ):
            for candidate in entry.candidates():
                yield self.spec(entry, candidate, task, shots, exp, seed)

    def spec(
        self,
        entry: MethodEntry,
        candidate: dict[str, Any],
        task: str,
        shots: int | str,
        exp: int,
        seed: int,
        *,
        refit: bool = False,
    ) -> RunSpec:
        options, train = entry.split(candidate)
        train = {**self.shared.get("train", {}), **train, "seed": seed, **({"select": "last"} if refit else {})}
        return RunSpec(
            method=entry.method,
            task=task,
            shots=shots,
            exp=exp,
            options=options,
            label=entry.label,
            candidate=candidate,
            refit=refit,
            **{**self.shared, "train": train},
        )

    def entry(self, label: str) -> MethodEntry | None:
        return next((e for e in self.methods if e.label == label), None)


def grid_product(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of a search's values, in grid order (the first key varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def method_entry(item, source: str, default_search) -> MethodEntry:
    """One entry of a config's ``methods`` (a name, or a mapping of method, options, label, search, then);
    ``default_search`` is the config's shared ``search``; errors name ``source``."""
    if isinstance(item, str):
        return MethodEntry(item, search=default_search)
    keys = {"method", "options", "label", "search", "then"}
    if isinstance(item, dict) and "method" in item and set(item) <= keys:
        return MethodEntry(
            item["method"],
            dict(item.get("options") or {}),
            item.get("label") or "",
            item.get("search", default_search),
            item.get("then"),
        )
    raise UserError(f"{source}: a method is a name or a mapping with keys {sorted(keys)}; got {item!r}")


def read_config(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML bench config (see :meth:`BenchConfig.from_dict`)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise UserError(f"bench config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise UserError(f"bench config {path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"bench config {path}: expected a mapping of bench settings")
    return raw
