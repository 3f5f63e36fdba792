"""The ``medpeft`` command: train, predict, bench, demo, splits, speed, analyze."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import yaml

from .errors import UserError
from .experiment import DATASETS, MEDFMC_TASKS

_BACKBONE = "vit_base_patch16_224.orig_in21k"


def parse_options(pairs: tuple[str, ...], flag: str = "--opt") -> dict:
    """``key=value`` pairs; values are read as YAML scalars or lists (``8``, ``0.1``, ``true``, ``[0, 1]``)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {pair!r}: expected key=value, e.g. {flag} prompt_length=50")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"{flag} {pair!r}: cannot read the value {value!r}") from None
    return options


def int_list(text: str) -> list[int]:
    """``1,5,10`` or ``1-5`` (or a mix) as a list of ints."""
    out = []
    for part in str(text).split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
        except ValueError:
            raise UserError(f"{text!r}: expected numbers like 1,5,10 or 1-5") from None
    return out


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def model_options(f):
    """The options that say which model to build."""
    for decorator in reversed([
        click.option("--method", "-m", default="ept", show_default=True, help="A name from `medpeft methods`."),
        click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="A method option (repeatable)."),
        click.option("--backbone", default=_BACKBONE, show_default=True, help="A timm ViT name."),
        click.option("--pretrained/--no-pretrained", default=True, show_default=True,
                     help="Start from the hub's pretrained weights."),
        click.option("--weights", type=click.Path(dir_okay=False), help="Local backbone checkpoint (.npz/.pth/.safetensors)."),
        click.option("--img-size", type=int, help="Input size (resizes position embeddings and EPT's prompt rows)."),
    ]):
        f = decorator(f)
    return f


def train_options(f):
    """The recipe (defaults: the paper's)."""
    for decorator in reversed([
        click.option("--epochs", type=int, default=20, show_default=True),
        click.option("--batch-size", type=int, default=4, show_default=True),
        click.option("--lr", type=float, default=6e-4, show_default=True),
        click.option("--weight-decay", type=float, default=1e-4, show_default=True),
        click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True),
        click.option("--select", type=click.Choice(["best", "last"]), default="best", show_default=True,
                     help="Checkpoint selection on validation."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
        click.option("--num-workers", type=int, default=0, show_default=True, help="DataLoader workers."),
        click.option("--train-opt", "train_opts", multiple=True, metavar="KEY=VALUE",
                     help="Any other TrainConfig field, e.g. momentum=0.0, warmup_epochs=2 (repeatable)."),
    ]):
        f = decorator(f)
    return f


def _train_dict(epochs, batch_size, lr, weight_decay, optimizer, select, device, num_workers, train_opts, **extra):
    return {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
            "optimizer": optimizer, "select": select, "device": device, "num_workers": num_workers,
            **parse_options(train_opts, "--train-opt"), **extra}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="medpeft")
def cli():
    """Parameter-efficient fine-tuning of ViTs for few-shot medical image classification."""


@cli.command()
def methods():
    """List every method."""
    from .methods import available_methods

    click.echo("\n".join(available_methods()))


@cli.command()
@click.option("--task", required=True, type=click.Choice(DATASETS), help="MedFMC task or dataset kind.")
@click.option("--data-root", required=True, type=click.Path(exists=True),
              help="MedFMC root (with chest/ colon/ endo/), ISIC folder, MedMNIST .npz, CSV file or class folder.")
@click.option("--shots", type=int, required=True, help="K of K-shot.")
@click.option("--exp", type=int, default=1, show_default=True, help="Experiment (sampling) number.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-list", help="Test list (default test_WithLabel.txt for MedFMC).")
@model_options
@train_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
def train(task, data_root, shots, exp, seed, test_list, method, opts, backbone, pretrained, weights, img_size,
          out, **recipe):
    """Train one method on one K-shot split; write a run directory."""
    from .experiment import RunSpec, run_experiment

    spec = RunSpec(method=method, task=task, data_root=_absolute(data_root), shots=shots, exp=exp,
                   options=parse_options(opts), backbone=backbone, pretrained=pretrained, weights=_absolute(weights),
                   img_size=img_size, test_list=test_list, train=_train_dict(**recipe, seed=seed))
    record = run_experiment(spec, out)
    test = record["test_metrics"] or {}
    click.echo(f"selected epoch {record['selected_epoch']} (val {record['selection_metric']} "
               f"{100 * record['val_best']:.2f}); test " + ", ".join(f"{k} {100 * v:.2f}" for k, v in test.items()))
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--list", "list_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Image list: names only or labelled (e.g. test_WithoutLabel.txt).")
@click.option("--data-root", help="Where the images are, if not where the run found them.")
@click.option("--out", type=click.Path(dir_okay=False), help="CSV to write [RUN_DIR/<list>/<task>_<K>-shot_submission.csv].")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
def predict(run_dir, list_file, data_root, out, device, batch_size):
    """Write a MedFMC submission CSV for any image list with a trained run."""
    from .data import Samples, get_task, read_names
    from .experiment import load_run, submission_name, write_submission
    from .train import predict as predict_scores, resolve_device

    device = resolve_device(device)
    model, config = load_run(run_dir, device=str(device))
    task_name = config["task"]
    root = Path(data_root or config["data_root"])
    if task_name in MEDFMC_TASKS:
        names = read_names(list_file, task_name)
        sources = [str(root / task_name / "images" / n) for n in names]
        task = get_task(task_name)
    else:
        names = read_names(list_file)
        sources = [n if Path(n).is_absolute() else str(Path(list_file).parent / n) for n in names]
        task = _run_task(config)
    scores = predict_scores(model, Samples(names, sources), task, img_size=model.config["img_size"],
                            batch_size=batch_size, device=device, progress=True)
    out = Path(out) if out else Path(run_dir) / Path(list_file).stem / submission_name(task_name, config["shots"])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_submission(out, names, scores)
    click.echo(f"wrote {out} ({len(names)} rows × {scores.shape[1]} classes)")


def _run_task(config):
    from .data import TaskSpec

    return TaskSpec(config["task"], tuple(config["classes"]), config["multilabel"])


@cli.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="YAML bench config.")
@click.option("--methods", "method_names", help="Comma-separated methods (instead of or over the config's).")
@click.option("--tasks", help="Comma-separated tasks.")
@click.option("--data-root", type=click.Path(exists=True))
@click.option("--shots", help="e.g. 1,5,10")
@click.option("--exps", help="e.g. 1-5")
@click.option("--seeds", help="e.g. 0 or 0-3")
@click.option("--backbone")
@click.option("--pretrained/--no-pretrained", default=None)
@click.option("--weights", type=click.Path(dir_okay=False))
@click.option("--img-size", type=int)
@click.option("--epochs", type=int)
@click.option("--train-opt", "train_opts", multiple=True, metavar="KEY=VALUE", help="TrainConfig field (repeatable).")
@click.option("--decode-once/--no-decode-once", default=True, show_default=True,
              help="Decode and resize each evaluation image once (memory + OUT/.cache), or at every evaluation.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
def bench(config_file, method_names, tasks, data_root, shots, exps, seeds, backbone, pretrained, weights, img_size,
          epochs, train_opts, decode_once, out):
    """Run methods × tasks × shots × experiments × seeds; resumable; writes runs.jsonl and summary.md/csv."""
    from .bench import BenchConfig, read_config, run_bench

    raw = read_config(config_file) if config_file else {}
    overrides = {
        "methods": method_names and method_names.split(","), "tasks": tasks and tasks.split(","),
        "data_root": data_root, "shots": shots and int_list(shots), "exps": exps and int_list(exps),
        "seeds": seeds and int_list(seeds), "backbone": backbone, "pretrained": pretrained,
        "weights": weights, "img_size": img_size,
    }
    raw.update({k: v for k, v in overrides.items() if v is not None})
    raw["train"] = {**(raw.get("train") or {}), **parse_options(train_opts, "--train-opt"),
                    **({"epochs": epochs} if epochs is not None else {})}
    for key in ("data_root", "weights"):
        raw[key] = _absolute(raw.get(key))
    runs = run_bench(BenchConfig.from_dict(raw, config_file or "bench flags"), out, decode_once=decode_once)
    click.echo(f"{len(runs)} runs in {out}/runs.jsonl; summary in {out}/summary.md")


@cli.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the data and the bench.")
@click.option("--epochs", type=int, default=4, show_default=True)
@click.option("--decode-once/--no-decode-once", default=True, show_default=True,
              help="Decode each evaluation image once (as bench).")
def demo(out, epochs, decode_once):
    """Offline demo: pretrain a tiny ViT, generate a small dataset, bench every method on it."""
    from .demo import run_demo

    summary = run_demo(out, epochs=epochs, decode_once=decode_once)
    click.echo(summary)


@cli.command()
@click.option("--task", required=True, type=click.Choice(MEDFMC_TASKS))
@click.option("--data-root", required=True, type=click.Path(exists=True, file_okay=False),
              help="MedFMC root: reads <root>/<task>/trainval.txt.")
@click.option("--shots", default="1,5,10", show_default=True)
@click.option("--exps", default="1-5", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing split files.")
def splits(task, data_root, shots, exps, seed, overwrite):
    """Write new MedFMC K-shot splits (grouping rules of the original; val disjoint from train)."""
    from .data import write_medfmc_splits

    written = write_medfmc_splits(data_root, task, int_list(shots), int_list(exps), seed=seed, overwrite=overwrite)
    click.echo(f"wrote {len(written) if written else 'the'} split files in {Path(data_root) / task}")


def _register_commands() -> None:
    from .analysis import command as analyze_command
    from .speed import command as speed_command

    cli.add_command(analyze_command)
    cli.add_command(speed_command)
    cli.add_command(__import__("medpeft.onnx_import", fromlist=["command"]).command)


_register_commands()


def main(argv=None) -> None:
    """Entry point: user mistakes become one line on stderr and a non-zero exit, never a traceback."""
    try:
        cli.main(args=argv, prog_name="medpeft", standalone_mode=False)
    except UserError as err:
        click.echo(f"medpeft: error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("medpeft: interrupted (finished runs are kept)", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
