"""What a trained segmentation run predicts for a list of images: label masks and overlays a person can look at.

For each image the model's (C, S, S) logits are resized (bilinear) to the image's own size, as the run's metrics
score them; the class of each pixel is the argmax, written as its mask value of the class map (``masks/<name>.png``:
uint8, or uint16 where a value exceeds 255), and drawn over the image (``overlays/<name>.png``: every class but the
first, the background, in its own colour at 45 % opacity).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import check_files, read_image
from .evaluate import predict_logits
from .experiment import list_samples, load_run
from .files import staged_dir
from .record import read_record

OPACITY = 0.45


def colours(num_classes: int) -> np.ndarray:
    """(C, 3) uint8 colours: matplotlib's ``tab10`` (then ``tab20``), background black."""
    import matplotlib

    table = list(matplotlib.colormaps["tab10"].colors) + list(matplotlib.colormaps["tab20"].colors)
    rgb = np.array([(0, 0, 0)] + [table[i % len(table)] for i in range(num_classes - 1)])
    return (rgb * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with every non-background class blended in its colour."""
    painted = image.astype(np.float64)
    fg = labels > 0
    painted[fg] = (1 - OPACITY) * painted[fg] + OPACITY * colours(num_classes)[labels[fg]]
    return painted.round().astype(np.uint8)


def predict_masks(
    run_dir: str | Path,
    list_file: str | Path,
    out: str | Path,
    *,
    data_root: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    overwrite: bool = False,
) -> int:
    """Write ``out/masks/<stem>.png`` and ``out/overlays/<stem>.png`` for every image of ``list_file`` (found where
    the run's dataset keeps them; ``data_root`` overrides); returns how many. ``out`` appears once complete."""
    record = read_record(run_dir)
    samples = list_samples(record, list_file, data_root)
    check_files(samples.sources, f"images of {list_file}")
    model, record = load_run(run_dir, device=str(device))
    task = record.task
    logits = predict_logits(
        model, samples, task, img_size=model.config.img_size, batch_size=batch_size, device=device, progress=progress
    )
    values = np.asarray(task.values)
    dtype = np.uint8 if values.max() <= 255 else np.uint16
    with staged_dir(Path(out), replace=overwrite) as stage:
        (stage / "masks").mkdir()
        (stage / "overlays").mkdir()
        for name, source, logit in zip(samples.names, samples.sources, logits):
            image = np.asarray(read_image(source))
            x = torch.from_numpy(np.asarray(logit))[None]
            if x.shape[-2:] != image.shape[:2]:
                x = F.interpolate(x, size=image.shape[:2], mode="bilinear", align_corners=False)
            labels = x[0].argmax(0).numpy()
            stem = Path(name).stem
            Image.fromarray(values[labels].astype(dtype)).save(stage / "masks" / f"{stem}.png")
            Image.fromarray(overlay(image, labels, task.num_classes)).save(stage / "overlays" / f"{stem}.png")
    return len(samples)
