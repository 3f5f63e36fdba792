"""What a trained segmentation run predicts for a list of images: label masks and overlays a person can look at.

For each image the model's (C, S, S) logits are resized (bilinear) to the image's own size, as the run's metrics
score them; the class of each pixel is the argmax, written as its mask value of the class map (``masks/<name>.png``:
uint8, or uint16 where a value exceeds 255), and drawn over the image (``overlays/<name>.png``: every class but the
first, the background, in its own colour at 45 % opacity).

A volume in the list (NIfTI, NRRD, MHA, ... as ``seg-volumes`` reads them) is sliced along the run's axis with the
training's intensity scaling (:func:`~medpeft.data.seg.to_uint8`), each slice predicted as an image, and the labels
stacked back: ``masks/<case>.<ext>``, a label volume in the input's format, shape and geometry (affine, spacing,
origin, direction), and ``overlays/<case>/<axis>-<slice>.png`` for the slices with a class other than background.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import Samples, check_files, read_image
from .data.seg import read_volume, to_uint8, volume_stem
from .errors import UserError
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
    the run's dataset keeps them; ``data_root`` overrides), ``out/masks/<case>.<ext>`` and
    ``out/overlays/<case>/`` for every volume; returns how many. ``out`` appears once complete."""
    record = read_record(run_dir)
    samples = list_samples(record, list_file, data_root)
    cases = [volume_stem(Path(s)) if isinstance(s, (str, Path)) else None for s in samples.sources]
    volumes = {case: Path(s) for case, s in zip(cases, samples.sources) if case is not None}
    kept = [(n, s) for n, s, case in zip(samples.names, samples.sources, cases) if case is None]
    images = Samples([n for n, _ in kept], [s for _, s in kept])
    check_files(images.sources, f"images of {list_file}")
    missing = [str(v) for v in volumes.values() if not v.is_file()]
    if missing:
        raise UserError(f"{len(missing)} volumes of {list_file} are missing: {', '.join(missing[:3])}")
    if len(volumes) < len(cases) - len(kept):
        raise UserError(f"{list_file} names two volumes of one case name: their masks/<case> files would collide")
    model, record = load_run(run_dir, device=str(device))
    task = record.task

    def labels_of(part: Samples, sizes) -> list[np.ndarray]:
        """The class index of every pixel of each image of ``part``, at its size."""
        logits = predict_logits(
            model, part, task, img_size=model.config.img_size, batch_size=batch_size, device=device, progress=progress
        )
        out = []
        for logit, size in zip(logits, sizes):
            x = torch.from_numpy(np.asarray(logit))[None]
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            out.append(x[0].argmax(0).numpy())
        return out

    values = np.asarray(task.values)
    dtype = np.uint8 if values.max() <= 255 else np.uint16
    with staged_dir(Path(out), replace=overwrite) as stage:
        (stage / "masks").mkdir()
        (stage / "overlays").mkdir()
        if len(images):
            pictures = [np.asarray(read_image(source)) for source in images.sources]
            for name, image, labels in zip(images.names, pictures, labels_of(images, [p.shape[:2] for p in pictures])):
                stem = Path(name).stem
                Image.fromarray(values[labels].astype(dtype)).save(stage / "masks" / f"{stem}.png")
                Image.fromarray(overlay(image, labels, task.num_classes)).save(stage / "overlays" / f"{stem}.png")
        for case, source in volumes.items():
            _predict_volume(source, case, record.spec.axis, labels_of, values.astype(dtype), task.num_classes, stage)
    return len(samples)


def _predict_volume(
    source: Path, case: str, axis: int | None, labels_of, values: np.ndarray, num_classes: int, stage: Path
):
    """One volume's label volume and the overlays of its slices with a class other than background."""
    axis = 2 if axis is None else axis
    volume = to_uint8(read_volume(source))
    slices = [np.take(volume, i, axis=axis) for i in range(volume.shape[axis])]
    names = [f"{case}/{axis}-{i:04d}" for i in range(len(slices))]
    labels = np.stack(labels_of(Samples(names, slices), [s.shape for s in slices]), axis=axis)
    (stage / "overlays" / case).mkdir()
    for i, (picture, name) in enumerate(zip(slices, names)):
        cut = np.take(labels, i, axis=axis)
        if (cut > 0).any():
            rgb = np.repeat(picture[..., None], 3, axis=2)
            Image.fromarray(overlay(rgb, cut, num_classes)).save(stage / "overlays" / f"{name}.png")
    _write_like(source, values[labels], stage / "masks" / f"{case}{source.name[len(case) :]}")


def _write_like(source: Path, labels: np.ndarray, path: Path) -> None:
    """``labels`` (on ``source``'s squeezed voxel axes) written as ``path`` in ``source``'s format and geometry."""
    if source.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel

        reference = nibabel.load(str(source))
        header = reference.header.copy()
        header.set_data_dtype(labels.dtype)
        header.set_slope_inter(1, 0)
        nibabel.save(type(reference)(labels.reshape(reference.shape), reference.affine, header), str(path))
        return
    import SimpleITK as sitk

    reference = sitk.ReadImage(str(source))
    image = sitk.GetImageFromArray(labels.transpose().reshape(sitk.GetArrayViewFromImage(reference).shape))
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(path))
