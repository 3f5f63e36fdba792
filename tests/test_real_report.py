"""The real study's report (studies/real/report.py) against numbers recomputed here from the committed files with
plain json, yaml and numpy: validation selection (ties to the first stage of the staged search), the complete cells,
the table's means, the sizes chosen, before/after the length search, EPT's rank, Holm's correction and the paired
tests; on the committed records, a part of them (a study stopped half way) and a small synthetic study."""

import copy
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.special import log_softmax

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "benchmarks" / "real"
DATASETS = ("pneumoniamnist", "br35h")


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("real_report", ROOT / "studies" / "real" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _study(tmp_path: Path, dataset: str, keep=None) -> Path:
    """A study folder holding the committed ``dataset`` study (linked), its records those ``keep`` keeps (all)."""
    folder = tmp_path / dataset
    (folder / "bench").mkdir(parents=True)
    committed = REAL / dataset / "bench" / "runs.jsonl"
    if keep is None:
        (folder / "bench" / "runs.jsonl").symlink_to(committed)
    else:
        lines = committed.read_text().splitlines(keepends=True)
        (folder / "bench" / "runs.jsonl").write_text("".join(x for x in lines if keep(json.loads(x))))
    for name in ("study.yaml", "control", "floors"):
        (folder / name).symlink_to(REAL / dataset / name)
    return folder


def _half_way(r: dict) -> bool:
    """A study stopped part way through its length search: sampling 5's stage-2 runs and EPT's 10-shot ones not in."""
    s = r["spec"]
    return _stage(r) == 1 or not (s["exp"] == 5 or (s["label"] == "ept" and s["shots"] == 10))


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "bench" / "runs.jsonl").read_text().splitlines()]


def _stage(r: dict) -> int:
    return 2 if set(r["spec"]["candidate"]) - {"lr"} else 1


def _best(runs: list[dict]) -> dict | None:
    """The candidate with the best val_best, ties to the higher val AUC at the selected epoch, then to the first
    stage, the smaller learning rate, the smaller staged value."""
    scored = [r for r in runs if r["result"]["val_best"] is not None and math.isfinite(r["result"]["val_best"])]
    if not scored:
        return None
    return max(
        scored,
        key=lambda r: (
            r["result"]["val_best"],
            r["result"]["history"][r["result"]["selected_epoch"] - 1]["val_AUC"],
            -_stage(r),
            -r["spec"]["train"]["lr"],
            tuple(-v for k, v in sorted(r["spec"]["candidate"].items()) if k != "lr"),
        ),
    )


def _by_hand(folder: Path, first_stage: bool = False) -> dict[tuple, dict]:
    """Per complete cell (label, shots, exp): the selected run (among the first stage's only with
    ``first_stage``). A cell is complete when it has every rate of study.yaml's search for the method and, once any
    stage-2 run exists, every other value of its ``then`` at the rate of the stage-1 choice."""
    study = yaml.safe_load((folder / "study.yaml").read_text())
    grids = {}
    for m in study["methods"]:
        m = {"method": m} if isinstance(m, str) else m
        grids[m["method"]] = (m.get("search") or study["search"])["lr"], m.get("then") or {}
    runs = _lines(folder)
    begun = any(_stage(r) == 2 for r in runs)
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        s = r["spec"]
        cells.setdefault((s["label"], s["shots"], s["exp"]), []).append(r)
    chosen = {}
    for cell, members in cells.items():
        lrs, then = grids[cell[0]]
        first = [r for r in members if _stage(r) == 1]
        if not set(lrs) <= {r["spec"]["train"]["lr"] for r in first}:
            continue
        stage1 = _best(first)
        if begun and then and stage1 is not None:
            [(key, values)] = then.items()
            lr = stage1["spec"]["train"]["lr"]
            have = {r["spec"]["candidate"][key] for r in members if _stage(r) == 2 and r["spec"]["train"]["lr"] == lr}
            if not {v for v in values if v != stage1["model"]["options"][key]} <= have:
                continue
        best = stage1 if first_stage else _best(members)
        if best is not None:
            chosen[cell] = best
    return chosen


def _sizes(folder: Path) -> dict[str, str]:
    study = yaml.safe_load((folder / "study.yaml").read_text())
    return {m["method"]: next(iter(m["then"])) for m in study["methods"] if isinstance(m, dict) and m.get("then")}


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("whole", [True, False])
def test_rows_are_the_validation_selected_runs_of_the_complete_cells(report, tmp_path, dataset, whole):
    folder = _study(tmp_path, dataset, None if whole else _half_way)
    study = report.read_index(folder / "bench")
    for first_stage in (False, True):
        rows = report.load(folder, study, first_stage=first_stage)
        by_hand = _by_hand(folder, first_stage)
        assert by_hand, "the committed study has runs"
        for (label, shots, exp), r in by_hand.items():
            cell = rows[label][(shots, exp)]
            assert cell["accuracy"] == r["result"]["test_metrics"]["accuracy"]
            assert cell["lr"] == r["spec"]["train"]["lr"] and cell["key"] == r["key"]
            assert cell["ECE_cal"] == r["result"]["calibration"]["test"]["ECE"]
        assert {k.kind for k in rows} == set(report.Kind)
        methods = {k: v for k, v in rows.items() if k.kind is report.Kind.METHOD}
        assert sum(map(len, methods.values())) == len(by_hand)
    chosen = _by_hand(folder)
    assert all(r["selected"] for r in chosen.values())  # the bench's own choice in every complete cell
    assert len(chosen) == (165 if whole else 165 - 3 * 3 - 4)  # a stopped study: its open cells left out


@pytest.mark.parametrize("dataset", DATASETS)
def test_a_study_stopped_half_way_leaves_out_the_cells_not_all_in(report, tmp_path, dataset):
    folder = _study(tmp_path, dataset, _half_way)
    complete = report.complete(folder, report.read_index(folder / "bench"))
    by_hand = _by_hand(folder)
    assert {(label, shots, exp) for label, _, shots, exp, _ in complete} == set(by_hand)
    assert set(_by_hand(_study(tmp_path / "all", dataset))) - set(by_hand) == {
        (m, shots, exp)
        for m in ("ept", "vpt", "vp")
        for shots in (1, 5, 10)
        for exp in (1, 2, 3, 4, 5)
        if exp == 5 or (m == "ept" and shots == 10)
    }


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("whole", [True, False])
def test_sizes_chosen_before_after_and_ranks(report, tmp_path, dataset, whole):
    folder = _study(tmp_path, dataset, None if whole else _half_way)
    study = report.read_index(folder / "bench")
    rows, before = report.load(folder, study), report.load(folder, study, first_stage=True)
    blocks = report.lengths(folder, study, rows, before)
    after_hand, before_hand, keys = _by_hand(folder), _by_hand(folder, True), _sizes(folder)
    _check_sizes(blocks, after_hand, keys)
    _check_before_after(blocks, after_hand, before_hand, keys)
    _check_rank(report.rank_change(rows, before), after_hand, before_hand)


def _check_sizes(blocks, after: dict, keys: dict) -> None:
    """The per-cell table and the counts table of :func:`report.lengths` against the runs chosen by hand."""
    per_cell = next(b for b in blocks if b[0].startswith("| chosen size"))
    counts = next(b for b in blocks if b[0].startswith("| size chosen"))
    methods = [m.strip() for m in per_cell[0].split("|")[2:-1]]
    for line in per_cell[2:]:
        where, *marks = [m.strip() for m in line.split("|")[1:-1]]
        shots, exp = int(where.split("-")[0]), int(where.split()[-1])
        for m, mark in zip(methods, marks):
            r = after.get((m, shots, exp))
            if r is None:
                assert mark == "…"
                continue
            size = r["model"]["options"][keys[m]]
            changed = _stage(r) == 2
            assert mark == (f"**{size}**" if changed else str(size)) + f" ({r['spec']['train']['lr']:g})"
    values = [int(v) for v in counts[0].split("|")[2:-1]]
    for line in counts[2:]:
        label, *cells = [c.strip() for c in line.split("|")[1:-1]]
        m = label.split()[0]
        chosen = [r["model"]["options"][keys[m]] for (mm, _, _), r in after.items() if mm == m]
        for value, cell in zip(values, cells):
            assert cell == "–" or int(cell) == chosen.count(value)
        assert sum(int(c) for c in cells if c != "–") == len(chosen)


def _check_before_after(blocks, after: dict, before: dict, keys: dict) -> None:
    """Each row of the before/after table: cells, changed, the two means, the mean and median difference."""
    table = next(b for b in blocks if b[0].startswith("| after − before"))
    for line in table[2:]:
        name, n, changed, was, now, mean, median, updown, *_ = [c.strip() for c in line.split("|")[1:-1]]
        m, metric = name.split()
        cells = sorted(c for c in after if c[0] == m)
        a = np.array([after[c]["result"]["test_metrics"][metric] for c in cells])
        b = np.array([before[c]["result"]["test_metrics"][metric] for c in cells])
        assert int(n) == len(cells) and int(changed) == sum(after[c]["key"] != before[c]["key"] for c in cells)
        assert (was, now) == (f"{100 * b.mean():.1f}", f"{100 * a.mean():.1f}")
        d = 100 * (a - b)
        assert (mean, median) == (f"{d.mean():+.1f}", f"{np.median(d):+.1f}")
        assert updown == f"{(d > 0).sum()}–{(d < 0).sum()}"


def _check_rank(change: dict, after: dict, before: dict) -> None:
    """EPT's rank by mean accuracy over the cells every method has complete, before and after."""
    methods = {m for m, _, _ in after}
    shared = set.intersection(*({(s, e) for mm, s, e in after if mm == m} for m in methods))

    def rank(chosen: dict) -> tuple[int, float]:
        means = {
            m: np.mean([chosen[(m, s, e)]["result"]["test_metrics"]["accuracy"] for s, e in shared]) for m in methods
        }
        return 1 + sum(v > means["ept"] for v in means.values()), means["ept"]

    now, mean_now = rank(after)
    was, mean_was = rank({**after, **{c: r for c, r in before.items() if c in after}})
    assert (change["now"], change["was"], change["n"], change["cells"]) == (now, was, len(methods), len(shared))
    assert change["mean_now"] == pytest.approx(mean_now) and change["mean_was"] == pytest.approx(mean_was)


def test_table_mean_and_sample_std(report):
    rows = {
        "m": {
            (10, e): {"accuracy": a, "AUC": 0.5, "ECE": 0.1, "ECE_cal": 0.05} for e, a in enumerate([0.6, 0.7, 0.8], 1)
        }
    }
    line = report.table(rows)[2]
    assert "70.0 ± 10.0" in line  # sample std of 60, 70, 80
    assert line.split("|")[-2].strip() == "3"


def test_holm_matches_its_definition(report):
    p = [0.01, 0.04, 0.03, 0.20]
    # sorted 0.01, 0.03, 0.04, 0.20 -> 4*0.01, max(.04, 3*.03), max(.09, 2*.04), max(.09, .20)
    assert report.holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert report.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_counts_and_exact_tests(report):
    a = {(1, e): {"accuracy": v} for e, v in enumerate([0.71, 0.62, 0.6, 0.93, 0.54], 1)}
    b = {(1, e): {"accuracy": v} for e, v in enumerate([0.7, 0.6, 0.6, 0.9, 0.5], 1)}
    b[(5, 1)] = {"accuracy": 0.1}  # not shared: ignored
    t = report.paired(a, b)
    assert (t["n"], t["wins"], t["losses"]) == (5, 4, 0)
    assert t["median"] == pytest.approx(2.0)  # differences 1, 2, 0, 3, 4 points
    assert t["p_sign"] == pytest.approx(2 * 0.5**4)  # two-sided exact binomial, 4 of 4
    # Wilcoxon without the zero: ranks 1-4 all positive, W- = 0; exact two-sided p = 2 * P(W- = 0) = 2 / 2**4
    assert t["p_wilcoxon"] == pytest.approx(0.125)


def _typed(report, rows: dict) -> dict:
    """The rows keyed by :class:`report.Row`: a plain label is a method's."""
    return {k if isinstance(k, report.Row) else report.Row(k): v for k, v in rows.items()}


def _lr_cells(*lrs):
    return {(1, e): {"lr": lr} for e, lr in enumerate(lrs, 1)}


def test_edges_name_the_methods_that_chose_an_end_of_their_own_grid(report):
    three, four = [6e-4, 6e-3, 6e-2], [6e-5, 6e-4, 6e-3, 6e-2]
    rows = {
        "vpt": _lr_cells(6e-4, 6e-4, 6e-4, 6e-2),
        "lora": _lr_cells(6e-2, 6e-2, 6e-3),  # 3 of 4 low; 2 of 3 high
        "ept": _lr_cells(6e-4, 6e-3, 6e-2),
        "full": _lr_cells(6e-4, 6e-4),  # spread; too few cells to tell
        "bitfit": _lr_cells(6e-4, 6e-4, 6e-4),  # the lowest of three, not of its own four
        "ssf": _lr_cells(6e-5, 6e-5, 6e-4),  # the lowest of its four
        report.Row("linear", report.Kind.CONTROL): _lr_cells(6e-4, 6e-4, 6e-4),
    }  # not a method of the study
    rows = _typed(report, rows)
    grid = {row: three for row in rows} | {"bitfit": four, "ssf": four}
    line = report.edges(rows, grid)
    assert "vpt chose 0.0006 in 3 of 4 cells (below)" in line and "lora chose 0.06 in 2 of 3 cells (above)" in line
    assert "ssf chose 6e-05 in 2 of 3 cells (below)" in line
    assert not any(name in line for name in ("ept", "full", "bitfit", "control"))
    none = report.edges({"ept": _lr_cells(6e-4, 6e-3, 6e-2)}, {"ept": three})
    assert none.startswith("**At the grid's edge:** none") and "67 % of its cells" in none
    assert "none" in report.edges({"ept": _lr_cells(6e-3, 6e-3, 6e-3)}, {"ept": [6e-3]})  # one rate: no edge


def test_chosen_counts_each_rate_and_marks_the_rates_a_row_did_not_try(report):
    rows = {
        "ept": _lr_cells(6e-4, 6e-4, 6e-2),
        "bitfit": _lr_cells(6e-5, 6e-4, 6e-5),
        report.Row("raw pixels + LR", report.Kind.FLOOR): {(1, 1): {"accuracy": 0.5}},
    }
    rows = _typed(report, rows)
    grid = {"ept": [6e-4, 6e-3, 6e-2], "bitfit": [6e-5, 6e-4, 6e-3, 6e-2]}
    lines = report.chosen(rows, grid)
    assert lines[0] == "| learning rate chosen | 6e-05 | 0.0006 | 0.006 | 0.06 |"
    assert lines[2:] == ["| ept | – | 2 | 0 | 1 |", "| bitfit | 2 | 1 | 0 | 0 |"]  # no floor row


def test_searched_lists_every_rate_a_row_tried(report):
    records = report.read_index(REAL / "pneumoniamnist" / "bench")
    by_hand: dict[str, set] = {}
    for line in (REAL / "pneumoniamnist" / "bench" / "runs.jsonl").read_text().splitlines():
        s = json.loads(line)["spec"]
        by_hand.setdefault("control: " + s["label"], set()).add(s["train"]["lr"])
    grid = report.searched(records, report.Kind.CONTROL)
    assert grid == {row: sorted(lrs) for row, lrs in by_hand.items()}
    assert {(row.kind, row.name) for row in grid} == {(report.Kind.CONTROL, row[9:]) for row in by_hand}


def test_progress_counts_each_methods_own_search_and_its_staged_runs(report, tmp_path):
    (tmp_path / "study.yaml").write_text(
        "search: {lr: [1, 2, 3]}\nmethods: [linear, {method: bitfit, search: {lr: [0.5, 1, 2, 3]}}, "
        "{method: vp, search: {lr: [1], epochs: [5, 10]}}, {method: ept, then: {prompt_length: [1, 10, 100]}}, "
        "{method: vpt, then: {prompt_length: [1, 50, 100]}}]\ntasks: [a]\nshots: [1, 5, 10]\nexps: [1, 2]\n"
        "seeds: [0]\n"
    )
    # per cell: 3 + 4 + 2 rates; EPT 3 rates + lengths 1 and 10 (100, its default, is the chosen run itself);
    # VPT 3 rates + lengths 1, 50 and 100 (its default, 10, is not in the grid)
    total = (3 + 4 + 2 + (3 + 2) + (3 + 3)) * 3 * 2
    assert f"{total - 1} of the study's {total} runs" in report.progress(tmp_path, total - 1)
    assert report.progress(tmp_path, total) == ""


@pytest.mark.parametrize("dataset", ["pneumoniamnist", "br35h"])
def test_diverged_candidates_are_counted_from_the_records(report, dataset):
    path = REAL / dataset / "bench" / "runs.jsonl"
    counts: dict[tuple, int] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r["result"]["diverged_epoch"] is not None:
            assert not r["selected"]
            key = (r["spec"]["label"], r["spec"]["train"]["lr"])
            counts[key] = counts.get(key, 0) + 1
    text = report.diverged(report.read_index(REAL / dataset / "bench"))
    for (label, lr), n in counts.items():
        assert f"{label} at {lr:g} in {n} cell" in text
    assert text.count(" in ") == len(counts)


def test_p_values_below_a_thousandth_are_not_printed_as_zero(report):
    assert report._p(0.0004) == "< 0.001" and report._p(0.0004, "= ") == "< 0.001"
    assert report._p(0.0123, "= ") == "= 0.012" and report._p(1.0) == "1.000"


def _acc_cells(*accuracies, ece=0.1, ece_cal=0.05):
    return {(1, e): {"accuracy": a, "ECE": ece, "ECE_cal": ece_cal} for e, a in enumerate(accuracies, 1)}


def test_overall_verdict_names_what_holds_after_holm(report):
    n = 8
    rows = {
        "linear": _acc_cells(*[0.60] * n, ece=0.20, ece_cal=0.10),
        "vpt": _acc_cells(*[0.70 + 0.01 * i for i in range(n)]),  # above EPT in every cell
        "ept": _acc_cells(*[0.60 + 0.01 * i for i in range(n)], ece=0.05, ece_cal=0.10),  # ties linear at i = 0
        report.Row("raw pixels + LR", report.Kind.FLOOR): _acc_cells(*[0.62] * n),
    }
    rows = _typed(report, rows)
    lines, tests = report.comparisons(rows)
    text = "\n".join(report.overall({"A": (rows, tests)}))
    # ranks by mean accuracy: vpt 73.5, ept 63.5, linear 60.0
    assert "it ranks 2 of 3 on A (63.5 %; best vpt, 73.5 %)" in text and "**Is EPT the best method?** No" in text
    # EPT − vpt = -10 points in all 8 cells: exact Wilcoxon p = 2 / 2**8, Holm ×3 (smallest of three p-values)
    assert f"EPT loses to vpt on A (median -10.0 points, 0–8 cells, Holm p = {3 * 2 / 2**8:.3f})" in text
    # EPT − linear = 0, 1, ..., 7 points: the tie dropped, p = 2 / 2**7, Holm ×2 (second smallest) = 0.031
    assert f"EPT beats linear on A (median +3.5 points, 7–0 cells, Holm p = {2 * 2 / 2**7:.3f})" in text
    assert "floor raw pixels + LR on A" not in text  # EPT − floor = -2 ... +5 points: not significant
    # EPT's own ECE 5 vs the scaled probe's 10 in every cell: lower, exact p = 2 / 2**8
    assert "EPT's own ECE against it: EPT's significantly lower (median -5.0 points, EPT lower in 8 of 8" in text
    assert "with both temperature-scaled: no significant difference (median +0.0" in text
    # the floor's 62.0 % is above linear's 60.0 only
    assert "raw pixels + LR (62.0 %) is above 1 of 3 methods' averages" in text and "EPT's among" not in text


def test_features_reads_the_analysis_groups(report, tmp_path):
    def group(label, ratio, ratio_std, scatter, scatter_std, shots=10):
        return {
            "label": label,
            "shots": shots,
            "n_runs": 5 if shots else 1,
            "scatter_ratio": {"mean": ratio, "std": ratio_std},
            "intra_class_scatter": {"mean": scatter, "std": scatter_std},
        }

    groups = [
        group("pretrain", 30.0, None, 100.0, None, shots=None),
        group("linear", 30.0, 0.0, 100.0, 0.0),  # the pretrained features: not "unlike" them
        group("ept", 12.0, 0.05, 200.0, 0.2),  # 0.1 % spread, 2× the pretrained scatter
        group("vp", 7.0, 1.0, 110.0, 20.0),  # spread 18 %
        group("lora", 29.0, 1.0, 100.5, 0.1),
    ]  # 0.1 % spread but within 1 % of the pretrained scatter
    runs = {"linear/a": {"label": "linear"}, "ept/b": {"label": "ept"}, "ept/c": {"label": "ept"}}
    runs["pretrain/x"] = {"label": "pretrain"}
    (tmp_path / "bench" / "analysis").mkdir(parents=True)
    (tmp_path / "bench" / "analysis" / "analysis.json").write_text(json.dumps({"groups": groups, "runs": runs}))
    rows = {"linear": {(10, 1): {"key": "linear/a"}}, "ept": {(10, 1): {"key": "ept/b"}, (10, 2): {"key": "ept/c"}}}
    [line] = report.features(tmp_path, rows)
    assert "pretrained backbone 30.0, EPT 12.0 ± 0.05, lowest vp 7.0." in line and "10-shot" in line
    assert "ept (intra-class scatter's std over the runs 0.1 % of its mean)" in line
    assert "vp (" not in line and "lora (" not in line and "linear (" not in line and "any more" not in line
    rows["ept"][(10, 2)] = {"key": "ept/d"}  # the length search chose another run in one cell
    [stale] = report.features(tmp_path, rows)
    assert stale.startswith(line) and "**Not the selected runs any more:** 1 of the 3 runs analysed (ept 1)" in stale
    assert report.features(tmp_path / "missing", rows) == []


SYNTHETIC = """search: {lr: [0.001, 0.01]}
methods: [linear, {method: ept, then: {prompt_length: [1, 10, 100]}}]
tasks: [medmnist]
shots: [1]
exps: [1, 2, 3, 4]
seeds: [0]
"""


def _record(template: dict, method: str, exp: int, lr: float, val: float, auc: float, acc: float, length=None):
    """A run record like ``template`` with these settings: validation score and AUC at its selected epoch, test
    accuracy; ``length``: a run of EPT's staged search (default 100 otherwise); 60 s of training."""
    r = copy.deepcopy(template)
    r["spec"].update(
        label=method,
        method=method,
        shots=1,
        exp=exp,
        candidate={"lr": lr, **({"prompt_length": length} if length else {})},
        options={"prompt_length": length} if length else {},
    )
    r["spec"]["train"]["lr"] = lr
    r["model"].update(method=method, options={"prompt_length": length or 100} if method == "ept" else {})
    r["result"].update(
        val_best=val,
        selected_epoch=1,
        history=[{**r["result"]["history"][0], "val_AUC": auc}],
        diverged_epoch=None,
        time_s={"train": 60.0, "val": 0.0, "test": 0.0},
    )
    r["result"]["test_metrics"] = {**r["result"]["test_metrics"], "accuracy": acc}
    r["key"] = f"{method}/medmnist/1-shot/exp{exp}/seed0/lr={lr}" + (f",prompt_length={length}" if length else "")
    return r


def _synthetic(folder: Path) -> Path:
    """Linear (rate 0.001 wins, 60 %) and EPT in four cells: 1 ties stage 2 with stage 1 (stage 1 kept), 2 is won
    on AUC by length 10, 3 lacks a stage-2 run (left out), 4 ties lengths 1 and 10 fully (length 1)."""
    template = json.loads((REAL / "pneumoniamnist" / "bench" / "runs.jsonl").open().readline())
    runs = []
    for exp in (1, 2, 3, 4):
        runs += [
            _record(template, "linear", exp, 0.001, 0.7, 0.5, 0.6),
            _record(template, "linear", exp, 0.01, 0.6, 0.5, 0.9),
        ]
    ept = [
        (1, 0.001, 0.8, 0.6, 0.50, None), (1, 0.01, 0.8, 0.6, 0.55, None),
        (1, 0.001, 0.8, 0.6, 0.90, 1), (1, 0.001, 0.7, 0.9, 0.95, 10),
        (2, 0.001, 0.6, 0.5, 0.52, None), (2, 0.01, 0.7, 0.5, 0.54, None),
        (2, 0.01, 0.9, 0.7, 0.80, 1), (2, 0.01, 0.9, 0.8, 0.85, 10),
        (3, 0.001, 0.9, 0.5, 0.50, None), (3, 0.01, 0.6, 0.5, 0.50, None), (3, 0.001, 0.95, 0.5, 0.99, 1),
        (4, 0.001, 0.5, 0.5, 0.40, None), (4, 0.01, 0.5, 0.5, 0.45, None),
        (4, 0.001, 0.9, 0.7, 0.70, 1), (4, 0.001, 0.9, 0.7, 0.75, 10),
    ]  # fmt: skip
    runs += [_record(template, "ept", *values) for values in ept]
    runs[-5]["result"].update(val_best=None, diverged_epoch=3)  # exp 3's stage-2 run: never selected
    (folder / "bench").mkdir(parents=True)
    (folder / "study.yaml").write_text(SYNTHETIC)
    (folder / "bench" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    return folder


def test_a_synthetic_staged_study_by_its_construction_and_by_hand(report, tmp_path):
    folder = _synthetic(tmp_path / "s")
    study = report.read_index(folder / "bench")
    rows, before = report.load(folder, study), report.load(folder, study, first_stage=True)
    after_hand, before_hand = _by_hand(folder), _by_hand(folder, True)
    # by construction: exp 3 is not complete; the sizes chosen 100 (a tie keeps stage 1), 10 (on AUC), 1 (a full
    # tie goes to the smaller length)
    assert set(rows["ept"]) == {(1, 1), (1, 2), (1, 4)} and len(rows["linear"]) == 4
    assert {e: c["options"]["prompt_length"] for (_, e), c in rows["ept"].items()} == {1: 100, 2: 10, 4: 1}
    assert [c["accuracy"] for c in before["ept"].values()] == [0.50, 0.54, 0.40]
    assert {c: r["key"] for c, r in after_hand.items()} == {
        ("linear", 1, 1): "linear/medmnist/1-shot/exp1/seed0/lr=0.001",
        ("linear", 1, 2): "linear/medmnist/1-shot/exp2/seed0/lr=0.001",
        ("linear", 1, 3): "linear/medmnist/1-shot/exp3/seed0/lr=0.001",
        ("linear", 1, 4): "linear/medmnist/1-shot/exp4/seed0/lr=0.001",
        ("ept", 1, 1): "ept/medmnist/1-shot/exp1/seed0/lr=0.001",
        ("ept", 1, 2): "ept/medmnist/1-shot/exp2/seed0/lr=0.01,prompt_length=10",
        ("ept", 1, 4): "ept/medmnist/1-shot/exp4/seed0/lr=0.001,prompt_length=1",
    }
    assert {(m, *c): r["key"] for m in rows for c, r in rows[m].items()} == {c: r["key"] for c, r in after_hand.items()}
    blocks = report.lengths(folder, study, rows, before)
    per_cell = next(b for b in blocks if b[0].startswith("| chosen size"))
    assert per_cell[2:] == [
        "| 1-shot, sampling 1 | 100 (0.001) |",
        "| 1-shot, sampling 2 | **10** (0.01) |",
        "| 1-shot, sampling 3 | … |",
        "| 1-shot, sampling 4 | **1** (0.001) |",
    ]
    assert next(b for b in blocks if b[0].startswith("| size chosen"))[2:] == ["| ept (prompt_length) | 1 | 1 | 1 |"]
    table = next(b for b in blocks if b[0].startswith("| after − before"))
    assert table[2].startswith("| ept accuracy | 3 | 2 | 48.0 | 68.3 | +20.3 | +30.0 | 2–0 |")  # 0, 31, 30 points
    assert "7 runs (ept 7), 0.1 core-hours" in next(b[0] for b in blocks if b[0].startswith("**Cost of the length"))
    assert "none" in next(b[0] for b in blocks if b[0].startswith("**Size at the grid's edge"))
    assert report.diverged(study).endswith(": ept at 0.001, prompt_length 1 in 1 cell.")
    change = report.rank_change(rows, before)
    assert (change["was"], change["now"], change["n"], change["cells"]) == (2, 1, 2, 3)  # 48.0 < 60 < 68.3
    assert report.rank_line(change)[0].endswith("its rank changed from 2 to 1.")
    _check_sizes(blocks, after_hand, {"ept": "prompt_length"})
    _check_before_after(blocks, after_hand, before_hand, {"ept": "prompt_length"})
    _check_rank(change, after_hand, before_hand)


def test_the_length_search_not_started_leaves_the_tables_as_they_were(report, tmp_path):
    folder = _study(tmp_path, "br35h", lambda r: _stage(r) == 1)
    study = report.read_index(folder / "bench")
    rows = report.load(folder, study)
    [[text]] = report.lengths(folder, study, rows, rows)
    assert "ept prompt_length 100, vpt prompt_length 10, vp prompt_size 30" in text
    assert text.endswith("The length search has not started (no stage-2 run is in): the tables above are the "
                         "learning-rate search's, at the default sizes.")  # fmt: skip


def _size_cells(*sizes, key="prompt_length"):
    return {(1, e): {"options": {key: s}} for e, s in enumerate(sizes, 1)}


def test_size_edges_name_the_methods_at_an_end_of_their_size_grid(report):
    staged = {
        "ept": report.Sizes("prompt_length", [1, 10, 50, 100], 100, 1, [1, 10, 50, 100]),
        "vpt": report.Sizes("prompt_length", [1, 10, 50, 100], 10, 1, [1, 10, 50, 100]),
        "vp": report.Sizes("prompt_size", [4, 8, 16, 30], 30, 1, [4, 8, 16, 30]),
    }
    rows = {
        "ept": _size_cells(100, 100, 10),  # 2 of 3 at the largest
        "vpt": _size_cells(1, 1, 10, 50),  # 2 of 4: not enough
        "vp": _size_cells(4, 4, 4, key="prompt_size"),  # 3 of 3 at the smallest
    }
    line = report.size_edges(rows, staged)
    assert "ept chose prompt_length 100, the grid's largest, in 2 of 3 cells: the grid is to be extended that way " \
           "once;" in line  # fmt: skip
    assert "vp chose prompt_size 4, the grid's smallest, in 3 of 3 cells: the grid" in line and "vpt" not in line
    lowest = report.size_edges({"vpt": _size_cells(1, 1, 1)}, staged)
    assert lowest.endswith("in 3 of 3 cells (it cannot go lower: 1 is the least prompt_length there is).")
    assert "none" in report.size_edges({"ept": _size_cells(100, 100)}, staged)  # too few cells to tell


def test_size_edges_after_the_extension_read_the_first_grid_and_say_what_the_new_one_chose(report):
    staged = {"vp": report.Sizes("prompt_size", [4, 8, 16, 30, 40, 55], 30, 1, [4, 8, 16, 30])}
    assert staged["vp"].extension == [40, 55]
    first = {"vp": _size_cells(30, 30, 16, 30, key="prompt_size")}  # 3 of 4 at 30 among the first grid's runs
    rows = {"vp": _size_cells(55, 40, 16, 55, key="prompt_size")}
    line = report.size_edges(rows, staged, first)
    assert line == (
        "**Size at the grid's edge** (67 % of the cells or more): vp chose prompt_size 30, the first grid's largest, "
        "in 3 of 4 cells; extended once to 40, 55, it chose them in 3 of 4 cells, the new largest 55 in 2."
    )
    at_edge = report.size_edges({"vp": _size_cells(55, 55, 16, 55, key="prompt_size")}, staged, first)
    assert at_edge.endswith("the new largest 55 in 3 (the rule extends once: the optimum may lie beyond).")
    assert "none" in report.size_edges(rows, staged, {"vp": _size_cells(8, 30, 16, 30, key="prompt_size")})


def test_mechanism_reads_the_prompt_mass_where_measured(report, tmp_path):
    staged = {"ept": report.Sizes("prompt_length", [1, 10, 100], 100, 1, [1, 10, 100])}
    rows = {"ept": {(10, 1): {"key": "a"}, (10, 2): {"key": "b"}}}
    [[missing]] = report.mechanism(tmp_path, rows, staged)
    assert "not measured yet" in missing

    def run(options, scatter, init, trained, exp=1):
        mass = {
            "blocks": [0, 1],
            **{w: {"mean": v, "min": v, "max": v} for w, v in (("init", init), ("trained", trained))},
        }
        return {
            "label": "ept",
            "shots": 10,
            "exp": exp,
            "options": options,
            "intra_class_scatter": scatter,
            "prompt_mass": mass,
        }

    runs = {
        "a": run({}, 100.0, [0.9, 0.8], [0.85, 0.75]),
        "b": run({}, 100.05, [0.9, 0.8], [0.95, 0.85], exp=2),
        "c": run({"prompt_length": 1}, 90.0, [0.1, 0.2], [0.3, 0.4], exp=2),  # analysed, not selected
        "d": {"label": "linear", "shots": 10, "options": {}, "intra_class_scatter": 1.0},
    }
    figures = [{"kind": "prompt_mass", "file": "prompt_mass_x.png"}, {"kind": "pca", "file": "pca_x.png"}]
    for where, names in (("bench/analysis", "abd"), ("prompt_mass", "ac")):  # a in both: counted once
        (tmp_path / where).mkdir(parents=True)
        analysis = {"runs": {n: runs[n] for n in names}, "figures": figures}
        (tmp_path / where / "analysis.json").write_text(json.dumps(analysis))
    [text], table, [finding] = report.mechanism(tmp_path, rows, staged)
    assert text.startswith(
        "**The mechanism** (`bench/analysis/` and `prompt_mass/`: 3 EPT runs in 10-shot sampling 1, 10-shot "
        "sampling 2, on the test images)"
    )
    assert text.endswith("Per block: `bench/analysis/prompt_mass_x.png`. Per block: `prompt_mass/prompt_mass_x.png`.")
    # length 100: mass per run (0.85, 0.85) at init, (0.80, 0.90) trained; blocks trained (0.90, 0.80); the
    # scatter's sample std over a and b: 0.05 / sqrt(2) of 100.025
    assert table[2:] == [
        "| 1 | 1 (0) | 15.0 % | 35.0 % | 30.0–40.0 % | – |",
        f"| 100 | 2 (2) | 85.0 % | 85.0 % | 80.0–90.0 % | {100 * 0.05 / 2**0.5 / 100.025:.2g} % |",
    ]
    assert finding == (
        "**Features hardly move at the chosen lengths:** holds at length 100 (the prompts absorb 85.0 % of the "
        "attention mass at init, 85.0 % trained)."
    )


def _lac_sets(val, val_labels, test, alpha=0.1):
    """Split-conformal LAC sets of the test images, from the definition in exact arithmetic: scores 1 − p_y on
    validation, q̂ the ⌈(n+1)(1−α)⌉-th smallest (every class when that exceeds n), a class in the set when
    1 − p_c ≤ q̂, i.e. log p_c ≥ the log p_y of that image (float64 log-softmax: exact where p rounds to 0 or 1)."""
    log_val, log_test = log_softmax(np.asarray(val, np.float64), 1), log_softmax(np.asarray(test, np.float64), 1)
    rank = math.ceil((len(val) + 1) * (1 - alpha))
    if rank > len(val):
        return np.ones(test.shape, bool)
    return log_test >= np.sort(log_val[np.arange(len(val)), val_labels])[::-1][rank - 1]


def _lac_set_size(val, val_labels, test, alpha=0.1):
    return float(_lac_sets(val, val_labels, test, alpha).sum(axis=1).mean())


@pytest.mark.parametrize("dataset", ["pneumoniamnist", "br35h"])
def test_prediction_set_sizes_of_the_kept_logits(report, dataset):
    runs = report.kept(REAL / dataset)
    linear = [(r, k) for r, k in runs if r.spec.method == "linear"]
    if not runs:
        pytest.skip(f"no kept logits for {dataset} yet")
    for method, temperature in (("linear", False), ("linear", True), ("ept", False)):
        sizes = report.set_sizes(runs, method, temperature)
        for record, kept in [(r, k) for r, k in runs if r.spec.method == method]:
            t = record.result.calibration.temperature if temperature else 1.0
            expected = _lac_set_size(kept.val / t, kept.val_labels, kept.test / t)
            assert sizes[(str(record.spec.shots), record.spec.exp)] == pytest.approx(expected, abs=1e-12)
    assert linear


@pytest.mark.parametrize("dataset", ["pneumoniamnist", "br35h"])
def test_coverage_of_the_kept_runs_from_the_definition(report, dataset):
    runs = [(r, k) for r, k in report.kept(REAL / dataset) if r.spec.method == "linear"]
    if not runs:
        pytest.skip(f"no kept logits for {dataset} yet")
    got = report.coverages(runs, "linear")
    for (_, kept), cov in zip(runs, got):
        labels = np.asarray(kept.test_labels)
        covered = _lac_sets(kept.val, kept.val_labels, kept.test)[np.arange(len(labels)), labels]
        assert cov["coverage"] == pytest.approx(covered.mean(), abs=1e-12)
        assert (cov["n"], cov["test"]) == (len(kept.val), len(labels))


def test_mean_coverage_chance_against_a_simulation(report):
    """The chance of a mean coverage this low among exchangeable runs: a run's coverage C ~ Beta(a, n + 1 − a) with
    a = ⌈(n+1)(1−α)⌉, its covered count ~ Binomial(N, C); simulated, against the report's exact convolution."""
    runs = [{"n": 20, "test": 624, "coverage": 0.87}] * 6 + [{"n": 30, "test": 100, "coverage": 0.9}] * 3
    rng = np.random.default_rng(0)
    total = np.zeros(200_000)
    for run in runs:
        a = math.ceil((run["n"] + 1) * 0.9 - 1e-9)
        total += rng.binomial(run["test"], rng.beta(a, run["n"] + 1 - a, len(total)))
    observed = sum(round(r["coverage"] * r["test"]) for r in runs)
    expected = (total <= observed).mean()
    assert 0.02 < expected < 0.98
    assert report.mean_coverage_p(runs, 0.1) == pytest.approx(expected, abs=0.004)


def test_the_first_grid_leaves_out_the_extension_runs_and_only_them(report, tmp_path):
    folder = _synthetic(tmp_path / "s")
    (folder / "study.yaml").write_text(SYNTHETIC.replace("[1, 10, 100]", "[1, 10, 100, 150]"))
    template = json.loads((folder / "bench" / "runs.jsonl").open().readline())
    wins = [
        _record(template, "ept", 1, 0.001, 0.99, 0.9, 0.3, 150),
        _record(template, "ept", 2, 0.01, 0.1, 0.5, 0.9, 150),
    ]
    with (folder / "bench" / "runs.jsonl").open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in wins)  # exp 4 lacks its 150 run now: not complete
    study = report.read_index(folder / "bench")
    assert report.sizes(folder)["ept"].extension == [150]
    rows, first = report.load(folder, study), report.load(folder, study, first_grid=True)
    assert {e: c["options"]["prompt_length"] for (_, e), c in rows["ept"].items()} == {1: 150, 2: 10}
    assert {e: c["options"]["prompt_length"] for (_, e), c in first["ept"].items()} == {1: 100, 2: 10}
    assert first["linear"] == rows["linear"]


def test_the_edge_rule_on_the_committed_study_counts_the_first_grid(report, tmp_path):
    """PneumoniaMNIST's VP grid was extended once (to 40 px): the rule's count is the choice among the first grid's
    runs, recomputed by hand on a copy without the extension; the line then says what the whole grid chose."""
    first = _study(tmp_path / "first", "pneumoniamnist", lambda r: r["spec"]["candidate"].get("prompt_size", 0) <= 30)
    (first / "study.yaml").unlink()
    grid = (REAL / "pneumoniamnist" / "study.yaml").read_text()
    assert "prompt_size: [4, 8, 16, 30, 40]" in grid
    (first / "study.yaml").write_text(grid.replace("[4, 8, 16, 30, 40]", "[4, 8, 16, 30]"))
    was = [r["model"]["options"]["prompt_size"] for (m, *_), r in _by_hand(first).items() if m == "vp"]
    whole = _study(tmp_path / "whole", "pneumoniamnist")
    now = [r["model"]["options"]["prompt_size"] for (m, *_), r in _by_hand(whole).items() if m == "vp"]
    assert len(was) == len(now) == 15 and was.count(30) >= 2 / 3 * 15  # why the grid was extended
    study = report.read_index(whole / "bench")
    rows, staged = report.load(whole, study), report.sizes(whole)
    line = report.size_edges(rows, staged, report.load(whole, study, first_grid=True))
    assert (
        f"vp chose prompt_size 30, the first grid's largest, in {was.count(30)} of 15 cells; extended once to 40, it "
        f"chose 40 in {now.count(40)} of 15 cells"
    ) in line


def test_overall_ranks_say_per_dataset_whether_the_rank_changed(report):
    changes = {"A": {"was": 6, "now": 5, "n": 11}, "B": {"was": 2, "now": 2, "n": 11}, "C": None}
    assert report.overall_ranks(changes) == [
        "- **Did the length search change EPT's rank?** Yes on A (6 → 5 of 11), no on B (2 → 2 of 11), by mean "
        "accuracy over the cells every method has complete (before → after)."
    ]
    assert report.overall_ranks({"A": None}) == []
