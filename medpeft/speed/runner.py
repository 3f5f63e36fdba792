"""Timing: one model's train and eval steps (:class:`StepRunner`) and every entry interleaved (:func:`time_methods`)."""

from __future__ import annotations

import copy
import random
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..backbones import create_backbone
from ..data import TaskSpec
from ..evaluate import autocast
from ..model import PeftClassifier, count_parameters
from ..train import loss_fn, make_optimizer, resolve_device
from ..types import TrainConfig
from .entries import NUM_CLASSES, build_entry
from .machine import ForeignCpu, load_average, quiet_stderr, set_threads

ATTENTION_KERNEL = re.compile(
    r"scaled_dot_product|flash_attention|efficient_attention|cudnn_attention|"
    r"attention_math|^aten::_?softmax$|^aten::_softmax_backward_data$"
)
_TASK = TaskSpec("speed", tuple(str(c) for c in range(NUM_CLASSES)), multilabel=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepRunner:
    """One model, the training recipe's optimiser (:func:`~medpeft.train.make_optimizer`) and fixed random inputs:
    ``train_step`` and ``eval_step`` return seconds."""

    def __init__(self, model: PeftClassifier, device: torch.device, bf16: bool, batch: int, img_size: int, seed: int):
        self.model = model.to(device)
        self.device, self.bf16 = device, bf16
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig())
        self.criterion = loss_fn(_TASK)
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randn(batch, 3, img_size, img_size, generator=gen).to(device)
        self.targets = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)

    def train_step(self) -> float:
        self.model.train()
        _sync(self.device)
        start = time.perf_counter()
        with autocast(self.device, self.bf16):
            loss = self.criterion(self.model(self.images), self.targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - start

    def eval_step(self) -> float:
        self.model.eval()
        _sync(self.device)
        start = time.perf_counter()
        with torch.no_grad(), autocast(self.device, self.bf16):
            self.model(self.images)
        _sync(self.device)
        return time.perf_counter() - start

    def profile(self) -> dict[str, Any]:
        """One profiled train step: its attention-related aten ops (with call counts) and, on CUDA, the summed
        time of its device kernels (ms), i.e. the step's GPU busy time without launch gaps."""
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device.type == "cuda"
        with quiet_stderr(), profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
            self.train_step()
        events = prof.key_averages()
        kernels = [e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA]
        return {
            "kernels": {e.key: e.count for e in events if ATTENTION_KERNEL.search(e.key)},
            "device_ms": sum(kernels) / 1e3 if cuda else None,
        }


def build_runners(
    labels, *, backbone: str, img_size: int, batch: int, device: torch.device, bf16: bool, seed: int
) -> dict[str, StepRunner]:
    """One runner per label, every model on a copy of one random backbone (``ept`` and ``naive-ept`` start equal)."""
    torch.manual_seed(seed)
    template = create_backbone(backbone, pretrained=False, img_size=img_size)
    runners = {}
    for label in labels:
        torch.manual_seed(seed)
        model = build_entry(label, copy.deepcopy(template), img_size=img_size)
        runners[label] = StepRunner(model, device, bf16, batch, img_size, seed)
    return runners


def time_methods(
    labels: Sequence[str],
    *,
    backbone: str,
    img_size: int,
    batch: int,
    steps: int,
    warmup: int,
    max_rounds: int,
    quiet_cpu: float,
    device: str,
    bf16: bool,
    threads: int | None,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Build every entry of ``labels`` in this process and time them interleaved (see :func:`run_speed`).

    Returns JSON-ready lists: per label the trainable parameters, the profile of one train step, the train-step
    and eval seconds of every round; and per round its order, the other processes' CPU use and whether it was quiet.
    """
    say = (lambda msg: print(msg, file=sys.stderr)) if progress else (lambda msg: None)
    dev = resolve_device(device)
    previous_threads = torch.get_num_threads()
    threads = set_threads(threads)
    try:
        runners = build_runners(
            labels, backbone=backbone, img_size=img_size, batch=batch, device=dev, bf16=bf16, seed=seed
        )
        trainable = {label: count_parameters(r.model)[0] for label, r in runners.items()}
        say(
            f"speed: {len(labels)} models built; {warmup} warm-up + {steps} interleaved rounds (up to {max_rounds} "
            f"to get {steps} quiet ones), batch {batch}, {img_size} px, {threads} threads on {dev}"
        )
        for _ in range(warmup):
            for runner in runners.values():
                runner.train_step()
                runner.eval_step()
        profiles = {label: runner.profile() for label, runner in runners.items()}
        train, evals, rounds = _rounds(runners, steps, max_rounds, quiet_cpu, seed, say)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "trainable": trainable,
        "profiles": profiles,
        "train": train,
        "evals": evals,
        "rounds": rounds,
        "threads": threads,
    }


def _rounds(runners: dict[str, StepRunner], steps: int, max_rounds: int, quiet_cpu: float, seed: int, say):
    """Interleaved rounds until ``steps`` are quiet (or ``max_rounds``): each one train step, then one eval step, of
    every runner in a fresh random order."""
    labels = list(runners)
    train = {label: [] for label in labels}
    evals = {label: [] for label in labels}
    rounds, rng, foreign = [], random.Random(seed), ForeignCpu()
    while len(rounds) < steps or (len(rounds) < max_rounds and sum(r["quiet"] for r in rounds) < steps):
        order = rng.sample(labels, len(labels))  # a fresh order: no method always runs after the same one
        foreign()
        for label in order:
            train[label].append(runners[label].train_step())
        for label in order:
            evals[label].append(runners[label].eval_step())
        other = foreign()
        rounds.append(
            {
                "order": order,
                "other_cpu": other,
                "load_avg": load_average(),
                "quiet": other is None or other <= quiet_cpu,
            }
        )
        busy = "?" if other is None else f"{other:.2f}"
        say(
            f"speed: round {len(rounds)} ({'quiet' if rounds[-1]['quiet'] else 'DISTURBED'}, other processes "
            f"{busy} cores): " + ", ".join(f"{k} {train[k][-1]:.3f}s" for k in labels)
        )
    return train, evals, rounds
