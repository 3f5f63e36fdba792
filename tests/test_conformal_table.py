"""The study's coverage / set-size table from kept logits, against naive formulas."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from medpeft.analysis.conformal_table import coverage_markdown, coverage_table, kept_runs
from medpeft.data import get_task
from medpeft.files import write_json
from medpeft.posthoc import LOGITS_FILE, KeptLogits
from medpeft.record import RunRecord, RunSpec
from medpeft.types import ModelConfig, RunResult


def synthetic_run(label, shots, exp, scale):
    rng = np.random.default_rng([shots, exp, int(10 * scale)])
    z = rng.normal(0, 1, (120, 2))
    y = (rng.random(120) < softmax(z, axis=1)[:, 1]).astype(np.int64)
    logits = (scale * z).astype(np.float32)  # over-confident by `scale`
    kept = KeptLogits(
        logits[:40], [f"v{i}" for i in range(40)], y[:40], logits[40:], [f"t{i}" for i in range(80)], y[40:]
    )
    spec = RunSpec(method="linear", task="colon", data_root="/data", shots=shots, exp=exp, label=label)
    result = RunResult([], 1, 0.5, {}, None, 1, 1, {"train": 0.0}, None, "cpu")
    return RunRecord(spec, get_task("colon"), ModelConfig("linear", {}, "custom", 2, 32), result, {}), kept


def naive(kept, score, alpha, temperature):
    """(coverage, mean set size) with the textbook formulas."""
    val = softmax(kept.val.astype(np.float64) / temperature, axis=1)
    test = softmax(kept.test.astype(np.float64) / temperature, axis=1)

    def s(row, k):
        return 1 - row[k] if score == "lac" else sum(p for p in row if p >= row[k])

    cal = sorted(s(row, y) for row, y in zip(val.tolist(), kept.val_labels))
    rank = math.ceil((len(cal) + 1) * (1 - Fraction(str(alpha))))
    qhat = cal[rank - 1]
    sets = [[k for k in range(2) if s(row, k) <= qhat + 1e-12] for row in test.tolist()]
    return np.mean([y in st for st, y in zip(sets, kept.test_labels)]), np.mean([len(st) for st in sets])


def fitted_t(kept):
    nll = lambda log_t: (
        -log_softmax(kept.val.astype(np.float64) / np.exp(log_t), axis=1)[  # noqa: E731
            np.arange(len(kept.val)), kept.val_labels
        ].mean()
    )
    return float(np.exp(minimize_scalar(nll, bounds=(-5, 5), method="bounded", options={"xatol": 1e-8}).x))


def test_coverage_table_per_method_and_shot_before_and_after_temperature(tmp_path):
    runs = [
        synthetic_run(label, shots, exp, scale)
        for label, scale in (("ept", 3.0), ("linear", 0.5))
        for shots in (1, 5)
        for exp in (1, 2)
    ]
    rows = coverage_table(runs)
    assert len(rows) == 2 * 2 * 2 * 2 and all(r["runs"] == 2 for r in rows)
    for row in rows:
        mine = [(rec, kept) for rec, kept in runs if (rec.spec.label, rec.spec.shots) == (row["label"], row["shots"])]
        before = [naive(kept, row["score"], row["alpha"], 1.0) for _, kept in mine]
        ts = [fitted_t(kept) for _, kept in mine]
        after = [naive(kept, row["score"], row["alpha"], t) for (_, kept), t in zip(mine, ts)]
        assert row["coverage_before"] == pytest.approx(np.mean([c for c, _ in before]))
        assert row["set_size_before"] == pytest.approx(np.mean([n for _, n in before]))
        assert row["coverage_after"] == pytest.approx(np.mean([c for c, _ in after]))
        assert row["set_size_after"] == pytest.approx(np.mean([n for _, n in after]))
    assert all(fitted_t(kept) > 1.5 for rec, kept in runs if rec.spec.label == "ept")
    table = coverage_markdown(rows)
    assert table.count("\n") == 2 + len(rows) and "| ept | colon | 1 | 2 | 0.1 | aps |" in table

    for i, (record, _) in enumerate(runs[:2]):
        (tmp_path / str(i)).mkdir()
        write_json(tmp_path / str(i) / "run.json", record.to_dict())
    kept_of_first = runs[0][1]
    kept_of_first.save(tmp_path / "0" / LOGITS_FILE)
    found, missing = kept_runs([tmp_path / "0", tmp_path / "1"])
    assert [r.key for r, _ in found] == [runs[0][0].key] and missing == [str(tmp_path / "1")]
    np.testing.assert_array_equal(found[0][1].test, kept_of_first.test)
