"""The grid runner: methods × tasks × shots × experiments × seeds, resumable, summarised as mean ± std.

``OUT/runs.jsonl`` gets one JSON line per finished run, appended atomically; a rerun skips the runs already there,
so an interrupted bench loses nothing. Each run keeps its run directory under ``OUT/runs/``. ``OUT/summary.md`` and
``OUT/summary.csv`` are rewritten after every run.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml
from tqdm.auto import tqdm

from .data import ResizedImageCache
from .errors import UserError
from .experiment import MEDFMC_TASKS, RunSpec, load_data, run_experiment, write_json
from .methods import get_method

PAPER_CELLS = [(t, k) for t in MEDFMC_TASKS for k in (1, 5, 10)]


@dataclass
class MethodEntry:
    """A method with options under a label (the label names it in tables; default: the method name)."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        get_method(self.method, **self.options)  # unknown methods and options fail before any run starts
        if not self.label:
            self.label = method_label(self.method, self.options)


def method_label(method: str, options: dict[str, Any]) -> str:
    """The default label of a method with options: ``ept``, ``vp(prompt_size=4)``."""
    extra = ",".join(f"{k}={v}" for k, v in (options or {}).items())
    return f"{method}({extra})" if extra else method


def run_key(label: str, task: str, shots: int, exp: int, seed: int) -> str:
    """A run's key in ``runs.jsonl``: ``label/task/K-shot/expN/seedS``."""
    return f"{label}/{task}/{shots}-shot/exp{exp}/seed{seed}"


@dataclass
class BenchConfig:
    """The grid and what every run shares. ``train`` holds :class:`~medpeft.train.TrainConfig` fields."""

    methods: list[MethodEntry]
    tasks: list[str]
    data_root: str
    shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    exps: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    seeds: list[int] = field(default_factory=lambda: [0])
    backbone: str = "vit_base_patch16_224.orig_in21k"
    pretrained: bool = True
    weights: str | None = None
    img_size: int | None = None
    test_list: str | None = None
    train: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "bench config") -> BenchConfig:
        """Build from a parsed YAML mapping; methods are names or ``{method, options, label}`` mappings."""
        if not isinstance(raw, dict):
            raise UserError(f"{source}: expected a mapping of bench settings")
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise UserError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
        missing = sorted(k for k in ("methods", "tasks", "data_root") if not raw.get(k))
        if missing:
            raise UserError(f"{source}: missing {missing}")
        raw = dict(raw)
        raw["methods"] = [_method_entry(m, source) for m in _as_list(raw["methods"])]
        for key in ("tasks", "shots", "exps", "seeds"):
            if key in raw:
                raw[key] = _as_list(raw[key])
        return cls(**raw)

    def shared(self) -> dict[str, Any]:
        """Everything but the grid: reruns into the same OUT must agree on it."""
        out = dataclasses.asdict(self)
        for key in ("methods", "tasks", "shots", "exps", "seeds"):
            out.pop(key)
        return out

    def specs(self) -> Iterable[tuple[str, MethodEntry, RunSpec]]:
        for entry, task, shots, exp, seed in itertools.product(self.methods, self.tasks, self.shots, self.exps,
                                                               self.seeds):
            spec = RunSpec(method=entry.method, task=task, data_root=self.data_root, shots=shots, exp=exp,
                           options=entry.options, backbone=self.backbone, pretrained=self.pretrained,
                           weights=self.weights, img_size=self.img_size, test_list=self.test_list,
                           train={**self.train, "seed": seed})
            yield run_key(entry.label, task, shots, exp, seed), entry, spec


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _method_entry(item, source: str) -> MethodEntry:
    if isinstance(item, str):
        return MethodEntry(item)
    if isinstance(item, dict) and "method" in item and set(item) <= {"method", "options", "label"}:
        return MethodEntry(item["method"], dict(item.get("options") or {}), item.get("label") or "")
    raise UserError(f"{source}: a method is a name or a mapping with keys method, options, label; got {item!r}")


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


def read_runs(out: str | Path) -> list[dict[str, Any]]:
    """The finished runs in ``OUT/runs.jsonl`` (a line cut short by a crash is ignored)."""
    path = Path(out) / "runs.jsonl"
    if not path.is_file():
        return []
    runs = []
    for line in path.read_text().splitlines():
        try:
            runs.append(json.loads(line))
        except ValueError:
            continue
    return runs


def append_run(out: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` on an append-only descriptor, then flush it to disk."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(Path(out) / "runs.jsonl", os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        path_size = os.fstat(fd).st_size
        if path_size and _last_byte(fd, path_size) != b"\n":  # a previous crash left half a line: end it
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _last_byte(fd: int, size: int) -> bytes:
    return os.pread(fd, 1, size - 1)


def run_bench(config: BenchConfig, out: str | Path, *, progress: bool = True,
              decode_once: bool = True) -> list[dict[str, Any]]:
    """Run every pending run of the grid into ``out`` and write the summary; returns all finished runs.

    ``decode_once``: evaluation images are decoded and resized once per (file, size) and kept in memory and in
    ``out/.cache`` (:class:`~medpeft.data.ResizedImageCache`); False decodes them at every evaluation.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_setup(config, out)
    done = {r["key"] for r in read_runs(out)}
    pending = [(key, entry, spec) for key, entry, spec in config.specs() if key not in done]
    for task, shots, exp, seed in sorted({(s.task, s.shots, s.exp, s.train["seed"]) for _, _, s in pending}):
        load_data(task, config.data_root, shots, exp, seed, config.test_list).check_images()  # fail before training
    cache = ResizedImageCache(out / ".cache") if decode_once else None
    bar = tqdm(pending, desc="bench", disable=not progress or None)
    for key, entry, spec in bar:
        bar.set_postfix_str(key)
        run_dir = out / "runs" / entry.label / f"{spec.task}_{spec.shots}-shot_exp{spec.exp}_seed{spec.train['seed']}"
        metrics = run_experiment(spec, run_dir, cache=cache, progress=progress)
        append_run(out, {
            "key": key, "label": entry.label, "method": entry.method, "options": entry.options, "task": spec.task,
            "shots": spec.shots, "exp": spec.exp, "seed": spec.train["seed"], "run_dir": str(run_dir.relative_to(out)),
            "test": metrics["test_metrics"], "val_best": metrics["val_best"],
            "selected_epoch": metrics["selected_epoch"], "selection_metric": metrics["selection_metric"],
            "trainable_params": metrics["trainable_params"], "total_params": metrics["total_params"],
            "train_time_s": metrics["train_time_s"], "peak_memory_mb": metrics["peak_memory_mb"],
            "device": metrics["device"],
        })
        write_summary(out)
    runs = read_runs(out)
    write_summary(out)
    return runs


def _check_same_setup(config: BenchConfig, out: Path) -> None:
    path = out / "bench.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != json.loads(json.dumps(config.shared())):
            changed = sorted(k for k in set(previous) | set(config.shared())
                             if previous.get(k) != config.shared().get(k))
            raise UserError(f"{out} holds runs made with other settings ({', '.join(changed)}): use a new --out")
    else:
        write_json(path, config.shared())


def report_metric(task: str, runs: list[dict[str, Any]]) -> str:
    """The metric tables report for a task, as the paper: mAP for multi-label tasks, accuracy otherwise."""
    keys = next(iter(r["test"] for r in runs if r.get("test")), {})
    return "mAP" if "mAP" in keys else "accuracy"


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (label, task, shots): mean and sample std (ddof=1) of every test metric over the runs."""
    groups: dict[tuple, list] = {}
    for r in runs:
        if r.get("test"):
            groups.setdefault((r["label"], r["task"], r["shots"]), []).append(r)
    rows = []
    for (label, task, shots), group in groups.items():
        row = {"label": label, "method": group[0]["method"], "options": json.dumps(group[0]["options"]),
               "task": task, "shots": shots, "n_runs": len(group), "report_metric": report_metric(task, group)}
        for name in group[0]["test"]:
            values = np.array([g["test"][name] for g in group], dtype=float)
            row[f"{name}_mean"] = float(np.mean(values))
            row[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        row["trainable_params"] = group[0]["trainable_params"]
        row["train_time_s"] = float(np.mean([g["train_time_s"] for g in group]))
        peaks = [g["peak_memory_mb"] for g in group if g.get("peak_memory_mb") is not None]
        row["peak_memory_mb"] = max(peaks) if peaks else float("nan")
        rows.append(row)
    return rows


def write_summary(out: str | Path) -> None:
    """``summary.csv`` (long, one row per method × task × shot) and ``summary.md`` (the tables a paper shows)."""
    out = Path(out)
    rows = aggregate(read_runs(out))
    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    text = summary_markdown(rows)
    for report in sorted(out.glob("*/report.md")):  # written by `medpeft analyze OUT --out OUT/<dir>`
        link = report.relative_to(out).as_posix()
        text += f"\nAnalysis (scatter, t-SNE, patch-wise scaling, convergence, calibration): [{link}]({link})\n"
    (out / "summary.md").write_text(text)


def _pm(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "–"
    return f"{100 * mean:.2f}" if np.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """Markdown: the method × (task, shots) table of the reported metric with an average, then every metric."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    cells = sorted({(r["task"], r["shots"]) for r in rows}, key=lambda c: (c[0], c[1]))
    by = {(r["label"], r["task"], r["shots"]): r for r in rows}
    metric_of = {r["task"]: r["report_metric"] for r in rows}
    paper = set(cells) == set(PAPER_CELLS)
    avg_name = "Avg (paper's 9)" if paper else f"Avg ({len(cells)})"
    head = [f"{t} {k}-shot ({metric_of[t]})" for t, k in cells]
    lines = [
        "# Benchmark summary",
        "",
        "Test metrics ×100, mean ± sample std over experiments and seeds. The average is the plain mean of the",
        "cell means (the paper's 9-task average when the grid is MedFMC × 1/5/10-shot); it is left out for a",
        "method missing a cell. Time: mean training time per run; memory: peak over its runs.",
        "",
        "| method | " + " | ".join(head) + f" | {avg_name} | trainable | time/run (s) | peak mem (MB) |",
        "|---|" + "---|" * (len(cells) + 4),
    ]
    for label in labels:
        present = [by.get((label, t, k)) for t, k in cells]
        values = [_pm(r[f"{metric_of[t]}_mean"], r[f"{metric_of[t]}_std"]) if r else "–"
                  for r, (t, _) in zip(present, cells)]
        avg = (f"{100 * np.mean([r[f'{metric_of[t]}_mean'] for r, (t, _) in zip(present, cells)]):.2f}"
               if all(present) else "–")
        some = next(r for r in present if r)
        lines.append(f"| {label} | " + " | ".join(values) + f" | {avg} | {some['trainable_params']:,} | "
                     f"{np.mean([r['train_time_s'] for r in present if r]):.1f} | "
                     f"{np.nanmax([r['peak_memory_mb'] for r in present if r]):.0f} |")
    metric_names = list(dict.fromkeys(k[:-5] for r in rows for k in r if k.endswith("_mean")))
    lines += ["", "## Every metric", "", "| method | task | shots | runs | " + " | ".join(metric_names) + " |",
              "|---|---|---|---|" + "---|" * len(metric_names)]
    for r in sorted(rows, key=lambda r: (labels.index(r["label"]), r["task"], r["shots"])):
        values = [_pm(r.get(f"{m}_mean", float("nan")), r.get(f"{m}_std", float("nan"))) for m in metric_names]
        lines.append(f"| {r['label']} | {r['task']} | {r['shots']} | {r['n_runs']} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
