"""Scale-out: a real two-node Ray cluster on this machine, a killed worker, Ctrl-C, two benches on one folder, and
SLURM job arrays through submitit's local executor; the same numbers whichever executor ran the runs."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest

from medpeft import UserError
from medpeft.bench import BenchConfig, LocalExecutor, RunJob, read_index, run_bench
from medpeft.bench.ray_executor import RayExecutor
from medpeft.bench.slurm_executor import SlurmExecutor, in_flight
from medpeft.cli import main
from medpeft.data import make_demo_data

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytest.importorskip("submitit", reason="the slurm extra is not installed")

TINY = {
    "backbone": "vit_tiny_patch16_224",
    "pretrained": False,
    "img_size": 32,
    "train": {"epochs": 2, "batch_size": 8},
}
GRID = {"methods": ["linear", "lora"], "tasks": ["colon"], "shots": [5], "exps": [1, 2], **TINY}
FLAGS = [
    "--methods",
    "linear,lora",
    "--tasks",
    "colon",
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
    "--train-opt",
    "batch_size=8",
]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale") / "data"
    make_demo_data(root)
    return root


@pytest.fixture(scope="module")
def local_runs(demo_root, tmp_path_factory):
    """The reference: the grid run in this process, one thread per run."""
    out = tmp_path_factory.mktemp("local")
    runs = run_bench(
        BenchConfig.from_dict({**GRID, "data_root": str(demo_root)}),
        out,
        executor=LocalExecutor(cpus_per_run=1),
        progress=False,
    )
    return {r.key: r for r in runs}


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node, one CPU each, in a private temp dir (never touching other Ray sessions)."""
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must fit
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "OMP_NUM_THREADS")}
    os.environ.update(RAY_TMPDIR=temp, OMP_NUM_THREADS="1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.update({key: value})
    shutil.rmtree(temp, ignore_errors=True)


def config(root):
    return BenchConfig.from_dict({**GRID, "data_root": str(root)})


def same_numbers(runs, reference):
    assert {r.key for r in runs} == set(reference)
    for run in runs:
        ref = reference[run.key]
        assert run.test == ref.test and run.result.val_best == ref.result.val_best
        assert run.result.history == ref.result.history


def test_ray_on_two_nodes_matches_local(cluster, demo_root, local_runs, tmp_path, capsys):
    main(
        [
            "bench",
            *FLAGS,
            "--data-root",
            str(demo_root),
            "--out",
            str(tmp_path),
            "--executor",
            "ray",
            "--address",
            cluster.address,
            "--cpus-per-run",
            "1",
            "--max-retries",
            "1",
        ]
    )
    assert "4 runs in" in capsys.readouterr().out
    runs = read_index(tmp_path)
    same_numbers(runs, local_runs)
    assert len({r.worker["node_id"] for r in runs}) == 2  # both nodes ran runs
    assert all({"host", "pid", "device", "node_id"} <= set(r.worker) for r in runs)
    assert all(r.worker["device"] == "cpu" for r in runs)
    assert [p.name for p in (tmp_path / ".cache").iterdir()] == [socket.gethostname()]  # caches per node (host)
    assert not ray.is_initialized()  # the executor left the cluster it joined


def ray_workers_running_a_run():
    """This test's Ray worker processes that are executing a run (Ray titles them ``ray::_run``)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith("ray::_run"):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_a_killed_worker_loses_nothing(cluster, demo_root, local_runs, tmp_path):
    killed = []  # (pid, time) of the worker killed while it was running a run

    def kill_one_mid_run():
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            workers = ray_workers_running_a_run()
            if workers:
                time.sleep(0.3)  # it has started its run (a longer wait lets a short run end first on a busy machine)
                if workers[0].pid in {w.pid for w in ray_workers_running_a_run()}:  # still running a run
                    workers[0].kill()
                    killed.append((workers[0].pid, time.time()))
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_mid_run)
    killer.start()
    runs = run_bench(config(demo_root), tmp_path, executor=RayExecutor(address=cluster.address), progress=False)
    killer.join()
    assert killed, "no worker was seen running a run"
    lines = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(local_runs)  # every run exactly once
    assert not (tmp_path / "failed.jsonl").exists()
    pid, when = killed[0]
    for r in runs:  # Ray reuses workers: the killed one may have finished runs before, but none after the kill
        if r.worker["pid"] == pid:
            assert (tmp_path / r.spec.run_dir / "run.json").stat().st_mtime < when
    same_numbers(runs, local_runs)


class InterruptedAfterOne(RayExecutor):
    """Ctrl-C in the driver once the first run has come back."""

    def next(self):
        super().next()
        self.cancelled = list(self.running)
        raise KeyboardInterrupt


def test_ctrl_c_cancels_and_a_rerun_resumes(cluster, demo_root, local_runs, tmp_path):
    ray.init(address=cluster.address)  # joined here, so the cancelled tasks can be inspected after close()
    executor = InterruptedAfterOne()
    with pytest.raises(KeyboardInterrupt):
        run_bench(config(demo_root), tmp_path, executor=executor, progress=False)
    assert not executor.running
    cancelled = 0
    for ref in executor.cancelled:
        try:
            ray.get(ref, timeout=60)  # a run that finished just before the cancel
        except (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError):
            cancelled += 1
    # two nodes, four runs: the last one queued at least is cancelled (on a loaded machine a run or two can finish
    # in the moment between the first result and the cancel)
    assert cancelled >= 1
    ray.shutdown()
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("**/run.json")}
    assert 1 <= len(finished) < len(local_runs)
    runs = run_bench(config(demo_root), tmp_path, executor=RayExecutor(address=cluster.address), progress=False)
    same_numbers(runs, local_runs)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())  # nothing finished was redone
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == len(local_runs)


def test_a_run_larger_than_the_local_ray_is_refused(cluster, tmp_path):
    executor = RayExecutor(gpus_per_run=1)
    with pytest.raises(UserError, match="asks 1 GPU\\(s\\) but this machine's Ray has 0: lower --gpus-per-run"):
        executor.start(RunJob(str(tmp_path)))
    assert not ray.is_initialized()


def test_a_second_bench_process_on_the_same_out_refuses(demo_root, tmp_path, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time\nfrom medpeft.bench import BenchStore\nwith BenchStore(sys.argv[1]):\n"
                "    print('holding', flush=True)\n    time.sleep(120)\n"
            ),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", *FLAGS, "--data-root", str(demo_root), "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1
        assert f"in use by another medpeft bench (pid {holder.pid} on" in err
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "runs").exists()


def cli(args, capsys):
    main(["bench", *args])
    return capsys.readouterr().out


def test_slurm_job_array_packs_collects_and_resumes(demo_root, local_runs, tmp_path, capsys):
    out = tmp_path / "out"
    submit = [
        *FLAGS,
        "--data-root",
        str(demo_root),
        "--out",
        str(out),
        "--executor",
        "slurm",
        "--slurm-cluster",
        "local",
        "--slurm-runs-per-job",
        "2",
        "--cpus-per-run",
        "1",
        "--no-wait",
    ]
    started = time.time()
    printed = cli(submit, capsys)
    assert "submitted 4 run(s) in 2 SLURM job(s)" in printed
    jobs = [json.loads(line) for line in (out / "slurm" / "jobs.jsonl").read_text().splitlines()]
    assert [len(job["keys"]) for job in jobs] == [2, 2] and time.time() - started < 30  # returned at submission
    again = cli(submit, capsys)  # the jobs are still running: nothing is resubmitted
    assert "submitted 0 run(s) in 0 SLURM job(s)" in again and "4 run(s) already in earlier jobs" in again
    deadline = time.time() + 150
    while in_flight(out / "slurm") and time.time() < deadline:
        time.sleep(1)
    assert not in_flight(out / "slurm")
    assert "4 runs in" in cli(["--summarize", str(out)], capsys)
    runs = read_index(out)
    same_numbers(runs, local_runs)
    by_job = {job["job_id"]: set(job["keys"]) for job in jobs}
    assert all(r.key in by_job[r.worker["job_id"]] for r in runs)  # each run ran in the job it was packed into
    assert all({"host", "pid", "device", "job_id"} <= set(r.worker) for r in runs)
    assert "submitted 0 run(s)" in cli(submit, capsys)  # a rerun resumes: nothing is redone
    assert len((out / "slurm" / "jobs.jsonl").read_text().splitlines()) == 2


def test_slurm_wait_collects_as_jobs_end(demo_root, local_runs, tmp_path):
    grid = BenchConfig.from_dict({**GRID, "methods": ["linear"], "data_root": str(demo_root)})
    executor = SlurmExecutor(cluster="local", runs_per_job=1, wait=True)
    executor.poll_s = 0.5
    runs = run_bench(grid, tmp_path, executor=executor, progress=False)
    assert len(runs) == 2 and len({r.worker["job_id"] for r in runs}) == 2
    same_numbers(runs, {k: r for k, r in local_runs.items() if r.spec.method == "linear"})


@pytest.mark.parametrize(
    "args, message",
    [
        (["--executor", "local", "--address", "auto"], "--address does not apply to --executor local (only to ray)"),
        (["--executor", "ray", "--slurm-time", "5"], "--slurm-time does not apply to --executor ray (only to slurm)"),
        (["--executor", "local", "--wait"], "--wait does not apply to --executor local"),
        (["--cpus-per-run", "0"], "Invalid value for '--cpus-per-run'"),
        (["--executor", "ray", "--gpus-per-run", "-1"], "Invalid value for '--gpus-per-run'"),
        (
            ["--executor", "ray", "--gpus-per-run", "1.5"],
            "gpus per run must be a fraction of one GPU or a whole number",
        ),
        (["--executor", "slurm", "--slurm-runs-per-job", "0"], "Invalid value for '--slurm-runs-per-job'"),
        (["--executor", "slurm"], "sbatch is not on this machine's PATH"),
    ],
)
def test_executor_option_errors_are_one_line(tmp_path, capsys, args, message):
    if "sbatch" in message and shutil.which("sbatch"):
        pytest.skip("this machine has SLURM")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "bench",
                "--methods",
                "linear",
                "--tasks",
                "colon",
                "--data-root",
                str(tmp_path),
                *args,
                "--out",
                str(tmp_path / "out"),
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_summarize_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--summarize", str(tmp_path)])
    assert "holds no bench (grid.json is missing)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--summarize", str(tmp_path), "--methods", "linear"])
    assert "--summarize takes no other option (got --methods)" in capsys.readouterr().err
