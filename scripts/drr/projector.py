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

The ray set-up of a volume grid (its rays in voxel index coordinates, grouped by slice axis) is computed once
and kept in a small cache, shared by grids that differ by a translation; the sampling grids of all slices built
from it are kept too, within a memory budget (``_GRID_CACHE_BYTES``), so a repeated projection at the same
geometry only samples and sums. Slices that are empty in every volume and channel at the two ends of a stack,
and materials absent from every volume (the background around an isolated vertebra has no density), are not
sampled: they would add exact zeros.

Along the slice axis every voxel is a box of one voxel size (each slice contributes one step); inside a
slice the samples fade linearly to zero within one voxel outside the side faces (zero padding), which
integrates like a box ending half a voxel beyond the edge voxel's centre.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import ConeBeamGeometry, as_angles, crop_centre
from .physics import available_spectra, linear_attenuation, mass_attenuation, material_densities, polychromatic_image
from .physics import spectrum as get_spectrum

__all__ = ["line_integrals", "DRRProjector", "PHYSICS_MODES", "check_volume", "default_geometry"]

PHYSICS_MODES = ("poly", "mono")
_MAX_ELEMENTS = 2**22  # grid_sample output elements per chunk of slices (bounds the memory; smaller reuses it)
_PLAN_CACHE_SIZE = 16  # sampling plans kept (a 128 x 128 pair takes 0.7 MB)
_PLAN_CACHE: OrderedDict[tuple, tuple] = OrderedDict()
_PLAN_LOCK = threading.Lock()
# Sampling grids of every slice of a view group, built once per plan and reused while they fit this budget
# (least recently used dropped first): a 128^3 crop seen by a 128 x 128 pair takes 32 MB. Repeated
# projections of grids with the same geometry (inference, validation, training crops of one size) then skip
# writing n_slices x H x W x 2 coordinates per call.
_GRID_CACHE_BYTES = 64 * 2**20
_GRID_CACHE: OrderedDict[int, torch.Tensor] = OrderedDict()
_GRID_TOKENS = itertools.count()


@dataclass(frozen=True)
class _RayGroup:
    """Sampling grid of the views of one volume grid whose slice axis is ``axis``.

    ``base`` and ``slope`` (Vg * H, W, 2): normalised in-slice coordinates of every ray at slice 0 and their
    change per slice; ``step`` (Vg * H, W): path length in mm per slice.
    """

    axis: int
    views: tuple[int, ...]
    base: torch.Tensor
    slope: torch.Tensor
    step: torch.Tensor
    token: int = field(default_factory=lambda: next(_GRID_TOKENS), compare=False)  # key of its cached grids


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


def _c_order(volume: torch.Tensor) -> torch.Tensor:
    """C-contiguous (B, C, X, Y, Z) volume.

    NIfTI volumes arrive in Fortran order; ``.contiguous()`` reads those with a stride of a whole slice
    per element (about 15 ms for 128^3 on one core). Through a (Y*X, Z) transpose, which PyTorch copies
    in cache-sized blocks, and a copy of whole Z rows it takes about 2.5 ms.
    """
    b, c, x, y, z = volume.shape
    if volume.is_contiguous() or volume.stride()[2:] != (1, x, x * y) or min(x, y, z) < 2:
        return volume.contiguous()
    out = torch.empty(volume.shape, dtype=volume.dtype, device=volume.device)
    tmp = torch.empty(y * x, z, dtype=volume.dtype, device=volume.device)
    for i in range(b):
        for j in range(c):
            tmp.copy_(volume[i, j].permute(1, 0, 2).reshape(y * x, z))  # strides (1, Y*X): a 2-D transpose
            out[i, j].copy_(tmp.view(y, x, z).permute(1, 0, 2))
    return out


def _tensor(array: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # C order: the sampling grids computed from these inherit their memory layout
    return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=device).contiguous()


def _ray_groups(
    geometry: ConeBeamGeometry,
    ang: torch.Tensor,
    aff: torch.Tensor,
    iso: torch.Tensor,
    object_rotation,
    shape: tuple[int, int, int],
    m: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[_RayGroup, ...]:
    """Sampling plan of one volume grid: its views grouped by slice axis (cached, see ``_PLAN_CACHE``).

    The plan depends on the grid only through the rays in voxel index coordinates, so grids that differ by a
    translation, imaged about their own centre, share one plan (and its cached sampling grids).
    """
    # Ray set-up in float64 numpy (a few small arrays per view; numpy keeps these many small operations
    # off torch's intra-op thread pool). Rays in voxel index coordinates: source s (V, 3) and direction d
    # to every pixel centre (V, H, W, 3); pixel centres are affine in the pixel's row and column.
    rot, source = geometry.frames(ang, iso, object_rotation)
    rot, source = rot.numpy(), source.numpy()
    a3, inv = aff[:3, :3].numpy(), np.linalg.inv(aff.numpy())
    s = source @ inv[:3, :3].T + inv[:3, 3]
    key = (
        geometry.sdd,
        geometry.detector_shape,
        geometry.pixel_spacing,
        rot.tobytes(),
        a3.tobytes(),
        np.round(s, 9).tobytes(),  # the source in index units (translations of the grid cancel)
        tuple(shape),
        m,
        dtype,
        str(device),
    )
    with _PLAN_LOCK:  # (transforms may run in threads)
        plan = _PLAN_CACHE.get(key)
        if plan is not None:
            _PLAN_CACHE.move_to_end(key)
            return plan
    h, w = geometry.detector_shape
    dv, du = geometry.pixel_spacing
    u = (np.arange(w, dtype=np.float64) - (w - 1) / 2) * du
    v = (np.arange(h, dtype=np.float64) - (h - 1) / 2) * dv
    to_idx = inv[:3, :3].T
    d_c = (geometry.sdd * rot[:, :, 2]) @ to_idx  # source -> detector centre
    d_u, d_v = rot[:, :, 0] @ to_idx, rot[:, :, 1] @ to_idx
    dirs = d_c[:, None, None, :] + u[None, None, :, None] * d_u[:, None, None, :]
    dirs = dirs + v[None, :, None, None] * d_v[:, None, None, :]
    central = dirs[:, (h - 1) // 2, (w - 1) // 2, :] + dirs[:, h // 2, w // 2, :]
    axis = np.abs(central).argmax(-1)  # slice axis per view
    groups = []
    for a in range(3):
        views = np.nonzero(axis == a)[0]
        if views.size == 0:
            continue
        o0, o1 = [k for k in range(3) if k != a]
        n_b, n_c = shape[o0], shape[o1]
        # Along each ray the in-slice coordinates are affine in the slice index: q(k) = q0 + k * r.
        r = dirs[views] / dirs[views][..., a : a + 1]  # (Vg, H, W, 3), index units per unit of axis a
        q0 = s[views][:, None, None, :] - s[views][:, None, None, a : a + 1] * r
        step = np.linalg.norm(r @ a3.T, axis=-1) / m  # mm of path per (upsampled) slice
        # normalised grid_sample coordinates (align_corners=True) at slice k' of the (upsampled) stack,
        # x -> last input dim (n_c), y -> n_b; slice k' sits at original index (k' + 0.5) / m - 0.5
        scale = np.array([2.0 / max(n_c - 1, 1), 2.0 / max(n_b - 1, 1)])
        slope = r[..., [o1, o0]] * scale
        base = q0[..., [o1, o0]] * scale - 1.0 + slope * (0.5 / m - 0.5)
        slope = slope / m
        n_g = views.size
        groups.append(
            _RayGroup(
                axis=a,
                views=tuple(int(i) for i in views),
                base=_tensor(base.reshape(n_g * h, w, 2), dtype, device),
                slope=_tensor(slope.reshape(n_g * h, w, 2), dtype, device),
                step=_tensor(step.reshape(n_g * h, w), dtype, device),
            )
        )
    plan = tuple(groups)
    with _PLAN_LOCK:
        _PLAN_CACHE[key] = plan
        while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
            _PLAN_CACHE.popitem(last=False)
    return plan


def _slice_grids(group: _RayGroup, n_s: int) -> torch.Tensor | None:
    """The sampling grids of all ``n_s`` slices of a group, (n_s, Vg * H, W, 2), from ``_GRID_CACHE`` or built
    and cached; ``None`` when they exceed the cache's budget (then each chunk builds its own)."""
    rows, w = group.base.shape[:2]
    nbytes = n_s * rows * w * 2 * group.base.element_size()
    if nbytes > _GRID_CACHE_BYTES // 2:
        return None
    with _PLAN_LOCK:
        grids = _GRID_CACHE.get(group.token)
        if grids is not None and grids.shape[0] == n_s:
            _GRID_CACHE.move_to_end(group.token)
            return grids
    k = torch.arange(n_s, dtype=group.base.dtype, device=group.base.device).reshape(-1, 1, 1, 1)
    grids = torch.addcmul(group.base, k, group.slope)  # slice k samples at base + k * slope
    with _PLAN_LOCK:
        _GRID_CACHE[group.token] = grids
        while sum(g.numel() * g.element_size() for g in _GRID_CACHE.values()) > _GRID_CACHE_BYTES:
            _GRID_CACHE.popitem(last=False)
    return grids


def _any(t: torch.Tensor) -> bool:
    """Whether ``t`` holds a nonzero value; on the CPU through numpy, single-threaded: these checks run on small
    blocks, where a parallel region would only add waiting on a busy machine."""
    if t.device.type == "cpu":
        return bool(np.any(t.detach().numpy()))
    return bool(t.any())


def _has_nonzero(volume: torch.Tensor, block: int = 16) -> bool:
    """Whether volumes (B, X, Y, Z) hold a nonzero value, read in blocks of ``block`` X-slices until one does."""
    return any(_any(volume[:, i : i + block]) for i in range(0, volume.shape[1], block))


def _occupied_slices(stack: torch.Tensor, block: int = 8) -> tuple[int, int]:
    """First and one-past-last slice (dim 0) of ``stack`` holding a nonzero value; ``(0, 0)`` when none does.

    Only empty slices at the two ends are read beyond the first and last (in blocks of ``block``), so a
    volume that fills its grid costs two slice reads.
    """
    n = stack.shape[0]
    lo = 0
    while lo < n and not _any(stack[lo : lo + block]):
        lo += block
    if lo >= n:
        return 0, 0
    while not _any(stack[lo]):  # the first nonzero slice of the block
        lo += 1
    hi = n
    while not _any(stack[max(lo, hi - block) : hi]):
        hi = max(lo, hi - block)
    while not _any(stack[hi - 1]):
        hi -= 1
    return lo, hi


def _integrate_group(volume: torch.Tensor, group: _RayGroup, m: int) -> torch.Tensor:
    """Joseph integration of volumes (G, C, X, Y, Z) along the rays of one view group; (G, C, Vg, H, W).

    The slice stack is a strided view of the volume (no copy; ``grid_sample`` reads any strides) with the
    volumes and channels of the batch stacked as channels, which all share the group's sampling grid. Slices
    that are zero in every volume and channel at the two ends of the stack (the background around an isolated
    vertebra) contribute nothing and are not sampled.
    """
    g, c = volume.shape[:2]
    a = group.axis
    stack = volume.movedim(2 + a, 0)  # (n_a, G, C, n_b, n_c)
    n_a, n_b, n_c = stack.shape[0], stack.shape[3], stack.shape[4]
    stack = stack.reshape(n_a, g * c, n_b, n_c)
    rows, w = group.base.shape[:2]
    lo, hi = _occupied_slices(stack)
    if hi == lo:
        return volume.new_zeros(g, c, len(group.views), rows // len(group.views), w)
    if m > 1:  # linear upsampling along the slice axis (box-consistent: sample k' sits at (k'+0.5)/m - 0.5)
        flat = stack.permute(1, 2, 3, 0).reshape(1, g * c * n_b * n_c, n_a)
        flat = F.interpolate(flat, size=n_a * m, mode="linear", align_corners=False)
        stack = flat.reshape(g * c, n_b, n_c, n_a * m).permute(3, 0, 1, 2).contiguous()
        lo, hi = max(0, (lo - 1) * m), min(n_a * m, (hi + 1) * m)  # upsampled slices that can be nonzero
    else:
        stack = stack[lo:hi]
        if stack.stride(-1) != 1 or stack.stride(-2) != n_c:
            # slices whose rows are far apart in memory sample about twice as slowly as a contiguous copy
            stack = stack.contiguous()
    grids = _slice_grids(group, n_a * m)
    acc = None
    n_chunks = -(-(hi - lo) * g * c * rows * w // _MAX_ELEMENTS)  # chunks of slices, to bound the memory
    chunk = -(-(hi - lo) // n_chunks)
    grid_buf = group.base.new_empty(min(chunk, hi - lo), rows, w, 2) if grids is None else None  # for all chunks
    offset = lo if m == 1 else 0  # index of the stack's first slice in the (upsampled) grid
    for s0 in range(lo, hi, chunk):
        s1 = min(hi, s0 + chunk)
        if grids is not None:
            grid = grids[s0:s1]
        else:
            k = torch.arange(s0, s1, dtype=group.base.dtype, device=group.base.device).reshape(-1, 1, 1, 1)
            grid = torch.addcmul(group.base, k, group.slope, out=grid_buf[: s1 - s0])  # (s1 - s0, Vg * H, W, 2)
        # zeros padding: within one voxel outside a side face the samples fade linearly to zero, which
        # integrates like the voxel's box ending half a voxel beyond its centre
        smp = F.grid_sample(
            stack[s0 - offset : s1 - offset], grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        part = smp.sum(0)
        acc = part if acc is None else acc.add_(part)
    acc = acc.mul_(group.step)  # (G * C, Vg * H, W)
    return acc.reshape(g, c, len(group.views), rows // len(group.views), w)


def _integrals_by_group(volume, aff, geometry, angles, isocentre, object_rotation, m):
    """Line integrals per (volumes, view group): yields (item indices, view indices, (G, C, Vg, H, W))."""
    ang = as_angles(angles)
    b = volume.shape[0]
    shape = tuple(int(n) for n in volume.shape[2:])
    if isocentre is None:
        iso = crop_centre(aff, shape)
    else:
        iso = torch.as_tensor(np.asarray(isocentre, dtype=np.float64)).reshape(-1, 3).expand(b, 3)
    plans: dict[int, list[int]] = {}
    plan_of = []
    for i in range(b):  # per volume: geometry only (a few small matrices), no loop over rays
        plan = _ray_groups(geometry, ang, aff[i], iso[i], object_rotation, shape, m, volume.dtype, volume.device)
        plan_of.append(plan)
        plans.setdefault(id(plan), []).append(i)
    for items in plans.values():
        sub = volume if len(items) == b else volume[items]
        for group in plan_of[items[0]]:
            yield items, group.views, _integrate_group(sub, group, m)


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
    n_views = as_angles(angles).shape[0]
    b, c = volume.shape[:2]
    h, w = geometry.detector_shape
    out = volume.new_empty(b, n_views, c, h, w)
    for items, views, lint in _integrals_by_group(
        volume, aff, geometry, angles, isocentre, object_rotation, int(samples_per_voxel)
    ):
        out[torch.tensor(items)[:, None], torch.tensor(views)[None, :]] = lint.movedim(2, 1)
    return out


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
        geometry: ConeBeamGeometry | dict | None = None,
    ) -> torch.Tensor:
        """Project HU volumes.

        Args:
            hu: (B, 1, X, Y, Z) HU volumes (a (1, X, Y, Z) volume is treated as B = 1).
            affine: (4, 4) or (B, 4, 4) voxel-to-world matrices.
            angles: (V, 2) (alpha, beta) degrees, or V alphas.
            isocentre: world isocentre; default the volume centre.
            object_rotation: optional rotation (3, 3) of the object about the isocentre.
            generator: torch random generator for the noise.
            geometry: the X-ray system of this call (default: the projector's, or the default for the volume's
                grid); e.g. a detector window centred on a vertebra inside a whole scan.

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
        geometry = self.geometry_for(hu, aff) if geometry is None else ConeBeamGeometry.from_any(geometry)
        as_angles(angles)
        if self.backend == "deepdrr":
            from .deepdrr_backend import project_deepdrr

            out = project_deepdrr(self, hu, aff, geometry, angles, isocentre, object_rotation)
        else:
            hu = _c_order(hu.float())  # element-wise ops and the slice stacks want C order
            m = self.samples_per_voxel
            present = None
            if self.physics == "mono":
                vol = linear_attenuation(hu[:, 0], self.energy_kev)[:, None]  # 1/mm
            else:
                vol = material_densities(hu[:, 0], channel_dim=1)  # g/cm^3
                # a material absent from every volume (e.g. air around an isolated vertebra, whose -1024 HU
                # background has no density) has zero line integrals: only the others are sampled
                present = [c for c in range(vol.shape[1]) if _has_nonzero(vol[:, c])] or [1]
                if len(present) < vol.shape[1]:
                    lo, hi = (present[0], present[-1] + 1) if present else (0, 0)
                    vol = vol[:, lo:hi] if present == list(range(lo, hi)) else vol[:, present]
            h, w = geometry.detector_shape
            out = hu.new_empty(hu.shape[0], as_angles(angles).shape[0], h, w)
            # physics per view group, on the (G, C, Vg, H, W) integrals as they come
            for items, views, lint in _integrals_by_group(vol, aff, geometry, angles, isocentre, object_rotation, m):
                if present is not None and len(present) < 3:
                    full = lint.new_zeros(lint.shape[0], 3, *lint.shape[2:])
                    full[:, present] = lint
                    lint = full
                if self.physics == "mono":
                    img = lint[:, 0]
                else:  # density x mm -> g/cm^2 is folded into the attenuation coefficients (length_scale)
                    img = polychromatic_image(
                        lint,
                        self.spectrum,
                        self.photon_count,
                        self.photon_count is not None,
                        generator,
                        channel_dim=1,
                        length_scale=0.1,
                    )
                out[torch.tensor(items)[:, None], torch.tensor(views)[None, :]] = img
        return out[0] if single else out
