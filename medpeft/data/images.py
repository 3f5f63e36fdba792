"""The one image reader: every file or array medpeft accepts, as the 8-bit RGB image the transforms receive.

- 8-bit files (PNG, JPEG, BMP, TIFF, WebP): PIL's conversion to RGB (greyscale, palette and alpha included).
- 16-bit and float greyscale files (PNG/TIFF ``I;16``, ``I``, ``F``): stretched linearly from the image's own range
  (its minimum and maximum, the 0th and 100th percentiles) to 0..255, never divided by 65,535 nor clipped at 255.
- DICOM (``.dcm``, ``.dicom`` or any file with the ``DICM`` preamble; ``pip install 'medpeft[dicom]'``), with
  pydicom's own functions, as a viewer shows it: the Modality LUT (Rescale Slope/Intercept or a LUT), then the VOI
  LUT or else the first Window Center/Width, its output range mapped to 0..255; with neither, the data's own range
  (minimum..maximum) is; MONOCHROME1 is inverted; RGB and YCbCr become RGB (more than 8 bits stored: scaled from
  0..2^bits-1), PALETTE COLOR goes through its palette. Multi-frame files are refused: save the frame to classify as
  its own file.
- uint8 arrays (``HxW`` or ``HxWx1/3/4``, as MedMNIST holds them).

Values between grey levels are rounded to the nearest one (half to even). A file that cannot be read gives one
:class:`UserError` line naming it and what is wrong (for a DICOM: the missing pixel data, the transfer syntax and
the pip package of its missing decoder, ...); :func:`check_image` finds those that show without decoding pixels.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

PIL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES = PIL_SUFFIXES | DICOM_SUFFIXES
DICOM_EXTRA = "pip install 'medpeft[dicom]'"
DICOM_PHOTOMETRIC = (
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
    "PALETTE COLOR",
)


def is_image_file(path: str | Path) -> bool:
    """Whether a folder dataset takes ``path`` as an image: a known suffix, or a DICOM file under any other name
    (told by its ``DICM`` preamble; a ``DICOMDIR`` index is not an image)."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    return path.name.upper() != "DICOMDIR" and _has_dicom_preamble(path)


def read_image(source: str | Path | np.ndarray) -> Image.Image:
    """The 8-bit RGB image of a file path or a uint8 array (see the module's docstring for what each format gets)."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or not (source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (1, 3, 4))):
            raise UserError(f"image arrays must be uint8 HxW or HxWx(1|3|4), got {source.dtype} {source.shape}")
        return Image.fromarray(source[..., 0] if source.ndim == 3 and source.shape[2] == 1 else source).convert("RGB")
    if not os.path.isfile(source):
        raise _cannot(source, "no such file")
    if _is_dicom(source):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on a file's quirks; what fails is an error
            return Image.fromarray(_dicom_pixels(source)).convert("RGB")
    try:
        with Image.open(source) as img:
            return _to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise _cannot(source, e) from e


def check_image(path: str | Path) -> None:
    """Raise the :class:`UserError` :func:`read_image` would give for a bad file, without decoding its pixels.

    A DICOM is parsed whole (pixel data present, and as long as the image elements say when uncompressed; one
    frame; a known transfer syntax with a decoder installed; a supported photometric interpretation); any other
    file must be an image PIL identifies (PNG: chunk checksums verified, so a cut file shows). A compressed stream
    damaged within its own data shows only when decoded. A file already checked by this process (same path,
    modification time and size) is not read again.
    """
    try:
        stat = os.stat(path)
    except OSError as e:
        raise _cannot(path, e.strerror or e) from None
    _check_once(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=1 << 20)
def _check_once(path: str, mtime_ns: int, size: int) -> None:  # mtime and size: an edited file is checked again
    if _is_dicom(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _dicom_dataset(path)
        return
    try:
        with Image.open(path) as img:
            img.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PNG's verify raises SyntaxError
        raise _cannot(path, e) from e


def _cannot(path, reason) -> UserError:
    """The one-line error for ``path``; ``reason`` a text or an exception (its message on one line)."""
    if isinstance(reason, BaseException):
        reason = reason.strerror if isinstance(reason, OSError) and reason.strerror else _one_line(reason)
    return UserError(f"cannot read image {path}: {reason}")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``values`` mapped linearly from ``lo``..``hi`` to 0..255 (uint8, rounded, clipped; NaN and ``lo == hi``: 0)."""
    if not hi > lo:
        return np.zeros(values.shape, np.uint8)
    scaled = values.astype(np.float64)
    scaled -= lo
    scaled *= 255.0 / (hi - lo)
    if values.dtype.kind == "f":
        np.nan_to_num(scaled, copy=False, nan=0.0)
    np.clip(scaled, 0, 255, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def _own_range(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    return _stretch(values, finite.min(), finite.max()) if finite.size else np.zeros(values.shape, np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float greyscale: its own range
        img = Image.fromarray(_own_range(np.asarray(img)))
    return img.convert("RGB")


# --- DICOM -------------------------------------------------------------------------------------------------------


def _has_dicom_preamble(path) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then ``DICM``."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _is_dicom(path) -> bool:
    suffix = Path(path).suffix.lower()
    return suffix in DICOM_SUFFIXES or (suffix not in PIL_SUFFIXES and _has_dicom_preamble(path))


def _dicom_dataset(path):
    """The pydicom dataset of a single-frame DICOM image whose pixel data can be decoded here (UserError if not)."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import get_decoder
        from pydicom.pixels.decoders.base import DecodeRunner
        from pydicom.pixels.utils import get_nr_frames
    except ImportError:
        raise _cannot(path, f"DICOM files need pydicom: {DICOM_EXTRA}") from None
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise _cannot(path, "not a DICOM file (no 'DICM' preamble and file meta information)") from None
    except Exception as e:  # noqa: BLE001 - whatever pydicom raises on a file is about that file
        raise _cannot(path, f"not a readable DICOM file ({_one_line(e)})") from e
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "Rows" in ds or not len(ds):  # pydicom drops pixel data (or a whole dataset) cut short
            raise _cannot(path, "a DICOM image whose pixel data is missing or cut short")
        kind = ds.get("SOPClassUID")
        raise _cannot(path, "a DICOM file without pixel data" + (f" ({kind.name})" if kind else ""))
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise _cannot(path, "its DICOM file meta information has no Transfer Syntax UID")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise _cannot(path, f"its transfer syntax {syntax.name} ({syntax}) is not one pydicom decodes") from None
    if not decoder.is_available:
        raise _cannot(
            path,
            f"its transfer syntax {syntax.name} ({syntax}) needs a decoder that is not installed "
            f"({'; '.join(decoder.missing_dependencies)}): {DICOM_EXTRA}",
        )
    try:
        runner = DecodeRunner(syntax)
        runner.set_source(ds)
        runner.validate()  # the image elements, and for native data the pixel data's length
        frames = get_nr_frames(ds, warn=False)
    except Exception as e:  # noqa: BLE001
        raise _cannot(path, e) from e
    if frames != 1:
        raise _cannot(
            path,
            f"a DICOM with {frames} frames; medpeft reads single-frame images (save the frame to "
            "classify as its own file)",
        )
    photometric = ds.get("PhotometricInterpretation", "")
    if photometric not in DICOM_PHOTOMETRIC:
        raise _cannot(
            path,
            f"DICOM photometric interpretation {photometric!r} is not supported ({', '.join(DICOM_PHOTOMETRIC)} are)",
        )
    return ds


def _dicom_pixels(path) -> np.ndarray:
    """The uint8 ``HxW`` or ``HxWx3`` image of a DICOM file, as the module's docstring says."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing, get_decoder

    ds = _dicom_dataset(path)
    try:  # whatever a decoder or a LUT raises is about this file
        pixels, meta = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds)  # YCbCr becomes RGB
        photometric = meta["photometric_interpretation"]
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(pixels, ds)
            return _stretch(rgb, 0, np.iinfo(rgb.dtype).max)
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            return pixels if pixels.dtype == np.uint8 else _stretch(pixels, 0, 2 ** meta["bits_stored"] - 1)
        values = apply_modality_lut(pixels, ds)
        shown = apply_voi_lut(values, ds, index=0)
        if shown is values:  # neither a VOI LUT nor a window: the data's own range
            lo = hi = None
        elif shown.dtype.kind == "u":  # a VOI LUT (a window gives floats): its nominal output range
            lo, hi = 0, 2 ** ds.VOILUTSequence[0].LUTDescriptor[2] - 1
        else:  # a window: its output range, pydicom's values for inputs far below and far above it
            lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
    except Exception as e:  # noqa: BLE001
        raise _cannot(path, e) from e
    grey = _own_range(values) if lo is None else _stretch(shown, lo, hi)
    return 255 - grey if photometric == "MONOCHROME1" else grey
