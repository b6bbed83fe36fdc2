# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Optional DeepDRR backend (``DRRProjector(backend="deepdrr")``).

DeepDRR (Unberath et al., GPL-3.0, installed separately from ``requirements-deepdrr.txt``) renders with
CUDA kernels, so its projection runs only on a machine with an NVIDIA GPU; this module maps our geometry
onto DeepDRR's camera and calls it. The mapping itself is plain numpy and is tested without DeepDRR:

- our camera frame is DeepDRR's (x along image columns, y along rows, z from the source towards the
  detector), so the extrinsic matrix ``camera3d_from_world`` is ``[Rc | -Rc s]`` with the same world (RAS mm,
  the volume's affine as ``anatomical_from_ijk`` and an identity ``world_from_anatomical``);
- DeepDRR's pixel index puts pixel centres at ``i + 0.5`` and the principal point at ``(W/2, H/2)``
  (``CameraIntrinsicTransform.from_sizes``), ours at ``i`` and ``((W-1)/2, (H-1)/2)``: the intrinsic
  matrices differ by that half-pixel shift, so the two images are pixel-aligned.
- our spectra "60kV", "90kV", "120kV" are DeepDRR's "60KV_AL35", "90KV_AL40", "120KV_AL43"; our three
  materials are its "air", "soft tissue" and "bone", segmented with the same HU thresholds.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from .geometry import ConeBeamGeometry, as_angles, crop_centre
from .physics import HU_AIR_MAX, HU_SOFT_MAX, SPECTRUM_ALIASES, hu_to_density

__all__ = ["require_deepdrr", "deepdrr_camera", "project_deepdrr", "DEEPDRR_SPECTRA"]

DEEPDRR_SPECTRA = {"60kV": "60KV_AL35", "90kV": "90KV_AL40", "120kV": "120KV_AL43"}


def require_deepdrr() -> None:
    """Raise ``RuntimeError`` naming what is missing when DeepDRR cannot run here."""
    missing = [name for name in ("deepdrr", "cupy", "cuda") if importlib.util.find_spec(name) is None]
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if missing:
        raise RuntimeError(
            "backend='deepdrr' needs " + ", ".join(missing) + ". Install it on a CUDA machine with "
            "`pip install -r requirements-deepdrr.txt` (deepdrr, numpy<2, cupy-cuda12x, cuda-python<13), "
            "or use backend='torch', which runs on CPU and CUDA."
        )


def deepdrr_camera(geometry: ConeBeamGeometry, angles, isocentre=(0.0, 0.0, 0.0), object_rotation=None) -> dict:
    """DeepDRR camera parameters for our views, as numpy arrays (no DeepDRR import).

    Returns:
        dict with ``intrinsic`` (3, 3) in DeepDRR's pixel index convention, ``extrinsics`` (V, 4, 4)
        world -> camera, ``sensor_size`` (W, H), ``pixel_size`` (du, dv) and ``source_to_detector_distance``,
        i.e. the arguments of ``CameraIntrinsicTransform.from_sizes`` and ``CameraProjection``.
    """
    k = geometry.intrinsic().numpy().copy()
    k[0, 2] += 0.5  # DeepDRR: pixel centres at index + 0.5
    k[1, 2] += 0.5
    h, w = geometry.detector_shape
    dv, du = geometry.pixel_spacing
    return {
        "intrinsic": k,
        "extrinsics": geometry.extrinsic(angles, isocentre, object_rotation).numpy(),
        "sensor_size": (w, h),
        "pixel_size": (du, dv),
        "source_to_detector_distance": geometry.sdd,
    }


def project_deepdrr(projector, hu: torch.Tensor, affine: torch.Tensor, geometry, angles, isocentre, object_rotation):
    """Render (B, V, H, W) images with DeepDRR (CUDA only)."""
    require_deepdrr()
    from deepdrr import Projector, Volume, geo

    if projector.physics != "poly":
        raise ValueError("backend='deepdrr' renders polychromatic images only; use backend='torch' for physics='mono'.")
    ang = as_angles(angles)
    out = []
    for b in range(hu.shape[0]):
        data = hu[b, 0].detach().cpu().numpy().astype(np.float32)
        density = hu_to_density(torch.as_tensor(data)).numpy()
        materials = {
            "air": data <= HU_AIR_MAX,
            "soft tissue": (data > HU_AIR_MAX) & (data <= HU_SOFT_MAX),
            "bone": data > HU_SOFT_MAX,
        }
        volume = Volume(density, materials, geo.FrameTransform(np.asarray(affine[b], dtype=np.float64)))
        iso = crop_centre(affine[b], data.shape) if isocentre is None else isocentre
        cam = deepdrr_camera(geometry, ang, iso, object_rotation)
        intrinsic = geo.CameraIntrinsicTransform(cam["intrinsic"])
        intrinsic.sensor_width, intrinsic.sensor_height = cam["sensor_size"]
        views = [geo.CameraProjection(intrinsic, geo.FrameTransform(e)) for e in cam["extrinsics"]]
        with Projector(
            volume,
            camera_intrinsics=intrinsic,
            spectrum=DEEPDRR_SPECTRA[SPECTRUM_ALIASES.get(projector.spectrum, projector.spectrum)],
            add_noise=projector.photon_count is not None,
            photon_count=int(projector.photon_count or 1e6),
            neglog=True,
            step=1.0 / projector.samples_per_voxel,
        ) as proj:
            images = np.asarray(proj.project(*views), dtype=np.float32).reshape(len(views), *geometry.detector_shape)
        out.append(torch.as_tensor(images))
    return torch.stack(out).to(hu.device)
