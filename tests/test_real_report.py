"""The real study's report (studies/real/report.py) against numbers recomputed here from the committed files with
plain json and numpy: validation selection, the table's means, Holm's correction and the paired tests."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "benchmarks" / "real"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("real_report", ROOT / "studies" / "real" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _selected_by_hand(path: Path) -> dict[tuple, dict]:
    """Per (label, shots, exp): the candidate with the best val_best, ties to the higher val AUC at the selected
    epoch, then to the smaller learning rate."""
    cells: dict[tuple, list[dict]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        s = r["spec"]
        cells.setdefault((s["label"], s["shots"], s["exp"]), []).append(r)
    chosen = {}
    for cell, runs in cells.items():
        scored = [r for r in runs if r["result"]["val_best"] is not None and math.isfinite(r["result"]["val_best"])]
        if scored:
            chosen[cell] = max(
                scored,
                key=lambda r: (
                    r["result"]["val_best"],
                    r["result"]["history"][r["result"]["selected_epoch"] - 1]["val_AUC"],
                    -r["spec"]["train"]["lr"],
                ),
            )
    return chosen


@pytest.mark.parametrize("dataset", ["pneumoniamnist", "br35h"])
def test_rows_are_the_validation_selected_runs(report, dataset):
    rows = report.load(REAL / dataset, report.read_index(REAL / dataset / "bench"))
    by_hand = _selected_by_hand(REAL / dataset / "bench" / "runs.jsonl")
    assert by_hand, "the committed study has runs"
    for (label, shots, exp), r in by_hand.items():
        cell = rows[label][(shots, exp)]
        assert cell["accuracy"] == r["result"]["test_metrics"]["accuracy"]
        assert cell["lr"] == r["spec"]["train"]["lr"]
        assert cell["ECE_cal"] == r["result"]["calibration"]["test"]["ECE"]
    assert {k.kind for k in rows} == set(report.Kind)
    assert sum(len(v) for k, v in rows.items() if k.kind is report.Kind.METHOD) == len(by_hand)


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


def test_progress_counts_each_methods_own_search(report, tmp_path):
    (tmp_path / "study.yaml").write_text(
        "search: {lr: [1, 2, 3]}\nmethods: [linear, {method: bitfit, search: {lr: [0, 1, 2, 3]}}, "
        "{method: vp, search: {lr: [1], epochs: [5, 10]}}]\ntasks: [a]\nshots: [1, 5, 10]\nexps: [1, 2]\n"
        "seeds: [0]\n"
    )
    total = (3 + 4 + 2) * 3 * 2
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
    (tmp_path / "bench" / "analysis").mkdir(parents=True)
    (tmp_path / "bench" / "analysis" / "analysis.json").write_text(json.dumps({"groups": groups}))
    [line] = report.features(tmp_path)
    assert "pretrained backbone 30.0, EPT 12.0 ± 0.05, lowest vp 7.0." in line and "10-shot" in line
    assert "ept (intra-class scatter's std over the runs 0.1 % of its mean)" in line
    assert "vp (" not in line and "lora (" not in line and "linear (" not in line
    assert report.features(tmp_path / "missing") == []
