"""The segmentation study's report (studies/seg/report.py): its table and paired tests against numbers recomputed
here with numpy and scipy on made-up cells."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, wilcoxon

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("seg_report", ROOT / "studies" / "seg" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def made_up_rows():
    rng = np.random.default_rng(0)
    rows = {}
    for row, centre in (("linear", 0.5), ("ept", 0.6), ("unet", 0.4), ("floor: Otsu thresholds", 0.45)):
        rows[row] = {
            (k, e): {
                "mIoU": centre + rng.normal(0, 0.05),
                "mDice": centre + 0.1,
                "HD95": 10 * centre,
                "ECE": 0.1,
                "ECE_cal": 0.05,
                "params": 1000,
            }
            for k in (1, 5, 10)
            for e in (1, 2, 3)
        }
    return rows


def test_table_row_mean_and_sample_std(report):
    rows = made_up_rows()
    line = next(line for line in report.table(rows) if line.startswith("| ept |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    for shots, cell in zip((1, 5, 10), cells[1:4]):
        values = 100 * np.array([rows["ept"][(shots, e)]["mIoU"] for e in (1, 2, 3)])
        assert cell == f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"
    assert cells[4] == "70.0" and cells[5] == "6.0" and cells[-2] == "1,000" and cells[-1] == "9"


def test_paired_tests_and_holm(report):
    rows = made_up_rows()
    _, tests = report.comparisons(rows)
    by = {t["other"]: t for t in tests}
    d = [100 * (rows["ept"][c]["mIoU"] - rows["unet"][c]["mIoU"]) for c in sorted(rows["ept"])]
    assert by["unet"]["p_wilcoxon"] == pytest.approx(wilcoxon(d).pvalue)
    wins = sum(x > 0 for x in d)
    assert by["unet"]["wins"] == wins and by["unet"]["p_sign"] == pytest.approx(binomtest(wins, len(d)).pvalue)
    ps = sorted(t["p_wilcoxon"] for t in tests)
    assert min(t["p_holm"] for t in tests) == pytest.approx(min(1, len(ps) * ps[0]))
    text = "\n".join(report.verdict(rows, tests))
    assert "ept" in text and "Otsu thresholds" in text


@pytest.mark.parametrize("name", ["icbm152-tissue", "stardist-nuclei"])
def test_committed_floors_rows_from_their_jsonl(report, name):
    """The committed results' floor rows: mean ± sample std of test mIoU per shot count, recomputed from the
    committed floors.jsonl; the rows not run yet are named."""
    import json

    lines = [json.loads(line) for line in (ROOT / "benchmarks" / "seg" / name / "floors" / "floors.jsonl").open()]
    text = (ROOT / "benchmarks" / "seg" / "results.md").read_text()
    section = text.split(report.SETS[name])[1].split("\n### ")[0]
    for floor, label in report.FLOORS.items():
        line = next(line for line in section.splitlines() if line.startswith(f"| floor: {label} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        for shots, cell in zip((1, 5, 10), cells[1:4]):
            values = 100 * np.array([r["test"]["mIoU"] for r in lines if r["floor"] == floor and r["shots"] == shots])
            assert len(values) == 3 and cell == f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"
    assert report.progress(report.load(ROOT / "benchmarks" / "seg" / name)) in section
