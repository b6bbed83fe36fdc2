# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Reading CT scans and label maps (NIfTI, NRRD, MHA/MHD, DICOM series) and writing NIfTI crops.

Reading goes through MONAI's ``LoadImage`` with its NiBabel reader (NIfTI) or its ITK reader (everything
else, and DICOM series given as a folder). Both give a RAS world affine (voxel index -> mm), so scans
from either source can be compared and resampled the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from scripts.data.errors import DataError
from scripts.utils import atomic_path

__all__ = [
    "VOLUME_SUFFIXES",
    "is_volume_file",
    "strip_volume_suffix",
    "load_volume",
    "check_same_grid",
    "save_nifti",
    "structure_masks",
]

#: File name endings read as volumes (a folder is read as a DICOM series).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

_READABLE = "a NIfTI, NRRD or MHA/MHD file, or a folder holding one DICOM series"


def is_volume_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a file with one of :data:`VOLUME_SUFFIXES` (case-insensitive)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def strip_volume_suffix(name: str) -> str:
    """``"case_ct.nii.gz"`` -> ``"case_ct"``; names without a volume suffix are returned unchanged."""
    lower = name.lower()
    for s in VOLUME_SUFFIXES:
        if lower.endswith(s):
            return name[: -len(s)]
    return name


def _reader_for(path: Path) -> str:
    if path.is_dir():
        return "ITKReader"  # DICOM series
    return "NibabelReader" if path.name.lower().endswith((".nii", ".nii.gz")) else "ITKReader"


def load_volume(path: str | os.PathLike, what: str = "volume") -> MetaTensor:
    """Read a 3-D volume as a channel-first float32 ``MetaTensor`` of shape (1, X, Y, Z).

    Its ``.affine`` maps voxel indices to RAS world millimetres. A trailing singleton 4th dimension
    (X, Y, Z, 1) is dropped.

    Args:
        path: a NIfTI / NRRD / MHA / MHD file, or a folder with a DICOM series.
        what: how to call the volume in error messages (``"CT"``, ``"label map"``).

    Raises:
        DataError: the file is missing, unreadable, or not 3-D.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(
            path,
            f"{what} not found",
            f"check the path (from {os.getcwd()}; the paths of a source list are taken from the list's folder)",
        )
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(path, f"{what} file is empty", "copy the file again; it was not written completely")
    reader = _reader_for(path)
    try:
        img = LoadImage(image_only=True, reader=reader, dtype=np.float32)(str(path))
    except Exception as e:  # the readers raise many types (RuntimeError, OSError, ITK errors, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            path, f"{what} cannot be read ({first[:120]})", f"give {_READABLE}, and check it is not truncated"
        ) from e
    affine = torch.as_tensor(np.asarray(img.affine), dtype=torch.float64)
    data = torch.as_tensor(np.asarray(img))
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    shape = tuple(data.shape)
    if len(shape) != 3:
        raise DataError(
            path,
            f"{what} is {len(shape)}-D with shape {shape}, expected a 3-D volume",
            "give one 3-D volume per file (split multi-channel or time series first)",
        )
    if min(shape) < 2:
        raise DataError(path, f"{what} has shape {shape}, too thin to be a 3-D scan", "give a 3-D volume")
    if not torch.isfinite(affine).all() or abs(float(torch.linalg.det(affine[:3, :3]))) < 1e-12:
        raise DataError(path, f"{what} has an invalid affine {affine.tolist()}", "fix the file's header")
    out = MetaTensor(data.float().unsqueeze(0), affine=affine)
    out.meta["filename_or_obj"] = str(path)
    return out


def check_same_grid(
    ct: MetaTensor, mask: MetaTensor, mask_path: str | os.PathLike, ct_path: str | os.PathLike, atol: float = 1e-3
) -> None:
    """Raise :class:`DataError` unless the CT and label map have the same shape and affine.

    Args:
        ct: the CT, channel-first.
        mask: the label map, channel-first.
        mask_path: named in the message.
        ct_path: named in the message.
        atol: tolerance on the affine entries (mm).
    """
    if tuple(ct.shape) != tuple(mask.shape):
        raise DataError(
            mask_path,
            f"label map shape {tuple(mask.shape[1:])} differs from the CT's {tuple(ct.shape[1:])} ({ct_path})",
            "pair each CT with the label map made on it (or resample the label map to the CT grid, nearest)",
        )
    a, b = np.asarray(ct.affine, dtype=np.float64), np.asarray(mask.affine, dtype=np.float64)
    if not np.allclose(a, b, atol=atol, rtol=0):
        diff = float(np.abs(a - b).max())
        raise DataError(
            mask_path,
            f"label map affine differs from the CT's ({ct_path}) by up to {diff:.4g} mm",
            "pair each CT with the label map made on it, or copy the CT's header geometry to the label map",
        )


def save_nifti(array: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor, path: str | os.PathLike) -> None:
    """Write a 3-D array with its affine as NIfTI, atomically (a reader never sees a partial file).

    Args:
        array: (X, Y, Z) array, or (1, X, Y, Z); written with its own dtype.
        affine: 4x4 voxel -> RAS mm matrix; stored as both qform and sform (code 1, scanner).
        path: destination, normally ``*.nii.gz``.
    """
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    aff = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    img = nib.Nifti1Image(arr, aff)
    img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def structure_masks(folder: str | os.PathLike) -> list[Path]:
    """The per-vertebra masks of a TotalSegmentator ``segmentations`` folder: its ``vertebra*`` volumes (not hidden
    files), sorted; ``[]`` for a folder without them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if is_volume_file(p) and strip_volume_suffix(p.name).lower().startswith("vertebra")
    )
