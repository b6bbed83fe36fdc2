# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Reading the two X-ray images of one case into a ``(2, H, W)`` float tensor.

Supported files: PNG / TIFF / JPEG (8 or 16 bit, float TIFF; grayscale, or RGB(A) converted to gray by
ITU-R 601 luminance) through Pillow, DICOM through pydicom, 2-D NIfTI through nibabel, and other 2-D
formats ITK reads (MHA, NRRD, ...) through ITK.

Orientation convention of the output (before the optional ``transpose`` / ``flip_rows`` /
``flip_cols`` of :class:`LoadXRayPair`): the image as a viewer displays it, ``[row, column]``, row 0 the
top row of the display, column 0 its left column. This is the convention of the bundle's DRRs
(``scripts/drr/geometry.py``): row 0 is superior; the AP view (``alpha = 0``) has the patient's right on
the image's left; the lateral view (``alpha = 90``, source on the patient's left) has anterior on the
image's left. Radiographs displayed the usual way (head up, AP with the patient's right on the left,
lateral with the face to the left) therefore need no flip. Images displayed another way need the flips,
e.g. a PA radiograph shown with the patient's right on the left and reconstructed as ``alpha = 180``
(the DRR is seen from the source, behind the patient) needs ``flip_cols`` for that view.

For files that store a 2-D grid with axes instead of rows (NIfTI), the first file axis is the image's x
(column) and the second its y (row), as ITK, 3D Slicer and MONAI's ``SaveImage`` write them
(``nifti_axes="xy"``); ``nifti_axes="rowcol"`` reads a NIfTI whose first axis is the rows
(``nibabel.Nifti1Image(image_hw)`` written directly from a ``(H, W)`` array).

Intensity convention: the values of the file as displayed. DICOM ``MONOCHROME1`` images (low values
shown bright) are inverted on reading so that they follow the same convention, and DICOM rescale
slope/intercept are applied. The network is trained on DRRs, ``-log(I / I0)``, where bone is high; a
radiograph displayed with bright bone already matches (``invert=False``, the default); a transmission
image or a negative (dark bone) needs ``invert=True`` (``x -> max + min - x`` per image).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize, Transform
from scripts.errors import XRayInputError
from scripts.functional import parse_angles
from scripts.io.outputs import case_meta_name
from scripts.utils import atomic_path

__all__ = [
    "XRayInputError",
    "read_xray",
    "write_png16",
    "check_not_blank",
    "xray_case_name",
    "LoadXRayPair",
    "LoadXRayPaird",
    "MIN_XRAY_SIZE",
    "sidecar_path",
    "sidecar_pixel_spacing",
    "spacing_pair",
    "number_pair",
]

#: the fewest pixels per side (rows and columns) of an X-ray that the bundle's inference takes
#: (:func:`scripts.workflow.inference_cases`): a smaller image holds too little of the radiograph to reconstruct
#: from, and enlarging it to the network's input size only blurs it.
MIN_XRAY_SIZE = 32
#: an image whose pixel standard deviation is below this fraction of its largest absolute value is blank.
BLANK_STD_FRACTION = 1e-3


_PIL_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}
_DICOM_SUFFIXES = {".dcm", ".dicom"}
_NIFTI_SUFFIXES = {".nii", ".nii.gz"}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # ITU-R 601, the weights of Pillow's "L"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _to_gray(arr: np.ndarray, path: Path, color: bool = False) -> np.ndarray:
    """Squeeze singleton axes; with ``color``, turn the last axis (RGB / RGBA / gray+alpha) into one gray channel."""
    arr = np.asarray(arr)
    if color and arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):
        if arr.shape[-1] == 2:  # gray + alpha
            arr = arr[..., 0]
        else:  # RGB or RGBA: luminance of the colour channels, alpha dropped
            arr = arr[..., :3].astype(np.float64) @ _LUMA
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise XRayInputError(
            f"{path}: expected one 2-D grayscale or RGB image, got an array of shape {tuple(np.shape(arr))}; "
            "fix: export a single 2-D frame of the radiograph."
        )
    return arr


# Why not MONAI's PILReader / PydicomReader / ITKReader: they return arrays in array-axis order (PILReader
# transposes to (W, H) by default) for volumes and series, while a radiograph needs its displayed (row, column)
# orientation, MONOCHROME1 inversion, RGB-to-luminance conversion and the detector pixel spacing of one 2-D
# file; the readers below do only that, each a few lines over Pillow, pydicom, nibabel or ITK.
def _read_pil(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    from PIL import Image

    with Image.open(path) as im:
        if getattr(im, "n_frames", 1) > 1:
            raise XRayInputError(f"{path}: has {im.n_frames} frames; fix: save one frame per X-ray image.")
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode == "CMYK":
            im = im.convert("RGB")
        color = im.mode in ("RGB", "RGBA", "LA", "RGBX", "YCbCr")
        arr = np.asarray(im)
    return _to_gray(arr, path, color), None


def _read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    import pydicom

    ds = pydicom.dcmread(str(path))
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise XRayInputError(f"{path}: DICOM with {ds.NumberOfFrames} frames; fix: give a single-frame radiograph.")
    arr = ds.pixel_array
    if int(getattr(ds, "SamplesPerPixel", 1)) > 1:
        if str(getattr(ds, "PhotometricInterpretation", "RGB")).startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, ds.PhotometricInterpretation, "RGB")
    arr = _to_gray(arr, path, color=int(getattr(ds, "SamplesPerPixel", 1)) > 1).astype(np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    arr = arr * slope + intercept
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr  # display convention: high values shown bright
    spacing = None
    for tag in ("ImagerPixelSpacing", "PixelSpacing"):  # detector plane first
        value = getattr(ds, tag, None)
        if value is not None and len(value) == 2:
            spacing = (float(value[0]), float(value[1]))  # (between rows, between columns), mm
            break
    return arr, spacing


def _read_nifti(path: Path, nifti_axes: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    import nibabel as nib

    img = nib.load(str(path))
    arr = np.asarray(img.dataobj)
    zooms = img.header.get_zooms()
    squeezed = np.squeeze(arr)
    if squeezed.ndim != 2:
        raise XRayInputError(
            f"{path}: NIfTI of shape {arr.shape} is not a 2-D image; fix: write one 2-D X-ray per file."
        )
    keep = [i for i, n in enumerate(arr.shape) if n != 1][:2]
    spacing = tuple(float(zooms[i]) for i in keep) if len(zooms) >= max(keep) + 1 else None
    if nifti_axes == "xy":  # file axes (x, y) -> image (row, column) = (y, x)
        squeezed = squeezed.T
        spacing = spacing[::-1] if spacing else None
    return squeezed, spacing  # type: ignore[return-value]


def _read_itk(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    import itk

    img = itk.imread(str(path))
    arr = itk.array_from_image(img)  # [.., y, x] = [row, column]
    sp = [float(s) for s in itk.spacing(img)]  # (x, y, ...)
    arr = _to_gray(arr, path, color=img.GetNumberOfComponentsPerPixel() > 1)
    spacing = (sp[1], sp[0]) if len(sp) >= 2 else None
    return arr, spacing


def read_xray(path: str | os.PathLike, nifti_axes: str = "xy") -> tuple[np.ndarray, tuple[float, float] | None]:
    """Read one X-ray image as a 2-D float64 array ``[row, column]`` and its pixel spacing.

    Args:
        path: the image file (PNG, TIFF, JPEG, BMP, DICOM, NIfTI, or another 2-D format ITK reads).
        nifti_axes: ``"xy"`` (first NIfTI axis = image column, ITK / MONAI convention) or ``"rowcol"``.

    Returns:
        ``(image, spacing)`` with ``spacing = (row spacing, column spacing)`` in mm when the file has it
        (DICOM, NIfTI, ITK formats), else ``None``.

    Raises:
        XRayInputError: missing, unreadable or non-2-D file.
    """
    if nifti_axes not in ("xy", "rowcol"):
        raise XRayInputError(f"nifti_axes={nifti_axes!r}: use 'xy' or 'rowcol'.")
    p = Path(path)
    if not p.is_file():
        raise XRayInputError(
            f"{p}: X-ray image not found; fix: check the path (relative paths are read from {os.getcwd()}, those of a "
            "datalist from its folder)."
        )
    suffix = _suffix(p)
    try:
        if suffix in _DICOM_SUFFIXES or (suffix not in _PIL_SUFFIXES | _NIFTI_SUFFIXES and _is_dicom(p)):
            arr, spacing = _read_dicom(p)
        elif suffix in _PIL_SUFFIXES:
            arr, spacing = _read_pil(p)
        elif suffix in _NIFTI_SUFFIXES:
            arr, spacing = _read_nifti(p, nifti_axes)
        else:
            arr, spacing = _read_itk(p)
    except XRayInputError:
        raise
    except Exception as e:  # any reader failure becomes one clear line naming the file
        raise XRayInputError(
            f"{p}: cannot read it as an X-ray image ({type(e).__name__}: {e}); fix: give a readable PNG, "
            "TIFF, DICOM or 2-D NIfTI file."
        ) from e
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size == 0 or min(arr.shape) < 2:
        raise XRayInputError(f"{p}: image of size {arr.shape} is too small; fix: give the full radiograph.")
    if not np.all(np.isfinite(arr)):
        raise XRayInputError(f"{p}: image has NaN or infinite pixels; fix: replace them before reconstruction.")
    if spacing is not None and not all(math.isfinite(s) and s > 0 for s in spacing):
        spacing = None
    return arr, spacing


def sidecar_path(path: str | os.PathLike) -> Path:
    """The sidecar JSON of an image: the same name with ``.json`` instead of its extension."""
    p = Path(path)
    name = p.name[: -len(".nii.gz")] if p.name.lower().endswith(".nii.gz") else p.stem
    return p.with_name(name + ".json")


def number_pair(value: Any, positive: bool = False) -> tuple[float, float] | None:
    """Two finite numbers from a number (for both) or a pair; ``None`` for anything else (text and booleans included),
    and with ``positive`` for numbers that are not above 0."""
    if value is None or isinstance(value, (str, bytes, bool)):
        return None
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2 or not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        return None
    return float(arr[0]), float(arr[1])


def spacing_pair(value: Any) -> tuple[float, float] | None:
    """A pixel spacing ``(row, col)`` in mm from a number or a ``[row, col]`` pair (:func:`number_pair`, positive)."""
    return number_pair(value, positive=True)


def sidecar_pixel_spacing(path: str | os.PathLike) -> tuple[float, float] | None:
    """The detector pixel spacing ``(row, col)`` in mm of an image's sidecar JSON (its ``pixel_spacing_mm``, a number
    or ``[row, col]``, as :mod:`scripts.io.radiograph` and ``python -m scripts.simulate radiographs`` write it), or
    ``None`` without a sidecar, or with a JSON file of another kind there (not an object, or no such key).

    Raises:
        XRayInputError: a sidecar whose ``pixel_spacing_mm`` is not a positive number or pair.
    """
    import json

    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        content = json.loads(side.read_text())
    except (OSError, ValueError):
        return None  # a JSON file of another kind beside the image: not a sidecar
    if not isinstance(content, dict) or "pixel_spacing_mm" not in content:
        return None
    spacing = spacing_pair(content["pixel_spacing_mm"])
    if spacing is None:
        raise XRayInputError(
            f"{side}: pixel_spacing_mm={content['pixel_spacing_mm']!r} is not a positive pixel size in mm (a number "
            "or [row, col])."
        )
    return spacing


def write_png16(image: np.ndarray, path: str | os.PathLike, png_max: float) -> None:
    """Write a (H, W) image as a 16-bit grayscale PNG, ``round(clip(image / png_max, 0, 1) * 65535)``, atomically.

    The form of the simulated X-rays (``python -m scripts.simulate``); :func:`read_xray` reads it back.
    """
    from PIL import Image

    arr = np.round(np.clip(np.asarray(image) / png_max, 0.0, 1.0) * 65535.0).astype(np.uint16)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def check_not_blank(image: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse a blank image: all black, or every pixel (nearly) the same value.

    Blank: the pixels' standard deviation is at most :data:`BLANK_STD_FRACTION` of the largest absolute value.

    Args:
        image: the 2-D image as read.
        path: the file, named in the message.

    Raises:
        XRayInputError: naming the file and the fix.
    """
    arr = np.asarray(image, dtype=np.float64)
    top = float(np.abs(arr).max()) if arr.size else 0.0
    if arr.size == 0 or float(arr.std()) <= BLANK_STD_FRACTION * top:
        raise XRayInputError(
            f"{path}: the image is blank (every pixel about {float(arr.mean()) if arr.size else 0.0:g}); fix: "
            "export the radiograph again and check that the file shows the X-ray, not an empty frame."
        )


_SEPARATORS = re.compile(r"([_\-.\s]+)")


def _stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", *_PIL_SUFFIXES, *_DICOM_SUFFIXES, ".nii", ".mha", ".mhd", ".nrrd", ".nhdr"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def xray_case_name(files: Sequence[str | os.PathLike]) -> str:
    """The name of a case given by its two image files: what the files' names have in common.

    The names without extension are split at separators (``_``, ``-``, ``.``, spaces); the parts that both
    names start with make the case name (``P1_ap.png`` and ``P1_lat.png`` give ``P1``; ``a/P1.dcm`` and
    ``b/P1.dcm`` give ``P1``). Names without a common first part give the first file's name
    (``ap.png`` and ``lat.png`` give ``ap``). Dots become ``_`` (the writers would drop what follows a dot).

    Args:
        files: the image paths of the case (view 1 first).

    Returns:
        a non-empty name usable as a folder and file name prefix.
    """
    stems = [_stem(f) for f in files]
    if not stems:
        return "case"
    parts = [_SEPARATORS.split(s) for s in stems]
    common: list[str] = []
    for tokens in zip(*parts):
        if any(t != tokens[0] for t in tokens):
            break
        common.append(tokens[0])
    while common and (not common[-1] or _SEPARATORS.fullmatch(common[-1])):
        common.pop()
    name = "".join(common) if common else stems[0]
    name = name.replace(".", "_").strip(" _-")
    return name or "case"


def _per_view(value: bool | Sequence[bool], name: str) -> tuple[bool, bool]:
    """``(view 1, view 2)`` of a switch given as one bool or one per view; anything else (text such as ``"no"``,
    numbers) is refused: ``bool("no")`` is true."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value), bool(value)
    if (
        isinstance(value, Sequence)
        and not isinstance(value, (str, bytes))
        and len(value) == 2
        and all(isinstance(v, (bool, np.bool_)) for v in value)
    ):
        return bool(value[0]), bool(value[1])
    raise XRayInputError(f"{name}={value!r}: give True or False, or one per view, e.g. [True, False].")


class LoadXRayPair(Transform):
    """Load the two X-ray images of one case as a float32 ``MetaTensor`` of shape ``(2, H, W)``.

    Channel 0 is view 1, channel 1 view 2. After reading (see the module docstring for the orientation and
    intensity conventions), each image is optionally transposed, then flipped (rows, columns), inverted,
    and resized to ``spatial_size`` (area averaging when shrinking, else bilinear).

    Meta data: ``filename_or_obj`` (the first file, or ``name``), ``xray_files``, ``angles`` (``(2, 2)``
    float64: alpha, beta per view, degrees), ``pixel_spacing`` (``(2, 2)`` mm per view, row and column
    spacing, after resizing; NaN where unknown), ``original_size`` (``(2, 2)``: rows and columns of each
    file), ``xray_orientation`` (the applied transposition, flips and inversion).

    Args:
        spatial_size: target detector size ``(H, W)`` (an int for square); ``None`` keeps the files' size.
        invert: invert intensities (dark-bone images) so that bone is high, as in a DRR; one per view or both.
        transpose: swap rows and columns after reading; one per view or both.
        flip_rows: flip the row axis (top <-> bottom); one per view or both.
        flip_cols: flip the column axis (left <-> right); one per view or both.
        nifti_axes: axis convention of NIfTI files, ``"xy"`` or ``"rowcol"`` (see :func:`read_xray`).
        pixel_spacing: pixel spacing in mm used when a file has none (a number, ``(row, col)``, or one per view).
        min_size: the fewest rows and columns an image may have (before transposition and resizing); ``None``
            takes any image of at least 2 x 2 pixels. The bundle's inference checks use :data:`MIN_XRAY_SIZE`.

    Raises:
        XRayInputError: a switch that is not True / False, a pixel spacing that is not positive, or a
            ``min_size`` below 1.
    """

    def __init__(
        self,
        spatial_size: int | Sequence[int] | None = None,
        invert: bool | Sequence[bool] = False,
        transpose: bool | Sequence[bool] = False,
        flip_rows: bool | Sequence[bool] = False,
        flip_cols: bool | Sequence[bool] = False,
        nifti_axes: str = "xy",
        pixel_spacing: float | Sequence[float] | Sequence[Sequence[float]] | None = None,
        min_size: int | None = None,
    ) -> None:
        if spatial_size is not None:
            size = (int(spatial_size),) * 2 if isinstance(spatial_size, (int, np.integer)) else tuple(spatial_size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"spatial_size={spatial_size!r}: give (H, W) with positive sizes.")
            spatial_size = tuple(int(s) for s in size)
        self.spatial_size = spatial_size
        self.invert = _per_view(invert, "invert")
        self.transpose = _per_view(transpose, "transpose")
        self.flip_rows = _per_view(flip_rows, "flip_rows")
        self.flip_cols = _per_view(flip_cols, "flip_cols")
        if nifti_axes not in ("xy", "rowcol"):
            raise ValueError(f"nifti_axes={nifti_axes!r}: use 'xy' or 'rowcol'.")
        self.nifti_axes = nifti_axes
        self._spacing_arg(pixel_spacing)  # a bad spacing stops here, before any file is read
        self.pixel_spacing = pixel_spacing
        if min_size is not None and (isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer))):
            raise XRayInputError(f"min_size={min_size!r}: give a whole number of pixels, or None.")
        if min_size is not None and min_size < 1:
            raise XRayInputError(f"min_size={min_size}: give at least 1 pixel, or None.")
        self.min_size = None if min_size is None else int(min_size)

    @staticmethod
    def _spacing_arg(value: Any) -> list[tuple[float, float] | None]:
        if value is None:
            return [None, None]
        fix = (
            f"pixel_spacing={value!r} is not a positive spacing in mm; fix: give a number, (row, col) or one pair "
            "per view, e.g. 0.5."
        )
        if isinstance(value, (str, bytes, bool)):
            raise XRayInputError(fix)
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise XRayInputError(fix) from None
        if arr.ndim == 0:
            arr = np.full((2, 2), float(arr))
        elif arr.shape == (2,):
            arr = np.stack([arr, arr])
        if arr.shape != (2, 2) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise XRayInputError(fix)
        return [tuple(arr[0]), tuple(arr[1])]

    def __call__(
        self, files: Sequence[str | os.PathLike], angles: Any = None, pixel_spacing: Any = None, name: str | None = None
    ) -> MetaTensor:
        """Read, validate and convert one case.

        Args:
            files: exactly two image paths (view 1, view 2).
            angles: view angles, see :func:`parse_angles`; ``None`` means AP and lateral.
            pixel_spacing: spacing override for this case (see the class arguments); files' own spacing
                otherwise, then the transform's ``pixel_spacing``.
            name: the case name; ``filename_or_obj`` becomes :func:`~scripts.io.outputs.case_meta_name`
                of it, which names the outputs of ``SaveImage`` exactly ``name``.

        Raises:
            XRayInputError: with one line naming the file or value and the fix (also for a blank image,
                :func:`check_not_blank`, or one smaller than ``min_size``).
        """
        if isinstance(files, (str, os.PathLike)) or not isinstance(files, Sequence) or len(files) != 2:
            n = 1 if isinstance(files, (str, os.PathLike)) else (len(files) if isinstance(files, Sequence) else 0)
            raise XRayInputError(
                f"expected exactly two X-ray images per case (view 1, view 2), got {n}: {files!r}; "
                """fix: list both files, e.g. --xrays "['ap.png','lat.png']" on the command line, or "xray": """
                '["ap.png", "lat.png"] in a datalist.'
            )
        ang = parse_angles(angles)
        override = self._spacing_arg(pixel_spacing)
        default = self._spacing_arg(self.pixel_spacing)
        images, spacings, sizes = [], [], []
        for v, f in enumerate(files):
            arr, sp = read_xray(f, self.nifti_axes)
            if self.min_size is not None and min(arr.shape) < self.min_size:
                raise XRayInputError(
                    f"{f}: image of {arr.shape[0]}x{arr.shape[1]} pixels (rows x columns) is below the "
                    f"{self.min_size} pixels per side a reconstruction needs; fix: give the full radiograph."
                )
            sizes.append(arr.shape)
            sp = override[v] or sp or sidecar_pixel_spacing(f) or default[v]
            if self.transpose[v]:
                arr = arr.T
                sp = sp[::-1] if sp else None
            if self.flip_rows[v]:
                arr = arr[::-1, :]
            if self.flip_cols[v]:
                arr = arr[:, ::-1]
            if self.invert[v]:
                arr = arr.max() + arr.min() - arr
            images.append(np.ascontiguousarray(arr, dtype=np.float32))
            spacings.append(sp if sp else (math.nan, math.nan))
        if images[0].shape != images[1].shape:
            raise XRayInputError(
                f"X-ray images differ in size: {files[0]} is {images[0].shape[0]}x{images[0].shape[1]}, "
                f"{files[1]} is {images[1].shape[0]}x{images[1].shape[1]} (rows x columns, after the "
                "configured transposition); fix: give both views from the same detector size."
            )
        for f, image in zip(files, images):
            check_not_blank(image, f)
        img = torch.from_numpy(np.stack(images))
        spacing = np.asarray(spacings, dtype=np.float64)
        if self.spatial_size is not None and tuple(img.shape[1:]) != self.spatial_size:
            scale = np.asarray(img.shape[1:], dtype=np.float64) / np.asarray(self.spatial_size, dtype=np.float64)
            # area averaging when shrinking (exact block means for integer factors), bilinear when enlarging
            mode = "area" if np.all(scale >= 1.0) else "bilinear"
            img = Resize(self.spatial_size, mode=mode)(img)
            img = img.as_tensor() if isinstance(img, MetaTensor) else img
            spacing = spacing * scale[None, :]
        affine = torch.eye(4, dtype=torch.float64)
        if np.all(np.isfinite(spacing[0])):
            affine[0, 0], affine[1, 1] = float(spacing[0, 0]), float(spacing[0, 1])
        meta = {
            "filename_or_obj": case_meta_name(name) if name is not None else str(files[0]),
            "xray_files": [str(f) for f in files],
            "angles": ang,
            "pixel_spacing": spacing,
            "original_size": np.asarray(sizes, dtype=np.int64),
            "xray_orientation": {
                "transpose": list(self.transpose),
                "flip_rows": list(self.flip_rows),
                "flip_cols": list(self.flip_cols),
                "invert": list(self.invert),
            },
        }
        return MetaTensor(img.float().contiguous(), affine=affine, meta=meta)


class LoadXRayPaird(MapTransform):
    """Dictionary version of :class:`LoadXRayPair`.

    ``data[key]`` is the list of the two image paths of a case; it is replaced by the ``(2, H, W)``
    tensor. The validated angles are written back to ``data[angles_key]`` as a ``(2, 2)`` float32 tensor
    (alpha, beta per view, degrees) and also kept in the tensor's meta data.

    Args:
        keys: keys holding the two image paths (usually one key, e.g. ``"xray"``).
        angles_key: key of the case's angles; missing or ``None`` means AP and lateral.
        spacing_key: key of an optional per-case pixel spacing override (mm).
        name_key: key whose value (e.g. the case ``"id"``) becomes ``filename_or_obj``, naming the outputs.
        allow_missing_keys: don't raise if a key is missing.
        kwargs: the arguments of :class:`LoadXRayPair`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        angles_key: str = "angles",
        spacing_key: str | None = "pixel_spacing",
        name_key: str | None = "id",
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadXRayPair(**kwargs)
        self.angles_key = angles_key
        self.spacing_key = spacing_key
        self.name_key = name_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            name = d.get(self.name_key) if self.name_key else None
            spacing = d.get(self.spacing_key) if self.spacing_key else None
            out = self.loader(d[key], angles=d.get(self.angles_key), pixel_spacing=spacing, name=name)
            d[key] = out
            d[self.angles_key] = torch.as_tensor(out.meta["angles"], dtype=torch.float32)
        return d
