"""``medpeft methods``, ``medpeft train``, ``medpeft posthoc`` and ``medpeft predict``: one run, its post-hoc
results recomputed from kept logits, and what a trained run predicts."""

from __future__ import annotations

from pathlib import Path

import click

from ..calibration import CHOICES as CALIBRATIONS
from ..data import DATASETS
from .options import (
    DATA_ROOT_HELP,
    Command,
    absolute_path,
    backbone_name,
    conformal_options,
    conformal_settings,
    mlflow_options,
    model_options,
    parse_options,
    run_options,
    shots_value,
    train_config_options,
)


@click.command(cls=Command)
def methods():
    """List every method (then the whole segmenters, for segmentation tasks only)."""
    from ..methods import available_methods, standalone_methods

    click.echo("\n".join(available_methods() + standalone_methods()))


@click.command(cls=Command)
@click.option("--task", required=True, type=click.Choice(list(DATASETS)), help="MedFMC task or dataset kind.")
@click.option("--data-root", type=click.Path(exists=True), help=DATA_ROOT_HELP)
@click.option("--shots", required=True, help="K of K-shot, or a fraction of the training set such as 20%.")
@click.option("--exp", type=int, default=1, show_default=True, help="Experiment (sampling) number.")
@click.option("--test-list", help="Test list (default test_WithLabel.txt for MedFMC).")
@click.option("--axis", type=int, help="seg-volumes: the voxel axis (0, 1, 2) volumes are sliced along [2].")
@model_options
@train_config_options()
@run_options()
@conformal_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out (once the new one has finished).")
@mlflow_options("the run")
def train(
    task,
    data_root,
    shots,
    exp,
    test_list,
    axis,
    val_per_class,
    method,
    opts,
    backbone,
    pretrained,
    weights,
    img_size,
    mean,
    std,
    head,
    calibrate,
    feature_cache,
    conformal,
    alpha,
    randomized,
    mondrian,
    raps_lambda,
    raps_k_reg,
    out,
    overwrite,
    mlflow_uri,
    mlflow_experiment,
    **recipe,
):
    """Train one method on one K-shot split; write a run directory."""
    from ..data import get_dataset
    from ..errors import UserError
    from ..evaluate import FeatureCache
    from ..experiment import check_out, run_tracked
    from ..files import check_writable_dir
    from ..record import RunSpec
    from ..tracking import MlflowRun, connect
    from ..types import TrainConfig

    data_root = absolute_path(get_dataset(task).root(data_root))
    spec = RunSpec(
        method=method,
        task=task,
        data_root=data_root,
        shots=shots_value(shots),
        exp=exp,
        options=parse_options(opts),
        backbone=backbone_name(backbone, weights),
        pretrained=pretrained,
        weights=absolute_path(weights),
        img_size=img_size,
        test_list=test_list,
        val_per_class=val_per_class,
        train=TrainConfig(**recipe),
        calibrate=calibrate,
        mean=list(mean) if mean else None,
        std=list(std) if std else None,
        head=head,
        axis=axis,
        conformal=conformal_settings(
            conformal,
            alpha=alpha,
            randomized=randomized,
            mondrian=mondrian,
            raps_lambda=raps_lambda,
            raps_k_reg=raps_k_reg,
        ),
    )
    check_out(out, overwrite)
    check_writable_dir(Path(out).parent, "--out", shown=out)
    if mlflow_experiment and not mlflow_uri:
        raise click.UsageError("--mlflow-experiment applies with --mlflow URI")
    experiment = mlflow_experiment or Path(out).resolve().name
    tracker = MlflowRun(connect(mlflow_uri, experiment)) if mlflow_uri else None
    record = run_tracked(spec, out, tracker, overwrite=overwrite, features=FeatureCache() if feature_cache else None)
    result = record.result
    if result.diverged_epoch is not None:
        raise UserError(
            f"training diverged at epoch {result.diverged_epoch} (loss not finite): lower --lr; the run "
            f"is recorded in {out}"
        )
    val = "" if result.val_best is None else f" (val {record.task.selection_metric} {100 * result.val_best:.2f})"
    unscaled = record.task.task_kind.unscaled_metrics  # e.g. HD95, in pixels

    def shown(metrics):
        return ", ".join(f"{k} {(1 if k in unscaled else 100) * v:.2f}" for k, v in (metrics or {}).items())

    click.echo(f"selected epoch {result.selected_epoch}{val}; test {shown(record.test)}")
    calibration = result.calibration
    if calibration is not None:
        click.echo(
            f"{calibration.method} {calibration.temperature:.4g} (val NLL {calibration.val_nll_before:.4f} -> "
            f"{calibration.val_nll_after:.4f}); calibrated test {shown(calibration.test)}"
        )
    if result.conformal is not None:
        click.echo(conformal_line(result.conformal))
    click.echo(f"wrote {out}")
    if tracker is not None and not tracker.stopped:
        click.echo(f"logged to MLflow at {mlflow_uri}: experiment {experiment!r}, run {tracker.run_id}")


def conformal_line(conformal) -> str:
    """One line about a run's conformal result: its settings and test coverage, mean set size and singletons."""
    settings = (
        [f"α {conformal.alpha:g}", f"n_cal {conformal.n_cal}"]
        + (["Mondrian"] if conformal.mondrian else [])
        + (["randomised"] if conformal.randomized else [])
        + ([f"after {conformal.after}"] if conformal.after else [])
    )
    test = conformal.test
    found = (
        ""
        if test is None
        else (
            f": test coverage {100 * test['coverage']:.2f}%, mean set size "
            f"{test['mean_set_size']:.3f}, singletons {100 * test['singleton_rate']:.2f}%"
        )
    )
    return f"conformal {conformal.method} ({', '.join(settings)}){found}"


@click.command(cls=Command)
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--calibrate", type=click.Choice(CALIBRATIONS), help="Temperature scaling, or none [each run's own setting]."
)
@conformal_options
def posthoc(path, calibrate, conformal, **settings):
    """Recompute post-hoc results (temperature, conformal) of a run or a bench from its kept logits."""
    from ..bench.runner import GRID_FILE, recompute
    from ..errors import UserError
    from ..posthoc import LOGITS_FILE, recompute_run

    settings = conformal_settings(conformal, **settings)
    if (Path(path) / GRID_FILE).is_file():
        runs, skipped = recompute(path, calibrate=calibrate, conformal=settings)
        if skipped:
            click.echo(
                f"skipped {len(skipped)} run(s) without {LOGITS_FILE} (made before medpeft kept logits; rerun "
                f"them to include them): {', '.join(skipped)}"
            )
        click.echo(
            f"recomputed {len(runs) - len(skipped)} run(s); {Path(path) / 'runs.jsonl'} and "
            f"{Path(path) / 'summary.md'} rewritten"
        )
        return
    record = recompute_run(path, calibrate=calibrate, conformal=settings)
    if record is None:
        raise UserError(
            f"{path} has no {LOGITS_FILE} (a run made before medpeft kept logits, or not a run directory): rerun it"
        )
    if record.result.conformal is not None:
        click.echo(conformal_line(record.result.conformal))
    click.echo(f"rewrote {Path(path) / 'run.json'}")


@click.command(cls=Command)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--list",
    "list_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Image list: names only or labelled (e.g. test_WithoutLabel.txt).",
)
@click.option("--data-root", help="Where the images are, if not where the run found them.")
@click.option(
    "--out",
    type=click.Path(),
    help="CSV to write [RUN_DIR/<list>/<task>_<K>-shot_submission.csv]; a segmentation run: the folder for its "
    "masks/ and overlays/ [RUN_DIR/<list>].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--device", default="auto", show_default=True, help="The PyTorch engine's device.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option(
    "--engine",
    type=click.Choice(["torch", "onnx"]),
    default="torch",
    show_default=True,
    help="Run the model with PyTorch, or run its `medpeft export` with onnxruntime (same CSV).",
)
@click.option(
    "--onnx",
    "onnx_file",
    type=click.Path(dir_okay=False),
    help="--engine onnx: the exported model [RUN_DIR/model.onnx].",
)
def predict(run_dir, list_file, data_root, out, overwrite, device, batch_size, engine, onnx_file):
    """Write a MedFMC submission CSV for any image list with a trained run."""
    from ..errors import UserError
    from ..experiment import list_sets, predict_list
    from ..files import check_writable_dir
    from ..record import read_record, sets_path, submission_name, write_sets, write_submission
    from ..train import resolve_device

    if onnx_file and engine != "onnx":
        raise click.UsageError("--onnx applies to --engine onnx")
    record = read_record(run_dir)
    if record.task.task_kind.per_pixel:
        return _predict_masks(run_dir, list_file, data_root, out, overwrite, device, batch_size, engine)
    out = (
        Path(out)
        if out
        else Path(run_dir) / Path(list_file).stem / submission_name(record.spec.task, record.spec.shots)
    )
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    check_writable_dir(out.parent, "--out", shown=out)
    if engine == "onnx":
        from ..export import predict_list_onnx
        from ..record import MODEL_FILE

        names, scores = predict_list_onnx(
            run_dir, list_file, onnx_file or Path(run_dir) / MODEL_FILE, data_root=data_root, batch_size=batch_size
        )
    else:
        names, scores = predict_list(
            run_dir, list_file, data_root=data_root, device=resolve_device(device), batch_size=batch_size
        )
    write_submission(out, names, scores)
    click.echo(f"wrote {out} ({len(names)} rows × {scores.shape[1]} classes)")
    conformal = record.result.conformal
    if conformal is not None:
        write_sets(sets_path(out), names, list_sets(record, scores), record.task)
        click.echo(f"wrote {sets_path(out)} (each image's conformal set, {conformal.method} at α {conformal.alpha:g})")


def _predict_masks(run_dir, list_file, data_root, out, overwrite, device, batch_size, engine):
    """A segmentation run's ``predict``: label masks and overlays in a folder (:mod:`medpeft.seg_predict`)."""
    from ..errors import UserError
    from ..files import check_writable_dir
    from ..seg_predict import predict_masks
    from ..train import resolve_device

    if engine != "torch":
        raise click.UsageError("a segmentation run predicts with --engine torch (export gives its per-pixel logits)")
    folder = Path(out) if out else Path(run_dir) / Path(list_file).stem
    if folder.exists() and not overwrite:
        raise UserError(f"{folder} exists: pass --overwrite to replace it, or choose another --out")
    check_writable_dir(folder.parent, "--out", shown=folder)
    count = predict_masks(
        run_dir,
        list_file,
        folder,
        data_root=data_root,
        device=resolve_device(device),
        batch_size=batch_size,
        overwrite=overwrite,
    )
    click.echo(f"wrote {count} label masks to {folder / 'masks'} and overlays to {folder / 'overlays'}")
