"""``medpeft speed`` (also ``python -m medpeft.speed``): the speed harness of :mod:`medpeft.speed`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import Command


@click.command("speed", cls=Command)
@click.option(
    "--methods",
    help="Comma-separated entries of speed.yaml (default all); any method name runs at its "
    "defaults; floor always runs.",
)
@click.option(
    "--backbone",
    default="vit_small_patch16_224",
    show_default=True,
    help="A timm model name: ViT, Swin, EVA or BEiT (random init).",
)
@click.option("--img-size", type=int, default=384, show_default=True)
@click.option("--batch", type=int, default=2, show_default=True, help="Batch of the timed steps.")
@click.option("--memory-batch", type=int, default=4, show_default=True, help="Batch of the memory measurement.")
@click.option("--steps", type=int, default=10, show_default=True, help="Interleaved rounds to time.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed rounds first.")
@click.option("--max-rounds", type=int, help="Rounds at most while waiting for quiet ones [default: steps].")
@click.option(
    "--quiet-cpu",
    type=float,
    default=0.25,
    show_default=True,
    help="A round is disturbed when other processes use more cores than this.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--bf16/--no-bf16", default=None, help="bfloat16 autocast [default: on CUDA only].")
@click.option("--threads", type=int, help="torch threads [default: the CPUs this process may use].")
@click.option(
    "--omp-wait-policy",
    type=click.Choice(["auto", "passive", "active", "inherit"]),
    default="auto",
    show_default=True,
    help="OMP_WAIT_POLICY of the timing process (inherit: time in this process as is; "
    "auto: passive if other processes are busy at the start, else inherit).",
)
@click.option("--memory/--no-memory", default=True, show_default=True, help="Measure added peak memory.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Folder for speed.json and speed.md.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def command(
    methods,
    backbone,
    img_size,
    batch,
    memory_batch,
    steps,
    warmup,
    max_rounds,
    quiet_cpu,
    device,
    bf16,
    threads,
    omp_wait_policy,
    memory,
    seed,
    out,
    quiet,
):
    """Train-step time, eval throughput, added peak memory and trainable parameters of every method, interleaved."""
    from ..speed import markdown, run_speed

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    report = run_speed(
        names,
        backbone=backbone,
        img_size=img_size,
        batch=batch,
        memory_batch=memory_batch,
        steps=steps,
        warmup=warmup,
        max_rounds=max_rounds,
        quiet_cpu=quiet_cpu,
        device=device,
        bf16=bf16,
        threads=threads,
        memory=memory,
        seed=seed,
        out=out,
        progress=not quiet,
        omp_wait_policy=None if omp_wait_policy == "inherit" else omp_wait_policy,
    )
    click.echo(markdown(report), nl=False)
    wrote = f"; wrote {Path(out) / 'speed.json'} and speed.md" if out else ""
    click.echo(f"wall time {report['environment']['wall_s']:.0f} s{wrote}")


def main(argv: list[str]) -> None:
    """``python -m medpeft.speed ARGV``: the command alone, its errors as one line."""
    from ..errors import UserError

    try:
        command.main(args=argv, prog_name="python -m medpeft.speed", standalone_mode=False)
    except UserError as err:
        click.echo(f"medpeft speed: error: {err}", err=True)
        sys.exit(2)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
