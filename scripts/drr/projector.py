# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Cone-beam DRR projector in PyTorch (CPU and CUDA), batched over volumes and views.

Ray integration follows Joseph's method (P. M. Joseph, "An improved algorithm for reprojecting rays
through pixel images", IEEE TMI 1982): for each view the volume is cut into slices perpendicular to the
array axis most parallel to the beam; every ray is sampled once per slice with bilinear interpolation
inside the slice and weighted by its path length per slice (``|d| / |d_axis|``). The samples of all rays
of a slice are taken by one 2-D ``grid_sample`` call batched over slices, views and volumes, which PyTorch
runs with vectorised kernels; a 3-D (trilinear) ``grid_sample`` along the rays is several times slower on
CPU, which is why the sampling is written this way. ``samples_per_voxel > 1`` first upsamples the volume
along the slice axis by linear interpolation, which makes the sampling trilinear at that density.

Along the slice axis every voxel is a box of one voxel size (each slice contributes one step); inside a
slice the samples fade linearly to zero within one voxel outside the side faces (zero padding), which
integrates like a box ending half a voxel beyond the edge voxel's centre.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import ConeBeamGeometry, as_angles, crop_centre
from .physics import available_spectra, linear_attenuation, mass_attenuation, material_densities, polychromatic_image
from .physics import spectrum as get_spectrum

__all__ = ["line_integrals", "DRRProjector", "PHYSICS_MODES", "check_volume", "default_geometry"]

PHYSICS_MODES = ("poly", "mono")
_MAX_ELEMENTS = 2**25  # grid_sample output elements per chunk of slices (bounds the memory)


def check_volume(volume: torch.Tensor, affine, name: str = "volume") -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a batch of volumes (B, C, X, Y, Z) and their affines; returns (volume, affines (B, 4, 4) float64)."""
    if not isinstance(volume, torch.Tensor):
        volume = torch.as_tensor(np.asarray(volume))
    if volume.ndim != 5:
        raise ValueError(
            f"{name} must have shape (B, C, X, Y, Z) here (one channel-first (1, X, Y, Z) volume per item); "
            f"got shape {tuple(volume.shape)}."
        )
    if min(volume.shape[2:]) < 1:
        raise ValueError(f"{name} has an empty spatial shape {tuple(volume.shape[2:])}.")
    if affine is None:
        raise ValueError(
            f"{name} has no affine: pass the 4x4 voxel-to-world (RAS mm) matrix, e.g. a MetaTensor's .affine."
        )
    aff = torch.as_tensor(
        np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    )
    if aff.ndim == 2:
        aff = aff.expand(volume.shape[0], 4, 4)
    if aff.shape != (volume.shape[0], 4, 4):
        raise ValueError(
            f"affine must be 4x4 (or B x 4 x 4) for {name} of batch {volume.shape[0]}; got {tuple(aff.shape)}."
        )
    if not torch.isfinite(aff).all() or torch.linalg.det(aff[:, :3, :3]).abs().min() < 1e-9:
        raise ValueError(f"affine of {name} is singular or not finite: {aff[0].tolist()}.")
    return volume, aff


def default_geometry(spatial_shape: Sequence[int], affine: torch.Tensor) -> ConeBeamGeometry:
    """``ConeBeamGeometry.for_crop`` for a volume: roi = largest side, spacing = mean voxel size."""
    aff = torch.as_tensor(np.asarray(affine, dtype=np.float64)).reshape(-1, 4, 4)[0]
    spacing = float(torch.linalg.norm(aff[:3, :3], dim=0).mean())
    return ConeBeamGeometry.for_crop(roi_size=max(spatial_shape), spacing=spacing)


def line_integrals(
    volume: torch.Tensor,
    affine,
    geometry: ConeBeamGeometry,
    angles,
    isocentre=None,
    object_rotation=None,
    samples_per_voxel: int = 1,
) -> torch.Tensor:
    """Line integrals of every channel of a batch of volumes along the cone-beam rays of every view.

    Args:
        volume: (B, C, X, Y, Z) values (any unit per mm of path).
        affine: (4, 4) or (B, 4, 4) voxel-to-world (RAS mm) matrices.
        geometry: the X-ray system.
        angles: (V, 2) view angles (alpha, beta) in degrees (or V alphas).
        isocentre: (3,) or (B, 3) world point of the isocentre; default the centre of each volume.
        object_rotation: optional (3, 3) or (V, 3, 3) rotation of the object about the isocentre.
        samples_per_voxel: samples per voxel along the slice axis (>= 1).

    Returns:
        (B, V, C, H, W) line integrals in volume units x mm.
    """
    volume, aff = check_volume(volume, affine)
    if int(samples_per_voxel) < 1:
        raise ValueError(f"samples_per_voxel must be an integer >= 1, got {samples_per_voxel}.")
    m = int(samples_per_voxel)
    ang = as_angles(angles)
    b, c = volume.shape[:2]
    shape = volume.shape[2:]
    n_views = ang.shape[0]
    h, w = geometry.detector_shape
    if isocentre is None:
        iso = crop_centre(aff, shape)
    else:
        iso = torch.as_tensor(np.asarray(isocentre, dtype=np.float64)).reshape(-1, 3).expand(b, 3)

    # rays in voxel index coordinates, float64: source s (B, V, 3), direction d to every pixel (B, V, H, W, 3)
    inv = torch.linalg.inv(aff)
    src_idx, dirs = [], []
    for i in range(b):  # per volume: geometry only (a few small matrices), no loop over rays
        source, pix = geometry.pixel_positions(ang, iso[i], object_rotation)
        s = source @ inv[i, :3, :3].T + inv[i, :3, 3]
        p = pix @ inv[i, :3, :3].T + inv[i, :3, 3]
        src_idx.append(s)
        dirs.append(p - s[:, None, None, :])
    src_idx, dirs = torch.stack(src_idx), torch.stack(dirs)
    central = dirs[:, :, (h - 1) // 2, (w - 1) // 2, :] + dirs[:, :, h // 2, w // 2, :]
    axis = central.abs().argmax(-1)  # (B, V) slice axis per volume and view

    out = volume.new_zeros(b, n_views, c, h, w)
    groups: dict[tuple, list[int]] = {}
    for i in range(b):
        for a in range(3):
            views = tuple(int(v) for v in torch.nonzero(axis[i] == a).flatten())
            if views:
                groups.setdefault((a, views), []).append(i)
    for (a, views), items in groups.items():
        out[torch.tensor(items)[:, None], torch.tensor(views)[None, :]] = _integrate_axis(
            volume[items], aff[items], src_idx[items][:, list(views)], dirs[items][:, list(views)], a, m
        )
    return out


def _integrate_axis(volume, aff, src, dirs, a: int, m: int) -> torch.Tensor:
    """Joseph integration for volumes (G, C, X, Y, Z) and views whose slice axis is ``a``; (G, V, C, H, W)."""
    g, c = volume.shape[:2]
    n_v, h, w = dirs.shape[1:4]
    others = [k for k in range(3) if k != a]
    slices = volume.movedim(2 + a, 1)  # (G, n_a, C, n_b, n_c) with the remaining axes in order
    n_a = slices.shape[1]
    if m > 1:  # linear upsampling along the slice axis (box-consistent: sample k' sits at (k'+0.5)/m - 0.5)
        nb, nc = slices.shape[3], slices.shape[4]
        flat = slices.movedim(1, -1).reshape(g, c * nb * nc, 1, n_a)
        flat = F.interpolate(flat, size=(1, n_a * m), mode="bilinear", align_corners=False)
        slices = flat.reshape(g, c, nb, nc, n_a * m).movedim(-1, 1)
    slices = slices.contiguous()
    n_s, n_b, n_c = slices.shape[1], slices.shape[3], slices.shape[4]
    # Along each ray the in-slice coordinates are affine in the slice index: q(k) = q0 + k * r.
    r = dirs / dirs[..., a : a + 1]  # (G, V, H, W, 3), index units per unit of axis a
    q0 = src[:, :, None, None, :] - src[:, :, None, None, a : a + 1] * r
    step_mm = torch.linalg.norm(torch.einsum("gij,gvhwj->gvhwi", aff[:, :3, :3], r), dim=-1) / m
    # normalised grid_sample coordinates (align_corners=True) at slice k' of the (upsampled) stack,
    # x -> last input dim (n_c), y -> n_b; slice k' sits at original index (k' + 0.5) / m - 0.5
    scale = torch.tensor([2.0 / max(n_c - 1, 1), 2.0 / max(n_b - 1, 1)], dtype=torch.float64)
    slope = r[..., [others[1], others[0]]] * scale
    base = q0[..., [others[1], others[0]]] * scale - 1.0 + slope * (0.5 / m - 0.5)
    slope = slope / m
    # views stacked along the image rows: (G, V*H, W, 2)
    base = base.reshape(g, 1, n_v * h, w, 2).to(volume)
    slope = slope.reshape(g, 1, n_v * h, w, 2).to(volume)
    acc = volume.new_zeros(g, c, n_v * h, w)
    chunk = max(1, _MAX_ELEMENTS // max(1, c * n_v * h * w))
    for s0 in range(0, n_s, chunk):  # chunks of slices, to bound the memory
        s1 = min(n_s, s0 + chunk)
        k = torch.arange(s0, s1, dtype=volume.dtype, device=volume.device).reshape(1, -1, 1, 1, 1)
        grid = torch.addcmul(base, k, slope).reshape(g * (s1 - s0), n_v * h, w, 2)
        inp = slices[:, s0:s1].reshape(g * (s1 - s0), c, n_b, n_c)
        # zeros padding: within one voxel outside a side face the samples fade linearly to zero, which
        # integrates like the voxel's box ending half a voxel beyond its centre
        smp = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        acc += smp.reshape(g, s1 - s0, c, n_v * h, w).sum(1)
    acc = acc.reshape(g, c, n_v, h, w).movedim(2, 1)
    return acc * step_mm[:, :, None].to(acc)


class DRRProjector:
    """Digitally reconstructed radiographs of HU volumes, polychromatic (default) or monochromatic.

    Args:
        geometry: X-ray system; None = ``ConeBeamGeometry.for_crop`` of each volume (its largest side and
            mean voxel size).
        physics: "poly": polychromatic Beer-Lambert over ``spectrum`` with the three materials and an
            energy-integrating detector, output ``-log(I / I0)``; "mono": plain line integral of the linear
            attenuation at ``energy_kev`` (no noise), ``integral mu dl``.
        spectrum: "60kV" (3.5 mm Al), "90kV" (4.0 mm Al) or "120kV" (4.3 mm Al).
        photon_count: photons per pixel of the unattenuated beam, for the Poisson noise; None = no noise.
        energy_kev: energy of the monochromatic mode; default the spectrum's mean energy.
        samples_per_voxel: sampling density along the rays (>= 1).
        backend: "torch" (this projector) or "deepdrr" (needs CUDA and ``requirements-deepdrr.txt``).
    """

    def __init__(
        self,
        geometry: ConeBeamGeometry | dict | None = None,
        physics: str = "poly",
        spectrum: str = "60kV",
        photon_count: float | None = 1e6,
        energy_kev: float | None = None,
        samples_per_voxel: int = 1,
        backend: str = "torch",
    ) -> None:
        if physics not in PHYSICS_MODES:
            raise ValueError(f"physics must be one of {PHYSICS_MODES}, got {physics!r}.")
        if backend not in ("torch", "deepdrr"):
            raise ValueError(f"backend must be 'torch' or 'deepdrr', got {backend!r}.")
        energies, fluence = get_spectrum(spectrum)  # validates the name
        if photon_count is not None and not (np.isfinite(photon_count) and photon_count > 0):
            raise ValueError(f"photon_count must be positive (or None for no noise), got {photon_count}.")
        if int(samples_per_voxel) < 1:
            raise ValueError(f"samples_per_voxel must be an integer >= 1, got {samples_per_voxel}.")
        self.geometry = None if geometry is None else ConeBeamGeometry.from_any(geometry)
        self.physics = physics
        self.spectrum = spectrum
        self.photon_count = photon_count
        self.energy_kev = float(energy_kev) if energy_kev is not None else float((energies * fluence).sum())
        mass_attenuation(self.energy_kev)  # validates the energy
        self.samples_per_voxel = int(samples_per_voxel)
        self.backend = backend
        if backend == "deepdrr":
            from .deepdrr_backend import require_deepdrr

            require_deepdrr()

    @staticmethod
    def spectra() -> list[str]:
        return available_spectra()

    def geometry_for(self, volume: torch.Tensor, affine) -> ConeBeamGeometry:
        """The geometry used for a volume (the fixed one, or the default for its grid)."""
        if self.geometry is not None:
            return self.geometry
        return default_geometry(volume.shape[-3:], affine)

    def __call__(
        self,
        hu: torch.Tensor,
        affine,
        angles,
        isocentre=None,
        object_rotation=None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Project HU volumes.

        Args:
            hu: (B, 1, X, Y, Z) HU volumes (a (1, X, Y, Z) volume is treated as B = 1).
            affine: (4, 4) or (B, 4, 4) voxel-to-world matrices.
            angles: (V, 2) (alpha, beta) degrees, or V alphas.
            isocentre: world isocentre; default the volume centre.
            object_rotation: optional rotation (3, 3) of the object about the isocentre.
            generator: torch random generator for the noise.

        Returns:
            (B, V, H, W) images (or (V, H, W) for a (1, X, Y, Z) input).
        """
        if not isinstance(hu, torch.Tensor):
            hu = torch.as_tensor(np.asarray(hu))
        single = hu.ndim == 4
        if single:
            hu = hu[None]
        hu, aff = check_volume(hu, affine, "CT volume")
        if hu.shape[1] != 1:
            raise ValueError(f"the CT volume must have one channel, got shape {tuple(hu.shape)}.")
        geometry = self.geometry_for(hu, aff)
        as_angles(angles)
        if self.backend == "deepdrr":
            from .deepdrr_backend import project_deepdrr

            out = project_deepdrr(self, hu, aff, geometry, angles, isocentre, object_rotation)
        else:
            hu = hu.float().contiguous()  # (NIfTI arrays arrive in Fortran order; element-wise ops want C order)
            if self.physics == "mono":
                mu = linear_attenuation(hu[:, 0], self.energy_kev)[:, None]  # 1/mm
                out = line_integrals(mu, aff, geometry, angles, isocentre, object_rotation, self.samples_per_voxel)[
                    :, :, 0
                ]
            else:
                rho = material_densities(hu[:, 0], channel_dim=1)  # g/cm^3
                lint = line_integrals(rho, aff, geometry, angles, isocentre, object_rotation, self.samples_per_voxel)
                out = polychromatic_image(
                    lint * 0.1,
                    self.spectrum,
                    self.photon_count,
                    self.photon_count is not None,
                    generator,
                    channel_dim=2,
                )
        return out[0] if single else out
