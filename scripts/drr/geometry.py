# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Cone-beam geometry of the simulated X-ray system.

World coordinates are the volumes' RAS millimetres (x: left -> right, y: posterior -> anterior,
z: inferior -> superior). A view is given by two angles in degrees:

- ``alpha``: rotation of source and detector about the superior (z) axis through the isocentre.
  ``alpha = 0`` is the AP view: the source is anterior, the beam runs anterior -> posterior and the
  detector is behind the patient. ``alpha = 90`` is the lateral view with the source on the patient's
  left (the source moves from anterior towards the patient's left as ``alpha`` grows).
- ``beta``: tilt about the detector's horizontal axis (for the AP view the left-right axis); a positive
  ``beta`` moves the source towards superior (the beam points caudally).

Rotation: ``R(alpha, beta) = Rz(alpha) @ Rx(beta)`` applied to the AP frame.

Image orientation (every image this package writes, ``(H, W)`` arrays, index ``[row, col]``):

- row 0 is the most superior row; rows run superior -> inferior (for ``beta = 0``);
- the image is seen from the source side, the way a radiologist reads an AP radiograph: in the AP view
  the patient's right is on the image's left (columns run from the patient's right to left); in the
  lateral view (``alpha = 90``) anterior is on the image's left (columns run anterior -> posterior).

Pixel coordinates ``(u, v)`` = (column, row) with pixel centres at integers; the principal ray (source
through isocentre) hits the detector centre ``((W - 1) / 2, (H - 1) / 2)``. The camera frame is the
usual computer-vision one: x along columns, y along rows, z from the source towards the detector, so
``P = K [Rc | -Rc s]`` with ``K = [[sdd/du, 0, (W-1)/2], [0, sdd/dv, (H-1)/2], [0, 0, 1]]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["ConeBeamGeometry", "as_angles", "view_rotation", "crop_centre", "grid_affine", "DEFAULT_SDD", "DEFAULT_SOD"]

DEFAULT_SDD = 1020.0
DEFAULT_SOD = 700.0


def as_angles(angles: Sequence | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate view angles and return them as a float64 tensor of shape (V, 2): (alpha, beta) in degrees.

    Accepts a list of (alpha, beta) pairs, or a flat list of alphas (then beta = 0): ``(0, 90)`` is the AP and
    the lateral view, ``((0, 0), (90, 0))`` the same written out.
    """
    try:
        a = torch.as_tensor(np.asarray(angles, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise ValueError(f"angles must be numbers in degrees, e.g. [[0, 0], [90, 0]]; got {angles!r}.") from e
    if a.ndim == 0:
        a = a.reshape(1, 1)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2 or a.shape[-1] not in (1, 2) or a.shape[0] == 0:
        raise ValueError(
            f"angles must have shape (V, 2) = (alpha, beta) per view in degrees; got shape {tuple(a.shape)}."
        )
    if a.shape[-1] == 1:
        a = torch.cat([a, torch.zeros_like(a)], dim=-1)
    if not torch.isfinite(a).all():
        raise ValueError(f"angles contain NaN or infinity: {a.tolist()}.")
    if (a.abs() > 360).any():
        raise ValueError(
            f"angles are degrees and must lie in [-360, 360]; got {a.tolist()} (radians are not accepted)."
        )
    return a


# batched over views in torch, on the projector's device and dtype (scipy's Rotation is NumPy on the CPU)
def _rot_z(a: torch.Tensor) -> torch.Tensor:
    c, s, o, i = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([torch.stack([c, -s, o], -1), torch.stack([s, c, o], -1), torch.stack([o, o, i], -1)], -2)


def _rot_x(a: torch.Tensor) -> torch.Tensor:
    c, s, o, i = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([torch.stack([i, o, o], -1), torch.stack([o, c, -s], -1), torch.stack([o, s, c], -1)], -2)


# AP frame: columns are e_u (image columns: towards the patient's left), e_v (image rows: towards
# inferior) and e_d (beam direction: anterior -> posterior).
_AP_FRAME = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]], dtype=torch.float64).T


def view_rotation(angles: torch.Tensor) -> torch.Tensor:
    """Camera axes in world coordinates for each view: (V, 3, 3) with columns e_u, e_v, e_d."""
    a = torch.deg2rad(as_angles(angles))
    return _rot_z(a[:, 0]) @ _rot_x(a[:, 1]) @ _AP_FRAME


def crop_centre(affine: torch.Tensor | np.ndarray, spatial_shape: Sequence[int]) -> torch.Tensor:
    """World coordinates (mm) of the centre of a volume grid (the default isocentre)."""
    aff = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    centre = torch.tensor([(n - 1) / 2.0 for n in spatial_shape] + [1.0], dtype=torch.float64)
    return (aff @ centre)[..., :3]


def grid_affine(spatial_size: Sequence[int], spacing: float | Sequence[float], centre: Sequence[float] = (0, 0, 0)):
    """RAS affine (4x4 float64 tensor) of an axis-aligned grid of ``spatial_size`` voxels centred on ``centre``."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = np.asarray(centre, dtype=np.float64) - sp * (np.asarray(spatial_size, dtype=np.float64) - 1) / 2
    return torch.as_tensor(aff)


@dataclass
class ConeBeamGeometry:
    """Source, detector and pixel grid of a cone-beam X-ray system (distances in mm).

    Args:
        sdd: source-to-detector distance.
        sod: source-to-isocentre distance.
        detector_shape: (H, W) pixels (rows, columns).
        pixel_spacing: (row, column) pixel size on the detector in mm.
    """

    sdd: float = DEFAULT_SDD
    sod: float = DEFAULT_SOD
    detector_shape: tuple[int, int] = (128, 128)
    pixel_spacing: tuple[float, float] = (1.6, 1.6)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in np.broadcast_to(np.asarray(self.detector_shape), (2,)))
        spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(self.pixel_spacing, dtype=float), (2,)))
        if min(shape) < 1:
            raise ValueError(f"detector_shape must be at least 1 x 1 pixels, got {shape}.")
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"pixel_spacing must be positive mm, got {spacing}.")
        if not (math.isfinite(self.sod) and math.isfinite(self.sdd) and 0 < self.sod < self.sdd):
            raise ValueError(f"need 0 < sod < sdd (mm); got sod={self.sod}, sdd={self.sdd}.")
        self.detector_shape, self.pixel_spacing = shape, spacing
        self.sdd, self.sod = float(self.sdd), float(self.sod)

    @classmethod
    def for_crop(
        cls,
        roi_size: int | Sequence[int] = 128,
        spacing: float = 1.0,
        sdd: float = DEFAULT_SDD,
        sod: float = DEFAULT_SOD,
        detector_size: int | Sequence[int] | None = None,
    ) -> ConeBeamGeometry:
        """Default geometry for a cubic crop: detector of ``roi_size`` pixels (unless ``detector_size``)
        whose pixels are sized so that the whole crop is inside the image in the AP and lateral views
        (the crop's face nearest to the source, magnified by ``sdd / (sod - half side)``, fills the detector).

        Args:
            roi_size: crop side in voxels (an int or the largest of three).
            spacing: voxel size in mm.
            sdd: source-to-detector distance.
            sod: source-to-isocentre distance.
            detector_size: detector pixels (int or (H, W)); default ``roi_size``.
        """
        n = int(max(np.atleast_1d(roi_size)))
        shape = np.broadcast_to(np.asarray(n if detector_size is None else detector_size), (2,))
        if n < 1 or min(shape) < 1:
            raise ValueError(f"roi_size and detector_size must be >= 1, got {roi_size}, {detector_size}.")
        half = n * float(spacing) / 2.0
        if sod <= half * math.sqrt(3):
            raise ValueError(f"sod={sod} mm puts the source inside or too close to a {2 * half:g} mm crop.")
        extent = 2.0 * half * sdd / (sod - half)  # detector width that sees the near face
        return cls(
            sdd=sdd,
            sod=sod,
            detector_shape=tuple(int(s) for s in shape),
            pixel_spacing=tuple(extent / s for s in shape),
        )

    # -- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["detector_shape"] = list(self.detector_shape)
        d["pixel_spacing"] = list(self.pixel_spacing)
        return d

    @classmethod
    def from_any(cls, geometry: ConeBeamGeometry | Mapping | None, **defaults) -> ConeBeamGeometry:
        """A geometry from an instance, a dict (as written by ``to_dict``) or None (``for_crop(**defaults)``)."""
        if geometry is None:
            return cls.for_crop(**defaults)
        if isinstance(geometry, ConeBeamGeometry):
            return geometry
        if isinstance(geometry, Mapping):
            keys = ("sdd", "sod", "detector_shape", "pixel_spacing")
            return cls(**{k: _plain(geometry[k]) for k in keys if k in geometry})
        raise TypeError(f"geometry must be a ConeBeamGeometry, a dict or None, got {type(geometry).__name__}.")

    @property
    def magnification(self) -> float:
        """Magnification at the isocentre, sdd / sod."""
        return self.sdd / self.sod

    # -- per-view quantities ---------------------------------------------------------------------------------
    def frames(self, angles, isocentre=(0.0, 0.0, 0.0), object_rotation=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera axes (V, 3, 3; columns e_u, e_v, e_d) and source positions (V, 3), float64, world mm.

        Args:
            angles: (V, 2) degrees.
            isocentre: world point the principal rays pass through.
            object_rotation: optional (3, 3) or (V, 3, 3) rotation of the object about the isocentre;
                imaging a rotated object equals imaging the fixed object with the inverse-rotated system.
        """
        rot = view_rotation(angles)
        if object_rotation is not None:
            r = torch.as_tensor(np.asarray(object_rotation, dtype=np.float64))
            rot = r.transpose(-1, -2) @ rot
        iso = torch.as_tensor(np.asarray(isocentre, dtype=np.float64)).reshape(3)
        source = iso - self.sod * rot[..., :, 2]
        return rot, source

    def pixel_positions(
        self, angles, isocentre=(0.0, 0.0, 0.0), object_rotation=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Source (V, 3) and pixel-centre positions (V, H, W, 3) in world mm (float64)."""
        rot, source = self.frames(angles, isocentre, object_rotation)
        h, w = self.detector_shape
        dv, du = self.pixel_spacing
        u = (torch.arange(w, dtype=torch.float64) - (w - 1) / 2) * du
        v = (torch.arange(h, dtype=torch.float64) - (h - 1) / 2) * dv
        centre = source + self.sdd * rot[..., :, 2]
        pix = (
            centre[:, None, None, :]
            + u[None, None, :, None] * rot[:, None, None, :, 0]
            + v[None, :, None, None] * rot[:, None, None, :, 1]
        )
        return source, pix

    def intrinsic(self) -> torch.Tensor:
        """3x3 intrinsic matrix K (pixel centres at integers)."""
        h, w = self.detector_shape
        dv, du = self.pixel_spacing
        return torch.tensor(
            [[self.sdd / du, 0.0, (w - 1) / 2], [0.0, self.sdd / dv, (h - 1) / 2], [0.0, 0.0, 1.0]], dtype=torch.float64
        )

    def extrinsic(self, angles, isocentre=(0.0, 0.0, 0.0), object_rotation=None) -> torch.Tensor:
        """World -> camera rigid transforms, (V, 4, 4)."""
        rot, source = self.frames(angles, isocentre, object_rotation)
        rc = rot.transpose(-1, -2)
        ext = torch.zeros(rot.shape[0], 4, 4, dtype=torch.float64)
        ext[:, :3, :3] = rc
        ext[:, :3, 3] = -(rc @ source[..., None])[..., 0]
        ext[:, 3, 3] = 1.0
        return ext

    def projection_matrices(self, angles, isocentre=(0.0, 0.0, 0.0), object_rotation=None) -> torch.Tensor:
        """3x4 projection matrices (V, 3, 4): world homogeneous point -> (u w, v w, w), pixel (col, row)."""
        return self.intrinsic() @ self.extrinsic(angles, isocentre, object_rotation)[:, :3, :]

    def project_points(self, points, angles, isocentre=(0.0, 0.0, 0.0), object_rotation=None) -> torch.Tensor:
        """Pixel coordinates (V, N, 2) = (col, row) of world points (N, 3)."""
        p = self.projection_matrices(angles, isocentre, object_rotation)
        pts = torch.as_tensor(np.asarray(points, dtype=np.float64)).reshape(-1, 3)
        hom = torch.cat([pts, torch.ones(pts.shape[0], 1, dtype=torch.float64)], -1)
        q = torch.einsum("vij,nj->vni", p, hom)
        return q[..., :2] / q[..., 2:]


def _plain(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x.tolist() if x.ndim else x.item()
    return x
