"""A trained run as one ONNX graph, and predictions from it with onnxruntime: the submission the PyTorch engine writes.

The graph maps normalised images (N, 3, S, S) float32, N dynamic, to probabilities (N, C): the backbone with the
method folded in (:meth:`~medpeft.methods.Method.prepare_export`), the head, and the softmax (single-label) or
sigmoid (multi-label) of the submission files. What it expects of its input is in the model's ``metadata_props``
(:func:`preprocessing`); ``medpeft predict --engine onnx`` reads the images exactly as the PyTorch engine does
(:func:`~medpeft.data.eval_dataset`) with those settings. A segmentation run's graph gives per-pixel logits
(N, C, S, S) (output ``logits``; its task kind says what it exports: :meth:`~medpeft.task_kinds.TaskKind.exported`).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data import eval_dataset
from .errors import UserError
from .experiment import list_samples, load_run, read_record
from .files import write_bytes
from .preprocessing import Preprocessing
from .task_kinds import PROBABILITIES, get_kind
from .version import __version__

OPSET = 17
INPUT = "image"
#: The tracing exporter, which ``dynamo=True`` replaced as the default in torch 2.9 (older torch has no ``dynamo``).
_TRACING_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def preprocessing(img_size: int, settings: Preprocessing | None = None) -> dict[str, str]:
    """What the exported graph expects of its input: the evaluation transform of every run
    (:func:`~medpeft.data.transforms.eval_transform`) with the mean and std of the run's backbone weights
    (``settings``, and where they were read; ImageNet's without), in words and numbers."""
    settings = settings or Preprocessing()
    return {
        "img_size": str(img_size),
        "resize": f"square {img_size}x{img_size}, bicubic, antialiased, aspect ratio not kept, no crop",
        "channel_order": "RGB",
        "layout": "NCHW float32",
        "scale": "pixel values / 255, then (x - mean) / std per channel",
        "mean": json.dumps(list(settings.mean)),
        "std": json.dumps(list(settings.std)),
        "normalisation_source": settings.source + (" (overridden by --mean/--std)" if settings.overridden else ""),
    }


def export_run(run_dir: str | Path, out: str | Path) -> dict[str, str]:
    """Write the trained model of ``run_dir`` as the ONNX file ``out`` (atomically); returns its metadata."""
    import onnx

    model, record = load_run(run_dir)
    name = model.method.full_name
    model.method.prepare_export(model)
    size = model.config.img_size
    module, output, description = get_kind(record.task.kind).exported(model, record.task)
    graph = io.BytesIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python values, the exporter's deprecation
            torch.onnx.export(
                module.eval(),
                (torch.zeros(2, 3, size, size),),
                graph,
                input_names=[INPUT],
                output_names=[output],
                opset_version=OPSET,
                dynamic_axes={INPUT: {0: "batch"}, output: {0: "batch"}},
                **_TRACING_EXPORTER,
            )
    except Exception as err:  # the exporter's errors have no common type
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"method {name!r} of {run_dir} cannot be exported to ONNX: {reason}") from None
    proto = onnx.load_from_string(graph.getvalue())
    metadata = {
        **preprocessing(size, model.preprocessing),
        "output": description,
        "classes": json.dumps(list(record.task.classes)),
        **({"values": json.dumps(list(record.task.values))} if record.task.values else {}),
        "task": record.spec.task,
        "method": name,
        "run_key": record.key,
        "medpeft_version": __version__,
    }
    onnx.helper.set_model_props(proto, metadata)
    write_bytes(out, proto.SerializeToString())
    return metadata


def predict_list_onnx(
    run_dir: str | Path,
    list_file: str | Path,
    onnx_file: str | Path,
    *,
    data_root: str | None = None,
    batch_size: int = 32,
) -> tuple[list[str], np.ndarray]:
    """``(names, probabilities)`` for every image of ``list_file`` from the run's exported graph ``onnx_file``;
    the images are found and read as :func:`~medpeft.experiment.predict_list` does."""
    import onnxruntime as ort

    record = read_record(run_dir)
    if not Path(onnx_file).is_file():
        raise UserError(f"{onnx_file} does not exist: write it with `medpeft export {run_dir} --out {onnx_file}`")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        session = ort.InferenceSession(str(onnx_file), options, providers=_providers(ort))
    except Exception as err:  # onnxruntime's errors have no common type
        raise UserError(f"{onnx_file} is not a readable ONNX model ({str(err).strip().splitlines()[0]})") from None
    metadata = session.get_modelmeta().custom_metadata_map
    if metadata.get("run_key") != record.key:
        raise UserError(
            f"{onnx_file} was not exported from {run_dir} (its run: {metadata.get('run_key')!r}): "
            f"export this run with `medpeft export {run_dir}`"
        )
    samples = list_samples(record, list_file, data_root)
    mean, std = json.loads(metadata["mean"]), json.loads(metadata["std"])
    loader = DataLoader(
        eval_dataset(samples, int(metadata["img_size"]), task=record.task, mean=mean, std=std), batch_size=batch_size
    )
    scores = [session.run([PROBABILITIES], {INPUT: images.numpy()})[0] for images, _, _ in loader]
    return samples.names, np.concatenate(scores) if scores else np.zeros((0, record.task.num_classes), np.float32)


def _providers(ort) -> list[str]:
    """CUDA where onnxruntime has it, else the CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
