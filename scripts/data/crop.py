# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Per-vertebra crops (docs/README.md, Preprocessing, steps 2-5).

1. Reorient to RAS and resample to an isotropic grid whose axes are the RAS axes (MONAI ``Orientation``
   and ``Spacing`` with ``diagonal=True``): CT linear, label map nearest. CT values below -1024 HU
   (scanner padding outside the field of view, e.g. -2048) are raised to -1024 (air) first, and the
   resampled CT is -1024 where the new grid leaves the scan.
2. A vertebra whose label touches a face of the scan (first or last voxel plane along any axis of the
   original grid) is cut off: it is skipped and reported. In a windowed scan (stored with 0 as padding
   outside the field of view) a vertebra next to a padding voxel is cut off as well.
3. A cube of ``roi`` voxels is centred on the vertebra's bounding-box centre in the resampled grid
   (MONAI ``SpatialCrop``, then ``BorderPad`` with -1024 HU / label 0 where the scan ends); its affine
   follows the crop, so every crop voxel maps to its world point in the scan.
4. Ground truth = CT inside the vertebra's own mask dilated by one voxel (3x3x3 neighbourhood), -1024 HU
   elsewhere: neighbouring vertebrae are not in it. The written mask is the vertebra's own label (0/1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import BorderPad, Orientation, Spacing, SpatialCrop
from scipy import ndimage

__all__ = [
    "AIR_HU",
    "VertebraCrop",
    "to_ras_isotropic",
    "labels_touching_border",
    "labels_touching_padding",
    "bounding_boxes",
    "cube_start",
    "crop_cube",
    "grow_mask",
    "crop_vertebra",
    "gt_statistics",
    "BONE_HU",
    "LABEL_FIT_RATIO",
    "LABEL_BONE_SHARE",
    "SHELL_MM",
    "label_bone_fit",
]

AIR_HU = -1024.0
#: HU above which a voxel counts as bone in :func:`label_bone_fit`.
BONE_HU = 150.0
#: ``scripts.prepare`` reports a label whose bone share is below :data:`LABEL_BONE_SHARE` and below this multiple of
#: its surroundings' share. Measured at 2 mm on 84 vertebrae of 9 patients whose labels lie on their bone: shares
#: 0.50-0.98, 2.0-5.6 times their surroundings'; on 7 labels beside their bone (colonog0694): 0.17-0.45, 0.7-1.8 times
#: (``docs/data.md``).
LABEL_FIT_RATIO = 2.5
LABEL_BONE_SHARE = 0.5
#: the shell around a label in :func:`label_bone_fit` (mm along the grid's axes).
SHELL_MM = 10.0
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass
class VertebraCrop:
    """One vertebra's crop: arrays of shape (roi, roi, roi) and the crop's voxel -> RAS mm affine.

    Attributes:
        ct: CT crop (HU, float32, whole context).
        gt: ground truth (HU inside the dilated own mask, -1024 elsewhere, float32).
        mask: the vertebra's own mask (uint8, 0/1).
        affine: 4x4 affine of the crop (float64).
        start: index of the crop's first voxel in the resampled scan (may be negative: padded).
        bbox_center: centre of the vertebra's bounding box in the resampled scan's voxel indices.
        extent: size of the vertebra's bounding box in voxels.
    """

    ct: np.ndarray
    gt: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    start: tuple[int, int, int]
    bbox_center: tuple[float, float, float]
    extent: tuple[int, int, int]


def to_ras_isotropic(img: MetaTensor, spacing: float, is_label: bool = False) -> MetaTensor:
    """Reorient a channel-first volume to RAS and resample it to isotropic ``spacing`` mm.

    Args:
        img: (1, X, Y, Z) volume with its affine.
        spacing: output voxel size in mm.
        is_label: nearest-neighbour resampling of a label map (else linear resampling of CT in HU).

    Returns:
        the resampled volume; its affine is diagonal (``spacing`` on the diagonal).
    """
    img = Orientation(axcodes="RAS", labels=_RAS_LABELS)(img)
    pixdim = (float(spacing),) * 3
    if is_label:
        out = Spacing(pixdim=pixdim, mode="nearest", padding_mode="zeros", diagonal=True)(img)
        return torch.round(out)
    # shift so that air is 0: zero padding outside the scan then reads -1024 HU after the shift back
    shifted = torch.clamp(img, min=AIR_HU) - AIR_HU
    out = Spacing(pixdim=pixdim, mode="bilinear", padding_mode="zeros", diagonal=True)(shifted)
    return out + AIR_HU


def labels_touching_border(labels: np.ndarray) -> set[int]:
    """The label values present on any face (first / last voxel plane along each axis) of a 3-D map."""
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    return {int(v) for v in np.unique(np.concatenate([np.asarray(f).ravel() for f in faces])) if v != 0}


def labels_touching_padding(labels: np.ndarray, values: np.ndarray, padding: float = 0.0) -> set[int]:
    """The label values next to (26-neighbourhood) or on a voxel whose stored CT value is ``padding``.

    Only padding-valued regions that reach a face of the array count. In a scan stored with a padding value
    outside its field of view, such a vertebra is cut off by the field of view even when it does not reach
    a face of the array.
    """
    pad = np.asarray(values) == padding
    if not pad.any():
        return set()
    # padding surrounds the field of view: keep the padding-valued regions that reach a face of the array
    # (air clipped to the padding value inside the body, e.g. in the trachea, is not padding)
    regions, _ = ndimage.label(pad)
    outer = labels_touching_border(regions)
    pad = np.isin(regions, list(outer)) if outer else np.zeros_like(pad)
    near = ndimage.binary_dilation(pad, structure=np.ones((3, 3, 3), dtype=bool))
    lab = np.asarray(labels)
    return {int(v) for v in np.unique(lab[near & (lab != 0)])}


def bounding_boxes(labels: np.ndarray, values: list[int]) -> dict[int, tuple[slice, slice, slice]]:
    """Bounding box (as slices) of each label value in a 3-D integer map; absent values are left out."""
    lab = np.asarray(labels).astype(np.int32, copy=False)
    top = max(values) if values else 0
    boxes = ndimage.find_objects(np.where(lab <= top, lab, 0), max_label=top)
    return {v: boxes[v - 1] for v in values if 0 < v <= top and boxes[v - 1] is not None}


def cube_start(box: tuple[slice, slice, slice], roi: int) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """First voxel of a ``roi``-cube centred on a bounding box, and the box centre (voxel indices).

    The cube's centre ``start + (roi - 1) / 2`` lies within half a voxel of the box centre.
    """
    center = tuple((s.start + s.stop - 1) / 2.0 for s in box)
    start = tuple(int(np.floor(c - (roi - 1) / 2.0 + 0.5)) for c in center)
    return start, center


def crop_cube(img: MetaTensor, start: tuple[int, int, int], roi: int, pad_value: float) -> MetaTensor:
    """Cut the cube ``[start, start + roi)`` out of a channel-first volume, padding outside it.

    The part inside the volume is cut with ``SpatialCrop``; ``BorderPad`` adds ``pad_value`` on each side
    the cube leaves the volume. Both update the affine, so it stays the crop's voxel -> world map.
    """
    shape = img.shape[1:]
    lo = [max(0, s) for s in start]
    hi = [min(n, s + roi) for s, n in zip(start, shape)]
    if any(h <= lo_ for lo_, h in zip(lo, hi)):
        raise ValueError(f"cube at {start} of size {roi} does not overlap the volume of shape {tuple(shape)}")
    out = SpatialCrop(roi_start=lo, roi_end=hi)(img)
    border = []
    for s, a, b in zip(start, lo, hi):
        border += [a - s, s + roi - b]
    if any(border):
        out = BorderPad(spatial_border=border, mode="constant", value=pad_value)(out)
    return out


def grow_mask(own: np.ndarray) -> np.ndarray:
    """A vertebra's own mask grown by one voxel in the 26-neighbourhood (a 3x3x3 cube): where its ground truth holds
    the CT, so that the ground truth keeps the bone's edge."""
    return ndimage.binary_dilation(np.asarray(own, bool), structure=np.ones((3, 3, 3), dtype=bool))


def crop_vertebra(
    ct: MetaTensor, labels: MetaTensor, value: int, box: tuple[slice, slice, slice], roi: int
) -> VertebraCrop:
    """Crop one vertebra from a resampled CT and label map (same grid).

    Args:
        ct: (1, X, Y, Z) resampled CT in HU.
        labels: (1, X, Y, Z) resampled label map.
        value: the vertebra's label value.
        box: its bounding box in ``labels`` (see :func:`bounding_boxes`).
        roi: cube edge in voxels.
    """
    start, center = cube_start(box, roi)
    ct_c = crop_cube(ct, start, roi, AIR_HU)
    lab_c = crop_cube(labels, start, roi, 0.0)
    own = np.asarray(lab_c[0]) == value
    grown = grow_mask(own)
    ct_np = np.asarray(ct_c[0], dtype=np.float32)
    gt = np.where(grown, ct_np, np.float32(AIR_HU)).astype(np.float32)
    return VertebraCrop(
        ct=ct_np,
        gt=gt,
        mask=own.astype(np.uint8),
        affine=np.asarray(ct_c.affine, dtype=np.float64),
        start=start,
        bbox_center=center,
        extent=tuple(int(s.stop - s.start) for s in box),
    )


def gt_statistics(crop: VertebraCrop) -> dict[str, float]:
    """HU statistics of the ground truth inside the mask, and of the whole ground-truth cube.

    Returns:
        ``hu_mean``, ``hu_std``, ``hu_min``, ``hu_max`` within the mask; ``cube_mean``, ``cube_var`` and
        ``cube_n`` over every voxel of the gt cube (pooled later into the dataset's z-score statistics).
    """
    inside = crop.gt[crop.mask.astype(bool)].astype(np.float64)
    cube = crop.gt.astype(np.float64)
    return {
        "hu_mean": float(inside.mean()) if inside.size else float("nan"),
        "hu_std": float(inside.std()) if inside.size else float("nan"),
        "hu_min": float(inside.min()) if inside.size else float("nan"),
        "hu_max": float(inside.max()) if inside.size else float("nan"),
        "cube_mean": float(cube.mean()),
        "cube_var": float(cube.var()),
        "cube_n": int(cube.size),
    }


def label_bone_fit(
    hu: np.ndarray, mask: np.ndarray, spacing: float, bone_hu: float = BONE_HU, shell_mm: float = SHELL_MM
) -> dict[str, float]:
    """How well a vertebra's label lies on its bone: the share of voxels above ``bone_hu`` inside the label and in a
    shell of ``shell_mm`` around it (one grid, isotropic ``spacing`` in mm; the shell is ``shell_mm / spacing`` steps
    of 6-neighbour dilation: ``shell_mm`` along the grid's axes, less on the diagonals).

    A label on its vertebra holds mostly bone and its surroundings (soft tissue, the neighbours' edges) much less; a
    label shifted or turned off its vertebra, or drawn on another scan, holds about as much as its surroundings.

    Returns:
        ``label_bone_share`` and ``shell_bone_share`` (``nan`` for an empty label or shell).
    """
    inside = np.asarray(mask) > 0
    steps = max(1, round(shell_mm / float(spacing)))
    shell = ndimage.binary_dilation(inside, iterations=steps) & ~inside
    values = np.asarray(hu)
    return {
        "label_bone_share": float((values[inside] > bone_hu).mean()) if inside.any() else float("nan"),
        "shell_bone_share": float((values[shell] > bone_hu).mean()) if shell.any() else float("nan"),
    }
