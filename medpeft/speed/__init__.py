"""``medpeft speed``: train-step time, eval throughput, added peak memory and trainable parameters of every method.

All models are built in one process from one frozen backbone and timed *interleaved*: each round runs one train
step, then one eval forward, of every method (in a fresh random order each round), so a disturbance of the machine
hits every method alike; a method's ratio to a reference is the median over rounds of the per-round ratio. Rounds
in which other processes used the CPU are flagged (and, given enough quiet ones, left out). Two references run in
the same rounds (``speed.yaml`` lists every entry and the targets):

- ``floor``: the frozen backbone with its fused attention and one trainable (D,) vector added to the tokens at the
  input of the first block: a forward and a backward through every block and nothing more.
- ``naive-ept``: EPT as the official code computes it (``ept`` with ``fused=False``): the (B, H, N, N + L) logits
  ``[P | QKᵀ/√d]`` built in every layer.

The package: :mod:`.entries` (what is built), :mod:`.runner` (timing), :mod:`.memory` (added peak memory, on CPU
in a fresh child process), :mod:`.machine` (the machine and child processes), :mod:`.report` (``speed.md``).
``python -m medpeft.speed --out DIR`` or ``medpeft speed --out DIR`` writes ``DIR/speed.json`` and ``speed.md``.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..backbones import create_backbone, num_tokens
from ..errors import UserError
from ..files import write_json, write_text
from ..train import resolve_device
from .entries import build_entry, build_floor, default_labels, resolve_label, settings
from .machine import busy_now, cpu_model, run_child
from .memory import measure_memory, measure_memory_isolated
from .report import attention_path, fmt, markdown
from .runner import StepRunner, time_methods


def run_speed(
    methods: Sequence[str] | None = None,
    *,
    backbone: str = "vit_small_patch16_224",
    img_size: int = 384,
    batch: int = 2,
    memory_batch: int = 4,
    steps: int = 10,
    warmup: int = 2,
    max_rounds: int | None = None,
    quiet_cpu: float = 0.25,
    device: str = "auto",
    bf16: bool | None = None,
    threads: int | None = None,
    omp_wait_policy: str | None = "auto",
    memory: bool = True,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Benchmark ``methods`` (entries of ``speed.yaml`` or method names; default all) interleaved in one process.

    Returns (and with ``out`` writes as ``speed.json`` and ``speed.md``) the environment, per method the median
    train-step seconds, eval images/s, added peak MiB (per method, at ``memory_batch``), trainable parameters, the
    attention kernels of one profiled step and the medians of per-round ratios to the reference entries; and the
    targets with pass/fail. ``floor`` always runs.

    Rounds during which other processes used more than ``quiet_cpu`` cores are *disturbed*; after ``steps`` rounds
    the run goes on, up to ``max_rounds`` (default ``steps``), until ``steps`` rounds are quiet. Medians use the
    quiet rounds (all rounds, and the run is flagged disturbed, when fewer than 3 are quiet).

    ``omp_wait_policy``: ``"passive"`` or ``"active"`` times in a child process with ``OMP_WAIT_POLICY`` set so
    (unless this process already has it); None times in this process as it is; ``"auto"`` (default) samples the
    other processes' CPU use for 2 s first and picks ``"passive"`` when they are busy and the variable is unset.
    Idle OpenMP threads that spin otherwise time the neighbours' load (3-4× slower steps on a busy 2-core machine).
    ``bf16`` (default: on CUDA only) autocasts to bfloat16. ``memory``: True, False, or the labels to measure.
    """
    say = (lambda msg: print(msg, file=sys.stderr)) if progress else (lambda msg: None)
    labels = list(dict.fromkeys(["floor", *(default_labels() if methods is None else methods)]))
    for label in labels:
        resolve_label(label)
    max_rounds = steps if max_rounds is None else max_rounds
    if steps < 1 or warmup < 0 or batch < 1 or memory_batch < 1 or max_rounds < steps:
        raise UserError("steps and batch sizes must be at least 1, warmup at least 0, max_rounds at least steps")
    dev = resolve_device(device)
    bf16 = dev.type == "cuda" if bf16 is None else bf16
    started = time.perf_counter()
    setup = dict(backbone=backbone, img_size=img_size, device=str(dev), bf16=bf16, threads=threads, seed=seed)
    timing, policy = _timing(
        labels,
        dict(
            setup,
            batch=batch,
            steps=steps,
            warmup=warmup,
            max_rounds=max_rounds,
            quiet_cpu=quiet_cpu,
            progress=progress,
        ),
        omp_wait_policy,
        quiet_cpu,
        say,
    )
    wanted = labels if memory is True else [m for m in labels if memory and m in memory]
    mem = {}
    for label in wanted:
        mem[label] = measure_memory_isolated(label, **dict(setup, batch=memory_batch, threads=timing["threads"]))
        say(f"speed: memory {label}: {fmt(mem[label]['added_peak_mib'], '.0f')} MiB ({mem[label]['memory_how']})")
    rounds = timing["rounds"]
    quiet = [i for i, r in enumerate(rounds) if r["quiet"]]
    used = quiet if len(quiet) >= 3 or len(quiet) == len(rounds) else list(range(len(rounds)))
    results = _results(labels, timing, mem, used, batch)
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
        "cpus": os.cpu_count(),
        "threads": timing["threads"],
        "omp_wait_policy": policy,
        "bf16": bf16,
        "backbone": backbone,
        "img_size": img_size,
        "tokens": _tokens(backbone, img_size),
        "batch": batch,
        "memory_batch": memory_batch,
        "steps": steps,
        "warmup": warmup,
        "max_rounds": max_rounds,
        "quiet_cpu": quiet_cpu,
        "seed": seed,
        "rounds": len(rounds),
        "quiet_rounds": len(quiet),
        "rounds_used": used,
        "disturbed": len(used) != len(quiet) or not quiet,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "memory_measure": "torch.cuda.max_memory_allocated growth, in process"
        if dev.type == "cuda"
        else "VmHWM growth in a fresh child process",
        "wall_s": time.perf_counter() - started,
    }
    report = {"environment": env, "methods": results, "targets": _targets(results, timing, used), "rounds": rounds}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "speed.json", report)
        write_text(out / "speed.md", markdown(report))
    return report


def _timing(labels, args: dict, omp_wait_policy: str | None, quiet_cpu: float, say) -> tuple[dict, str | None]:
    """The interleaved timing, in this process or in a child with ``OMP_WAIT_POLICY`` set; (timing, policy)."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    if omp_wait_policy == "auto":  # passive where other processes are busy now and the policy is not set
        busy = busy_now()
        omp_wait_policy = "passive" if policy is None and busy is not None and busy > quiet_cpu else None
        say(
            f"speed: other processes use {fmt(busy, '.2f', '?')} cores: timing "
            + ("with OMP_WAIT_POLICY=PASSIVE" if omp_wait_policy else f"as is (OMP_WAIT_POLICY={policy or 'unset'})")
        )
    if omp_wait_policy and (policy or "").upper() != omp_wait_policy.upper():
        policy = omp_wait_policy.upper()
        timing = run_child("timing-child", {"labels": labels, **args}, {"OMP_WAIT_POLICY": policy})
        if "_failed" in timing:
            raise RuntimeError(f"the timing process failed (exit {timing['_failed']}); see its messages above")
        return timing, policy
    return time_methods(labels, **args), policy


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def _results(labels, timing: dict, mem: dict, used: list[int], batch: int) -> dict[str, Any]:
    train, evals, profiles = timing["train"], timing["evals"], timing["profiles"]
    pick = lambda values: [values[i] for i in used]  # noqa: E731
    references = [r for r in settings()["ratio_references"] if r in train]
    results = {}
    for label in labels:
        method, options = resolve_label(label)
        results[label] = {
            "method": method,
            "options": options,
            "trainable_params": timing["trainable"][label],
            "step_s": statistics.median(pick(train[label])),
            "eval_img_per_s": batch / statistics.median(pick(evals[label])),
            "added_peak_mib": mem.get(label, {}).get("added_peak_mib"),
            "step_ratio": {ref: _median_ratio(pick(train[label]), pick(train[ref])) for ref in references},
            "eval_ratio": {ref: _median_ratio(pick(evals[label]), pick(evals[ref])) for ref in references},
            "kernels": profiles[label]["kernels"],
            "attention": attention_path(profiles[label]["kernels"]),
            "device_ms": profiles[label]["device_ms"],
            "memory": mem.get(label),
            "step_s_rounds": train[label],
            "eval_s_rounds": evals[label],
        }
    return results


def _targets(results: dict, timing: dict, used: list[int]) -> list[dict]:
    """Every target of ``speed.yaml`` whose two entries ran, with its value and verdict."""
    out = []
    for t in settings()["targets"]:
        a, b = t["numerator"], t["denominator"]
        if a not in results or b not in results:
            continue
        if t["measure"] == "step":
            value = _median_ratio([timing["train"][a][i] for i in used], [timing["train"][b][i] for i in used])
        else:
            ma, mb = results[a]["added_peak_mib"], results[b]["added_peak_mib"]
            value = ma / mb if ma is not None and mb else None
        out.append(
            {
                "name": t["name"],
                "value": value,
                "limit": t["limit"],
                "pass": None if value is None else bool(value <= t["limit"]),
            }
        )
    return out


def _tokens(backbone: str, img_size: int) -> int:
    with torch.device("meta"):
        return num_tokens(create_backbone(backbone, pretrained=False, img_size=img_size))


__all__ = ["StepRunner", "build_entry", "build_floor", "markdown", "measure_memory", "run_speed", "time_methods"]
