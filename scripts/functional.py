# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Pure functions that several layers share: view angles and their checks, z-score <-> HU, and the image
operations of the EAR loss and metrics (spectral distance, boundary map, maximum intensity projections).

They read and write no files and hold no state, so the readers (:mod:`scripts.io`), the transforms
(:mod:`scripts.transforms`), the losses and the metrics use them without importing one another. The view
angles follow the conventions of ``scripts/drr/geometry.py``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms.utils_morphological_ops import erode
from scripts.drr.geometry import view_rotation
from scripts.errors import XRayInputError

__all__ = [
    "SIMULATION_SOURCES",
    "item_seed",
    "DEFAULT_ANGLES",
    "MIN_VIEW_SEPARATION",
    "parse_angles",
    "format_views",
    "check_view_separation",
    "hu_to_zscore",
    "zscore_to_hu",
    "zscore_images",
    "highpass_images",
    "normalised_cross_correlation",
    "real_imag_spectrum",
    "spectral_distance",
    "boundary_map",
    "maximum_intensity_projections",
]

#: the X-ray sources of ``python -m scripts.simulate --source`` and the ``drr_source`` each projects: ``isolated``
#: the ground truth (``gt``, the paper's), ``in_context`` the CT crop (``ct``).
SIMULATION_SOURCES: dict[str, str] = {"isolated": "gt", "in_context": "ct"}

#: default views: view 1 AP (alpha=0, beta=0), view 2 lateral (alpha=90, beta=0), degrees.
DEFAULT_ANGLES: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 0.0), (90.0, 0.0))

#: smallest angle in degrees between the beam lines of two views; closer views (the same view twice, or a view
#: and its opposite, which see the same projection) carry no depth information and are refused.
MIN_VIEW_SEPARATION = 10.0


def parse_angles(angles: Any = None) -> np.ndarray:
    """Validate the view angles of a pair and return them as a ``(2, 2)`` array of ``(alpha, beta)`` degrees.

    Args:
        angles: ``None`` (AP and lateral, :data:`DEFAULT_ANGLES`), or two entries, each a number ``alpha``
            (``beta = 0``), a pair ``(alpha, beta)`` or a mapping with keys ``alpha`` and optional ``beta``.

    Raises:
        XRayInputError: wrong number of views, non-numeric, NaN / infinite, outside [-360, 360] degrees, or
            two views along nearly the same line (:func:`check_view_separation`).
    """
    if angles is None:
        return np.asarray(DEFAULT_ANGLES, dtype=np.float64)
    if isinstance(angles, torch.Tensor):
        angles = angles.detach().cpu().numpy()
    if isinstance(angles, np.ndarray):
        angles = angles.tolist()
    if isinstance(angles, (str, bytes)) or not isinstance(angles, Sequence) or len(angles) != 2:
        raise XRayInputError(
            f"angles={angles!r}: expected two views, e.g. [[0, 0], [90, 0]] (alpha, beta in degrees) or [0, 90]."
        )
    out = np.zeros((2, 2), dtype=np.float64)
    for i, view in enumerate(angles):
        if isinstance(view, Mapping):
            view = (view.get("alpha"), view.get("beta", 0.0))
        elif not isinstance(view, Sequence) or isinstance(view, (str, bytes)):
            view = (view, 0.0)
        if len(view) == 1:
            view = (view[0], 0.0)
        if len(view) != 2:
            raise XRayInputError(f"angles of view {i + 1} = {view!r}: expected alpha or (alpha, beta) in degrees.")
        for j, (name, v) in enumerate(zip(("alpha", "beta"), view)):
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise XRayInputError(
                    f"angle {name} of view {i + 1} = {v!r} is not a number; fix: give degrees."
                ) from None
            if not math.isfinite(v) or abs(v) > 360.0:
                raise XRayInputError(
                    f"angle {name} of view {i + 1} = {v}: must be a finite angle in degrees within [-360, 360]."
                )
            out[i, j] = v
    check_view_separation(out)
    return out


def _beam_directions(angles: np.ndarray) -> np.ndarray:
    """Unit beam directions (world) of ``(V, 2)`` view angles in degrees, as ``scripts/drr/geometry.py``."""
    return view_rotation(torch.as_tensor(np.asarray(angles, dtype=np.float64)))[:, :, 2].numpy()


def format_views(angles: np.ndarray) -> str:
    """``(V, 2)`` view angles as text, e.g. ``[0, 0], [90, 0]``."""
    return ", ".join(f"[{a:g}, {b:g}]" for a, b in np.asarray(angles, dtype=np.float64).reshape(-1, 2))


def check_view_separation(angles: Any, min_separation: float = MIN_VIEW_SEPARATION) -> None:
    """Refuse views whose beams run along (nearly) the same line.

    Two views less than ``min_separation`` degrees apart, or nearly opposite (e.g. AP and PA, alpha 0 and 180),
    project the object onto the same plane: the pair holds no depth information to reconstruct from.

    Args:
        angles: ``(V, 2)`` view angles ``(alpha, beta)`` in degrees.
        min_separation: the smallest angle in degrees allowed between the beam lines of two views.

    Raises:
        XRayInputError: naming the two views and the fix.
    """
    ang = np.asarray(angles, dtype=np.float64).reshape(-1, 2)
    beams = _beam_directions(ang)
    for i in range(len(ang)):
        for j in range(i + 1, len(ang)):
            cos = float(np.clip(abs(beams[i] @ beams[j]), 0.0, 1.0))
            apart = math.degrees(math.acos(cos))
            if apart < min_separation:
                raise XRayInputError(
                    f"views {i + 1} and {j + 1} ({format_views(ang[[i, j]])}, alpha and beta in degrees) look along "
                    f"nearly the same line ({apart:.1f} degrees apart, {min_separation:g} needed): they hold no "
                    "depth to reconstruct from; fix: give two different views, e.g. AP and lateral [[0, 0], [90, 0]]."
                )


def hu_to_zscore(img: NdarrayOrTensor, mean: float, std: float) -> NdarrayOrTensor:
    """``(img - mean) / std`` (keeps the array type and, for MetaTensors, the metadata)."""
    return (img - mean) / std


def zscore_images(img: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Z-score every 2-D image of ``(..., H, W)`` over its pixels (float32; TorchScript compatible)."""
    x = img.float()
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True).clamp(min=eps)
    return (x - mean) / std


def highpass_images(img: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Every 2-D image of ``(B, C, H, W)`` minus its Gaussian blur of ``sigma_px`` pixels (edges replicated).

    What varies slowly over an X-ray window (the body's thickness, a wide gas-filled bowel) goes; edges and
    structures smaller than about ``sigma_px`` stay: a constant image gives 0, a linear one 0 farther than about
    ``3 * sigma_px`` from the edges (MONAI's ``separable_filtering`` with a ``gaussian_1d`` kernel, normalised).
    """
    from monai.networks.layers.convutils import gaussian_1d
    from monai.networks.layers.simplelayers import separable_filtering

    if not float(sigma_px) > 0:
        raise ValueError(f"sigma_px must be > 0 pixels, got {sigma_px!r}.")
    if img.dim() != 4:
        raise ValueError(f"highpass_images expects (B, C, H, W) images, got shape {list(img.shape)}.")
    x = img.float()
    kernel = gaussian_1d(torch.tensor(float(sigma_px)), truncated=4.0).to(x)
    kernel = kernel / kernel.sum()
    return x - separable_filtering(x, [kernel, kernel], mode="replicate")


def normalised_cross_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image of two ``(..., H, W)`` tensors: the normalised cross-correlation in [-1, 1] (0 where one is flat)."""
    a = a - a.mean((-2, -1), keepdim=True)
    b = b - b.mean((-2, -1), keepdim=True)
    den = a.norm(dim=(-2, -1)) * b.norm(dim=(-2, -1))
    return torch.where(den > 0, (a * b).sum((-2, -1)) / den.clamp_min(1e-12), torch.zeros_like(den))


def zscore_to_hu(img: NdarrayOrTensor, mean: float, std: float) -> NdarrayOrTensor:
    """``img * std + mean`` (keeps the array type and, for MetaTensors, the metadata)."""
    return img * std + mean


def real_imag_spectrum(
    x: torch.Tensor, spatial_dims: int = 3, norm: str = "ortho", shift: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the FFT of ``x`` over its last ``spatial_dims`` axes.

    Args:
        x: real tensor (any leading axes).
        spatial_dims: number of trailing axes transformed.
        norm: ``torch.fft`` normalisation (``"ortho"``: unitary, Parseval holds).
        shift: move the zero frequency to the centre (``fftshift``).
    """
    dims = tuple(range(x.dim() - spatial_dims, x.dim()))
    spec = torch.fft.fftn(x.float(), dim=dims, norm=norm)
    if shift:
        spec = torch.fft.fftshift(spec, dim=dims)
    return spec.real, spec.imag


def spectral_distance(pred: torch.Tensor, target: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Per-item ``D_real + D_imag``, the Euclidean distances between the real (imaginary) parts of the 3-D
    FFTs of ``pred`` and ``target`` over all channels and voxels of each batch item.

    Args:
        pred: ``(B, C, X, Y, Z)``.
        target: same shape as ``pred``.
        norm: FFT normalisation.

    Returns:
        shape ``(B,)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
    # the FFT is linear: transform the difference once instead of both volumes
    real, imag = real_imag_spectrum(pred - target, spatial_dims=3, norm=norm)
    d_real = torch.linalg.vector_norm(real.flatten(1), dim=1)
    d_imag = torch.linalg.vector_norm(imag.flatten(1), dim=1)
    return d_real + d_imag


def boundary_map(mask: torch.Tensor) -> torch.Tensor:
    """Inner boundary of a binary 3-D mask: foreground voxels with at least one background voxel among
    their 26 neighbours; voxels outside the volume count as background.

    Args:
        mask: tensor whose last three axes are spatial (any leading axes); nonzero = foreground.

    Returns:
        float tensor of the same shape, 1 on the boundary, 0 elsewhere.
    """
    if mask.dim() < 3:
        raise ValueError(f"boundary_map needs a 3-D (or batched) mask, got shape {tuple(mask.shape)}.")
    fg = (mask != 0).float()
    flat = fg.reshape((-1, 1) + tuple(fg.shape[-3:]))
    # the mask minus its erosion by a 3x3x3 cube (MONAI's erode), padded with background
    return (flat - erode(flat, filter_size=3, pad_value=0.0)).reshape(fg.shape)


def maximum_intensity_projections(x: torch.Tensor, spatial_dims: int = 3) -> list[torch.Tensor]:
    """MIPs of ``x`` along each of its last ``spatial_dims`` axes (any leading batch/channel axes).

    Returns:
        ``spatial_dims`` tensors; the i-th is ``x.amax(dim=-spatial_dims + i)``.
    """
    if x.dim() < spatial_dims:
        raise ValueError(f"need at least {spatial_dims} dimensions, got shape {tuple(x.shape)}.")
    return [torch.amax(x, dim=d) for d in range(x.dim() - spatial_dims, x.dim())]


def item_seed(name: Any, seed: int = 0) -> int:
    """A noise seed from an item's name (e.g. its ``id``) and a base seed, the same in every process."""
    return (zlib.crc32(str(name).encode("utf-8")) + 1_000_003 * int(seed)) % (2**31 - 1)
