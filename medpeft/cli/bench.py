"""``medpeft bench``: the grid from a YAML file and/or flags, on the local, Ray or SLURM executor."""

from __future__ import annotations

from pathlib import Path

import click

from .options import (
    DATA_ROOT_HELP,
    Command,
    absolute_path,
    backbone_options,
    conformal_options,
    conformal_settings,
    head_option,
    int_list,
    mlflow_options,
    parse_options,
    run_options,
    shots_list,
)

#: The executor options, by parameter: the executors each applies to, and its keyword for the executor.
EXECUTOR_OPTIONS = {
    "address": ({"ray"}, "address"),
    "cpus_per_run": ({"local", "ray", "slurm"}, "cpus_per_run"),
    "gpus_per_run": ({"ray"}, "gpus_per_run"),
    "max_retries": ({"ray"}, "max_retries"),
    "slurm_partition": ({"slurm"}, "partition"),
    "slurm_gpus_per_job": ({"slurm"}, "gpus_per_job"),
    "slurm_runs_per_job": ({"slurm"}, "runs_per_job"),
    "slurm_time": ({"slurm"}, "time_min"),
    "slurm_cluster": ({"slurm"}, "cluster"),
    "wait": ({"slurm"}, "wait"),
}


@click.command("bench", cls=Command)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="YAML bench config.")
@click.option("--methods", "method_names", help="Comma-separated methods (instead of the config's).")
@click.option("--tasks", help="Comma-separated tasks.")
@click.option("--data-root", type=click.Path(exists=True), help=DATA_ROOT_HELP)
@click.option("--shots", help="e.g. 1,5,10 or 1,5,10,20%")
@click.option("--exps", help="e.g. 1-5")
@click.option("--seeds", help="e.g. 0 or 0-3")
@click.option("--search", type=click.Choice(["paper"]), help="Search every method's paper grid on validation.")
@click.option("--refit/--no-refit", default=None, help="Rerun each chosen candidate on train + val and report it.")
@backbone_options(defaults=False)
@head_option()
@run_options(defaults=False)
@conformal_options
@click.option("--epochs", type=int)
@click.option("--train-opt", "train_opts", multiple=True, metavar="KEY=VALUE", help="TrainConfig field (repeatable).")
@click.option(
    "--decode-once/--no-decode-once",
    default=True,
    show_default=True,
    help="Decode and resize each evaluation image once (memory + OUT/.cache), or at every evaluation.",
)
@click.option("--out", type=click.Path(file_okay=False))
@mlflow_options("the bench (a parent run and one child per run, logged where the run runs)")
@click.option(
    "--executor",
    "executor_name",
    type=click.Choice(["local", "ray", "slurm"]),
    default="local",
    show_default=True,
    help="Where the runs execute: this process, a Ray cluster, or SLURM jobs.",
)
@click.option("--address", help="Ray: join the cluster at this address (or 'auto'); none starts a local Ray.")
@click.option(
    "--cpus-per-run",
    type=click.FloatRange(min=0, min_open=True),
    help="Cores per run; also each run's torch threads (default 1 on Ray and SLURM).",
)
@click.option(
    "--gpus-per-run", type=click.FloatRange(min=0), help="Ray: GPUs per run; 0.25 packs four runs on one GPU."
)
@click.option("--max-retries", type=click.IntRange(min=0), help="Ray: retries of a run whose worker or node died.")
@click.option("--slurm-partition", help="SLURM: the partition.")
@click.option("--slurm-gpus-per-job", type=click.IntRange(min=0), help="SLURM: GPUs per job.")
@click.option("--slurm-runs-per-job", type=click.IntRange(min=1), help="SLURM: runs packed into one job.")
@click.option("--slurm-time", type=click.IntRange(min=1), help="SLURM: a job's time limit in minutes.")
@click.option(
    "--slurm-cluster",
    type=click.Choice(["slurm", "local"]),
    help="SLURM: 'local' runs the jobs as local processes through submitit (to try it without SLURM).",
)
@click.option(
    "--wait/--no-wait",
    default=None,
    help="SLURM: collect the runs as their jobs end, or return after submitting (default).",
)
@click.option(
    "--summarize",
    type=click.Path(exists=True, file_okay=False),
    help="Collect the finished runs of the bench in this folder into runs.jsonl and its summary; run nothing.",
)
def command(
    config_file,
    method_names,
    tasks,
    data_root,
    shots,
    exps,
    seeds,
    search,
    refit,
    backbone,
    pretrained,
    weights,
    img_size,
    head,
    val_per_class,
    calibrate,
    conformal,
    alpha,
    randomized,
    mondrian,
    raps_lambda,
    raps_k_reg,
    epochs,
    train_opts,
    decode_once,
    feature_cache,
    out,
    mlflow_uri,
    mlflow_experiment,
    executor_name,
    summarize,
    **executor_options,
):
    """Run methods × tasks × shots × experiments × seeds; resumable; writes runs.jsonl and summary.md/csv."""
    from ..bench import BenchConfig, make_executor, read_config, run_bench
    from ..files import check_writable_dir

    ctx = click.get_current_context()
    given = [
        p.opts[0]
        for p in ctx.command.params
        if ctx.get_parameter_source(p.name) is not click.core.ParameterSource.DEFAULT
    ]
    if summarize:
        others = [opt for opt in given if opt != "--summarize"]
        if others:
            raise click.UsageError(f"--summarize takes no other option (got {', '.join(others)})")
        return _summarize(summarize)
    if not out:
        raise click.UsageError("Missing option '--out' (or --summarize OUT to collect an existing bench)")
    executor = make_executor(executor_name, **_executor_options(executor_name, executor_options))
    raw = read_config(config_file) if config_file else {}
    overrides = {
        "methods": method_names and method_names.split(","),
        "tasks": tasks and tasks.split(","),
        "data_root": data_root,
        "shots": shots and shots_list(shots),
        "exps": exps and int_list(exps),
        "seeds": seeds and int_list(seeds),
        "search": search,
        "refit": refit,
        "backbone": backbone,
        "pretrained": pretrained,
        "weights": weights,
        "img_size": img_size,
        "head": head,
        "val_per_class": val_per_class,
        "calibrate": calibrate,
        "mlflow": mlflow_uri,
        "mlflow_experiment": mlflow_experiment,
        "conformal": conformal_settings(
            conformal,
            alpha=alpha,
            randomized=randomized,
            mondrian=mondrian,
            raps_lambda=raps_lambda,
            raps_k_reg=raps_k_reg,
        ),
    }
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if raw.get("conformal") == "none":
        del raw["conformal"]
    raw["train"] = {
        **(raw.get("train") or {}),
        **parse_options(train_opts, "--train-opt"),
        **({"epochs": epochs} if epochs is not None else {}),
    }
    for key in ("data_root", "weights"):
        raw[key] = absolute_path(raw.get(key))
    config = BenchConfig.from_dict(raw, config_file or "bench flags")
    check_writable_dir(out, "--out")
    runs = run_bench(config, out, executor=executor, decode_once=decode_once, feature_cache=feature_cache)
    if not executor.waits:
        click.echo(executor.summary())
    click.echo(f"{len(runs)} runs in {Path(out) / 'runs.jsonl'}; summary in {Path(out) / 'summary.md'}")


def _executor_options(name: str, given: dict) -> dict:
    """The executor's keyword arguments from the options given; an option of another executor is a usage error."""
    options = {}
    for param, value in given.items():
        if value is None:
            continue
        executors, keyword = EXECUTOR_OPTIONS[param]
        if name not in executors:
            raise click.UsageError(
                f"--{param.replace('_', '-')} does not apply to --executor {name} "
                f"(only to {', '.join(sorted(executors))})"
            )
        options[keyword] = value
    return options


def _summarize(out: str) -> None:
    from ..bench.runner import collect
    from ..bench.slurm_executor import in_flight

    runs, missing = collect(out)
    running = len(in_flight(Path(out) / "slurm"))
    queued = f" ({running} in SLURM jobs still queued or running)" if running else ""
    left = f"; {missing} run(s) of the grid not finished yet{queued}" if missing else ""
    click.echo(f"{len(runs)} runs in {Path(out) / 'runs.jsonl'}; summary in {Path(out) / 'summary.md'}{left}")
