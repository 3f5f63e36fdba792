"""The training loop: the paper's recipe, determinism, and honest validation-only model selection."""

import json
import math

import numpy as np
import pytest
import torch

from medpeft import UserError, metrics
from medpeft.data import get_task, load_dataset, make_demo_data
from medpeft.evaluate import predict
from medpeft.experiment import load_run, read_record, run_experiment
from medpeft.record import RunRecord, RunSpec
from medpeft.train import loss_fn
from medpeft.types import TrainConfig


def test_cosine_schedule_matches_the_paper():
    config = TrainConfig()
    lrs = [config.lr_at(e) for e in range(20)]
    assert lrs == pytest.approx([3e-4 * (1 + math.cos(math.pi * e / 20)) for e in range(20)], rel=1e-12)
    assert lrs[0] == 6e-4 and lrs[1] == pytest.approx(5.963e-4, abs=1e-7) and lrs[19] == pytest.approx(3.7e-6, abs=1e-7)
    warm = TrainConfig(epochs=10, warmup_epochs=2, lr=1.0)
    assert [warm.lr_at(e) for e in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_multilabel_loss_sums_classes_and_averages_batch():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 19), torch.randint(0, 2, (4, 19)).float()
    p = torch.sigmoid(logits)
    by_hand = -(y * p.log() + (1 - y) * (1 - p).log()).sum() / 4
    torch.testing.assert_close(loss_fn(get_task("chest"))(logits, y), by_hand)
    labels = torch.tensor([0, 1, 1, 0])
    two = torch.randn(4, 2)
    by_hand = -two.log_softmax(-1)[torch.arange(4), labels].mean()
    torch.testing.assert_close(loss_fn(get_task("colon"))(two, labels), by_hand)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root)
    return root


def spec(root, method="ept", task="endo", **train):
    return RunSpec(
        method=method,
        task=task,
        data_root=str(root),
        shots=5,
        exp=1,
        backbone="vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        options={"prompt_length": 5} if method == "ept" else {},
        train={"epochs": 3, "lr": 0.05, **train},
    )


@pytest.mark.parametrize("task", ["endo", "colon"])
def test_selection_uses_validation_only_and_test_scores_the_selected_weights(demo_root, tmp_path, task):
    out = tmp_path / "run"
    record = run_experiment(spec(demo_root, task=task), out, progress=False)
    history = record.result.history
    metric = record.task.selection_metric
    assert metric == {"endo": "AUC", "colon": "accuracy"}[task]
    values = [h[f"val_{metric}"] for h in history]
    assert record.result.selected_epoch == int(np.argmax(values)) + 1  # the earliest best epoch
    assert record.result.val_best == max(values)
    # the saved weights are the selected ones: re-scoring val and test from disk gives the same numbers
    model, loaded = load_run(out)
    data = load_dataset(task, str(demo_root), 5, 1)
    val = metrics.task_metrics(predict(model, data.val, data.task, img_size=32), data.val.labels, data.task.multilabel)
    assert val[metric] == pytest.approx(record.result.val_best, abs=1e-9)
    test_scores = predict(model, data.test, data.task, img_size=32)
    expected = metrics.task_metrics(test_scores, data.test.labels, data.task.multilabel)
    assert record.test == pytest.approx(expected, abs=1e-9)
    rows = (out / f"{task}_5-shot_submission.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == data.test.names
    submitted = np.array([[float(v) for v in r.split(",")[1:]] for r in rows])
    np.testing.assert_allclose(submitted, test_scores, atol=5e-9)
    assert loaded.to_dict() == record.to_dict() == json.loads((out / "run.json").read_text())
    assert len((out / "log.txt").read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left beside it


def test_last_selection_and_determinism(demo_root, tmp_path):
    a = run_experiment(spec(demo_root, method="lora", select="last"), tmp_path / "a", progress=False)
    b = run_experiment(spec(demo_root, method="lora", select="last"), tmp_path / "b", progress=False)
    assert a.result.selected_epoch == 3
    assert a.result.history == b.result.history and a.test == b.test
    c = run_experiment(spec(demo_root, method="lora", select="last", seed=1), tmp_path / "c", progress=False)
    assert c.result.history != a.result.history


def test_record_round_trips_and_derives_key_and_directory(demo_root):
    s = spec(demo_root, method="ept")
    assert s.key == "ept(prompt_length=5)/endo/5-shot/exp1/seed0"
    assert s.run_dir == "runs/ept(prompt_length=5)/endo_5-shot_exp1_seed0"
    searched = RunSpec(**{**s.to_dict(), "candidate": {"prompt_length": 5, "lr": 0.05}, "label": "ept"})
    assert searched.key == "ept/endo/5-shot/exp1/seed0/lr=0.05,prompt_length=5"
    assert RunSpec.from_dict(json.loads(json.dumps(searched.to_dict()))) == searched
    with pytest.raises(UserError, match="version 99"):
        RunRecord.from_dict({"version": 99})
    with pytest.raises(UserError, match="method 'ept': option prompt_length=0"):
        RunSpec(method="ept", task="endo", data_root="x", shots=1, options={"prompt_length": 0})
    with pytest.raises(UserError, match="unknown training option"):
        RunSpec(method="ept", task="endo", data_root="x", shots=1, train={"epoch": 3})


def test_a_random_backbone_is_rebuilt_whatever_ran_before(demo_root, tmp_path):
    """The run's random-init backbone comes from its own generator: global RNG use in between changes nothing."""
    record = run_experiment(spec(demo_root, method="linear"), tmp_path / "r", progress=False)
    torch.manual_seed(1234)
    torch.rand(1000)
    model, _ = load_run(tmp_path / "r")
    data = load_dataset("endo", str(demo_root), 5, 1)
    test = metrics.task_metrics(predict(model, data.test, data.task, img_size=32), data.test.labels, True)
    assert test == pytest.approx(record.test, abs=1e-9)
    assert read_record(tmp_path / "r").test == record.test


def test_refit_trains_on_train_and_val_without_validation(demo_root, tmp_path):
    s = RunSpec(
        **{
            **spec(demo_root, method="linear").to_dict(),
            "refit": True,
            "train": {"epochs": 2, "lr": 0.05, "select": "last"},
        }
    )
    record = run_experiment(s, tmp_path / "refit", progress=False)
    assert record.result.val_best is None and record.result.selected_epoch == 2
    assert all(set(h) == {"epoch", "lr", "train_loss"} for h in record.result.history)
    data = load_dataset("endo", str(demo_root), 5, 1)
    merged = data.with_val_in_train()
    added = len(set(data.val.names) - set(data.train.names))
    assert merged.val is None and len(merged.train) == len(data.train) + added


def test_a_diverging_run_stops_and_is_recorded_and_never_selected(demo_root, tmp_path, capsys):
    from medpeft.bench import BenchConfig, read_index, run_bench
    from medpeft.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "--task",
                "colon",
                "--data-root",
                str(demo_root),
                "--shots",
                "5",
                "--method",
                "full",
                "--backbone",
                "vit_tiny_patch16_224",
                "--no-pretrained",
                "--img-size",
                "32",
                "--epochs",
                "4",
                "--lr",
                "1e6",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "diverged at epoch" in err
    record = read_record(tmp_path / "run")
    epoch = record.result.diverged_epoch
    assert epoch is not None and len(record.result.history) == epoch < 4
    assert record.result.history[-1]["train_loss"] is None  # not finite: null in strict JSON
    assert record.result.val_best is None and record.test is None and record.result.selected_epoch is None

    grid = BenchConfig.from_dict(
        {
            "methods": [{"method": "full", "search": {"lr": [1e6, 0.01]}}],
            "tasks": ["colon"],
            "data_root": str(demo_root),
            "shots": [5],
            "exps": [1],
            "seeds": [0],
            "backbone": "vit_tiny_patch16_224",
            "pretrained": False,
            "img_size": 32,
            "train": {"epochs": 2},
        }
    )
    run_bench(grid, tmp_path / "bench", progress=False)  # the bench goes on and ends without error
    records = {r.spec.train.lr: r for r in read_index(tmp_path / "bench")}
    assert records[1e6].result.diverged_epoch is not None and not records[1e6].selected
    assert records[0.01].selected
    assert "## Diverged" in (tmp_path / "bench" / "summary.md").read_text()


def test_a_step_that_leaves_nan_weights_after_a_finite_loss_is_a_divergence(demo_root, tmp_path):
    """At lr 1e3 the epoch's loss is still finite (it is computed before each step) but the last step leaves
    weights that give NaN logits: the run stops as diverged instead of failing in the validation metrics."""
    s = RunSpec(
        **{**spec(demo_root, method="full").to_dict(), "task": "colon", "shots": 1, "train": {"epochs": 3, "lr": 1e3}}
    )
    record = run_experiment(s, tmp_path / "r", progress=False)
    assert record.result.diverged_epoch == 1 and record.result.history[0]["train_loss"] is not None
    assert record.result.val_best is None and record.test is None
