"""The real study's tables and verdict, regenerated from its committed files.

Reads, per dataset folder under ``benchmarks/real/`` (``pneumoniamnist``, ``br35h``; ``benchmarks/real/run.sh``
writes them): ``bench/runs.jsonl`` (the
study: every candidate run, the validation-selected one marked), ``control/runs.jsonl`` (the random-init control),
``floors/floors.jsonl`` (plain classifiers on the same splits) and ``bench/analysis/analysis.json`` (the feature
analysis of the selected runs), where present. Writes ``benchmarks/real/results.md`` and puts
the same text in the docs page ``docs/study.md`` between the markers ``<!-- real-study:start -->`` and
``<!-- real-study:end -->``.

``study.yaml`` gives each method's grid: a cell (method × shots × sampling) counts once all of its runs are in,
the staged search's (``then``: the prompt's size at the cell's chosen learning rate) included once it has begun, and
every table is over such complete cells. The selection is redone here over every candidate of a cell (ties to the
first stage, then to the smaller rate, then to the smaller size); *before* the length search is the same selection
over the first stage's runs only.

Paired comparisons are over the cells the two rows share (shots × sampling; 15 when complete): EPT's test accuracy
minus the other's, the number of cells each wins, the two-sided Wilcoxon signed-rank test (zero differences
dropped) and the exact sign test, with Holm's correction over EPT's comparisons within a dataset; the statistics are
:mod:`medpeft.analysis.paired`'s, this script only formats them.

Run from the repository root: ``python studies/real/report.py``.
"""

from __future__ import annotations

import argparse
import enum
import json
import re
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml
from scipy.stats import betabinom

from medpeft.analysis import holm, paired_comparison
from medpeft.analysis.conformal_table import coverage_markdown, coverage_table, kept_runs
from medpeft.bench import read_index, selection
from medpeft.bench.config import MethodEntry, method_entry
from medpeft.bench.selection import choose, group_cells
from medpeft.calibration import CalibrationWarning
from medpeft.conformal import ConformalConfig, ConformalWarning, quantile_rank
from medpeft.files import read_json_lines
from medpeft.methods import get_method
from medpeft.posthoc import LOGITS_FILE, calibration_step, conformal_of
from medpeft.record import candidate_tag
from medpeft.stats import format_mean_std, mean_std

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "benchmarks" / "real"
DATASETS = {
    "pneumoniamnist": "PneumoniaMNIST chest X-rays (624 official test images, 62.5 % pneumonia)",
    "br35h": "Br35H brain MRI (600 fixed test images, 50 % tumour)",
}
METHODS = ["linear", "mlp", "partial", "full", "bitfit", "lora", "adapter", "ssf", "vp", "vpt", "ept"]
FLOORS = {
    "pixels": "raw pixels + LR",
    "cls": "frozen CLS + LR",
    "mean": "frozen mean-pooled patches + LR",
    "metadata": "file metadata + random forest",
}
SHOTS = (1, 5, 10)
FIRST_SIZES = {"prompt_length": (1, 10, 50, 100), "prompt_size": (4, 8, 16, 30)}
"""Issue 34's grids of the prompt's size; the values of a ``study.yaml`` grid beyond them are the edge rule's one
extension (the grid's end chosen in 2/3 of the cells or more), searched like the rest."""
START, END = "<!-- real-study:start -->", "<!-- real-study:end -->"


class Kind(enum.Enum):
    """What a table row is: a method of the study, the random-init control of one, or a floor."""

    METHOD = "method"
    CONTROL = "control"
    FLOOR = "floor"


class Sizes(NamedTuple):
    """A prompt method's staged search of one option: the option, its grid, its default, the least value it takes
    and ``first``, the grid before the edge rule's extension (:data:`FIRST_SIZES`)."""

    key: str
    grid: list
    default: object
    least: object
    first: list

    @property
    def extension(self) -> list:
        return [v for v in self.grid if v not in self.first]


class Row(str):
    """A table row: the label the tables print (``ept``, ``control: linear``, ``floor: raw pixels + LR``), with its
    ``kind`` and ``name`` (the label without the kind) kept as fields where the row is made, never parsed back."""

    kind: Kind
    name: str

    def __new__(cls, name: str, kind: Kind = Kind.METHOD) -> Row:
        row = super().__new__(cls, name if kind is Kind.METHOD else f"{kind.value}: {name}")
        row.kind, row.name = kind, name
        return row


def stage(record) -> int:
    """2 for a run of the staged search (its candidate sets more than the learning rate, which is all the first
    stage searches in ``study.yaml``), else 1."""
    return 2 if set(record.spec.candidate) - {"lr"} else 1


def order(record) -> tuple:
    """A candidate's place in the tie order of the selection: the first stage before the staged search, then by
    learning rate, then by the staged values (grid order: the grids are ascending)."""
    return stage(record), record.spec.train.lr, tuple(v for k, v in sorted(record.spec.candidate.items()) if k != "lr")


def selected(records: list) -> list:
    """The runs chosen on validation by this medpeft's rule (:func:`medpeft.bench.selection` in :func:`order`: ties
    to the first stage, then to the smaller rate), whatever rule wrote ``runs.jsonl``."""
    chosen = {}
    for cell in group_cells(records).values():
        chosen.update(selection(cell, order=order))
    return [r for r in records if chosen.get(r.key)]


def entries(folder: Path) -> dict[str, MethodEntry]:
    """``study.yaml``'s method entries by label, with their searches (a method's own, else the shared one)."""
    path = folder / "study.yaml"
    study = yaml.safe_load(path.read_text())
    return {e.label: e for e in (method_entry(m, str(path), study.get("search")) for m in study["methods"])}


def complete(folder: Path, records: list) -> set[tuple]:
    """The cells (:attr:`~medpeft.record.RunSpec.cell`) whose every run is in: each learning rate of the method's
    search and, once the staged search has begun (a stage-2 run is in), each of its candidates at the cell's
    stage-1 choice (none when every rate diverged: nothing was chosen to search at)."""
    methods = entries(folder)
    begun = any(stage(r) == 2 for r in records)
    done = set()
    for cell, runs in group_cells(records).items():
        entry = methods.get(cell[0])
        have = {candidate_tag(r.spec.candidate) for r in runs}
        if entry is None or not {candidate_tag(c) for c in entry.candidates()} <= have:
            continue
        chosen = choose([r for r in runs if stage(r) == 1], order) if begun and entry.then else None
        if chosen is None or {candidate_tag(c) for c in entry.then_candidates(chosen.spec.candidate)} <= have:
            done.add(cell)
    return done


def beyond(record, size: Sizes) -> bool:
    """Whether ``record`` is a run of the edge rule's extension of ``size``'s grid."""
    return record.spec.candidate.get(size.key) in size.extension


def load(
    folder: Path, study: list, *, first_stage: bool = False, first_grid: bool = False
) -> dict[Row, dict[tuple, dict]]:
    """``{row: {(shots, exp): {"accuracy", "AUC", "ECE", "ECE_cal", "lr", "options", "key"}}}`` of the selected runs
    of ``study``'s complete cells (:func:`complete`; ``study``: the records of ``folder/bench``), chosen among the
    first stage's runs only with ``first_stage`` (the protocol before the length search), without the runs of the
    edge rule's extension with ``first_grid`` (:class:`Sizes`); of the control, and of the floors."""
    done = complete(folder, study)
    staged = sizes(folder) if first_grid else {}
    study = [
        r
        for r in study
        if r.spec.cell in done
        and not (first_stage and stage(r) == 2)
        and not (r.spec.label in staged and beyond(r, staged[r.spec.label]))
    ]
    rows: dict[Row, dict[tuple, dict]] = {}
    for records, kind in ((study, Kind.METHOD), (read_index(folder / "control"), Kind.CONTROL)):
        for r in selected(records):
            if r.test:
                cal = (r.result.calibration.test if r.result.calibration else None) or {}
                rows.setdefault(Row(r.spec.label, kind), {})[(r.spec.shots, r.spec.exp)] = {
                    **r.test,
                    "ECE_cal": cal.get("ECE", np.nan),
                    "lr": r.spec.train.lr,
                    "options": r.model.options,
                    "key": r.key,
                }
    for line in read_json_lines(folder / "floors" / "floors.jsonl"):
        rows.setdefault(Row(FLOORS[line["floor"]], Kind.FLOOR), {})[(line["shots"], line["exp"])] = {
            **line["test"],
            "ECE_cal": np.nan,
        }
    return rows


def _pm(values) -> str:
    return format_mean_std(*mean_std(values), ".1f", 100)


def _mean(values) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return f"{100 * np.mean(values):.1f}" if values else "–"


def _p(p: float, equals: str = "") -> str:
    """A p-value to three decimals; below 0.001 as ``< 0.001`` (``equals`` goes before a shown value)."""
    return "< 0.001" if p < 0.001 else f"{equals}{p:.3f}"


def table(rows: dict[str, dict[tuple, dict]]) -> list[str]:
    lines = [
        "| | 1-shot acc | 5-shot acc | 10-shot acc | AUC | ECE | ECE after T | cells |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row, cells in rows.items():
        acc = [_pm([c["accuracy"] for (k, _), c in cells.items() if k == shots]) for shots in SHOTS]
        every = list(cells.values())
        lines.append(
            f"| {row} | " + " | ".join(acc) + f" | {_mean([c['AUC'] for c in every])} | "
            f"{_mean([c['ECE'] for c in every])} | {_mean([c['ECE_cal'] for c in every])} | {len(cells)} |"
        )
    return lines


def searched(records: list, kind: Kind = Kind.METHOD) -> dict[Row, list[float]]:
    """``{row: the learning rates its runs tried, ascending}`` (a row's grid, as ``chosen`` and ``edges`` read it)."""
    grid: dict[Row, set] = {}
    for r in records:
        grid.setdefault(Row(r.spec.label, kind), set()).add(r.spec.train.lr)
    return {row: sorted(lrs) for row, lrs in grid.items()}


def chosen(rows: dict[Row, dict[tuple, dict]], grid: dict[Row, list[float]]) -> list[str]:
    """How often each row chose each learning rate; '–' where its grid lacks that rate."""
    rows = {row: cells for row, cells in rows.items() if row.kind is not Kind.FLOOR}
    lrs = sorted({lr for row in rows for lr in grid.get(row, [])})
    lines = ["| learning rate chosen | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|---|" + "---:|" * len(lrs)]
    for row, cells in rows.items():
        counts = Counter(c["lr"] for c in cells.values())
        lines.append(
            f"| {row} | " + " | ".join(str(counts[lr]) if lr in grid.get(row, []) else "–" for lr in lrs) + " |"
        )
    return lines


def edges(rows: dict[str, dict[tuple, dict]], grid: dict[str, list[float]], share: float = 2 / 3) -> str:
    """The methods that chose the smallest or largest learning rate of their grid in at least ``share`` of their
    cells (at least three): their optimum may lie beyond the grid."""
    found = []
    for row, cells in rows.items():
        lrs = grid.get(row, [])
        if row not in METHODS or len(cells) < 3 or len(lrs) < 2:
            continue
        counts = Counter(c["lr"] for c in cells.values())
        for lr, side in ((lrs[0], "below"), (lrs[-1], "above")):
            if counts[lr] >= share * len(cells):
                found.append(f"{row} chose {lr:g} in {counts[lr]} of {len(cells)} cells ({side})")
    if not found:
        return (
            f"**At the grid's edge:** none; no method chose the lowest or the highest learning rate of its grid in "
            f"{100 * share:.0f} % of its cells or more."
        )
    return (
        "**At the grid's edge:** " + "; ".join(found) + ". The optimum may lie beyond the grid; the next "
        "learning rate out would show it."
    )


def sizes(folder: Path) -> dict[str, Sizes]:
    """``{label: its Sizes}`` of the methods whose staged search tries one option (the prompt's length; VP's frame
    width)."""
    found = {}
    for label, e in entries(folder).items():
        if len(e.then) == 1:
            [(key, grid)] = e.then.items()
            method = get_method(e.method, **e.options)
            first = [v for v in grid if v in FIRST_SIZES.get(key, grid)]
            least = method.__dataclass_fields__[key].metadata.get("min")
            found[label] = Sizes(key, list(grid), method.options()[key], least, first)
    return found


def lengths(folder: Path, study: list, rows: dict[str, dict[tuple, dict]], before: dict[str, dict[tuple, dict]]):
    """The staged search of the prompt's size: its rule, the size chosen per cell and how often, the grid's edges,
    the three metrics before (the choice among the first stage's runs) and after it with paired tests, its cost."""
    staged = {m: v for m, v in sizes(folder).items() if m in rows}
    if not staged:
        return []
    defaults = ", ".join(f"{m} {s.key} {s.default}" for m, s in staged.items())
    grids = "; ".join(
        f"{m} {s.key} {', '.join(map(str, s.grid))}"
        + (f" ({', '.join(map(str, s.extension))}: the edge rule's extension)" if s.extension else "")
        for m, s in staged.items()
    )
    rule = [
        f"**The prompt's size, searched in stages** (issue 34). Stage 1 searches the learning rate at each prompt "
        f"method's default size ({defaults}); stage 2 tries the other sizes of its grid ({grids}) at the cell's "
        "chosen stage-1 rate; the cell's run is then chosen again over every candidate of both stages by the same "
        "rule (the best validation score, then the higher validation AUC at the selected epoch, then the first in "
        "order: stage 1 before stage 2, a lower rate, a smaller size), so a tie keeps the stage-1 choice. *Before*: "
        "the choice among the stage-1 runs only (the protocol without the length search); *after*: among all."
    ]
    if not any(stage(r) == 2 for r in study):
        return [
            [
                rule[0] + " The length search has not started (no stage-2 run is in): the tables above are the "
                "learning-rate search's, at the default sizes."
            ]
        ]
    study_yaml = yaml.safe_load((folder / "study.yaml").read_text())
    per_cell = [
        "| chosen size (rate) | " + " | ".join(staged) + " |",
        "|---|" + "---:|" * len(staged),
    ]
    for shots in study_yaml["shots"]:
        for exp in study_yaml["exps"]:
            marks = []
            for m, s in staged.items():
                c = rows[m].get((shots, exp))
                if c is None:
                    marks.append("…")
                    continue
                size = c["options"][s.key]
                marks.append((f"**{size}**" if size != s.default else str(size)) + f" ({c['lr']:g})")
            per_cell.append(f"| {shots}-shot, sampling {exp} | " + " | ".join(marks) + " |")
    values = sorted({v for s in staged.values() for v in s.grid})
    counts_table = [
        "| size chosen | " + " | ".join(map(str, values)) + " |",
        "|---|" + "---:|" * len(values),
    ]
    for m, s in staged.items():
        counts = Counter(c["options"][s.key] for c in rows[m].values())
        counts_table.append(
            f"| {m} ({s.key}) | " + " | ".join(str(counts[v]) if v in s.grid else "–" for v in values) + " |"
        )
    return [
        rule,
        [
            "The size chosen per cell (bold: not the default, so the length search changed the cell's run; …: not "
            "all of the cell's runs are in, so it is left out of every table):"
        ],
        per_cell,
        counts_table,
        [size_edges(rows, staged, load(folder, study, first_grid=True))],
        [
            "Before and after the length search, over each method's complete cells (test metrics ×100; *changed*: "
            "the cells whose run it changed; after − before per cell: mean, median, cells up–down, two-sided "
            "Wilcoxon with Holm's correction over the table's tests):"
        ],
        before_after(rows, before, list(staged)),
        [search_cost(study, list(staged))],
    ]


def size_edges(
    rows: dict[str, dict[tuple, dict]],
    staged: dict[str, Sizes],
    first: dict[str, dict[tuple, dict]] | None = None,
    share: float = 2 / 3,
) -> str:
    """The prompt methods whose chosen size is the smallest or the largest of the grid in at least ``share`` of
    their (at least three) complete cells: the grid is to be extended that way once (no lower where the smallest
    is the least the option takes). Where it was (:attr:`Sizes.extension`), the rule reads ``first`` (the choice
    without the extension's runs) and the line says what the extended grid chose."""
    found = []
    for m, s in staged.items():
        cells = (first if s.extension and first is not None else rows).get(m, {})
        if len(cells) < 3 or len(s.first) < 2:
            continue
        counts = Counter(c["options"][s.key] for c in cells.values())
        for value, side in ((min(s.first), "smallest"), (max(s.first), "largest")):
            if counts[value] < share * len(cells):
                continue
            grid = "first grid" if s.extension else "grid"
            line = f"{m} chose {s.key} {value}, the {grid}'s {side}, in {counts[value]} of {len(cells)} cells"
            out = [v for v in s.extension if (v < value if side == "smallest" else v > value)]
            if side == "smallest" and value == s.least:
                line += f" (it cannot go lower: {value} is the least {s.key} there is)"
            elif out:
                now, n = Counter(c["options"][s.key] for c in rows[m].values()), len(rows[m])
                edge = min(out) if side == "smallest" else max(out)
                line += f"; extended once to {', '.join(map(str, out))}, it chose " + (
                    f"{edge} in {now[edge]} of {n} cells"
                    if len(out) == 1
                    else f"them in {sum(now[v] for v in out)} of {n} cells, the new {side} {edge} in {now[edge]}"
                )
                if now[edge] >= share * n:
                    line += " (the rule extends once: the optimum may lie beyond)"
            else:
                line += ": the grid is to be extended that way once"
            found.append(line)
    if not found:
        return (
            f"**Size at the grid's edge:** none; no prompt method chose the smallest or the largest size of its grid "
            f"in {100 * share:.0f} % of its cells or more."
        )
    return f"**Size at the grid's edge** ({100 * share:.0f} % of the cells or more): " + "; ".join(found) + "."


def before_after(rows: dict[str, dict[tuple, dict]], before: dict[str, dict[tuple, dict]], methods: list) -> list[str]:
    """Accuracy, AUC and ECE of each prompt method before and after the length search over its complete cells,
    paired (after − before; :func:`paired`), Holm's correction over the table's tests."""
    tests = [
        {"method": m, "metric": metric, **paired(rows[m], before[m], metric)}
        for m in methods
        for metric in ("accuracy", "AUC", "ECE")
        if m in before
    ]
    for t, p in zip(tests, holm([t["p_wilcoxon"] for t in tests])):
        t["p_holm"] = p
    lines = [
        "| after − before | cells | changed | before | after | mean | median | up–down | Wilcoxon p | Holm p |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in tests:
        m, metric = t["method"], t["metric"]
        changed = sum(rows[m][c]["key"] != before[m][c]["key"] for c in rows[m] if c in before[m])
        lines.append(
            f"| {m} {metric} | {t['n']} | {changed} | {_mean([c[metric] for c in before[m].values()])} | "
            f"{_mean([c[metric] for c in rows[m].values()])} | {t['mean']:+.1f} | {t['median']:+.1f} | "
            f"{t['wins']}–{t['losses']} | {_p(t['p_wilcoxon'])} | {_p(t['p_holm'])} |"
        )
    return lines


def search_cost(records: list, methods: list) -> str:
    """What the staged search's runs took (core-hours, runs), against the first stage's runs of the same methods."""
    hours, runs = {1: Counter(), 2: Counter()}, {1: Counter(), 2: Counter()}
    for r in records:
        if r.spec.label in methods:
            hours[stage(r)][r.spec.label] += sum(r.result.time_s.values()) / 3600
            runs[stage(r)][r.spec.label] += 1
    total = sum(sum(r.result.time_s.values()) for r in records) / 3600
    return (
        f"**Cost of the length search** (from its run records): {sum(runs[2].values())} runs ("
        + ", ".join(f"{m} {runs[2][m]}" for m in methods)
        + f"), {sum(hours[2].values()):.1f} core-hours ("
        + ", ".join(f"{m} {hours[2][m]:.1f}" for m in methods)
        + f"), {100 * sum(hours[2].values()) / total:.0f} % of the study's {total:.1f}; the learning-rate search of "
        f"the same methods: {sum(runs[1].values())} runs, {sum(hours[1].values()):.1f} core-hours."
    )


def paired(a: dict[tuple, dict], b: dict[tuple, dict], key_a: str = "accuracy", key_b: str | None = None) -> dict:
    """a − b over the shared cells (×100), as :func:`medpeft.analysis.paired_comparison` sums it up."""
    cells = sorted(set(a) & set(b))
    return asdict(paired_comparison([100 * (a[c][key_a] - b[c][key_b or key_a]) for c in cells]))


def comparisons(rows: dict[str, dict[tuple, dict]]) -> tuple[list[str], list[dict]]:
    if "ept" not in rows:
        return [], []
    others = [r for r in rows if r != "ept"]
    tests = [{"other": r, **paired(rows["ept"], rows[r])} for r in others]
    for t, p in zip(tests, holm([t["p_wilcoxon"] for t in tests])):
        t["p_holm"] = p
    lines = [
        "| EPT − … (accuracy, points) | cells | EPT wins | EPT loses | median | Wilcoxon p | Holm p | sign p |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in tests:
        lines.append(
            f"| {t['other']} | {t['n']} | {t['wins']} | {t['losses']} | {t['median']:+.1f} | "
            f"{_p(t['p_wilcoxon'])} | {_p(t['p_holm'])} | {_p(t['p_sign'])} |"
        )
    return lines, tests


def ranking(rows: dict[Row, dict[tuple, dict]]) -> tuple[list[Row], dict[Row, float], list[tuple]]:
    """The methods best first by mean test accuracy over the cells every method has; those means (of every row,
    floors and control included, over the same cells); the cells."""
    methods = [r for r in rows if r.kind is Kind.METHOD]
    shared = sorted(set.intersection(*(set(rows[r]) for r in methods)))
    means = {r: float(np.mean([rows[r][c]["accuracy"] for c in shared])) for r in rows if set(shared) <= set(rows[r])}
    return sorted(methods, key=lambda r: -means[r]), means, shared


def against_scaled_linear(rows: dict[str, dict[tuple, dict]]) -> tuple[dict, dict]:
    """EPT's ECE against the temperature-scaled linear probe's (:func:`paired`): EPT's own, then EPT's scaled too."""
    return (
        paired(rows["ept"], rows["linear"], "ECE", "ECE_cal"),
        paired(rows["ept"], rows["linear"], "ECE_cal", "ECE_cal"),
    )


def verdict(rows: dict[Row, dict[tuple, dict]], tests: list[dict]) -> list[str]:
    """Plain sentences from the numbers: where EPT stands, its calibration, the backbone against the floors."""
    if not tests:
        return []
    by = {t["other"]: t for t in tests}

    def against(other: str) -> str:
        t = by.get(other)
        if t is None:
            return f"{other}: not run"
        if t["p_holm"] < 0.05:
            word = "beats" if t["median"] > 0 else "loses to"
            return (
                f"EPT {word} {other} (median {t['median']:+.1f} points, {t['wins']}–{t['losses']} cells, "
                f"Holm p {_p(t['p_holm'], '= ')})"
            )
        return (
            f"EPT and {other} do not differ significantly (median {t['median']:+.1f} points, {t['wins']}–"
            f"{t['losses']} cells, Holm p {_p(t['p_holm'], '= ')})"
        )

    floors = [r for r in rows if r.kind is Kind.FLOOR]
    lines = ["- **Accuracy.** " + "; ".join(against(o) for o in ["vpt", "linear", "full"] + floors) + "."]
    ranked, means, shared = ranking(rows)
    lines.append(
        f"- **Best on average over the {len(shared)} cells every method has:** {', '.join(ranked[:3])} "
        f"({', '.join(f'{100 * means[r]:.1f}' for r in ranked[:3])} %); EPT ranks "
        f"{ranked.index('ept') + 1} of {len(ranked)}."
    )
    if "linear" in rows:
        raw, cal = against_scaled_linear(rows)
        lines.append(
            f"- **Calibration.** EPT's own ECE against the temperature-scaled linear probe's: median "
            f"{raw['median']:+.1f} points (EPT lower in {raw['losses']} of {raw['n']} cells, Wilcoxon p "
            f"{_p(raw['p_wilcoxon'], '= ')}); both temperature-scaled: median {cal['median']:+.1f} "
            f"(EPT lower in "
            f"{cal['losses']} of {cal['n']}, p {_p(cal['p_wilcoxon'], '= ')}). Mean ECE of EPT "
            f"{_mean([c['ECE'] for c in rows['ept'].values()])} → "
            f"{_mean([c['ECE_cal'] for c in rows['ept'].values()])} "
            f"after T; of the linear probe {_mean([c['ECE'] for c in rows['linear'].values()])} → "
            f"{_mean([c['ECE_cal'] for c in rows['linear'].values()])}."
        )
    cls, pix = Row(FLOORS["cls"], Kind.FLOOR), Row(FLOORS["pixels"], Kind.FLOOR)
    if cls in rows and pix in rows:
        t = paired(rows[cls], rows[pix])
        lines.append(
            f"- **The backbone.** A converged probe on the frozen features against raw pixels: median "
            f"{t['median']:+.1f} points ({t['wins']}–{t['losses']} cells, Wilcoxon p "
            f"{_p(t['p_wilcoxon'], '= ')}); the random-init control: "
            f"{_mean([c['accuracy'] for r in rows if r.kind is Kind.CONTROL for c in rows[r].values()])} % "
            f"on average."
        )
    meta = Row(FLOORS["metadata"], Kind.FLOOR)
    if meta in rows:
        best = ranked[0]
        t = paired(rows[best], rows[meta])
        lines.append(
            f"- **The shortcut.** The file metadata alone: "
            f"{_mean([c['accuracy'] for c in rows[meta].values()])} % "
            f"on average; the best method ({best}) against it: median {t['median']:+.1f} points "
            f"({t['wins']}–{t['losses']} cells)."
        )
    return lines


def rank_change(rows: dict[str, dict[tuple, dict]], before: dict[str, dict[tuple, dict]]) -> dict:
    """EPT before and after the length search over the cells every method has complete (:func:`ranking`): its
    rank (``was``, ``now``) among the ``n`` methods and its mean accuracy (``mean_was``, ``mean_now``), over
    ``cells`` cells."""
    ranked, means, shared = ranking(rows)
    ranked_before, means_before, _ = ranking(
        {r: {c: before[r][c] for c in shared} for r in before if set(shared) <= set(before[r])}
    )
    return {
        "was": ranked_before.index("ept") + 1,
        "now": ranked.index("ept") + 1,
        "n": len(ranked),
        "mean_was": means_before["ept"],
        "mean_now": means["ept"],
        "cells": len(shared),
    }


def rank_line(change: dict | None) -> list[str]:
    """The verdict's sentence on whether the length search changed EPT's rank (:func:`rank_change`)."""
    if not change:
        return []
    was, now, n = change["was"], change["now"], change["n"]
    return [
        f"- **The length search and EPT's rank:** EPT ranks {now} of {n} after it, {was} of {n} before "
        f"({100 * change['mean_was']:.1f} → {100 * change['mean_now']:.1f} % over the {change['cells']} cells every "
        f"method has complete): "
        + ("its rank did not change." if was == now else f"its rank changed from {was} to {now}.")
    ]


MASS_ANALYSES = ("bench/analysis", "prompt_mass")
"""Where ``medpeft analyze`` wrote the runs the mechanism reads: the selected runs, and EPT's runs of every length in
a few cells (``prompt_mass/``, for the lengths the selection did not keep)."""


def mechanism(folder: Path, rows: dict[str, dict[tuple, dict]], staged: dict[str, Sizes], spread: float = 0.01):
    """What the analyses (:data:`MASS_ANALYSES`) say of the attention mass EPT's prompts absorb (``prompt_mass``: per
    block, the share of each attention row's softmax mass on the prompt columns, at the run's initialisation and
    trained), per prompt length, and whether the features hardly move at the chosen lengths (the intra-class scatter
    of the selected runs of one length within ``spread`` of its mean); "not measured yet" without it."""
    if "ept" not in staged or "ept" not in rows:
        return []
    runs, figures, sources = {}, [], []
    for where in MASS_ANALYSES:
        path = folder / where / "analysis.json"
        analysis = json.loads(path.read_text()) if path.is_file() else {}
        found = {name: r for name, r in analysis.get("runs", {}).items() if r.get("prompt_mass")}
        if found:
            runs |= found
            sources.append(f"`{where}/`")
            figures += [f"{where}/{f['file']}" for f in analysis.get("figures", []) if f.get("kind") == "prompt_mass"]
    key, default = staged["ept"].key, staged["ept"].default
    measured = {name: r for name, r in runs.items() if r.get("label") == "ept"}
    if not measured:
        return [
            [
                "**The mechanism** (the share of attention mass EPT's prompts absorb, at the chosen lengths): not "
                "measured yet (`studies/real/analyze_selected.py` writes it to `bench/analysis/analysis.json`, "
                "`studies/real/prompt_mass.py` that of EPT's runs of every length in one cell to "
                "`prompt_mass/analysis.json`)."
            ]
        ]
    chosen = {c["key"] for c in rows["ept"].values()}
    by_length: dict[int, list[tuple[str, dict]]] = {}
    for name, r in measured.items():
        by_length.setdefault(r["options"].get(key, default), []).append((name, r))
    cells = sorted({(r["shots"], r["exp"]) for r in measured.values()})
    text = (
        f"**The mechanism** ({' and '.join(sources)}: {len(measured)} EPT runs in "
        + ", ".join(f"{shots}-shot sampling {exp}" for shots, exp in cells)
        + ", on the test images): the share of each "
        "attention row's softmax mass the prompts absorb, mean over blocks, images, heads and tokens (and the lowest "
        "and highest block after training); the intra-class scatter's std over the selected runs of a length, in % "
        f"of its mean (below {100 * spread:.0f} %: the features hardly move in training)."
        + "".join(f" Per block: `{f}`." for f in figures)
    )
    table = [
        f"| EPT {key} | runs (selected) | mass at init | trained | blocks, trained | scatter std, selected |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for length, members in sorted(by_length.items()):
        mass = {when: [np.mean(r["prompt_mass"][when]["mean"]) for _, r in members] for when in ("init", "trained")}
        blocks = np.mean([r["prompt_mass"]["trained"]["mean"] for _, r in members], axis=0)
        scatter = [r["intra_class_scatter"] for name, r in members if name in chosen]
        moved = np.std(scatter, ddof=1) / np.mean(scatter) if len(scatter) > 1 else np.nan
        table.append(
            f"| {length} | {len(members)} ({len(scatter)}) | {100 * np.mean(mass['init']):.1f} % | "
            f"{100 * np.mean(mass['trained']):.1f} % | {100 * blocks.min():.1f}–{100 * blocks.max():.1f} % | "
            + (f"{100 * moved:.2g} % |" if np.isfinite(moved) else "– |")
        )
        if np.isfinite(moved):
            verdicts.append(
                f"{'holds' if moved < spread else 'does not hold'} at length {length} (the prompts absorb "
                f"{100 * np.mean(mass['init']):.1f} % of the attention mass at init, "
                f"{100 * np.mean(mass['trained']):.1f} % trained)"
            )
    finding = "**Features hardly move at the chosen lengths:** " + (
        "; ".join(verdicts) + "."
        if verdicts
        else "not measured yet (fewer than two selected runs of one length analysed)."
    )
    return [[text], table, [finding]]


def features(folder: Path, rows: dict[str, dict[tuple, dict]], spread: float = 0.01) -> list[str]:
    """What ``bench/analysis/analysis.json`` (``medpeft analyze`` on the selected runs) says of the test features:
    the scatter ratio of the pretrained backbone, EPT's and the lowest; the methods whose features are nearly the
    same in every run (intra-class scatter within ``spread``) yet unlike the pretrained backbone's; and which of the
    runs analysed are no longer the selected ones (``rows``), e.g. since the length search."""
    path = folder / "bench" / "analysis" / "analysis.json"
    if not path.is_file():
        return []
    analysis = json.loads(path.read_text())
    groups = {g["label"]: g for g in analysis["groups"]}
    if "pretrain" not in groups or "ept" not in groups:
        return []

    def stat(label: str, key: str = "scatter_ratio") -> tuple[float, float]:
        return groups[label][key]["mean"], groups[label][key]["std"] or 0.0

    pretrain = stat("pretrain", "intra_class_scatter")[0]
    shots = {g["shots"] for g in groups.values() if g["shots"]}
    runs = {g["n_runs"] for g in groups.values() if g["shots"]}
    lowest = min((m for m in METHODS if m in groups), key=lambda m: stat(m)[0])
    still = {
        m: s / w
        for m, (w, s) in ((m, stat(m, "intra_class_scatter")) for m in METHODS if m in groups)
        if s / w < spread and abs(w / pretrain - 1) > spread
    }
    line = (
        f"- **The features** ({'/'.join(map(str, sorted(shots)))}-shot test images, the selected run of "
        f"{'/'.join(map(str, sorted(runs)))} samplings per method; `bench/analysis/report.md`). Scatter ratio "
        f"tr Σ_W / tr Σ_B (lower: tighter classes): pretrained backbone {stat('pretrain')[0]:.1f}, EPT "
        f"{stat('ept')[0]:.1f} ± {stat('ept')[1]:.2g}, lowest {lowest} {stat(lowest)[0]:.1f}."
    )
    if still:
        line += (
            " Nearly the same in every run, yet unlike the pretrained backbone's: "
            + ", ".join(
                f"{m} (intra-class scatter's std over the runs {100 * v:.2g} % of its mean)" for m, v in still.items()
            )
            + "; what sets these features is the prompts' common initialisation (seed 0), which training changes "
            "little."
        )
    analysed = {name: r for name, r in analysis["runs"].items() if r.get("label") in METHODS}
    selected = {c["key"] for m in METHODS for c in rows.get(m, {}).values()}
    stale = Counter(r["label"] for name, r in analysed.items() if name not in selected)
    if stale:
        line += (
            f" **Not the selected runs any more:** {sum(stale.values())} of the {len(analysed)} runs analysed ("
            + ", ".join(f"{m} {n}" for m, n in stale.items())
            + ") are not the cells' selected runs now (the length search chose others): these numbers are the "
            "learning-rate search's until `studies/real/analyze_selected.py` is run again."
        )
    return [line]


def overall(studies: dict[str, tuple[dict, list[dict]]]) -> list[str]:
    """The verdict over every dataset (``{name: (rows, tests)}``) in plain words: EPT's rank, the comparisons that
    hold after Holm's correction, its calibration against a temperature-scaled linear probe, the best floor."""
    studies = {dataset: (rows, tests) for dataset, (rows, tests) in studies.items() if tests}
    if not studies:
        return []

    def ece(t: dict) -> str:
        if t["p_wilcoxon"] >= 0.05:
            return "no significant difference"
        return f"EPT's significantly {'lower' if t['median'] < 0 else 'higher'}"

    def name(row: Row) -> str:
        return {Kind.CONTROL: f"the random-init control ({row.name})", Kind.FLOOR: f"the floor {row.name}"}.get(
            row.kind, row
        )

    ranks, held, calibration, floors = [], [], [], []
    for dataset, (rows, tests) in studies.items():
        ranked, means, _ = ranking(rows)
        ranks.append(
            f"{ranked.index('ept') + 1} of {len(ranked)} on {dataset} ({100 * means['ept']:.1f} %; best "
            f"{ranked[0]}, {100 * means[ranked[0]]:.1f} %)"
        )
        held += [
            f"EPT {'beats' if t['median'] > 0 else 'loses to'} {name(t['other'])} on {dataset} (median "
            f"{t['median']:+.1f} points, {t['wins']}–{t['losses']} cells, Holm p {_p(t['p_holm'], '= ')})"
            for t in tests
            if t["p_holm"] < 0.05
        ]
        if "linear" in rows:
            raw, both = against_scaled_linear(rows)
            calibration.append(
                f"on {dataset}, EPT's own ECE against it: {ece(raw)} (median {raw['median']:+.1f} points, EPT "
                f"lower in {raw['losses']} of {raw['n']} cells, p {_p(raw['p_wilcoxon'], '= ')}); with both "
                f"temperature-scaled: {ece(both)} (median {both['median']:+.1f}, p {_p(both['p_wilcoxon'], '= ')})"
            )
        best = max((r for r in means if r.kind is Kind.FLOOR), key=means.get, default=None)
        if best:
            below = [m for m in ranked if means[m] < means[best]]
            floors.append(
                f"on {dataset}, {best.name} ({100 * means[best]:.1f} %) is above "
                f"{len(below)} of {len(ranked)} methods' averages" + ", EPT's among them" * ("ept" in below)
            )
    lines = [
        "### Verdict",
        "",
        "- **Is EPT the best method?** "
        + ("Yes" if all(r.startswith("1 of") for r in ranks) else "No")
        + ": it ranks "
        + "; ".join(ranks)
        + ".",
        "- **What holds after Holm's correction** (EPT against each other row, paired over the shared cells, "
        "two-sided Wilcoxon, 5 %): " + ("; ".join(held) if held else "nothing") + ". Every other comparison "
        "of EPT on either dataset is not significant.",
    ]
    if calibration:
        lines.append("- **Calibration against a temperature-scaled linear probe:** " + "; ".join(calibration) + ".")
    if floors:
        lines.append("- **The best floor:** " + "; ".join(floors) + ".")
    return lines


def overall_ranks(changes: dict[str, dict | None]) -> list[str]:
    """The overall verdict's sentence on the length search: EPT's rank before and after it, per dataset
    (:func:`rank_change`)."""
    changes = {dataset: c for dataset, c in changes.items() if c}
    if not changes:
        return []
    answers = ", ".join(
        f"{'yes' if c['was'] != c['now'] else 'no'} on {d} ({c['was']} → {c['now']} of {c['n']})"
        for d, c in changes.items()
    )
    return [
        f"- **Did the length search change EPT's rank?** {answers[0].upper()}{answers[1:]}, by mean accuracy over the "
        "cells every method has complete (before → after)."
    ]


def progress(folder: Path, done: int) -> str:
    """What ``done`` runs of the study are of ``study.yaml``'s grid: per cell, a method's learning rates (its own
    search, else the shared one) and its staged search's candidates at the chosen rate."""
    study = yaml.safe_load((folder / "study.yaml").read_text())
    per_cell = sum(len(e.candidates()) + len(e.then_candidates(e.candidates()[0])) for e in entries(folder).values())
    total = per_cell * int(np.prod([len(study[k]) for k in ("tasks", "shots", "exps", "seeds")]))
    return (
        ""
        if done >= total
        else (
            f"**Partial: {done} of the study's {total} runs are in.** Every table is over complete cells only (a "
            f"cell counts once all of its runs are in: for a prompt method, once the length search has begun, its "
            f"runs too); a row with fewer than 15 cells lacks samplings (the study runs in stages: sampling 1 of every "
            f"method, then samplings 2–3, 4, 5) or, for a prompt method, the length search of some; its mean ± std "
            f"is over the cells it has, and the paired tests use only the cells both rows have."
        )
    )


def cost(records: list) -> str:
    """What the study's runs took: core-hours in all, and the mean wall time of one run per method (one thread)."""
    seconds: dict[str, list[float]] = {}
    for r in records:
        seconds.setdefault(r.spec.label, []).append(sum(r.result.time_s.values()))
    if not seconds:
        return ""
    hours = sum(map(sum, seconds.values())) / 3600
    per_run = ", ".join(f"{m} {np.mean(seconds[m]):.0f} s" for m in METHODS if m in seconds)
    return (
        f"Cost: {sum(map(len, seconds.values()))} runs, {hours:.1f} core-hours, one thread per run on "
        f"this project's shared 2-core AMD EPYC (two runs side by side); mean per run (train + validation + "
        f"test): {per_run}."
    )


def diverged(records: list) -> str:
    """Which candidates diverged (a training loss, weight or validation logit not finite; never selected)."""
    counts = Counter(
        (r.spec.label, r.spec.train.lr, ", ".join(f"{k} {v}" for k, v in sorted(r.spec.candidate.items()) if k != "lr"))
        for r in records
        if r.result.diverged_epoch is not None
    )
    if not counts:
        return ""
    return (
        "Diverged, so never selected (the cell chose among the other rates): "
        + ", ".join(
            f"{label} at {lr:g}{', ' + rest if rest else ''} in {n} cell{'s' * (n > 1)}"
            for (label, lr, rest), n in sorted(counts.items())
        )
        + "."
    )


#: the paired test's sets: LAC at α = 0.1 (90 % coverage), EPT as trained against the temperature-scaled linear probe
PAIRED = ConformalConfig("lac", 0.1)


def kept(folder: Path) -> list:
    """(record, kept logits) of every selected run whose logits ``studies/real/keep_logits.py`` kept for ``folder``."""
    runs, _ = kept_runs(sorted(p.parent for p in (folder / "logits" / "kept").glob(f"**/{LOGITS_FILE}")))
    return runs


def set_sizes(runs, method: str, temperature: bool) -> dict[tuple, float]:
    """Mean test set size of ``method``'s runs under :data:`PAIRED`, by cell (shots, exp)."""
    sizes = {}
    for record, logits in runs:
        if record.spec.method != method:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (CalibrationWarning, ConformalWarning))
            calibration = calibration_step(logits, record.task, "temperature") if temperature else None
            result = conformal_of(logits, record.task, PAIRED, calibration=calibration, seed=record.spec.seed)
        sizes[(str(record.spec.shots), record.spec.exp)] = result.test["mean_set_size"]
    return sizes


def coverages(runs, method: str) -> list[dict]:
    """Per kept run of ``method`` under :data:`PAIRED` (as trained): n validation images, the test images and the
    sets' test coverage, overall and per class."""
    out = []
    for record, logits in runs:
        if record.spec.method == method:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConformalWarning)
                result = conformal_of(logits, record.task, PAIRED, seed=record.spec.seed)
            out.append({"n": result.n_cal, "test": len(logits.test), **result.test})
    return out


def mean_coverage_p(runs: list[dict], alpha: float) -> float:
    """P(mean test coverage ≤ the observed one) if every run's validation and test images were exchangeable: then
    a run's count of covered test images is beta-binomial (N test images; a = ⌈(n+1)(1−α)⌉, b = n + 1 − a; Vovk
    2012), independent across runs; the sum's law is their convolution (continuous scores, no ties)."""
    law = np.ones(1)
    for run in runs:
        a = quantile_rank(run["n"], alpha)
        law = np.convolve(law, betabinom.pmf(np.arange(run["test"] + 1), run["test"], a, run["n"] + 1 - a))
    covered = round(sum(r["coverage"] * r["test"] for r in runs))
    return float(min(1.0, law[: covered + 1].sum()))


def guarantee(folder: Path, runs) -> list[str]:
    """Whether the kept runs' test coverage is what exchangeable images give, and the class balance of validation
    and test: the guarantee assumes the validation images are like the test images."""
    lines = []
    for method in sorted({r.spec.method for r, _ in runs}):
        cov = coverages(runs, method)
        if len(cov) < 5:
            continue
        n = cov[0]["n"]
        a, chance = quantile_rank(n, PAIRED.alpha), mean_coverage_p(cov, PAIRED.alpha)
        per_class = {c: np.mean([r["per_class_coverage"][c] for r in cov]) for c in cov[0]["per_class_coverage"]}
        lines.append(
            f"- {method} ({len(cov)} runs): mean test coverage {100 * np.mean([r['coverage'] for r in cov]):.1f} % "
            f"(per class: {', '.join(f'{c} {100 * v:.1f} %' for c, v in per_class.items())}); exchangeable "
            f"images would give {a}/{n + 1} = {100 * a / (n + 1):.1f} % on average, and a mean this low or lower "
            f"with probability {chance:.2g}"
            + (
                ": too low for chance, so these validation images are not like the test images."
                if chance < 0.05
                else "."
            )
        )
    if not lines:
        return []
    record, logits = runs[0]
    balance = [
        ", ".join(f"{c}: {np.sum(np.asarray(y) == k)}" for k, c in enumerate(record.task.classes))
        for y in (logits.val_labels, logits.test_labels)
    ]
    return [
        "",
        f"Is the 90 % guarantee kept? It holds when validation and test images are exchangeable (drawn alike). "
        f"LAC at α = {PAIRED.alpha:g}, as trained; the law of a run's coverage is beta-binomial (Vovk 2012). "
        f"Images per class in validation (drawn from the training pool) {balance[0]}; in test {balance[1]}.",
        "",
        *lines,
    ]


def prediction_sets(folder: Path, study: list, cells: int) -> list[str]:
    """The prediction-set section of ``folder``'s study: how many selected runs have kept logits (and how many of
    them repeat the committed test accuracy), the coverage / set-size table, EPT against the scaled linear probe."""
    runs = kept(folder)
    if not runs:
        return ["#### Prediction sets", "", "No kept logits yet (`studies/real/keep_logits.py`)."]
    counts = ", ".join(
        f"{m} {sum(r.spec.label == m for r, _ in runs)}" for m in sorted({r.spec.label for r, _ in runs})
    )
    committed = {r.key: r.test["accuracy"] for r in study if r.test}
    held = [r for r, _ in runs if r.key in committed]
    same = sum(committed[r.key] == r.test["accuracy"] for r in held)
    lines = [
        "#### Prediction sets (split conformal on the validation images)",
        "",
        f"Selected runs with kept logits, of {cells} cells per method: {counts} (a prompt method's as the staged "
        "length search selects them). Coverage and mean set size "
        "on the test images, averaged over those runs; after T: the sets of the temperature-scaled probabilities "
        "(T fitted on the same validation images, then the conformal quantile). With 20 validation images, α = 0.1 "
        "needs the 19th of 20 scores and α = 0.2 the 17th (finite-sample quantile ⌈(n+1)(1−α)⌉/n). Runs made "
        "before the study kept logits were trained again with their committed spec: of the kept runs these records "
        f"hold, {same} of {len(held)} repeat the committed test accuracy exactly (the rest differ by this machine's "
        "arithmetic: docs/reproducibility.md).",
        "",
        coverage_markdown(coverage_table(runs)),
        *guarantee(folder, runs),
    ]
    ept, linear = set_sizes(runs, "ept", False), set_sizes(runs, "linear", True)
    cells = sorted(set(ept) & set(linear))
    if cells:
        lines.append("")
        d = paired_comparison([ept[c] - linear[c] for c in cells])
        lines.append(
            f"EPT's set size against the temperature-scaled linear probe's (LAC, α = 0.1, {d.n} cells): EPT smaller "
            f"in {d.losses}, larger in {d.wins}, mean difference {d.mean:+.3f} classes (median {d.median:+.3f}); "
            f"Wilcoxon p = {d.p_wilcoxon:.3g}, sign test p = {d.p_sign:.3g}."
        )
        mean_ept = np.mean([ept[c] for c in cells])
        mean_lin = np.mean([linear[c] for c in cells])
        lines += ["", f"Mean set size over those cells: EPT {mean_ept:.3f}, linear probe after T {mean_lin:.3f}."]
    return lines


def report() -> str:
    blocks = [
        ["## The real study, searched: results"],
        [
            "Generated by `python studies/real/report.py` from the committed `runs.jsonl` and `floors.jsonl` "
            "files. Test metrics ×100, mean ± sample std over samplings; AUC, ECE and ECE after temperature scaling "
            "(fitted on the validation images) are means over all cells; *cells*: shots × samplings present."
        ],
    ]
    studies, ranks = {}, {}
    for folder, title in DATASETS.items():
        study = read_index(HERE / folder / "bench")
        rows = load(HERE / folder, study)
        grid = searched(study) | searched(read_index(HERE / folder / "control"), Kind.CONTROL)
        if not rows:
            continue
        rows = dict(
            sorted(
                rows.items(), key=lambda kv: (METHODS.index(kv[0]), "") if kv[0] in METHODS else (len(METHODS), kv[0])
            )
        )
        lines, tests = comparisons(rows)
        studies[title.split()[0]] = rows, tests
        begun = any(stage(r) == 2 for r in study)
        before = load(HERE / folder, study, first_stage=True) if begun else rows
        ranks[title.split()[0]] = rank_change(rows, before) if begun and "ept" in rows else None
        blocks += [
            [f"### {title}"],
            [progress(HERE / folder, len(study))],
            [cost(study)],
            [diverged(study)],
            table(rows),
            chosen(rows, grid),
            [edges(rows, grid)],
            *lengths(HERE / folder, study, rows, before),
            lines,
            verdict(rows, tests) + rank_line(ranks[title.split()[0]]) + features(HERE / folder, rows),
            prediction_sets(HERE / folder, study, len({(str(r.spec.shots), r.spec.exp) for r in study})),
            *(mechanism(HERE / folder, rows, sizes(HERE / folder)) if begun else []),
        ]
    blocks += [overall(studies) + overall_ranks(ranks), limits(any(ranks.values()))]
    return "\n\n".join("\n".join(block) for block in blocks if any(block))


LIMITS = [
    "### What this study cannot show",
    "",
    "- **One backbone, small images.** DINOv2-S/14 (22 M parameters, self-supervised on natural images, taken from a "
    "saliency model whose fine-tuning history is unknown) at 112 px, an 8 × 8 patch grid, because the study runs on "
    "CPU; the paper's ViT-B/16 (ImageNet-21k) at 224 px, and other pretraining, may rank the methods differently.",
    "- **Two binary tasks.** Neither is MedFMC (its images are not available here): no multi-label task, no 19-class "
    "chest X-ray; PneumoniaMNIST's 28-px originals carry little detail. The same commands on MedFMC with ViT-B/16 "
    "(`search: paper`, 5 samplings) are the paper's experiment.",
    "- **Noisy selection and scores.** 20 validation images give accuracy in steps of 5 points, so learning rate, "
    "epoch and temperature are chosen on a coarse, noisy signal; one test accuracy on about 600 images has a 95 % "
    "interval of about ± 4 points; one seed per sampling. With 15 paired cells per dataset, a difference of a few "
    "points is significant only when it is consistent.",
    "- **A short grid.** Three learning rates per method (four for BitFit and SSF, widened after they chose the "
    "lowest most often, and for EPT, widened upwards after its features hardly moved); a method that chose an end "
    "of its grid most often may do better beyond it (*At the grid's edge* above says whether any did). Other "
    "hyper-parameters (prompt length, LoRA rank, ...) stay at their defaults; the paper's `search: paper` grids run "
    "with the same command.",
]


def limits(searched: bool) -> list[str]:
    """:data:`LIMITS`, saying once the prompt's size has been searched that it no longer stays at its default."""
    if not searched:
        return LIMITS
    return [
        line.replace(
            "Other hyper-parameters (prompt length, LoRA rank, ...) stay at their defaults",
            "The "
            "prompt's size was searched in stages (above); other hyper-parameters (LoRA rank, ...) stay "
            "at their defaults",
        )
        for line in LIMITS
    ]


def _existing_file(path: str) -> Path:
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{path} is not a file")
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the real study's report from its committed records.")
    parser.add_argument(
        "--page",
        type=_existing_file,
        default=ROOT / "docs" / "study.md",
        help="The page whose marked block gets the report [docs/study.md].",
    )
    page = parser.parse_args(argv).page
    text = report()
    (HERE / "results.md").write_text(text + "\n")
    current = page.read_text()
    if START in current and END in current:
        pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
        page.write_text(pattern.sub(lambda m: f"{START}\n{text}\n{END}", current))
    print(text)


if __name__ == "__main__":
    main()
