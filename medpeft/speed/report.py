"""The speed report: ``speed.md`` (one row per method, the target lines) from the JSON result."""

from __future__ import annotations

import re
from typing import Any


def fmt(value, spec: str, none: str = "–") -> str:
    return none if value is None else format(value, spec)


def attention_path(kernels: dict[str, int]) -> str:
    """A short name for what the attention ran on: flash, efficient, cudnn, math (fallback), materialised, none."""
    names = " ".join(kernels)
    found = [
        name
        for pattern, name in (
            (r"flash_attention", "flash"),
            (r"efficient_attention", "efficient"),
            (r"cudnn_attention", "cudnn"),
            (r"attention_math", "math (fallback!)"),
            (r"aten::_?softmax\b", "materialised softmax"),
        )
        if re.search(pattern, names)
    ]
    return " + ".join(found) or "none"


def markdown(report: dict[str, Any]) -> str:
    """The table (one row per method) and the target lines with PASS/FAIL."""
    env = report["environment"]
    rounds = f"{len(env['rounds_used'])} of {env['rounds']} interleaved rounds ({env['quiet_rounds']} quiet)"
    lines = [
        f"`{env['backbone']}` at {env['img_size']} px ({env.get('tokens', '?')} tokens), batch {env['batch']} "
        f"(memory: batch {env['memory_batch']}), {rounds} after {env['warmup']} warm-up; {env['device_name']} "
        f"({env['device']}), {env['threads']} threads (OMP_WAIT_POLICY {env['omp_wait_policy'] or 'unset'}), "
        f"torch {env['torch']}{', bf16' if env['bf16'] else ''}. "
        "Ratios: medians over rounds of per-round ratios.",
    ]
    if env["disturbed"]:
        lines += [
            "",
            f"**DISTURBED**: other processes used more than {env['quiet_cpu']} cores in all but "
            f"{env['quiet_rounds']} rounds; these timings mix in their load (rerun on a quiet machine, "
            "or with --max-rounds to wait for quiet rounds).",
        ]
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
            f"| {label} | {r['trainable_params']:,} | {r['step_s'] * 1e3:.0f} | {fmt(ratio.get('floor'), '.3f')} "
            f"| {fmt(ratio.get('naive-ept'), '.3f')} | {fmt(ratio.get('vpt-100'), '.3f')} "
            f"| {r['eval_img_per_s']:.2f} | {fmt(r['added_peak_mib'], '.0f')} | {r['attention']} |"
            + (
                f" {fmt(busy, '.1f')} | {fmt(busy / floor_busy if busy and floor_busy else None, '.3f')} |"
                if gpu
                else ""
            )
        )
    if report["targets"]:
        lines += ["", "Targets:", ""]
        for t in report["targets"]:
            verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
            lines.append(f"- {t['name']}: {fmt(t['value'], '.3f')} (≤ {t['limit']}) **{verdict}**")
    return "\n".join(lines) + "\n"
