"""Nothing a user already has is lost: existing runs, output paths, image sizes and weight files, checked first."""

import json

import pytest
from test_cli import official_root, run_cli

import medpeft.train as train
from medpeft import UserError, build_model

TINY = [
    "--backbone",
    "vit_tiny_patch16_224",
    "--no-pretrained",
    "--img-size",
    "32",
    "--epochs",
    "1",
    "--batch-size",
    "8",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return official_root(tmp_path_factory.mktemp("data"), "colon", held_out=300)


def train_args(root, out, method="linear", *extra):
    return [
        "train",
        "--task",
        "colon",
        "--data-root",
        str(root),
        "--shots",
        "1",
        "--method",
        method,
        *TINY,
        "--out",
        str(out),
        *extra,
    ]


def one_line_error(code, err, *expected):
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


def test_an_existing_run_is_kept_unless_overwrite(root, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(train_args(root, out), capsys)
    assert code == 0, err
    before = (out / "run.json").read_text()
    one_line_error(*run_cli(train_args(root, out, "ept"), capsys)[::2], str(out), "--overwrite")
    assert (out / "run.json").read_text() == before
    code, _, err = run_cli(train_args(root, out, "ept", "--overwrite"), capsys)
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["spec"]["method"] == "ept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging or backup folder left


def test_an_interrupted_overwrite_keeps_the_old_run(root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_cli(train_args(root, out), capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train._Step, "epoch", interrupted)
    code, _, err = run_cli(train_args(root, out, "ept", "--overwrite"), capsys)
    assert code == 130 and "interrupted" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("where", ["/proc/medpeft-out", "under-a-file", "read-only"])
def test_an_output_path_that_cannot_be_made_is_refused_first(root, tmp_path, capsys, monkeypatch, where):
    if where == "under-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    elif where == "read-only":
        (tmp_path / "locked").mkdir()
        (tmp_path / "locked").chmod(0o500)
        out = tmp_path / "locked" / "run"
        if _is_root():  # root writes anywhere: pretend the permission check says no
            monkeypatch.setattr("medpeft.files._writable", lambda folder: False)
    else:
        out = where
    started = []
    monkeypatch.setattr(train, "fit", lambda *a, **k: started.append(1))
    code, _, err = run_cli(train_args(root, out), capsys)
    one_line_error(code, err, "--out")
    assert not started


def _is_root():
    import os

    return os.geteuid() == 0


def test_predict_keeps_an_existing_csv(root, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(train_args(root, run), capsys)[0] == 0
    csv = tmp_path / "sub.csv"
    csv.write_text("mine\n")
    base = ["predict", str(run), "--list", str(root / "colon" / "test_WithoutLabel.txt"), "--out", str(csv)]
    one_line_error(*run_cli(base, capsys)[::2], "sub.csv exists", "--overwrite")
    assert csv.read_text() == "mine\n"
    assert run_cli([*base, "--overwrite"], capsys)[0] == 0 and csv.read_text() != "mine\n"


def test_image_sizes_that_are_not_patch_multiples(root, tmp_path, capsys):
    args = train_args(root, tmp_path / "r")
    args[args.index("32")] = "30"
    one_line_error(*run_cli(args, capsys)[::2], "--img-size 30", "patch size 16", "16 or 32")
    with pytest.raises(UserError, match="^img_size 30 .* patch size 16"):
        build_model("linear", "vit_tiny_patch16_224", 2, pretrained=False, img_size=30)
    config = tmp_path / "bench.yaml"
    config.write_text(
        f"methods: [linear]\ntasks: [colon]\ndata_root: {root}\nbackbone: vit_small_patch14_dinov2\n"
        "pretrained: false\nimg_size: 100\n"
    )
    one_line_error(
        *run_cli(["bench", "--config", str(config), "--out", str(tmp_path / "b")], capsys)[::2],
        "--img-size 100",
        "patch size 14",
        "98 or 112",
    )
    assert not (tmp_path / "b").exists()


def test_a_weights_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(
        UserError,
        match="expected a PyTorch state dict .* safetensors .* found text starting 'hello, this is not a checkpoi",
    ):
        build_model("linear", "vit_tiny_patch16_224", 2, weights=text)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="found an empty file"):
        build_model("linear", "vit_tiny_patch16_224", 2, weights=empty)


def test_a_bench_never_leaves_a_half_written_run(tmp_path, monkeypatch, root):
    from medpeft.bench import BenchConfig, read_index, run_bench

    config = BenchConfig.from_dict(
        {
            "methods": ["linear"],
            "tasks": ["colon"],
            "data_root": str(root),
            "shots": [1],
            "exps": [1],
            "backbone": "vit_tiny_patch16_224",
            "pretrained": False,
            "img_size": 32,
            "train": {"epochs": 1},
        }
    )

    def crash_while_writing(model, path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("medpeft.experiment.save_trainable", crash_while_writing)
    with pytest.raises(KeyboardInterrupt):
        run_bench(config, tmp_path / "b", progress=False)
    assert not list((tmp_path / "b").glob("runs/**/run.json")) and not list((tmp_path / "b").glob("runs/*/*"))
    monkeypatch.undo()
    (run,) = run_bench(config, tmp_path / "b", progress=False)
    assert run.key == "linear/colon/1-shot/exp1/seed0" and len(read_index(tmp_path / "b")) == 1
