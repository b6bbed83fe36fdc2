# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Whole scans for X-rays whose rays cross the body: storage convention, field-of-view completion, ray slab.

A body X-ray window is the projection of a patient's whole scan onto the detector window the model sees,
centred on the target vertebra (``DRR(..., reference=crop)`` in :mod:`scripts.transforms.drr`). The scan is
kept per patient by ``python -m scripts.prepare`` as ``<patient>/<patient>_body.nii.gz``: int16 HU on an
isotropic RAS grid, voxels outside the scanner's field of view set to :data:`OUTSIDE_FOV`.

Where the scan's field of view (or its array) ends inside the body, rays would leave the patient early. For
such scans :func:`complete_body` fills the missing trunk with a smooth soft-tissue model: an elliptic cylinder
of :data:`SOFT_TISSUE_HU` around the spine, only on the axial slices whose tissue reaches the edge of the
field of view (at least :data:`CUT_EDGE_FRACTION` of its edge is tissue, with hysteresis along z, and short gaps between
such slices closed); everything else outside the field of
view is air. This is an approximation (no ribs, organs or
arms outside the field of view); ``scripts.prepare`` records per vertebra how much of its window is affected
(``body_cut_ap``, ``body_cut_lateral``).

:func:`ray_slab` finds the part of a scan that the rays of a window can cross, so that only that part is
converted to materials and sampled: the cost of a window then grows with its pixels times the path length.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .geometry import ConeBeamGeometry, as_angles

__all__ = [
    "OUTSIDE_FOV",
    "SOFT_TISSUE_HU",
    "TISSUE_HU",
    "TRUNK_SEMI_AXES_MM",
    "CUT_EDGE_FRACTION",
    "CUT_EDGE_FRACTION_LOW",
    "CUT_GAP_MM",
    "outside_fov",
    "complete_body",
    "body_cut_fractions",
    "load_body_scan",
    "ray_slab",
]

#: stored value of voxels outside the scanner's field of view (int16 minimum).
OUTSIDE_FOV = -32768
#: HU of the soft-tissue completion.
SOFT_TISSUE_HU = 30.0
#: HU above which a voxel counts as body (skin, fat and denser).
TISSUE_HU = -500.0
#: left-right and anterior-posterior semi-axes (mm) of the completed trunk, an adult's about the lower chest.
TRUNK_SEMI_AXES_MM = (170.0, 120.0)
#: the completed trunk's centre lies this far anterior (mm) of the centroid of the scan's visible tissue.
TRUNK_CENTRE_ANTERIOR_MM = 50.0
#: share of a slice's field-of-view edge that must be tissue for the slice to count as cut.
CUT_EDGE_FRACTION = 0.1
#: a slice whose edge is at least this share tissue counts as cut too when it belongs to a run of such slices
#: that holds a cut slice (hysteresis: the share flickers about :data:`CUT_EDGE_FRACTION` as the body's width
#: changes, and completing one slice but not its neighbour draws a band across the X-ray).
CUT_EDGE_FRACTION_LOW = 0.02
#: uncut runs of slices shorter than this (mm) between cut slices are completed too (a waist narrower than the
#: trunk model between two completed levels would show as a dark band across both views).
CUT_GAP_MM = 100.0
_AIR_HU = -1000.0


def outside_fov(values: np.ndarray, padding: float | None) -> np.ndarray:
    """Voxels outside the scanner's field of view: regions of the padding value that reach a face of the array.

    Args:
        values: (X, Y, Z) stored CT values.
        padding: the stored value outside the field of view (0 for windowed 0-255 scans); ``None``: values
            below -1500 (HU scans pad with -2000, -2048 or -3024).

    Returns:
        boolean mask (air clipped to the padding value inside the body, e.g. in the trachea, is not outside).
    """
    pad = np.asarray(values) < -1500 if padding is None else np.asarray(values) == padding
    if not pad.any():
        return pad
    regions, _ = ndimage.label(pad)
    faces = [regions[0], regions[-1], regions[:, 0], regions[:, -1], regions[:, :, 0], regions[:, :, -1]]
    outer = np.unique(np.concatenate([f.ravel() for f in faces]))
    outer = outer[outer != 0]
    return np.isin(regions, outer) if outer.size else np.zeros_like(pad)


def _cut_slices(hu: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """(Z,) whether the body of each axial slice is cut: tissue on at least :data:`CUT_EDGE_FRACTION` of the voxels
    at the edge of the field of view or the array's sides (a patient table alone touches a few per cent), or on
    at least :data:`CUT_EDGE_FRACTION_LOW` of them in a run of slices along z that holds such a slice."""
    tissue = (hu > TISSUE_HU) & ~outside
    edge = ndimage.binary_dilation(outside, structure=np.ones((3, 3, 1), dtype=bool))
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    edge &= ~outside
    share = (tissue & edge).sum(axis=(0, 1)) / np.maximum(edge.sum(axis=(0, 1)), 1)
    runs, _ = ndimage.label(share >= CUT_EDGE_FRACTION_LOW)
    return np.isin(runs, np.unique(runs[(share >= CUT_EDGE_FRACTION) & (runs > 0)]))


def complete_body(
    hu: np.ndarray, outside: np.ndarray, affine: np.ndarray, semi_axes_mm: Sequence[float] = TRUNK_SEMI_AXES_MM
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The scan with its field of view completed: air outside the body, soft tissue where the scan cuts the body.

    Args:
        hu: (X, Y, Z) HU on an axis-aligned RAS grid (diagonal ``affine``).
        outside: (X, Y, Z) voxels outside the field of view.
        affine: 4x4 voxel-to-world matrix.
        semi_axes_mm: left-right and anterior-posterior semi-axes of the trunk model.

    Returns:
        ``(hu, affine, completed)``: float32 HU (padded in x and y when the trunk model reaches beyond the array),
        its affine, and whether any soft tissue was added.
    """
    hu = np.asarray(hu, dtype=np.float32)
    outside = np.asarray(outside, dtype=bool)
    cut = _cut_slices(hu, outside)
    out = np.where(outside, np.float32(_AIR_HU), hu)
    if not cut.any():
        return out, np.asarray(affine, dtype=np.float64), False
    spacing = np.abs(np.diag(np.asarray(affine, dtype=np.float64))[:3])
    gap = max(int(round(CUT_GAP_MM / spacing[2])), 1)
    cut = cut | ndimage.binary_closing(cut, structure=np.ones(gap, dtype=bool))
    tissue = (hu > TISSUE_HU) & ~outside & cut[None, None, :]
    ix, iy, _ = np.nonzero(tissue)
    cx, cy = float(ix.mean()), float(iy.mean()) + TRUNK_CENTRE_ANTERIOR_MM / spacing[1]
    ax, ay = semi_axes_mm[0] / spacing[0], semi_axes_mm[1] / spacing[1]
    pad = [
        (max(0, int(np.ceil(ax - cx)) + 1), max(0, int(np.ceil(cx + ax - (hu.shape[0] - 1))) + 1)),
        (max(0, int(np.ceil(ay - cy)) + 1), max(0, int(np.ceil(cy + ay - (hu.shape[1] - 1))) + 1)),
        (0, 0),
    ]
    out = np.pad(out, pad, constant_values=_AIR_HU)
    missing = np.pad(outside, pad, constant_values=True)
    cx, cy = cx + pad[0][0], cy + pad[1][0]
    gx, gy = np.ogrid[: out.shape[0], : out.shape[1]]
    inside = ((gx - cx) / ax) ** 2 + ((gy - cy) / ay) ** 2 <= 1.0
    fill = missing & inside[:, :, None] & cut[None, None, :]
    out[fill] = SOFT_TISSUE_HU
    aff = np.asarray(affine, dtype=np.float64).copy()
    aff[:3, 3] -= aff[:3, :3] @ np.array([pad[0][0], pad[1][0], 0.0])
    return out, aff, True


def body_cut_fractions(
    hu: np.ndarray, outside: np.ndarray, affine: np.ndarray, centre_mm: Sequence[float], half_width_mm: float
) -> dict[str, float]:
    """Fractions of a window's AP and lateral rays (a 5 x 5 sample) that leave the scan inside the body.

    A ray (a line along y for AP, along x for lateral, through the window around ``centre_mm``) leaves the scan
    inside the body when its first or last voxel inside the field of view holds tissue.
    """
    hu = np.asarray(hu)
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    offsets = np.linspace(-half_width_mm, half_width_mm, 5)
    result = {}
    for name, along, across in (("body_cut_ap", 1, 0), ("body_cut_lateral", 0, 1)):
        cut = 0
        for da in offsets:
            for dz in offsets:
                p = np.asarray(centre_mm, dtype=np.float64).copy()
                p[across] += da
                p[2] += dz
                idx = np.round(inv[:3, :3] @ p + inv[:3, 3]).astype(int)
                if not all(0 <= idx[k] < hu.shape[k] for k in (across, 2)):
                    cut += 1  # the window reaches beyond the scan's array
                    continue
                sl = [int(idx[0]), int(idx[1]), int(idx[2])]
                sl[along] = slice(None)
                line, inside = hu[tuple(sl)], ~np.asarray(outside)[tuple(sl)]
                if not inside.any():
                    cut += 1
                    continue
                first, last = np.flatnonzero(inside)[[0, -1]]
                cut += int(line[first] > TISSUE_HU or line[last] > TISSUE_HU)
        result[name] = cut / offsets.size**2
    return result


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, complete: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
    import nibabel as nib

    img = nib.load(path)
    stored = np.asarray(img.dataobj)
    if stored.ndim == 4 and stored.shape[-1] == 1:
        stored = stored[..., 0]
    if stored.ndim != 3:
        raise ValueError(f"the body scan {path} must be a 3-D volume, got shape {stored.shape}.")
    outside = stored == OUTSIDE_FOV
    affine = np.asarray(img.affine, dtype=np.float64)
    if complete:
        hu, affine, completed = complete_body(stored, outside, affine)
    else:
        hu, completed = np.where(outside, np.float32(_AIR_HU), stored.astype(np.float32)), False
    return torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None], torch.from_numpy(affine), completed


def load_body_scan(path: str | os.PathLike, complete: bool = True) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """A patient's whole scan for body X-rays, cached per file (the last 8 files read stay in memory).

    Args:
        path: ``<patient>_body.nii.gz`` written by ``python -m scripts.prepare``.
        complete: fill the body where the field of view cuts it (:func:`complete_body`); else air.

    Returns:
        ``(hu, affine, completed)``: (1, X, Y, Z) float32 HU (shared: do not modify it), the 4x4 float64 affine,
        and whether soft tissue was added.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"no body scan at {p}: prepare the dataset again with python -m scripts.prepare (it writes "
            "<patient>/<patient>_body.nii.gz) to simulate X-rays through the whole body."
        )
    return _load(str(p.resolve()), p.stat().st_mtime_ns, bool(complete))


def ray_slab(
    shape: Sequence[int],
    affine: torch.Tensor | np.ndarray,
    geometry: ConeBeamGeometry,
    angles,
    isocentre: Sequence[float],
    object_rotation=None,
    margin: int = 2,
) -> tuple[slice, slice, slice]:
    """The index box of a volume that the rays of every view's detector window can cross.

    The rays of a rectangular window fill the pyramid spanned by the source and the window's four corners. Cut at
    the nearest and farthest depths (along the view's axis) of the volume's corners, the pyramid is the convex
    hull of its four edge rays at those two depths; the bounding box of these eight points in index coordinates,
    widened by ``margin`` voxels (interpolation, the half pixel beyond the corner pixels' centres) and clipped to
    the volume, holds every sample the window needs.

    Args:
        shape: (X, Y, Z) voxels of the volume.
        affine: its 4x4 voxel-to-world matrix.
        geometry: the X-ray system (its detector is the window).
        angles: (V, 2) view angles in degrees.
        isocentre: world point the principal rays pass through.
        object_rotation: optional rotation of the object about the isocentre.
        margin: voxels added on each side.

    Returns:
        three slices; empty when no ray crosses the volume.
    """
    aff = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    ang = as_angles(angles)
    rot, source = geometry.frames(ang, isocentre, object_rotation)
    _, pix = geometry.pixel_positions(ang, isocentre, object_rotation)
    h, w = geometry.detector_shape
    corners = pix[:, [0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]]  # (V, 4, 3), at depth sdd
    box = torch.tensor(list(itertools.product(*[(-0.5, s - 0.5) for s in shape])), dtype=torch.float64)
    world = box @ aff[:3, :3].T + aff[:3, 3]  # (8, 3) corners of the volume
    depth = torch.einsum("vj,nvj->vn", rot[..., :, 2], world[:, None, :] - source[None])  # (V, 8)
    near = torch.clamp(depth.min(1).values, min=0.0)
    far = torch.clamp(depth.max(1).values, min=0.0)
    rays = corners - source[:, None, :]  # reach depth sdd
    pts = torch.cat([source[:, None, :] + rays * (d / geometry.sdd)[:, None, None] for d in (near, far)], 1).reshape(
        -1, 3
    )
    inv = torch.linalg.inv(aff)
    idx = pts @ inv[:3, :3].T + inv[:3, 3]
    size = torch.tensor([float(s) for s in shape], dtype=torch.float64)
    lo = torch.clamp(torch.floor(idx.min(0).values) - margin, min=0)
    hi = torch.minimum(torch.ceil(idx.max(0).values) + margin + 1, size)
    hi = torch.maximum(hi, lo)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]
