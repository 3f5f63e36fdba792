"""The distribution-calibration analysis: scatter numbers against Eq. 11 computed independently, separability,
and `analyze` end to end on a tiny bench."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from medpeft import UserError, build_model
from medpeft.analysis import (
    analyze,
    class_statistics,
    extract_features,
    inter_class_scatter,
    intra_class_scatter,
    linear_separability,
    per_class,
    scatter_ratio,
    token_maps,
)
from medpeft.analysis.runs import WithoutWeights
from medpeft.bench import BenchConfig, run_bench
from medpeft.cli.analyze import command
from medpeft.data import Samples, get_task, make_demo_data


def eq11_within(x, y):
    """Σ_W = 1/N Σ_k Σ_i (x_ki − x̄_k)(x_ki − x̄_k)ᵀ by explicit loops over classes and samples, then its trace."""
    n, d = x.shape
    sigma = np.zeros((d, d))
    for k in set(y.tolist()):
        members = [x[i] for i in range(n) if y[i] == k]
        mean = sum(members) / len(members)
        for xi in members:
            sigma += np.outer(xi - mean, xi - mean)
    return np.trace(sigma / n)


def eq_between(x, y):
    n, d = x.shape
    sigma = np.zeros((d, d))
    overall = x.sum(axis=0) / n
    for k in set(y.tolist()):
        members = [x[i] for i in range(n) if y[i] == k]
        mean = sum(members) / len(members)
        sigma += len(members) * np.outer(mean - overall, mean - overall)
    return np.trace(sigma / n)


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_scatter_equals_eq11_computed_independently(classes):
    rng = np.random.default_rng(classes)
    x = rng.normal(size=(37, 6)) * rng.uniform(0.5, 3, 6) + rng.normal(size=6)
    y = rng.integers(0, classes, 37)
    assert intra_class_scatter(x, y) == pytest.approx(eq11_within(x, y), rel=1e-12)
    assert inter_class_scatter(x, y) == pytest.approx(eq_between(x, y), rel=1e-12)
    assert scatter_ratio(x, y) == pytest.approx(eq11_within(x, y) / eq_between(x, y), rel=1e-12)
    # Σ_W + Σ_B is the total (biased) covariance
    total = np.trace(np.cov(x.T, bias=True))
    assert intra_class_scatter(x, y) + inter_class_scatter(x, y) == pytest.approx(total, rel=1e-12)
    # string labels work as well as integers
    assert intra_class_scatter(x, np.array(["abcde"[k] for k in y])) == pytest.approx(eq11_within(x, y))


def test_scatter_known_by_hand():
    same = np.array([[1.0, 2.0], [1.0, 2.0], [5.0, -1.0], [5.0, -1.0]])
    y = np.array([0, 0, 1, 1])
    assert intra_class_scatter(same, y) == 0.0  # every class is one repeated point
    assert inter_class_scatter(same, y) == pytest.approx(((2**2 + 1.5**2) * 4) / 4)
    assert scatter_ratio(same, y) == 0.0
    # one class: no between-class scatter, within = total variance, ratio undefined
    x = np.array([[0.0], [2.0]])
    assert intra_class_scatter(x, np.array([3, 3])) == pytest.approx(1.0)
    assert inter_class_scatter(x, np.array([3, 3])) == 0.0
    assert np.isnan(scatter_ratio(x, np.array([3, 3])))
    # scaling the features scales the scatter by the square, not the ratio
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.integers(0, 2, 20)
    assert intra_class_scatter(3 * x, y) == pytest.approx(9 * intra_class_scatter(x, y))
    assert scatter_ratio(3 * x, y) == pytest.approx(scatter_ratio(x, y))


def test_multilabel_is_the_mean_over_classes_positive_vs_negative():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4))
    y = rng.integers(0, 2, (30, 3))
    y[:, 2] = 0  # a class without positives is left out
    expected = [eq11_within(x, y[:, c]) for c in range(2)]
    assert intra_class_scatter(x, y) == pytest.approx(np.mean(expected))
    assert per_class(intra_class_scatter, x, y)[:2] == pytest.approx(expected)
    assert np.isnan(per_class(intra_class_scatter, x, y)[2])
    stats = class_statistics(x, y)
    assert stats["intra_class_scatter"] == pytest.approx(np.mean(expected))
    assert stats["per_class"]["intra_class_scatter"][2] is None
    assert stats["inter_class_scatter"] == pytest.approx(np.mean([eq_between(x, y[:, c]) for c in range(2)]))


def test_separability_perfect_and_chance():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    separable = rng.normal(size=(60, 8)) * 0.1 + np.eye(3, 8)[y] * 5
    assert linear_separability(separable, y) == 1.0
    identical = np.ones((60, 8))
    assert linear_separability(identical, y) == pytest.approx(1 / 3, abs=0.05)  # balanced accuracy: chance = 1/K
    noise = rng.normal(size=(200, 8))
    assert linear_separability(noise, rng.integers(0, 2, 200)) == pytest.approx(0.5, abs=0.12)
    # folds are capped by the smallest class; a class of one sample leaves it undefined
    assert linear_separability(separable[:42], y[:42]) == 1.0  # class 2 has 2 samples: 2 folds
    assert np.isnan(linear_separability(separable[:41], y[:41]))
    multilabel = np.stack([y == 0, y == 1], axis=1).astype(np.uint8)
    assert linear_separability(separable, multilabel) == 1.0


def test_bad_shapes_are_user_errors():
    with pytest.raises(UserError, match="labels must have shape"):
        intra_class_scatter(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(UserError, match="features must have shape"):
        intra_class_scatter(np.zeros(4), np.zeros(4))


def test_feature_extraction_and_patch_scaling_match_the_model():
    torch.manual_seed(0)
    model = build_model("ept", "vit_tiny_patch16_224", 2, pretrained=False, img_size=32, prompt_length=5).eval()
    images = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(3)]
    samples = Samples(["a", "b", "c"], images, np.array([0, 1, 0]))
    task = get_task("colon")
    features = extract_features(model, samples, task, 32, batch_size=2)
    from medpeft.data import eval_dataset

    batch = torch.stack([eval_dataset(samples, 32)[i][0] for i in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(features, dtype=torch.float32), model.forward_features(batch))
    scaling = token_maps(model, samples, task, 32)
    assert sorted(scaling) == list(range(12))
    # block 0's input is norm1 of the embedded tokens: s there, by hand, averaged over images and heads
    backbone = model.backbone
    with torch.no_grad():
        x = backbone.norm_pre(backbone._pos_embed(backbone.patch_embed(batch)))
        attn = backbone.blocks[0].attn
        q, k, _ = attn.qkv(backbone.blocks[0].norm1(x)).reshape(3, 5, 3, 3, 64).permute(2, 0, 3, 1, 4)
        z = torch.exp(q @ k.transpose(-2, -1) * attn.scale).sum(-1)
        s = z / (z + torch.exp(attn.prompt).sum(-1))
    np.testing.assert_allclose(scaling[0], s.mean(dim=(0, 1)).numpy(), rtol=1e-5)
    assert (
        token_maps(build_model("linear", "vit_tiny_patch16_224", 2, pretrained=False, img_size=32), samples, task, 32)
        == {}
    )


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    make_demo_data(root / "data")
    config = BenchConfig.from_dict(
        {
            "methods": ["linear", {"method": "ept", "options": {"prompt_length": 5}}],
            "tasks": ["endo", "colon"],
            "data_root": str(root / "data"),
            "shots": [1],
            "exps": [1],
            "backbone": "vit_tiny_patch16_224",
            "pretrained": False,
            "img_size": 32,
            "train": {"epochs": 1, "batch_size": 8, "lr": 0.01},
        }
    )
    run_bench(config, root / "bench", progress=False)
    return root / "bench"


@pytest.fixture(scope="module")
def analysis(bench):
    out = bench / "analysis"
    return out, analyze([bench], out, max_points=40, progress=False)


def test_analyze_writes_numbers_for_every_run_and_pretrain(bench, analysis):
    out, result = analysis
    written = json.loads((out / "analysis.json").read_text())
    runs = written["runs"]
    keys = {json.loads(line)["key"] for line in (bench / "runs.jsonl").read_text().splitlines()}
    assert keys <= set(runs)
    pretrain = {name: r for name, r in runs.items() if r["label"] == "pretrain"}
    assert set(pretrain) == {"pretrain/endo", "pretrain/colon"}
    for record in runs.values():
        assert isinstance(record["intra_class_scatter"], float) and record["intra_class_scatter"] > 0
        for key in ("inter_class_scatter", "scatter_ratio", "linear_separability", "ECE"):
            assert key in record
    for task in ("endo", "colon"):
        run = runs[f"ept(prompt_length=5)/{task}/1-shot/exp1/seed0"]
        assert 0 <= run["ECE"] <= 1 and 0 <= run["linear_separability"] <= 1
        # the runs' own test ECE, recomputed from fresh predictions
        record = json.loads((bench / f"runs/ept(prompt_length=5)/{task}_1-shot_exp1_seed0/run.json").read_text())
        assert run["ECE"] == pytest.approx(record["result"]["test_metrics"]["ECE"], abs=1e-5)
        assert len(run["patch_scaling"]["blocks"]) == 12
        # the prompt's attention mass at the run's init and trained: 1 − s_j, so its mean mirrors patch_scaling's
        mass = run["prompt_mass"]
        assert mass["blocks"] == list(range(12)) and set(mass) == {"blocks", "init", "trained"}
        for when in ("init", "trained"):
            assert all(
                0 < lo <= m <= hi < 1 for lo, m, hi in zip(mass[when]["min"], mass[when]["mean"], mass[when]["max"])
            )
        assert "prompt_mass" not in runs[f"linear/{task}/1-shot/exp1/seed0"]
        # linear probing leaves the backbone frozen: its features are pretrain's, so are the numbers
        linear = runs[f"linear/{task}/1-shot/exp1/seed0"]
        assert linear["intra_class_scatter"] == pytest.approx(
            pretrain[f"pretrain/{task}"]["intra_class_scatter"], rel=1e-6
        )
    assert runs["pretrain/endo"]["per_class"]["intra_class_scatter"][0] is not None
    assert written == json.loads(json.dumps(result, default=float))


def test_analyze_writes_readable_figures_and_a_report(analysis):
    out, result = analysis
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 3
    for png in pngs:
        with Image.open(png) as image:
            assert min(image.size) >= 200, png.name
    report = (out / "report.md").read_text()
    for png in pngs:
        assert f"]({png.name})" in report
    kinds = {f["kind"] for f in result["figures"]}
    assert {"pca", "tsne", "patch_scaling", "prompt_mass", "convergence", "results", "reliability", "scatter"} <= kinds
    assert all((out / f["file"]).is_file() and f["caption"] for f in result["figures"])


def test_command_on_a_run_directory(bench, tmp_path):
    run_dir = bench / "runs" / "linear" / "colon_1-shot_exp1_seed0"
    result = CliRunner().invoke(command, [str(run_dir), "--out", str(tmp_path / "a"), "--class-index", "0"])
    assert result.exit_code == 0, result.output
    runs = json.loads((tmp_path / "a" / "analysis.json").read_text())["runs"]
    assert set(runs) == {"linear/colon/1-shot/exp1/seed0", "pretrain/colon"}
    result = CliRunner().invoke(command, [str(run_dir), "--out", str(tmp_path / "b"), "--class-index", "7"])
    assert isinstance(result.exception, UserError) and "class-index 7" in str(result.exception)


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        analyze([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither runs.jsonl nor run.json"):
        analyze([tmp_path / "empty"], tmp_path / "out")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        analyze([tmp_path / "file.txt"], tmp_path / "out")
    result = CliRunner().invoke(command, [str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, UserError) and "missing" in str(result.exception)


def test_search_curves_from_a_searched_bench(tmp_path):
    """A bench with a search: the analysis draws the test and validation metric against the searched value."""
    make_demo_data(tmp_path / "data")
    config = BenchConfig.from_dict(
        {
            "methods": [{"method": "ept", "search": {"prompt_length": [2, 8]}}],
            "tasks": ["colon"],
            "data_root": str(tmp_path / "data"),
            "shots": [1],
            "exps": [1, 2],
            "backbone": "vit_tiny_patch16_224",
            "pretrained": False,
            "img_size": 32,
            "train": {"epochs": 1, "batch_size": 8, "lr": 0.01},
        }
    )
    records = run_bench(config, tmp_path / "bench", progress=False)
    result = analyze([tmp_path / "bench"], tmp_path / "analysis", max_points=20, progress=False)
    (curve,) = result["search"]
    assert curve["key"] == "prompt_length" and curve["values"] == [2, 8] and curve["n_runs"] == 2
    for i, value in enumerate((2, 8)):
        tests = [r.test["accuracy"] for r in records if r.spec.candidate == {"prompt_length": value}]
        assert curve["test"][i][0] == pytest.approx(np.mean(tests))
    assert len([n for n in result["runs"] if n.startswith("ept")]) == 2  # only the selected runs are re-measured
    assert any(f["kind"] == "search" for f in result["figures"])
    with Image.open(tmp_path / "analysis" / "search_prompt_length.png") as image:
        assert min(image.size) >= 200


def test_runs_of_different_backbones_are_not_pooled(bench, tmp_path):
    """A frozen-backbone row must describe one backbone: runs from another are refused before any model is built."""
    run = bench / "runs" / "linear" / "colon_1-shot_exp1_seed0"
    other = tmp_path / "other"
    shutil.copytree(run, other)
    record = json.loads((other / "run.json").read_text())
    record["spec"]["weights"] = str(tmp_path / "other_weights.safetensors")
    (other / "run.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="use different backbones") as err:
        analyze([run, other], tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_runs_restored_without_weights_are_left_out_in_one_line(bench, tmp_path):
    """A fresh clone has runs.jsonl but no run directories: the bench restores the records, and the analysis
    measures only the runs that still have their trained weights, saying how many it left out."""
    from medpeft.bench.runner import collect
    from medpeft.bench.store import RestoredRuns

    copy = tmp_path / "bench"
    shutil.copytree(bench, copy, ignore=shutil.ignore_patterns("analysis", ".cache"))
    shutil.rmtree(copy / "runs" / "linear")
    with pytest.warns(RestoredRuns, match="2 finished run"):
        collect(copy)
    assert (copy / "runs" / "linear" / "colon_1-shot_exp1_seed0" / "run.json").is_file()
    with pytest.warns(WithoutWeights, match="2 of its 4 runs have no trained weights"):
        result = analyze([copy], tmp_path / "out", max_points=20, progress=False)
    assert {r["label"] for r in result["runs"].values()} == {"ept(prompt_length=5)", "pretrain"}
    with pytest.raises(UserError, match="no trained weights"):
        analyze([copy / "runs" / "linear" / "colon_1-shot_exp1_seed0"], tmp_path / "out2")
