"""``medpeft bench``: the grid from a YAML file and/or flags, on the local, Ray or SLURM executor."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("bench")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="YAML bench config.")
@click.option("--methods", "method_names", help="Comma-separated methods (instead of the config's).")
@click.option("--tasks", help="Comma-separated tasks.")
@click.option("--data-root", type=click.Path(exists=True))
@click.option("--shots", help="e.g. 1,5,10 or 1,5,10,20%")
@click.option("--exps", help="e.g. 1-5")
@click.option("--seeds", help="e.g. 0 or 0-3")
@click.option("--search", type=click.Choice(["paper"]), help="Search every method's paper grid on validation.")
@click.option("--refit/--no-refit", default=None, help="Rerun each chosen candidate on train + val and report it.")
@click.option("--backbone")
@click.option("--pretrained/--no-pretrained", default=None)
@click.option("--weights", type=click.Path(dir_okay=False))
@click.option("--img-size", type=int)
@click.option("--val-per-class", type=int, help="Validate on at most this many images per class (drawn, seeded).")
@click.option("--epochs", type=int)
@click.option("--train-opt", "train_opts", multiple=True, metavar="KEY=VALUE", help="TrainConfig field (repeatable).")
@click.option("--decode-once/--no-decode-once", default=True, show_default=True,
              help="Decode and resize each evaluation image once (memory + OUT/.cache), or at every evaluation.")
@click.option("--feature-cache/--no-feature-cache", default=True, show_default=True,
              help="Keep the frozen prefix's outputs for the evaluation lists (linear, mlp, partial) in OUT/.cache.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
def command(config_file, method_names, tasks, data_root, shots, exps, seeds, search, refit, backbone, pretrained,
            weights, img_size, val_per_class, epochs, train_opts, decode_once, feature_cache, out):
    """Run methods × tasks × shots × experiments × seeds; resumable; writes runs.jsonl and summary.md/csv."""
    from ..cli import _absolute, int_list, parse_options, shots_list
    from ..files import check_writable_dir
    from . import BenchConfig, read_config, run_bench

    raw = read_config(config_file) if config_file else {}
    overrides = {
        "methods": method_names and method_names.split(","), "tasks": tasks and tasks.split(","),
        "data_root": data_root, "shots": shots and shots_list(shots), "exps": exps and int_list(exps),
        "seeds": seeds and int_list(seeds), "search": search, "refit": refit, "backbone": backbone,
        "pretrained": pretrained, "weights": weights, "img_size": img_size, "val_per_class": val_per_class,
    }
    raw.update({k: v for k, v in overrides.items() if v is not None})
    raw["train"] = {**(raw.get("train") or {}), **parse_options(train_opts, "--train-opt"),
                    **({"epochs": epochs} if epochs is not None else {})}
    for key in ("data_root", "weights"):
        raw[key] = _absolute(raw.get(key))
    config = BenchConfig.from_dict(raw, config_file or "bench flags")
    check_writable_dir(out, "--out")
    runs = run_bench(config, out, decode_once=decode_once, feature_cache=feature_cache)
    click.echo(f"{len(runs)} runs in {Path(out) / 'runs.jsonl'}; summary in {Path(out) / 'summary.md'}")

