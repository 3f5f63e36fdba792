"""The speed benchmark: what it reports and that its references are right. No timing assertions here (timing goals
live in the benchmark's own PASS/FAIL lines, never in unit tests)."""

import copy
import json

import pytest
import timm
import torch
from click.testing import CliRunner

from medpeft import UserError, build_model, count_parameters
from medpeft.cli.speed import command
from medpeft.speed import build_entry, build_floor, markdown, run_speed
from medpeft.speed.__main__ import main as _main

TINY = dict(
    backbone="vit_tiny_patch16_224",
    img_size=64,
    batch=2,
    memory_batch=2,
    steps=1,
    warmup=0,
    max_rounds=1,
    threads=1,
    progress=False,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and immune to other processes' load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def report(one_thread, tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    result = run_speed(
        ["naive-ept", "ept", "lora", "peft:lora-qkv", "linear"], memory=["ept"], out=out, omp_wait_policy=None, **TINY
    )  # timed in this process, the memory of ept in a child
    return result, out


def test_every_requested_method_is_reported(report):
    result, _ = report
    assert list(result["methods"]) == ["floor", "naive-ept", "ept", "lora", "peft:lora-qkv", "linear"]
    template = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64)
    for label, entry in result["methods"].items():
        assert entry["step_s"] > 0 and entry["eval_img_per_s"] > 0, label
        assert len(entry["step_s_rounds"]) == len(entry["eval_s_rounds"]) == 1
        model = build_entry(label, copy.deepcopy(template), img_size=64)
        assert entry["trainable_params"] == count_parameters(model)[0]
        assert entry["step_ratio"]["floor"] > 0 and "naive-ept" in entry["step_ratio"]
    assert result["methods"]["lora"]["trainable_params"] == result["methods"]["peft:lora-qkv"]["trainable_params"]
    assert result["methods"]["ept"]["added_peak_mib"] is not None
    assert result["methods"]["linear"]["added_peak_mib"] is None  # not asked for
    env = result["environment"]
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["img_size"] == 64
    assert env["rounds"] == 1 == len(result["rounds"])


def test_kernels_are_recorded(report):
    methods = report[0]["methods"]
    assert "materialised softmax" in methods["naive-ept"]["attention"]
    for label in ("floor", "ept", "lora"):  # fused flash on CPU, no math fallback
        assert "flash" in methods[label]["attention"] and "math" not in methods[label]["attention"], label
        assert not any("softmax" in k for k in methods[label]["kernels"]), label


def test_gpu_table_adds_busy_time_columns(report):
    """On CUDA the table gains the profiled GPU busy time and its ratio to the floor's; on CPU there is none."""
    result, _ = report
    assert all(m["device_ms"] is None for m in result["methods"].values())
    assert "GPU busy" not in markdown(result)
    gpu = copy.deepcopy(result)
    gpu["environment"]["device"] = "cuda:0"
    for label, busy in zip(gpu["methods"], (10.0, 25.0, 12.5, 11.0, 5.0, 7.0)):
        gpu["methods"][label]["device_ms"] = busy
    rows = {line.split(" | ")[0].lstrip("| "): line for line in markdown(gpu).splitlines() if line.startswith("| ")}
    assert "GPU busy (ms) | busy × floor |" in rows["method"]
    assert rows["floor"].endswith("| 10.0 | 1.000 |")
    assert rows["ept"].endswith(
        f"| {gpu['methods']['ept']['device_ms']:.1f} | {gpu['methods']['ept']['device_ms'] / 10:.3f} |"
    )


def test_outputs_written(report):
    result, out = report
    saved = json.loads((out / "speed.json").read_text())
    assert set(saved["methods"]) == set(result["methods"])
    md = (out / "speed.md").read_text()
    assert "| method | trainable params | train step (ms) |" in md
    for label in result["methods"]:
        assert f"| {label} |" in md
    names = {t["name"] for t in result["targets"]}
    assert {"EPT step / floor", "EPT step / naive EPT", "own LoRA (q, v) step / peft LoRA (qkv)"} <= names
    assert "EPT step / VPT-deep-100" not in names  # vpt-100 was not run
    assert "EPT step / floor" in md and ("PASS" in md or "FAIL" in md)


def test_floor_trains_exactly_one_tensor():
    model = build_floor(timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64), 3)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0][1].shape == (192,)
    model(torch.randn(2, 3, 64, 64)).sum().backward()  # the gradient flows back through every block
    assert trainable[0][1].grad is not None and trainable[0][1].grad.abs().sum() > 0


def test_naive_reference_equals_ept():
    """The naive entry (the official formulation, logits materialised) computes EPT exactly, values and gradients."""
    torch.manual_seed(0)
    template = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64)
    ept = build_model("ept", copy.deepcopy(template), 3, seed=0)
    naive = build_entry("naive-ept", copy.deepcopy(template), 3, img_size=64)
    naive.load_state_dict(ept.state_dict())
    with torch.no_grad():  # prompts large enough that the scaling matters
        for a, b in zip(ept.backbone.blocks, naive.backbone.blocks):
            a.attn.prompt.normal_(0, 2.0)
            b.attn.prompt.copy_(a.attn.prompt)
    assert count_parameters(naive) == count_parameters(ept)
    x = torch.randn(2, 3, 64, 64)
    y_ept, y_naive = ept(x), naive(x)
    torch.testing.assert_close(y_naive, y_ept, rtol=1e-4, atol=1e-5)
    y_ept.square().sum().backward()
    y_naive.square().sum().backward()
    for a, b in zip(ept.backbone.blocks, naive.backbone.blocks):
        torch.testing.assert_close(b.attn.prompt.grad, a.attn.prompt.grad, rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(naive.head.weight.grad, ept.head.weight.grad, rtol=1e-3, atol=1e-6)


def test_cli_writes_table(tmp_path):
    result = CliRunner().invoke(
        command,
        [
            "--methods",
            "linear",
            "--backbone",
            "vit_tiny_patch16_224",
            "--img-size",
            "32",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--omp-wait-policy",
            "inherit",
            "--no-memory",
            "--quiet",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| floor |" in result.output and "| linear |" in result.output
    assert (tmp_path / "speed.md").read_text() in result.output
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["environment"]["threads"] == 1 and saved["methods"]["linear"]["added_peak_mib"] is None


def test_timing_child_entry_point(capsys):
    """What ``run_speed`` runs in a child process when it sets OMP_WAIT_POLICY (here in this process)."""
    payload = dict(TINY, labels=["floor", "linear"], img_size=32, quiet_cpu=0.25, device="cpu", bf16=False, seed=0)
    del payload["memory_batch"]
    _main(["--timing-child", json.dumps(payload)])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("MEDPEFT_SPEED_RESULT ")
    timing = json.loads(line.split(" ", 1)[1])
    assert set(timing["train"]) == {"floor", "linear"} and timing["threads"] == 1 and len(timing["rounds"]) == 1


def test_unknown_entry():
    with pytest.raises(UserError, match="unknown speed entry"):
        run_speed(["nope"], **TINY)
