"""``medpeft speed``: train-step time, eval throughput, added peak memory and trainable parameters of every method.

All models are built in one process from one frozen backbone and timed *interleaved*: each round runs one train
step, then one eval forward, of every method (in a fresh random order each round), so a disturbance of the machine
hits every method alike; a method's ratio to a reference is the median over rounds of the per-round ratio. Rounds
in which other processes used the CPU are flagged (and, given enough quiet ones, left out). When other processes
are busy at the start, the timing runs in a child process with ``OMP_WAIT_POLICY=PASSIVE``: on a shared 2-core
machine, OpenMP threads that spin at every barrier otherwise time the neighbours' load (3-4x slower steps, worst for
the methods with the most small parallel operations) rather than the method. Two references run in the same rounds:

- ``floor``: the frozen backbone with its fused attention and one trainable (D,) vector added to the tokens at the
  input of the first block: a forward and a backward through every block and nothing more, the work any method
  that trains something in or before the first block must do (up to the first block's own input gradients).
- ``naive-ept``: EPT as the official code computes it, the (B, H, N, N + L) logits ``[P | QKᵀ/√d]`` built in every
  layer (:class:`NaiveEmbeddedPromptAttention`). A benchmark reference only; the library never uses it.

Added peak memory is measured per method, on CPU in a fresh child process (``python -m medpeft.speed --child
...``), on CUDA in this process after the timing (the allocator's statistics are exact there): the model is built
and one tiny no-grad forward initialises the kernels, then the high-water mark is reset and three
train steps run at ``memory_batch``. On CPU the figure is the growth of the process's resident high-water mark
(``VmHWM``), on CUDA that of ``torch.cuda.max_memory_allocated``. One profiled train step per method records which
attention kernels ran, so a silent fallback to the math kernel (which materialises everything) shows in the result.

Run ``python -m medpeft.speed --out DIR`` (or ``medpeft speed --out DIR``); it writes ``DIR/speed.json`` and
``DIR/speed.md``.
"""

from __future__ import annotations

import copy
import datetime
import gc
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F
from torch import nn

from .attention import CONCAT_WAYS, EmbeddedPromptAttention
from .backbones import create_backbone
from .errors import UserError
from .memory import reset_resident_high_water, resident_high_water_mb
from .model import PeftClassifier, build_model, count_parameters
from .train import resolve_device

NUM_CLASSES = 10
#: LoRA on the fused qkv only, in ``peft``: r'·(D + 3D) per block, equal to own LoRA's 2·(r·D + D·r) when r' = r.
PEFT_LORA_QKV = {"r": 8, "lora_alpha": 8, "target_modules": r".*blocks\.\d+\.attn\.qkv"}
#: label → (method, options); ``floor`` and ``naive-ept`` are the references. Other method names run at defaults.
CONFIGS: dict[str, tuple[str, dict]] = {
    "floor": ("floor", {}),
    "naive-ept": ("ept", {}),
    "ept": ("ept", {}),
    "vpt-100": ("vpt", {"prompt_length": 100, "deep": True}),
    "lora": ("lora", {}),
    "peft:lora-qkv": ("peft:lora", PEFT_LORA_QKV),
    "linear": ("linear", {}),
    "full": ("full", {}),
    "partial": ("partial", {}),
    "mlp": ("mlp", {}),
    "bitfit": ("bitfit", {}),
    "adapter": ("adapter", {}),
    "vp": ("vp", {}),
    "vpt": ("vpt", {}),
    "ssf": ("ssf", {}),
}
DEFAULT_METHODS = tuple(CONFIGS)
#: (name, numerator, denominator, what is compared, limit): the issue's targets, checked in every run that has both.
TARGETS = (
    ("EPT step / floor", "ept", "floor", "step", 1.07),
    ("EPT step / naive EPT", "ept", "naive-ept", "step", 0.88),
    ("EPT step / VPT-deep-100", "ept", "vpt-100", "step", 0.85),
    ("EPT added peak memory / naive EPT", "ept", "naive-ept", "memory", 0.62),
    ("own LoRA (q, v) step / peft LoRA (qkv)", "lora", "peft:lora-qkv", "step", 1.0),
)
RATIO_REFERENCES = ("floor", "naive-ept", "vpt-100")
_ATTENTION_KERNEL = re.compile(r"scaled_dot_product|flash_attention|efficient_attention|cudnn_attention|"
                               r"attention_math|^aten::_?softmax$|^aten::_softmax_backward_data$")
_RESULT_PREFIX = "MEDPEFT_SPEED_RESULT "


# --------------------------------------------------------------------------------------------- the references

class NaivePrompts(nn.Module):
    """The official code's single prompt tensor (layers, N, L), expanded over the batch once per forward."""

    def __init__(self, prompts: list[torch.Tensor]):
        super().__init__()
        self.prompt = nn.Parameter(torch.stack([p.detach() for p in prompts]))
        self.expanded = None

    def expand_for(self, module, args):
        """Forward pre-hook of the blocks: ``prompt.unsqueeze(1).expand(-1, B, -1, -1)``, as the official forward."""
        self.expanded = self.prompt.unsqueeze(1).expand(-1, args[0].shape[0], -1, -1)


class NaiveEmbeddedPromptAttention(nn.Module):
    """EPT attention as the official code computes it: ``softmax([P | QKᵀ·scale])[..., L:] @ V``, logits built.

    A benchmark reference only (``naive-ept``), never used by the library. The steps are those of the official
    ``EPT.feature_prompt_attention`` (mmcls): ``q @ kᵀ`` times the scale, the layer's prompt (a row of the one
    (layers, B, N, L) expanded tensor) expanded over heads and concatenated in front, softmax over the
    (B, H, N, L + N) tensor, dropout, the prompt columns sliced off and ``.clone()``-d, ``@ v``. It reuses the
    frozen modules of an :class:`~medpeft.attention.EmbeddedPromptAttention` of the concat way; see
    :func:`to_naive_ept` for the prompts.
    """

    def __init__(self, attn: EmbeddedPromptAttention, prompts: NaivePrompts, index: int):
        super().__init__()
        if attn.way != "concat":
            raise ValueError(f"the naive reference covers the concat way, not {attn.way!r}")
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.qkv, self.q_norm, self.k_norm, self.norm = attn.qkv, attn.q_norm, attn.k_norm, attn.norm
        self.attn_drop, self.proj, self.proj_drop, self.gate = attn.attn_drop, attn.proj, attn.proj_drop, attn.gate
        self.__dict__["prompts"] = prompts  # not a submodule: the backbone owns it
        self.index = index

    def forward(self, x, attn_mask=None, is_causal=False):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q @ k.transpose(-2, -1)) * self.scale                            # (B, H, N, N)
        prompt = self.prompts.expanded[self.index]                               # (B, N, L)
        L = prompt.shape[-1]
        prompt = prompt.unsqueeze(1).expand(-1, self.num_heads, -1, -1)
        attn = torch.cat([prompt, attn], dim=-1)                                 # (B, H, N, L + N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        attn = attn[:, :, :, L:].clone()                                        # prompt columns dropped
        out = attn @ v
        out = self.norm(out.transpose(1, 2).reshape(B, N, -1))
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(out))


def to_naive_ept(model: PeftClassifier) -> PeftClassifier:
    """Swap the EPT attentions of ``model`` (in place) for their materialised-logits twins.

    Their prompts move into one (layers, N, L) parameter, ``backbone.ept_prompts.prompt``, as in the official code
    (row i: the i-th prompted block's prompt, same values): same function, same trainable parameters.
    """
    blocks = [b for b in model.backbone.blocks
              if isinstance(b.attn, EmbeddedPromptAttention) and b.attn.way in CONCAT_WAYS]
    prompts = NaivePrompts([b.attn.prompt for b in blocks])
    model.backbone.ept_prompts = prompts
    model.backbone.blocks.register_forward_pre_hook(prompts.expand_for)
    for i, block in enumerate(blocks):
        block.attn = NaiveEmbeddedPromptAttention(block.attn, prompts, i)
    model.config = {**model.config, "method": "naive-ept"}
    return model


class InputShift(nn.Module):
    """``module(x) + shift``: the floor's single trainable tensor, a (D,) vector added to every token."""

    def __init__(self, module: nn.Module, dim: int):
        super().__init__()
        self.module = module
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.module(x) + self.shift


def build_floor(backbone, num_classes: int = NUM_CLASSES, *, img_size: int | None = None) -> PeftClassifier:
    """The frozen backbone (fused attention), a frozen head, and one trainable (D,) vector at the blocks' input."""
    model = build_model("linear", backbone, num_classes, pretrained=False, img_size=img_size)
    model.head.requires_grad_(False)
    model.backbone.norm_pre = InputShift(model.backbone.norm_pre, model.backbone.embed_dim)
    model.config = {**model.config, "method": "floor"}
    return model


def build_entry(label: str, backbone, num_classes: int = NUM_CLASSES, *, img_size: int | None = None) -> PeftClassifier:
    """The model benchmarked under ``label`` (a key of :data:`CONFIGS`, or any method name at its defaults)."""
    method, options = resolve_label(label)
    if method == "floor":
        return build_floor(backbone, num_classes, img_size=img_size)
    model = build_model(method, backbone, num_classes, pretrained=False, img_size=img_size, **options)
    return to_naive_ept(model) if label == "naive-ept" else model


def resolve_label(label: str) -> tuple[str, dict]:
    if label in CONFIGS:
        return CONFIGS[label]
    from .methods import available_methods

    if label in available_methods():
        return label, {}
    raise UserError(f"unknown speed entry {label!r}: choose from {', '.join(CONFIGS)} or any of "
                    f"{', '.join(available_methods())}")


# ------------------------------------------------------------------------------------------------ the measures

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


class _Runner:
    """One model, its SGD optimiser and its inputs: ``train_step`` and ``eval_step`` return seconds."""

    def __init__(self, model: PeftClassifier, device: torch.device, bf16: bool, batch: int, img_size: int, seed: int):
        self.model = model.to(device)
        self.device, self.bf16 = device, bf16
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)  # the paper's recipe
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randn(batch, 3, img_size, img_size, generator=gen).to(device)
        self.targets = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)

    def train_step(self) -> float:
        self.model.train()
        _sync(self.device)
        start = time.perf_counter()
        with _autocast(self.device, self.bf16):
            loss = F.cross_entropy(self.model(self.images), self.targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - start

    def eval_step(self) -> float:
        self.model.eval()
        _sync(self.device)
        start = time.perf_counter()
        with torch.no_grad(), _autocast(self.device, self.bf16):
            self.model(self.images)
        _sync(self.device)
        return time.perf_counter() - start

    def profile(self) -> dict[str, Any]:
        """One profiled train step: its attention-related aten ops (with call counts) and, on CUDA, the summed
        time of its device kernels (ms), i.e. the step's GPU busy time without launch gaps."""
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device.type == "cuda"
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
            self.train_step()
        events = prof.key_averages()
        kernels = [e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA]
        device_ms = sum(kernels) / 1e3 if cuda else None
        return {"kernels": {e.key: e.count for e in events if _ATTENTION_KERNEL.search(e.key)},
                "device_ms": device_ms}


@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler back end logs every start and stop there from C++)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def attention_path(kernels: dict[str, int]) -> str:
    """A short name for what the attention ran on: flash, efficient, cudnn, math (fallback), materialised, none."""
    names = " ".join(kernels)
    found = [name for pattern, name in (
        (r"flash_attention", "flash"), (r"efficient_attention", "efficient"), (r"cudnn_attention", "cudnn"),
        (r"attention_math", "math (fallback!)"), (r"aten::_?softmax\b", "materialised softmax"),
    ) if re.search(pattern, names)]
    return " + ".join(found) or "none"


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def _set_threads(threads: int | None) -> int:
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_memory(label: str, *, backbone: str, img_size: int, batch: int, device: str, bf16: bool,
                   threads: int, seed: int = 0, steps: int = 3) -> dict[str, Any]:
    """Added peak memory of ``steps`` train steps of ``label`` at ``batch``, in this process (call it in a fresh one).

    The model is built and a batch-1 no-grad forward initialises the kernels; then the high-water mark is reset and
    the steps run. CPU: growth of ``VmHWM`` (resident high-water mark); CUDA: of ``max_memory_allocated``.
    """
    _set_threads(threads)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    template = create_backbone(backbone, pretrained=False, img_size=img_size)
    runner = _Runner(build_entry(label, template, img_size=img_size), dev, bf16, batch, img_size, seed)
    with torch.no_grad():
        runner.model.eval()
        runner.model(runner.images[:1])
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base, how = torch.cuda.memory_allocated(dev) / 2**20, "cuda max_memory_allocated"
    else:
        how = "VmHWM growth after reset" if reset_resident_high_water() else "VmHWM growth (no reset)"
        base = resident_high_water_mb()
    for _ in range(steps):
        runner.train_step()
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else resident_high_water_mb()
    if base is None or peak is None:
        return {"added_peak_mib": None, "memory_how": "unavailable"}
    return {"added_peak_mib": peak - base, "base_mib": base, "peak_mib": peak, "memory_how": how}


def measure_memory_isolated(label: str, **kwargs) -> dict[str, Any]:
    """:func:`measure_memory` where nothing else counts: on CUDA in this process (the allocator's statistics are
    exact), on CPU in a fresh Python process (its own high-water mark), through ``--child``."""
    if resolve_device(kwargs["device"]).type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        return measure_memory(label, **kwargs)
    result = _run_child("child", {"label": label, **kwargs}, stderr=subprocess.PIPE)
    if "_failed" in result:
        tail = result["_stderr"].strip().splitlines()[-1:] or ["no output"]
        return {"added_peak_mib": None, "memory_how": f"child failed (exit {result['_failed']}): {tail[0]}"}
    return result


class _ForeignCpu:
    """CPU used by *other* processes (and the hypervisor's steal) between two calls, in cores; None off Linux.

    Busy jiffies of the whole machine (``/proc/stat``) minus this process's own (``/proc/self/stat``, all threads).
    """

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                values = [int(v) for v in f.readline().split()[1:9]]
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return time.perf_counter(), sum(values) - values[3] - values[4], int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            return None

    def __call__(self) -> float | None:
        now, last = self._read(), self.last
        self.last = now
        if now is None or last is None or now[0] <= last[0]:
            return None
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / self.tick / (now[0] - last[0]))


def time_methods(labels, *, backbone: str, img_size: int, batch: int, steps: int, warmup: int, max_rounds: int,
                 quiet_cpu: float, device: str, bf16: bool, threads: int | None, seed: int,
                 progress: bool = True) -> dict[str, Any]:
    """Build every entry of ``labels`` in this process and time them interleaved (see :func:`run_speed`).

    Returns JSON-ready lists: per label the trainable parameters, the profile of one train step (:meth:`_Runner.profile`),
    the train-step and eval seconds of every round; and per round its order, the other processes' CPU use and
    whether it was quiet.
    """
    say = (lambda msg: click.echo(msg, err=True)) if progress else (lambda msg: None)
    dev = resolve_device(device)
    previous_threads = torch.get_num_threads()
    threads = _set_threads(threads)
    try:
        torch.manual_seed(seed)
        template = create_backbone(backbone, pretrained=False, img_size=img_size)
        runners, trainable = {}, {}
        for label in labels:
            torch.manual_seed(seed)  # ept and naive-ept start from the same prompts
            model = build_entry(label, copy.deepcopy(template), img_size=img_size)
            trainable[label] = count_parameters(model)[0]
            runners[label] = _Runner(model, dev, bf16, batch, img_size, seed)
        del template
        say(f"speed: {len(labels)} models built; {warmup} warm-up + {steps} interleaved rounds (up to {max_rounds} "
            f"to get {steps} quiet ones), batch {batch}, {img_size} px, {threads} threads on {dev}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
        for _ in range(warmup):
            for runner in runners.values():
                runner.train_step()
                runner.eval_step()
        profiles = {label: runner.profile() for label, runner in runners.items()}
        train = {label: [] for label in labels}
        evals = {label: [] for label in labels}
        rounds, rng, foreign = [], random.Random(seed), _ForeignCpu()
        while len(rounds) < steps or (len(rounds) < max_rounds and sum(r["quiet"] for r in rounds) < steps):
            order = rng.sample(labels, len(labels))  # a fresh order: no method always runs after the same one
            foreign()
            for label in order:
                train[label].append(runners[label].train_step())
            for label in order:
                evals[label].append(runners[label].eval_step())
            other = foreign()
            rounds.append({"order": order, "other_cpu": other, "load_avg": _load_average(),
                           "quiet": other is None or other <= quiet_cpu})
            say(f"speed: round {len(rounds)} ({'quiet' if rounds[-1]['quiet'] else 'DISTURBED'}, other processes "
                f"{_fmt(other, '.2f', '?')} cores): " + ", ".join(f"{k} {train[k][-1]:.3f}s" for k in labels))
    finally:
        torch.set_num_threads(previous_threads)
    return {"trainable": trainable, "profiles": profiles, "train": train, "evals": evals, "rounds": rounds,
            "threads": threads}


def _run_child(mode: str, payload: dict, env: dict | None = None, stderr=None) -> dict | None:
    """Run ``python -m medpeft.speed --<mode> JSON`` and return the JSON result it prints (None if it failed)."""
    cmd = [sys.executable, "-m", "medpeft.speed", f"--{mode}", json.dumps(payload)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX):])
    return {"_failed": proc.returncode, "_stderr": proc.stderr}


def run_speed(methods=None, *, backbone: str = "vit_small_patch16_224", img_size: int = 384, batch: int = 2,
              memory_batch: int = 4, steps: int = 10, warmup: int = 2, max_rounds: int | None = None,
              quiet_cpu: float = 0.25, device: str = "auto", bf16: bool | None = None, threads: int | None = None,
              omp_wait_policy: str | None = "auto", memory=True, seed: int = 0, out=None,
              progress: bool = True) -> dict[str, Any]:
    """Benchmark ``methods`` (labels of :data:`CONFIGS` or method names; default all) interleaved in one process.

    Returns (and with ``out`` writes as ``speed.json`` and ``speed.md``) the environment, per method the median
    train-step seconds, eval images/s, added peak MiB (per method, at ``memory_batch``), trainable
    parameters, the attention kernels of one profiled step and the medians of per-round ratios to ``floor``,
    ``naive-ept`` and ``vpt-100`` (those in the run); and the issue's targets with pass/fail. ``floor`` always runs.

    A round is one train step and one eval forward of every method, in a fresh random order. Rounds during which
    other processes used more than ``quiet_cpu`` cores (on average) are *disturbed*; after ``steps`` rounds the run
    goes on, up to ``max_rounds`` (default ``steps``), until ``steps`` rounds are quiet. Medians use the quiet rounds
    (all rounds, and the run is flagged disturbed, when fewer than 3 are quiet).

    ``omp_wait_policy``: ``"passive"`` or ``"active"`` times in a child process with ``OMP_WAIT_POLICY`` set so
    (unless this process already has it); None times in this process as it is; ``"auto"`` (default) samples the
    other processes' CPU use for 2 s first and picks ``"passive"`` when they are busy and the variable is unset,
    None otherwise. With passive waits idle OpenMP threads sleep instead of spinning, which on a busy machine
    otherwise turns every parallel region into a wait for a time slice (3-4x slower steps, worst for the methods
    with the most small parallel operations); on a quiet machine spinning is some 5-10% faster.
    ``bf16`` (default: on CUDA only) autocasts the forward to bfloat16. ``memory``: True (every method), False, or
    the labels whose memory to measure.
    """
    say = (lambda msg: click.echo(msg, err=True)) if progress else (lambda msg: None)
    labels = list(dict.fromkeys(["floor", *(DEFAULT_METHODS if methods is None else methods)]))
    for label in labels:
        resolve_label(label)
    max_rounds = steps if max_rounds is None else max_rounds
    if steps < 1 or warmup < 0 or batch < 1 or memory_batch < 1 or max_rounds < steps:
        raise UserError("steps and batch sizes must be at least 1, warmup at least 0, max_rounds at least steps")
    dev = resolve_device(device)
    bf16 = dev.type == "cuda" if bf16 is None else bf16
    started = time.perf_counter()
    setup = dict(backbone=backbone, img_size=img_size, device=str(dev), bf16=bf16, threads=threads, seed=seed)
    timing_args = dict(setup, batch=batch, steps=steps, warmup=warmup, max_rounds=max_rounds, quiet_cpu=quiet_cpu,
                       progress=progress)
    policy = os.environ.get("OMP_WAIT_POLICY")
    if omp_wait_policy == "auto":  # passive where other processes are busy now and the policy is not set
        busy = _busy_now()
        omp_wait_policy = "passive" if policy is None and busy is not None and busy > quiet_cpu else None
        say(f"speed: other processes use {_fmt(busy, '.2f', '?')} cores: timing "
            + ("with OMP_WAIT_POLICY=PASSIVE" if omp_wait_policy else f"as is (OMP_WAIT_POLICY={policy or 'unset'})"))
    if omp_wait_policy and (policy or "").upper() != omp_wait_policy.upper():
        policy = omp_wait_policy.upper()
        timing = _run_child("timing-child", {"labels": labels, **timing_args}, {"OMP_WAIT_POLICY": policy})
        if "_failed" in timing:
            raise RuntimeError(f"the timing process failed (exit {timing['_failed']}); see its messages above")
    else:
        timing = time_methods(labels, **timing_args)
    trainable, profiles, train, evals, rounds = (timing[k] for k in ("trainable", "profiles", "train", "evals",
                                                                     "rounds"))
    mem = {}
    for label in [m for m in labels if m in memory] if not isinstance(memory, bool) else labels * memory:
        mem[label] = measure_memory_isolated(label, **dict(setup, batch=memory_batch, threads=timing["threads"]))
        say(f"speed: memory {label}: {_fmt(mem[label]['added_peak_mib'], '.0f')} MiB ({mem[label]['memory_how']})")
    quiet = [i for i, r in enumerate(rounds) if r["quiet"]]
    used = quiet if len(quiet) >= 3 or len(quiet) == len(rounds) else list(range(len(rounds)))
    pick = lambda values: [values[i] for i in used]  # noqa: E731
    results: dict[str, Any] = {}
    for label in labels:
        method, options = resolve_label(label)
        results[label] = {
            "method": method, "options": options, "trainable_params": trainable[label],
            "step_s": statistics.median(pick(train[label])),
            "eval_img_per_s": batch / statistics.median(pick(evals[label])),
            "added_peak_mib": mem.get(label, {}).get("added_peak_mib"),
            "step_ratio": {ref: _median_ratio(pick(train[label]), pick(train[ref]))
                           for ref in RATIO_REFERENCES if ref in train},
            "eval_ratio": {ref: _median_ratio(pick(evals[label]), pick(evals[ref]))
                           for ref in RATIO_REFERENCES if ref in evals},
            "kernels": profiles[label]["kernels"], "attention": attention_path(profiles[label]["kernels"]),
            "device_ms": profiles[label]["device_ms"],
            "memory": mem.get(label),
            "step_s_rounds": train[label], "eval_s_rounds": evals[label],
        }
    targets = []
    for name, a, b, what, limit in TARGETS:
        if a not in results or b not in results:
            continue
        if what == "step":
            value = _median_ratio(pick(train[a]), pick(train[b]))
        else:
            ma, mb = results[a]["added_peak_mib"], results[b]["added_peak_mib"]
            value = ma / mb if ma is not None and mb else None
        targets.append({"name": name, "value": value, "limit": limit,
                        "pass": None if value is None else bool(value <= limit)})
    report = {
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_model(),
            "cpus": os.cpu_count(), "threads": timing["threads"], "omp_wait_policy": policy,
            "bf16": bf16, "backbone": backbone, "img_size": img_size, "batch": batch, "memory_batch": memory_batch,
            "steps": steps, "warmup": warmup, "max_rounds": max_rounds, "quiet_cpu": quiet_cpu, "seed": seed,
            "rounds": len(rounds), "quiet_rounds": len(quiet), "rounds_used": used,
            "disturbed": len(used) != len(quiet) or not quiet,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "memory_measure": "torch.cuda.max_memory_allocated growth, in process" if dev.type == "cuda"
                              else "VmHWM growth in a fresh child process",
            "wall_s": time.perf_counter() - started,
        },
        "methods": results,
        "targets": targets,
        "rounds": rounds,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "speed.md").write_text(markdown(report))
    return report


def _busy_now(seconds: float = 2.0) -> float | None:
    """Cores the other processes use, sampled over ``seconds``."""
    foreign = _ForeignCpu()
    time.sleep(seconds)
    return foreign()


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


# --------------------------------------------------------------------------------------------------- reporting

def _fmt(value, spec: str, none: str = "–") -> str:
    return none if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    """The table (one row per method) and the target lines with PASS/FAIL."""
    env = report["environment"]
    rounds = f"{len(env['rounds_used'])} of {env['rounds']} interleaved rounds ({env['quiet_rounds']} quiet)"
    lines = [
        f"`{env['backbone']}` at {env['img_size']} px ({_tokens(env)} tokens), batch {env['batch']} "
        f"(memory: batch {env['memory_batch']}), {rounds} after {env['warmup']} warm-up; {env['device_name']} "
        f"({env['device']}), {env['threads']} threads (OMP_WAIT_POLICY {env['omp_wait_policy'] or 'unset'}), "
        f"torch {env['torch']}{', bf16' if env['bf16'] else ''}. "
        "Ratios: medians over rounds of per-round ratios.",
    ]
    if env["disturbed"]:
        lines += ["", f"**DISTURBED**: other processes used more than {env['quiet_cpu']} cores in all but "
                      f"{env['quiet_rounds']} rounds; these timings mix in their load (rerun on a quiet machine, "
                      "or with --max-rounds to wait for quiet rounds)."]
    gpu = env["device"].startswith("cuda")
    floor_busy = report["methods"]["floor"].get("device_ms")
    lines += [
        "",
        "| method | trainable params | train step (ms) | × floor | × naive EPT | × VPT-100 | eval (img/s) "
        "| added peak (MiB) | attention |" + (" GPU busy (ms) | busy × floor |" if gpu else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---|" + ("---:|---:|" if gpu else ""),
    ]
    for label, r in report["methods"].items():
        ratio, busy = r["step_ratio"], r.get("device_ms")
        lines.append(
            f"| {label} | {r['trainable_params']:,} | {r['step_s'] * 1e3:.0f} | {_fmt(ratio.get('floor'), '.3f')} "
            f"| {_fmt(ratio.get('naive-ept'), '.3f')} | {_fmt(ratio.get('vpt-100'), '.3f')} "
            f"| {r['eval_img_per_s']:.2f} | {_fmt(r['added_peak_mib'], '.0f')} | {r['attention']} |"
            + (f" {_fmt(busy, '.1f')} | {_fmt(busy / floor_busy if busy and floor_busy else None, '.3f')} |"
               if gpu else "")
        )
    if report["targets"]:
        lines += ["", "Targets:", ""]
        for t in report["targets"]:
            verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
            lines.append(f"- {t['name']}: {_fmt(t['value'], '.3f')} (≤ {t['limit']}) **{verdict}**")
    return "\n".join(lines) + "\n"


def _tokens(env) -> str:
    try:
        patch = int(re.search(r"patch(\d+)", env["backbone"]).group(1))
        return str((env["img_size"] // patch) ** 2 + 1)
    except (AttributeError, ValueError):
        return "?"


@click.command("speed")
@click.option("--methods", help=f"Comma-separated entries (default all: {','.join(DEFAULT_METHODS)}); "
                                "any method name runs at its defaults; floor always runs.")
@click.option("--backbone", default="vit_small_patch16_224", show_default=True, help="A timm ViT name (random init).")
@click.option("--img-size", type=int, default=384, show_default=True)
@click.option("--batch", type=int, default=2, show_default=True, help="Batch of the timed steps.")
@click.option("--memory-batch", type=int, default=4, show_default=True, help="Batch of the memory measurement.")
@click.option("--steps", type=int, default=10, show_default=True, help="Interleaved rounds to time.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed rounds first.")
@click.option("--max-rounds", type=int, help="Rounds at most while waiting for quiet ones [default: steps].")
@click.option("--quiet-cpu", type=float, default=0.25, show_default=True,
              help="A round is disturbed when other processes use more cores than this.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--bf16/--no-bf16", default=None, help="bfloat16 autocast [default: on CUDA only].")
@click.option("--threads", type=int, help="torch threads [default: the CPUs this process may use].")
@click.option("--omp-wait-policy", type=click.Choice(["auto", "passive", "active", "inherit"]), default="auto",
              show_default=True, help="OMP_WAIT_POLICY of the timing process (inherit: time in this process as is; "
                                      "auto: passive if other processes are busy at the start, else inherit).")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Measure added peak memory.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Folder for speed.json and speed.md.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def command(methods, backbone, img_size, batch, memory_batch, steps, warmup, max_rounds, quiet_cpu, device, bf16,
            threads, omp_wait_policy, memory, seed, out, quiet):
    """Train-step time, eval throughput, added peak memory and trainable parameters of every method, interleaved."""
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    report = run_speed(names, backbone=backbone, img_size=img_size, batch=batch, memory_batch=memory_batch,
                       steps=steps, warmup=warmup, max_rounds=max_rounds, quiet_cpu=quiet_cpu, device=device,
                       bf16=bf16, threads=threads, memory=memory, seed=seed, out=out, progress=not quiet,
                       omp_wait_policy=None if omp_wait_policy == "inherit" else omp_wait_policy)
    click.echo(markdown(report), nl=False)
    wrote = f"; wrote {Path(out) / 'speed.json'} and speed.md" if out else ""
    click.echo(f"wall time {report['environment']['wall_s']:.0f} s{wrote}")


def _main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--child"], ["--timing-child"]):
        payload = json.loads(argv[1])
        result = measure_memory(**payload) if argv[0] == "--child" else time_methods(payload.pop("labels"), **payload)
        print(_RESULT_PREFIX + json.dumps(result), flush=True)
        return
    try:
        command.main(args=argv, prog_name="python -m medpeft.speed", standalone_mode=False)
    except UserError as err:
        click.echo(f"medpeft speed: error: {err}", err=True)
        sys.exit(2)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)


if __name__ == "__main__":
    _main()
