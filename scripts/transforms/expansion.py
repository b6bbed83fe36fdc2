# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Dimension expansion: two X-ray images (V, H, W) -> a V-channel volume (V, X, Y, Z) on the CT grid.

Modes:

- ``"backproject"`` (cone beam, any angle): every voxel takes the (bilinearly interpolated) detector value
  where the ray from the source through the voxel centre hits the detector, ``P @ [x, 1]`` with the
  projection matrices of ``scripts/drr/geometry.py``. Voxels whose ray misses the detector get 0.
- ``"replicate"`` (the paper's E2E / BX2S expansion): each image is copied along its beam axis (the AP
  image along the antero-posterior axis, the lateral image along the left-right axis), scaled to the
  isocentre plane (magnification sdd / sod). It needs views whose beam is parallel to a grid axis
  (alpha a multiple of 90 degrees, beta 0, an axis-aligned grid) and refuses other views.

For orthogonal views the two agree in the near-parallel limit (large sod at the same magnification).
Images are z-scored per image before expansion (``zscore=True``), so 0 outside the detector is the mean.

Geometry and grid come from, in this order: the arguments of the call, the image's
``meta["drr_geometry"]`` written by :class:`scripts.transforms.DRR`, and the transform's defaults
(``ConeBeamGeometry.for_crop(spatial_size, spacing)`` with the image's detector size, isocentre at the
grid centre, grid = ``spatial_size`` voxels of ``spacing`` mm centred on the isocentre), so real
radiographs with known angles expand without a CT. View angles: argument, ``meta["drr_geometry"]``,
``meta["angles"]`` (the X-ray loader's key), then AP and lateral.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from scripts.drr.geometry import DEFAULT_SDD, DEFAULT_SOD, ConeBeamGeometry, as_angles, crop_centre, grid_affine
from scripts.errors import XRayInputError
from scripts.functional import format_views, zscore_images  # zscore_images: re-exported, as before

__all__ = ["DimensionExpansion", "DimensionExpansiond", "EXPANSION_MODES", "check_expansion_angles", "zscore_images"]

EXPANSION_MODES = ("replicate", "backproject")
# view angles within this many degrees of a multiple of 90 count as grid-aligned
_AXIS_TOLERANCE = 0.01


def _to_f64(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


class DimensionExpansion(Transform):
    """Expand images (V, H, W) to a volume (V, X, Y, Z) aligned with the CT grid.

    Args:
        mode: "backproject" or "replicate".
        spatial_size: output grid size when no reference affine is given (int or 3 ints).
        spacing: output voxel size in mm when no reference affine is given.
        geometry: default ``ConeBeamGeometry`` (or dict). None: the images' own geometry when they carry one
            (DRRs), else ``sdd``, ``sod`` and the images' pixel spacing (``meta["pixel_spacing"]``, e.g. from
            DICOM or a datalist, see :class:`~scripts.io.xray.LoadXRayPair`) when known and
            ``use_pixel_spacing``, else ``for_crop`` of the output grid (the detector just sees the crop).
        zscore: z-score each image before expansion.
        sdd: source-to-detector distance (mm) of the X-ray system when no geometry is given.
        sod: source-to-isocentre distance (mm) of the X-ray system when no geometry is given.
        use_pixel_spacing: use the images' pixel spacing, when known, for the default geometry.
    """

    def __init__(
        self,
        mode: str = "replicate",
        spatial_size: int | Sequence[int] = 128,
        spacing: float = 1.0,
        geometry: ConeBeamGeometry | Mapping | None = None,
        zscore: bool = True,
        sdd: float = DEFAULT_SDD,
        sod: float = DEFAULT_SOD,
        use_pixel_spacing: bool = True,
    ) -> None:
        if mode not in EXPANSION_MODES:
            raise ValueError(f"mode must be one of {EXPANSION_MODES}, got {mode!r}.")
        size = np.broadcast_to(np.asarray(spatial_size, dtype=np.int64), (3,))
        if np.any(size < 1) or not spacing > 0:
            raise ValueError(f"spatial_size must be >= 1 and spacing > 0; got {spatial_size}, {spacing}.")
        self.mode = mode
        self.spatial_size = tuple(int(s) for s in size)
        self.spacing = float(spacing)
        self.geometry = None if geometry is None else ConeBeamGeometry.from_any(geometry)
        self.zscore = zscore
        self.sdd, self.sod, self.use_pixel_spacing = float(sdd), float(sod), use_pixel_spacing

    def __call__(
        self,
        img: torch.Tensor,
        angles: Any = None,
        geometry: ConeBeamGeometry | Mapping | None = None,
        affine: Any = None,
        spatial_size: Sequence[int] | None = None,
        isocentre: Any = None,
    ) -> MetaTensor:
        """Expand ``img``.

        Args:
            img: (V, H, W) images (a MetaTensor from ``DRR`` carries its geometry).
            angles: (V, 2) view angles in degrees (or V alphas).
            geometry: X-ray system.
            affine: voxel-to-world matrix of the output grid (e.g. the CT's affine).
            spatial_size: output grid size (with ``affine``; default the transform's).
            isocentre: world isocentre (default: from the DRR meta, else the grid centre).
        """
        if img.ndim != 3:
            raise ValueError(f"DimensionExpansion expects images (V, H, W); got shape {tuple(img.shape)}.")
        meta = img.meta.get("drr_geometry", {}) if isinstance(img, MetaTensor) else {}
        h, w = img.shape[1:]
        if geometry is None and meta:
            geometry = meta
        if geometry is None:
            geometry = self.geometry
        size = tuple(int(s) for s in (spatial_size if spatial_size is not None else self.spatial_size))
        if geometry is None and self.use_pixel_spacing:
            geometry = self._geometry_from_pixel_spacing(img, (h, w))
        if geometry is None:
            # the default X-ray system of the output grid (the one scripts.simulate and DRR use for a crop)
            spacing = self.spacing if affine is None else float(np.linalg.norm(_to_f64(affine)[:3, :3], axis=0).max())
            geometry = ConeBeamGeometry.for_crop(max(size), spacing, self.sdd, self.sod, detector_size=(h, w))
        geometry = ConeBeamGeometry.from_any(geometry)
        if tuple(geometry.detector_shape) != (h, w):
            raise ValueError(
                f"images are {h}x{w} pixels but the geometry's detector is {geometry.detector_shape}: resize the "
                "images (LoadXRayPair spatial_size) or pass a geometry with this detector size."
            )
        if angles is None:
            angles = meta.get("angles")
        if angles is None and isinstance(img, MetaTensor):
            angles = img.meta.get("angles")
        if angles is None:
            angles = (0.0, 90.0)
        ang = as_angles(_to_f64(angles))
        if ang.shape[0] != img.shape[0]:
            raise ValueError(f"{img.shape[0]} images but {ang.shape[0]} view angles ({ang.tolist()}).")
        if isocentre is None and "isocentre" in meta:
            isocentre = meta["isocentre"]
        if affine is None:
            centre = (0.0, 0.0, 0.0) if isocentre is None else _to_f64(isocentre).tolist()
            affine = grid_affine(size, self.spacing, centre)
        aff = _to_f64(affine)
        iso = crop_centre(aff, size) if isocentre is None else _to_f64(isocentre).reshape(3)
        data = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img).float()
        if self.zscore:
            data = zscore_images(data)
        vol = self.expand(data, ang, geometry, aff, size, iso)
        name = img.meta.get("filename_or_obj", "") if isinstance(img, MetaTensor) else ""
        return MetaTensor(
            vol, affine=aff, meta={"expansion_mode": self.mode, "angles": ang.numpy(), "filename_or_obj": name}
        )

    def _geometry_from_pixel_spacing(self, img: torch.Tensor, shape: tuple[int, int]) -> ConeBeamGeometry | None:
        """The system ``sdd``, ``sod`` with the images' known pixel spacing, or None where it is unknown."""
        spacing = img.meta.get("pixel_spacing") if isinstance(img, MetaTensor) else None
        if spacing is None:
            return None
        sp = np.asarray(spacing, dtype=np.float64).reshape(-1, 2)
        if not np.all(np.isfinite(sp)):
            return None
        if not np.allclose(sp, sp[0], rtol=1e-3):
            raise ValueError(
                f"the views have different pixel spacings {sp.tolist()} mm; resample them to one spacing, or pass "
                "a geometry."
            )
        return ConeBeamGeometry(self.sdd, self.sod, shape, tuple(sp[0]))

    def expand(self, data, ang, geometry: ConeBeamGeometry, aff, size, iso) -> torch.Tensor:
        """Sample the images at the projections of the grid's voxel centres: (V, X, Y, Z)."""
        rot, source = geometry.frames(ang, iso)  # (V, 3, 3) columns e_u, e_v, e_d
        n_v = ang.shape[0]
        axes = [torch.arange(s, dtype=torch.float64) for s in size]
        if self.mode == "replicate":
            beam_idx = torch.linalg.solve(aff[:3, :3], rot[:, :, 2].T).T  # beam directions in index space
            beam_idx = beam_idx / torch.linalg.norm(beam_idx, dim=-1, keepdim=True)
            axis = beam_idx.abs().argmax(-1)
            if (beam_idx.abs().max(-1).values < np.cos(np.deg2rad(_AXIS_TOLERANCE))).any():
                raise ValueError(
                    f"mode='replicate' needs views whose beam is parallel to a grid axis (alpha a multiple of 90, "
                    f"beta 0); got angles {ang.tolist()}: use mode='backproject' for other views."
                )
        out = []
        for v in range(n_v):  # per view (V = 2): the voxels are processed in one vectorised call
            idx = list(axes)
            if self.mode == "replicate":
                idx[int(axis[v])] = torch.zeros(1, dtype=torch.float64)  # one plane, copied along the beam axis
            grid = torch.stack(torch.meshgrid(*idx, indexing="ij"), -1)
            world = grid @ aff[:3, :3].T + aff[:3, 3]
            if self.mode == "replicate":  # move every voxel along the beam onto the isocentre plane
                e_d = rot[v, :, 2]
                world = world - ((world - iso) @ e_d)[..., None] * e_d
            cam = (world - source[v]) @ rot[v]  # camera coordinates (u, v, depth)
            k = geometry.intrinsic()
            u = k[0, 0] * cam[..., 0] / cam[..., 2] + k[0, 2]
            r = k[1, 1] * cam[..., 1] / cam[..., 2] + k[1, 2]
            h, w = data.shape[1:]
            g = torch.stack([2 * u / max(w - 1, 1) - 1, 2 * r / max(h - 1, 1) - 1], -1).float()
            sampled = F.grid_sample(
                data[v][None, None], g.reshape(1, -1, 1, 2), mode="bilinear", padding_mode="zeros", align_corners=True
            ).reshape(grid.shape[:3])
            out.append(sampled.expand(*size) if self.mode == "replicate" else sampled)
        return torch.stack(out).contiguous()


class DimensionExpansiond(MapTransform):
    """Dictionary version of :class:`DimensionExpansion`.

    Args:
        keys: image keys (default "drr").
        output_keys: output keys (default "image" for one key).
        mode: "replicate" or "backproject".
        ref_key: optional key of a volume (e.g. "ct") whose affine and spatial shape define the output grid.
        geometry_key: key of a geometry dict (default "<key>_geometry" when present; the image's meta is used
            otherwise).
        angles_key: key of the view angles used when neither the geometry nor the meta has them.
        spatial_size, spacing, geometry, zscore, sdd, sod, use_pixel_spacing: see :class:`DimensionExpansion`.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "drr",
        output_keys: str | Sequence[str] | None = None,
        mode: str = "replicate",
        ref_key: str | None = None,
        geometry_key: str | None = None,
        angles_key: str = "angles",
        spatial_size: int | Sequence[int] = 128,
        spacing: float = 1.0,
        geometry: ConeBeamGeometry | Mapping | None = None,
        zscore: bool = True,
        sdd: float = DEFAULT_SDD,
        sod: float = DEFAULT_SOD,
        use_pixel_spacing: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if output_keys is None:
            output_keys = ["image"] if len(self.keys) == 1 else [f"{k}_expanded" for k in self.keys]
        self.output_keys = [output_keys] if isinstance(output_keys, str) else list(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"need one output key per key: keys={self.keys}, output_keys={self.output_keys}.")
        self.expander = DimensionExpansion(mode, spatial_size, spacing, geometry, zscore, sdd, sod, use_pixel_spacing)
        self.ref_key, self.geometry_key, self.angles_key = ref_key, geometry_key, angles_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        affine = size = None
        if self.ref_key is not None:
            ref = d[self.ref_key]
            if not isinstance(ref, MetaTensor):
                raise ValueError(f"ref_key {self.ref_key!r} must hold a MetaTensor with an affine.")
            affine, size = ref.affine, tuple(ref.shape[1:])
        for key, out_key in self.key_iterator(d, self.output_keys):
            img = d[key]
            geo = d.get(self.geometry_key or f"{key}_geometry")
            angles = isocentre = geometry = None
            if geo is not None:
                geometry = {k: geo[k] for k in ("sdd", "sod", "detector_shape", "pixel_spacing") if k in geo}
                angles, isocentre = geo.get("angles"), geo.get("isocentre")
            has_meta = isinstance(img, MetaTensor) and ("drr_geometry" in img.meta or "angles" in img.meta)
            if angles is None and not has_meta:
                angles = d.get(self.angles_key)
            d[out_key] = self.expander(img, angles, geometry or None, affine, size, isocentre)
        return d


def check_expansion_angles(angles: Any, mode: str) -> None:
    """Refuse view angles that the dimension expansion ``mode`` cannot use .

    ``"backproject"`` takes any views; ``"replicate"`` copies each image along its beam through an axis-aligned
    grid, so it needs AP and lateral views: alpha a multiple of 90 degrees, beta 0, the two views 90 degrees apart.

    Args:
        angles: ``(2, 2)`` view angles ``(alpha, beta)`` in degrees.
        mode: the expansion mode, ``"replicate"`` or ``"backproject"``.

    Raises:
        XRayInputError: naming the angles and the fix.
    """
    if mode not in EXPANSION_MODES:
        raise XRayInputError(f"expansion_mode={mode!r} is unknown; fix: use one of {', '.join(EXPANSION_MODES)}.")
    if mode != "replicate":
        return
    ang = np.asarray(angles, dtype=np.float64).reshape(-1, 2)
    steps = ang[:, 0] / 90.0
    aligned = np.all(np.abs(steps - np.round(steps)) * 90.0 <= _AXIS_TOLERANCE) and np.all(
        np.abs(ang[:, 1]) <= _AXIS_TOLERANCE
    )
    if not aligned or len(ang) != 2 or int(np.round(steps[0] - steps[1])) % 2 == 0:
        raise XRayInputError(
            f"expansion_mode 'replicate' needs AP and lateral views (alpha a multiple of 90 degrees, the two "
            f"90 degrees apart, beta 0), got {format_views(ang)}; fix: give such views, or set --expansion_mode "
            "backproject (with a model trained in that mode) for other angles."
        )
