"""Kept logits and post-hoc steps on real (tiny) runs: train writes result.conformal and logits.npz, predict
writes the sets, posthoc recomputes runs and benches and skips runs without logits."""

import csv
import json
import math
import shutil
from fractions import Fraction

import numpy as np
import pytest
from helpers import run_cli
from scipy.special import expit, softmax

from medpeft.data import get_task, make_demo_data, read_annotations

TINY = [
    "--method",
    "linear",
    "--backbone",
    "vit_tiny_patch16_224",
    "--no-pretrained",
    "--img-size",
    "32",
    "--epochs",
    "2",
    "--lr",
    "0.05",
]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root)
    return root


def labels_of(root, task, names):
    labels = dict(read_annotations(root / task / "test_WithLabel.txt", get_task(task)))
    return np.array([labels[n] for n in names])


def naive_qhat(scores, alpha):
    rank = math.ceil((len(scores) + 1) * (1 - Fraction(str(alpha))))
    return math.inf if rank > len(scores) else sorted(scores)[rank - 1]


def test_train_with_temperature_and_aps_keeps_logits_and_its_coverage_recomputes(demo_root, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        [
            "train",
            "--task",
            "colon",
            "--data-root",
            str(demo_root),
            "--shots",
            "5",
            *TINY,
            "--calibrate",
            "temperature",
            "--conformal",
            "aps",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, stderr
    record = json.loads((out / "run.json").read_text())
    conformal, temperature = record["result"]["conformal"], record["result"]["calibration"]["temperature"]
    assert (conformal["method"], conformal["alpha"], conformal["after"]) == ("aps", 0.1, "temperature")
    assert "conformal aps (α 0.1, n_cal" in stdout
    kept = np.load(out / "logits.npz")
    assert kept["val_names"].tolist() == record["split"]["val"] and conformal["n_cal"] == len(record["split"]["val"])
    # the kept validation logits are the selected epoch's: its validation accuracy recomputes from them
    selected = record["result"]["history"][record["result"]["selected_epoch"] - 1]
    assert np.mean(kept["val"].argmax(1) == kept["val_labels"]) == pytest.approx(selected["val_accuracy"])
    test_labels = labels_of(demo_root, "colon", kept["test_names"].tolist())
    assert (kept["test_labels"] == test_labels).all()
    # independently: softmax of logits / T, APS score Σ_{p_j ≥ p_y} p_j, the ⌈(n + 1)(1 − α)⌉-th smallest
    val = softmax(kept["val"].astype(np.float64) / temperature, axis=1)
    scores = [sum(p for p in row if p >= row[y]) for row, y in zip(val.tolist(), kept["val_labels"])]
    qhat = naive_qhat(scores, 0.1)
    assert (conformal["qhat"] if conformal["qhat"] is not None else math.inf) == pytest.approx(qhat)
    test = softmax(kept["test"].astype(np.float64) / temperature, axis=1)
    sets = [[k for k in range(2) if sum(p for p in row if p >= row[k]) <= qhat + 1e-12] for row in test.tolist()]
    assert conformal["test"]["coverage"] == pytest.approx(np.mean([y in s for s, y in zip(sets, test_labels)]))
    assert conformal["test"]["mean_set_size"] == pytest.approx(np.mean([len(s) for s in sets]))
    assert conformal["test"]["singleton_rate"] == pytest.approx(np.mean([len(s) == 1 for s in sets]))
    for k, name in enumerate(("negative", "positive")):
        mine = [y in s for s, y in zip(sets, test_labels) if y == k]
        assert conformal["test"]["per_class_coverage"][name] == pytest.approx(np.mean(mine))
    rows = list(csv.DictReader(open(out / "colon_5-shot_sets.csv")))
    assert [r["name"] for r in rows] == kept["test_names"].tolist()
    assert [r["set"].split("|") if r["set"] else [] for r in rows] == [
        [("negative", "positive")[k] for k in s] for s in sets
    ]
    # the MedFMC submission keeps its format (no header, name + one probability per class)
    first = (out / "colon_5-shot_submission.csv").read_text().splitlines()[0]
    assert first.startswith(rows[0]["name"] + ",") and len(first.rsplit(",", 2)[1:]) == 2

    # predict writes the same sets for the same images (its probabilities tempered with the run's T)
    listed = tmp_path / "list.txt"
    shutil.copy(demo_root / "colon" / "test_WithLabel.txt", listed)
    code, stdout, stderr = run_cli(
        ["predict", str(out), "--list", str(listed), "--out", str(tmp_path / "p.csv")], capsys
    )
    assert code == 0, stderr
    assert "p_sets.csv" in stdout
    assert list(csv.DictReader(open(tmp_path / "p_sets.csv"))) == rows


def test_multilabel_runs_get_per_label_sets_and_posthoc_recomputes_a_run(demo_root, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, stderr = run_cli(
        ["train", "--task", "endo", "--data-root", str(demo_root), "--shots", "5", *TINY, "--out", str(out)], capsys
    )
    assert code == 0, stderr
    assert json.loads((out / "run.json").read_text())["result"]["conformal"] is None
    code, stdout, stderr = run_cli(["posthoc", str(out), "--conformal", "lac", "--alpha", "0.2"], capsys)
    assert code == 0, stderr
    record = json.loads((out / "run.json").read_text())
    conformal = record["result"]["conformal"]
    assert record["spec"]["conformal"]["method"] == "lac" and conformal["after"] is None
    kept = np.load(out / "logits.npz")
    classes = record["task"]["classes"]
    val, y_val = expit(kept["val"].astype(np.float64)), kept["val_labels"]
    test, y_test = expit(kept["test"].astype(np.float64)), labels_of(demo_root, "endo", kept["test_names"].tolist())
    covered, sizes = [], []
    for c in range(len(classes)):  # each label a two-state problem, LAC score 1 − P(true state)
        qhat = naive_qhat([1 - (p if y else 1 - p) for p, y in zip(val[:, c], y_val[:, c])], 0.2)
        in_set = [[state for state, p_state in ((0, 1 - p), (1, p)) if 1 - p_state <= qhat + 1e-12] for p in test[:, c]]
        covered.append([y in s for s, y in zip(in_set, y_test[:, c])])
        sizes.append([len(s) for s in in_set])
        assert conformal["test"]["per_class_coverage"][classes[c]] == pytest.approx(np.mean(covered[-1]))
    assert conformal["test"]["coverage"] == pytest.approx(np.mean(covered))
    assert conformal["test"]["mean_set_size"] == pytest.approx(np.mean(sizes))
    header = (out / "endo_5-shot_sets.csv").read_text().splitlines()[0]
    assert header == ",".join(["name", *classes])
    code, _, stderr = run_cli(["posthoc", str(out), "--alpha", "0.2"], capsys)
    assert code == 2 and "--alpha applies with --conformal" in stderr and stderr.count("\n") == 1


def test_posthoc_on_a_bench_skips_runs_without_logits_in_one_line_and_computes_the_rest(demo_root, tmp_path, capsys):
    bench = tmp_path / "bench"
    code, _, stderr = run_cli(
        [
            "bench",
            "--methods",
            "linear",
            "--tasks",
            "colon",
            "--data-root",
            str(demo_root),
            "--shots",
            "5",
            "--exps",
            "1,2",
            "--backbone",
            "vit_tiny_patch16_224",
            "--no-pretrained",
            "--img-size",
            "32",
            "--epochs",
            "2",
            "--calibrate",
            "temperature",
            "--conformal",
            "aps",
            "--out",
            str(bench),
        ],
        capsys,
    )
    assert code == 0, stderr
    runs = sorted(p.parent for p in bench.glob("runs/**/run.json"))
    assert len(runs) == 2
    before = json.loads((runs[1] / "run.json").read_text())["result"]["calibration"]
    coverage = [json.loads((r / "run.json").read_text())["result"]["conformal"]["test"]["coverage"] for r in runs]
    row = next(r for r in csv.DictReader(open(bench / "summary.csv")))
    assert float(row["conformal_coverage_mean"]) == pytest.approx(np.mean(coverage))
    assert float(row["conformal_coverage_std"]) == pytest.approx(np.std(coverage, ddof=1))
    summary = (bench / "summary.md").read_text()
    assert "## Conformal prediction" in summary and "aps α=0.1 after temperature" in summary
    (runs[0] / "logits.npz").unlink()  # a run made before medpeft kept logits
    code, stdout, stderr = run_cli(["posthoc", str(bench), "--conformal", "lac", "--alpha", "0.2"], capsys)
    assert code == 0, stderr
    skipped = [line for line in stdout.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and str(runs[0].relative_to(bench)) in skipped[0]
    assert str(runs[1].relative_to(bench)) not in skipped[0]
    old, new = (json.loads((r / "run.json").read_text())["result"] for r in runs)
    assert old["conformal"]["method"] == "aps" and new["conformal"]["method"] == "lac"
    assert new["calibration"] == before  # the temperature recomputed from the kept logits is the one fit found
    assert new["conformal"]["after"] == "temperature"
    index = {line["run_dir"]: line for line in map(json.loads, (bench / "runs.jsonl").read_text().splitlines())}
    assert index[str(runs[1].relative_to(bench))]["result"]["conformal"] == new["conformal"]
    assert (
        "lac α=0.2 after temperature; aps α=0.1 after temperature" in (bench / "summary.md").read_text()
        or "aps α=0.1 after temperature; lac α=0.2 after temperature" in (bench / "summary.md").read_text()
    )
