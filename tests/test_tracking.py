"""MLflow tracking against a real `mlflow server` started here (sqlite backend, artifacts proxied by the server), read
back through `MlflowClient`: one MLflow run per medpeft run with the numbers of its run.json, a bench as a parent
run with its runs as children (logged where they ran, never twice), and one line + exit 2 when the server is down."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import run_cli

import medpeft
from medpeft.bench import BenchConfig, read_index
from medpeft.data import get_task, make_demo_data
from medpeft.experiment import read_record, run_experiment
from medpeft.record import RunRecord, RunSpec
from medpeft.tracking import final_metrics
from medpeft.types import Calibration, ModelConfig, RunResult

pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402

TINY = ["--backbone", "vit_tiny_patch16_224", "--no-pretrained", "--img-size", "32", "--batch-size", "8"]
GRID = {
    "methods": [{"method": "linear", "search": {"lr": [0.01, 0.5]}}],
    "tasks": ["colon"],
    "shots": [1],
    "backbone": "vit_tiny_patch16_224",
    "pretrained": False,
    "img_size": 32,
    "train": {"epochs": 1, "batch_size": 8},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free port of 127.0.0.1, stopped (its whole process group) when the module ends."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: tracking only
    with open(folder / "server.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
                time.sleep(0.25)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked") / "data"
    make_demo_data(root)
    return root


def experiment_runs(client, name, view=ViewType.ACTIVE_ONLY):
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], run_view_type=view, max_results=1000)


def test_train_logs_one_run_with_the_numbers_of_its_record(server, demo_root, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        [
            "train",
            "--task",
            "colon",
            "--data-root",
            str(demo_root),
            "--shots",
            "1",
            "--method",
            "ept",
            "--opt",
            "prompt_length=5",
            *TINY,
            "--epochs",
            "2",
            "--lr",
            "0.05",
            "--out",
            str(out),
            "--mlflow",
            server,
            "--mlflow-experiment",
            "one",
        ],
        capsys,
    )
    assert code == 0, stderr
    record = read_record(out)
    untracked = run_experiment(record.spec, tmp_path / "untracked", progress=False)  # tracking changes nothing
    assert untracked.result.history == record.result.history and untracked.test == record.test
    assert (out / "colon_1-shot_submission.csv").read_bytes() == (
        tmp_path / "untracked" / "colon_1-shot_submission.csv"
    ).read_bytes()

    client = MlflowClient(server)
    (run,) = experiment_runs(client, "one")
    assert run.info.status == "FINISHED" and run.info.run_id in stdout
    params = run.data.params
    assert {
        k: params[k]
        for k in (
            "method",
            "task",
            "shots",
            "exp",
            "seed",
            "backbone",
            "weights",
            "img_size",
            "option.prompt_length",
            "option.way",
            "train.lr",
            "train.epochs",
        )
    } == {
        "method": "ept",
        "task": "colon",
        "shots": "1",
        "exp": "1",
        "seed": "0",
        "backbone": "vit_tiny_patch16_224",
        "weights": "None",
        "img_size": "32",
        "option.prompt_length": "5",
        "option.way": "concat",
        "train.lr": "0.05",
        "train.epochs": "2",
    }
    for name in ("train_loss", "lr", "val_accuracy", "val_AUC", "val_ECE", "val_Brier"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
            (row["epoch"], row[name]) for row in record.result.history
        ]
    assert {k: run.data.metrics[f"test_{k}"] for k in record.test} == record.test
    assert run.data.metrics["selected_epoch"] == record.result.selected_epoch
    tags = run.data.tags
    assert tags["medpeft.key"] == record.key and tags["medpeft.version"] == medpeft.__version__
    assert tags["medpeft.worker.host"] == record.worker["host"] and tags["medpeft.worker.pid"] == str(os.getpid())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"run.json", "log.txt", "colon_1-shot_submission.csv"}
    copy = client.download_artifacts(run.info.run_id, "run.json", str(tmp_path))
    assert Path(copy).read_text() == (out / "run.json").read_text()


def test_bench_is_a_parent_run_whose_runs_are_logged_once_where_they_ran(server, demo_root, tmp_path, capsys):
    out = tmp_path / "bench"

    def bench(exps, lrs=(0.01, 0.5), tracked=True, *extra):
        config = tmp_path / "bench.yaml"
        tracking = {"mlflow": server, "mlflow_experiment": "benches"} if tracked else {}
        methods = [{"method": "linear", "search": {"lr": list(lrs)}}]
        config.write_text(
            yaml.safe_dump({**GRID, "methods": methods, "data_root": str(demo_root), "exps": exps, **tracking})
        )
        code, stdout, stderr = run_cli(["bench", "--config", str(config), "--out", str(out), *extra], capsys)
        assert code == 0, stderr
        return {r.key: r for r in read_index(out)}

    client = MlflowClient(server)

    def children():
        (parent,) = [r for r in experiment_runs(client, "benches") if "mlflow.parentRunId" not in r.data.tags]
        assert parent.data.tags["medpeft.bench"] == str(out.resolve()) and parent.info.status == "FINISHED"
        runs = [
            r for r in experiment_runs(client, "benches") if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        ]
        return parent, {r.data.tags["medpeft.key"]: r for r in runs}

    runs = bench([1])
    untracked_keys = [s.key for s in BenchConfig.from_dict({**GRID, "data_root": str(demo_root), "exps": [1]}).specs()]
    assert sorted(runs) == sorted(untracked_keys)  # tracking is no run setting: same keys
    assert "mlflow" not in json.loads((out / "bench.json").read_text())  # nor a shared setting
    parent, logged = children()
    assert sorted(logged) == sorted(runs) and all(r.info.status == "FINISHED" for r in logged.values())
    assert {k: r.data.tags["medpeft.selected"] for k, r in logged.items()} == {
        k: str(r.selected).lower() for k, r in runs.items()
    }
    assert sorted(runs[k].selected for k in runs) == [False, True]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"summary.md", "summary.csv"}
    summary = client.download_artifacts(parent.info.run_id, "summary.md", str(tmp_path))
    assert Path(summary).read_text() == (out / "summary.md").read_text()

    bench([1])  # a resumed bench logs nothing again
    lrs = (0.01, 0.5, 0.1)
    bench([1], lrs, False)  # nor does tracking refuse a resume without it: lr 0.1 runs untracked
    runs = bench(
        [1, 2], lrs, True, "--executor", "slurm", "--slurm-cluster", "local", "--slurm-runs-per-job", "3", "--wait"
    )  # lr 0.1 of exp 1 is logged from its files, exp 2 by the SLURM job that runs it
    parent, logged = children()
    client.set_tag(next(iter(logged.values())).info.run_id, "medpeft.selected", "tampered")
    assert run_cli(["bench", "--summarize", str(out)], capsys)[0] == 0  # tracked as grid.json says: tags mended
    parent, logged = children()
    assert sorted(logged) == sorted(runs) and len(runs) == 6
    assert len(experiment_runs(client, "benches", ViewType.ALL)) == 1 + 6  # no key logged twice, nothing deleted
    for key, record in runs.items():
        child = logged[key]
        assert child.data.tags["medpeft.selected"] == str(record.selected).lower()
        assert child.data.metrics["test_AUC"] == record.test["AUC"]
        assert len(client.get_metric_history(child.info.run_id, "val_AUC")) == 1
        if record.spec.exp == 2:  # ran, and was logged, in its SLURM job
            assert child.data.tags["medpeft.worker.job_id"] == str(record.worker["job_id"])
            assert child.data.tags["medpeft.worker.pid"] == str(record.worker["pid"]) != str(os.getpid())
        else:
            assert child.data.tags["medpeft.worker.pid"] == str(os.getpid())


def test_an_unreachable_server_is_one_line_before_any_training(demo_root, tmp_path, capsys):
    down = f"http://127.0.0.1:{free_port()}"
    code, _, err = run_cli(
        [
            "train",
            "--task",
            "colon",
            "--data-root",
            str(demo_root),
            "--shots",
            "1",
            "--method",
            "linear",
            *TINY,
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--mlflow",
            down,
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and f"--mlflow {down}: the tracking store cannot be reached" in err
    assert "Connection refused" in err and not (tmp_path / "run").exists()
    code, _, err = run_cli(
        [
            "bench",
            "--methods",
            "linear",
            "--tasks",
            "colon",
            "--shots",
            "1",
            "--exps",
            "1",
            "--data-root",
            str(demo_root),
            *TINY[:5],
            "--out",
            str(tmp_path / "bench"),
            "--mlflow",
            down,
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "cannot be reached" in err
    assert not (tmp_path / "bench" / "runs").exists() and not (tmp_path / "bench" / "bench.json").exists()
    code, _, err = run_cli(
        [
            "bench",
            "--methods",
            "linear",
            "--tasks",
            "colon",
            "--data-root",
            str(demo_root),
            "--mlflow-experiment",
            "x",
            "--out",
            str(tmp_path / "b2"),
        ],
        capsys,
    )
    assert code == 2 and "mlflow_experiment applies with mlflow" in err


def test_calibrated_test_metrics_are_logged_beside_the_raw_ones():
    result = RunResult(
        [], 2, 0.7, {"accuracy": 0.6, "ECE": 0.2}, None, 10, 100, {"train": 1.5, "val": 2.0, "test": 0.5}, None, "cpu"
    )
    record = RunRecord(
        RunSpec(method="linear", task="colon", data_root="/data", shots=1),
        get_task("colon"),
        ModelConfig("linear", {}, "vit_tiny_patch16_224", 2, 32),
        result,
        {},
    )
    plain = {
        "test_accuracy": 0.6,
        "test_ECE": 0.2,
        "selected_epoch": 2,
        "val_best": 0.7,
        "trainable_params": 10,
        "total_params": 100,
        "peak_memory_mb": None,
        "added_memory_mb": None,
        "diverged_epoch": None,
        "time_train_s": 1.5,
        "time_val_s": 2.0,
        "time_test_s": 0.5,
    }
    assert final_metrics(record) == plain
    result.calibration = Calibration("temperature", 1.7, 0.9, 0.6, test={"accuracy": 0.6, "ECE": 0.05})
    assert final_metrics(record) == {
        **plain,
        "test_calibrated_accuracy": 0.6,
        "test_calibrated_ECE": 0.05,
        "calibration_temperature": 1.7,
        "calibration_val_nll_before": 0.9,
        "calibration_val_nll_after": 0.6,
    }


def test_conformal_coverage_and_set_size_are_logged():
    from medpeft.conformal import Conformal

    result = RunResult([], 2, 0.7, {"accuracy": 0.6}, None, 10, 100, {"train": 1.0}, None, "cpu")
    result.conformal = Conformal(
        "aps",
        0.1,
        20,
        0.93,
        test={"coverage": 0.91, "mean_set_size": 1.4, "singleton_rate": 0.6, "per_class_coverage": {}},
    )
    record = RunRecord(
        RunSpec(method="linear", task="colon", data_root="/data", shots=1), get_task("colon"), {}, result, {}
    )
    logged = final_metrics(record)
    assert {k: logged[k] for k in logged if k.startswith("conformal_")} == {
        "conformal_coverage": 0.91,
        "conformal_mean_set_size": 1.4,
        "conformal_singleton_rate": 0.6,
        "conformal_alpha": 0.1,
        "conformal_n_cal": 20,
        "conformal_qhat": 0.93,
    }
    result.conformal.qhat = [0.9, float("inf")]  # Mondrian: one per class, not a metric
    assert "conformal_qhat" not in final_metrics(record)
