# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The model's detector windows cut from full radiographs: the system frame, where the vertebra is, resampling.

**System frame.** Both radiographs of a case come from one X-ray system whose views turn about the patient's long
axis and share an isocentre (an EOS-like pair of tube/detector units, or a C-arm turned about the patient). The
system frame has its origin at that isocentre and the axes of ``scripts/drr/geometry.py``'s world frame (RAS mm:
x towards the patient's right, y anterior, z superior, the long axis), with the views at their angles
``(alpha, beta)`` in that module's convention: ``alpha = 0`` is AP (source anterior), ``alpha = 90`` the lateral
view with the source on the patient's left. A view's source lies ``sod`` mm from the isocentre, its detector
``sdd`` mm from the source, and the ray through the isocentre hits the detector at the principal point (by default
the image centre).

**Images.** A :class:`RadiographView` describes an image oriented as the bundle's DRRs are: seen from the source,
row 0 superior, columns along the view's ``e_u`` axis (``scripts/drr/geometry.py``). Pixel positions here are
``(row, col)`` with pixel centres at integers.

**Where the vertebra is.** :func:`locate_centre` takes either one 3-D point in the system frame or the vertebra's
centre in each image; two image centres give two rays (source through the pixel), refused when they pass farther
than ``tolerance_mm`` apart, and otherwise the midpoint of the shortest segment between them.

**Windows.** The model was trained on windows of its own virtual system: ``sdd`` and ``sod`` of the model (1020 /
700 mm by default), ``roi_size`` pixels of ``ConeBeamGeometry.for_crop(roi_size, spacing, sdd, sod)``, isocentre at
the vertebra. :func:`cut_window` gives that window for each view: the model's virtual system is placed with its
isocentre at the vertebra's 3-D centre and its beam along the model's view direction; each window pixel's ray is
followed to the plane through the vertebra's centre perpendicular to that beam (the central plane), and that point
is projected through the real source onto the real detector, where the radiograph is sampled
(``torch.nn.functional.grid_sample``, after area averaging when the real pixels are finer). This is exact for every
point of the central plane: one mm there spans the same number of window pixels as in the model's own projection.
Points in front of or behind the plane are approximated, because the real source is not where the model's is:

- magnification: a point ``d`` mm off the plane and ``r`` mm from the vertebra's centre lands about
  ``r * d * |1 / L_real - 1 / sod|`` mm off (``L_real``: distance from the real source to the plane), well below a
  millimetre for a vertebra (``r, d <= 30`` mm, distances 700-1300 mm);
- obliqueness: when the vertebra is away from the real principal ray by ``o`` mm, the real rays through it are
  tilted by ``atan(o / L_real)`` against the model's beam, shifting a point ``d`` mm off the plane by about
  ``d * o / L_real`` (5 mm off-centre at 1000 mm: 0.15 mm at ``d = 30``; 150 mm off-centre: 4.5 mm);
- a real view opposite the model's (PA for AP, a left lateral for the model's right-side source) is used as the
  model's view seen from the other side: its depth magnification runs the other way, so a point lands about
  ``r * d * (1 / L_real + 1 / sod)`` mm off (about 1.7 mm at ``r = d = 25`` mm);
- a real view tilted against the model's by ``t`` degrees shifts a point ``d`` mm off the plane by ``d * tan(t)``:
  views more than :data:`MAX_VIEW_DIFFERENCE` degrees from the model's beam line are refused.

The reconstruction's grid is centred on the vertebra's 3-D centre, axis-aligned in the system frame
(:func:`window_affine`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scripts.drr.geometry import ConeBeamGeometry, as_angles, grid_affine, view_rotation
from scripts.errors import BundleInputError

__all__ = [
    "RadiographView",
    "DEFAULT_RAY_TOLERANCE_MM",
    "MAX_VIEW_DIFFERENCE",
    "MAX_SUPERSAMPLING",
    "beam_line_difference",
    "closest_point_of_rays",
    "locate_centre",
    "pair_views",
    "window_sample_points",
    "cut_window",
    "window_affine",
]

#: two image centres whose rays pass farther apart than this (mm) do not mark one point: they are refused.
DEFAULT_RAY_TOLERANCE_MM = 5.0
#: the most degrees a radiograph's beam line may differ from the model's view it is cut for (parallel or opposite).
MAX_VIEW_DIFFERENCE = 5.0
#: the most samples per window pixel and axis taken on top of the area averaging.
MAX_SUPERSAMPLING = 4


def _vec(x, n: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64))
    return t.reshape(-1) if n is None else t.reshape(n)


@dataclass(frozen=True)
class RadiographView:
    """The geometry of one radiograph in the system frame (distances in mm).

    Args:
        sdd: source-to-detector distance.
        sod: source-to-isocentre distance.
        shape: ``(H, W)`` rows and columns of the image (oriented as seen from the source).
        pixel_spacing: ``(row, col)`` pixel size on the detector.
        angles: ``(alpha, beta)`` degrees, as in ``scripts/drr/geometry.py``.
        principal_point: ``(row, col)`` where the ray through the isocentre hits the image; ``None``: the image
            centre ``((H - 1) / 2, (W - 1) / 2)``.

    Raises:
        ValueError: distances, sizes or spacings that no X-ray system has.
    """

    sdd: float
    sod: float
    shape: tuple[int, int]
    pixel_spacing: tuple[float, float]
    angles: tuple[float, float] = (0.0, 0.0)
    principal_point: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(self.pixel_spacing, dtype=np.float64), (2,)))
        if len(shape) != 2 or min(shape) < 2:
            raise ValueError(f"image shape {shape}: need at least 2 x 2 pixels.")
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"pixel spacing {spacing} mm: must be positive.")
        if not (math.isfinite(self.sdd) and math.isfinite(self.sod) and 0 < self.sod < self.sdd):
            raise ValueError(
                f"sdd={self.sdd} mm, sod={self.sod} mm: need 0 < sod < sdd (the detector lies behind the patient)."
            )
        ang = tuple(float(a) for a in as_angles([list(self.angles)])[0].tolist())
        pp = None
        if self.principal_point is not None:
            pp = tuple(float(p) for p in self.principal_point)
            if len(pp) != 2 or not all(math.isfinite(p) for p in pp):
                raise ValueError(f"principal point {self.principal_point}: give (row, col) in pixels.")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "pixel_spacing", spacing)
        object.__setattr__(self, "angles", ang)
        object.__setattr__(self, "principal_point", pp)
        object.__setattr__(self, "sdd", float(self.sdd))
        object.__setattr__(self, "sod", float(self.sod))

    @property
    def centre_px(self) -> tuple[float, float]:
        """``(row, col)`` of the principal point."""
        if self.principal_point is not None:
            return self.principal_point
        return ((self.shape[0] - 1) / 2.0, (self.shape[1] - 1) / 2.0)

    def axes(self) -> torch.Tensor:
        """(3, 3) float64, columns ``e_u`` (columns), ``e_v`` (rows) and ``e_d`` (beam) in the system frame."""
        return view_rotation(torch.tensor([self.angles], dtype=torch.float64))[0]

    def source(self) -> torch.Tensor:
        """The source position (3,) in the system frame."""
        return -self.sod * self.axes()[:, 2]

    def detector_points(self, rc) -> torch.Tensor:
        """Positions (N, 3) on the detector of pixel positions ``rc`` (N, 2) = (row, col)."""
        rc = _vec(rc).reshape(-1, 2)
        ax = self.axes()
        pr, pc = self.centre_px
        dv, du = self.pixel_spacing
        centre = self.source() + self.sdd * ax[:, 2]
        return centre + ((rc[:, 1] - pc) * du)[:, None] * ax[:, 0] + ((rc[:, 0] - pr) * dv)[:, None] * ax[:, 1]

    def rays(self, rc) -> tuple[torch.Tensor, torch.Tensor]:
        """The source (3,) and unit directions (N, 3) of the rays through pixel positions ``rc`` (N, 2)."""
        src = self.source()
        d = self.detector_points(rc) - src
        return src, d / torch.linalg.norm(d, dim=-1, keepdim=True)

    def project(self, points) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel positions (N, 2) = (row, col) of system-frame points (N, 3), and their distance from the source
        along the beam (N,) (positive in front of the source)."""
        p = _vec(points).reshape(-1, 3)
        ax = self.axes()
        cam = (p - self.source()) @ ax  # (u, v, depth) in mm
        pr, pc = self.centre_px
        dv, du = self.pixel_spacing
        depth = cam[:, 2]
        col = pc + self.sdd * cam[:, 0] / (depth * du)
        row = pr + self.sdd * cam[:, 1] / (depth * dv)
        return torch.stack([row, col], -1), depth

    def contains(self, rc) -> bool:
        """Whether a pixel position ``(row, col)`` lies inside the image (pixel centres 0 .. H - 1, 0 .. W - 1)."""
        r, c = (float(x) for x in _vec(rc, 2))
        return 0.0 <= r <= self.shape[0] - 1 and 0.0 <= c <= self.shape[1] - 1

    def to_dict(self) -> dict:
        """Plain values: ``sdd``, ``sod``, ``shape``, ``pixel_spacing``, ``angles``, ``principal_point``."""
        return {
            "sdd": self.sdd,
            "sod": self.sod,
            "shape": list(self.shape),
            "pixel_spacing": list(self.pixel_spacing),
            "angles": list(self.angles),
            "principal_point": list(self.centre_px),
        }


def closest_point_of_rays(
    origin1: torch.Tensor, dir1: torch.Tensor, origin2: torch.Tensor, dir2: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """The midpoint of the shortest segment between two lines, and that segment's length (mm).

    Args:
        origin1, dir1: a point (3,) of the first line and its direction (3,).
        origin2, dir2: the same for the second line.

    Raises:
        ValueError: the lines are parallel (no single closest point).
    """
    o1, d1, o2, d2 = (_vec(x, 3) for x in (origin1, dir1, origin2, dir2))
    w0 = o1 - o2
    a, b, c = d1 @ d1, d1 @ d2, d2 @ d2
    d, e = d1 @ w0, d2 @ w0
    denom = a * c - b * b
    if float(denom) <= 1e-12 * float(a * c):
        raise ValueError("the two rays are parallel: they have no single closest point.")
    t = (b * e - c * d) / denom
    s = (a * e - b * d) / denom
    p1, p2 = o1 + t * d1, o2 + s * d2
    return (p1 + p2) / 2.0, float(torch.linalg.norm(p1 - p2))


def _rc_text(rc) -> str:
    r, c = (float(x) for x in _vec(rc, 2))
    return f"(row {r:g}, col {c:g})"


def locate_centre(
    views: Sequence[RadiographView],
    centres_px=None,
    centre_mm=None,
    tolerance_mm: float = DEFAULT_RAY_TOLERANCE_MM,
    names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, float | None, torch.Tensor]:
    """The vertebra's centre in the system frame, from one 3-D point or from its centre in each image.

    Args:
        views: the two views.
        centres_px: ``(row, col)`` of the vertebra's centre in each image (as oriented in ``views``).
        centre_mm: the centre in the system frame (mm); used when ``centres_px`` is not given.
        tolerance_mm: the farthest the two rays through ``centres_px`` may pass from each other.
        names: the images' names for the messages (default ``view 1``, ``view 2``).

    Returns:
        ``(centre (3,), gap, projected (V, 2))``: the centre, the distance in mm between the two rays (``None`` for
        a 3-D point) and the centre's ``(row, col)`` in each image.

    Raises:
        BundleInputError: neither or both of ``centres_px`` and ``centre_mm``, a centre outside an image (or behind
            the source), views along one line, or rays farther apart than ``tolerance_mm``.
    """
    names = list(names) if names is not None else [f"view {i + 1}" for i in range(len(views))]
    if (centres_px is None) == (centre_mm is None):
        raise BundleInputError(
            "give where the vertebra is, either its centre in each image (centre_px: [[row, col], [row, col]]) or "
            "one point in the system frame (centre_mm: [x, y, z]), not both and not neither."
        )
    if not math.isfinite(tolerance_mm) or tolerance_mm <= 0:
        raise BundleInputError(f"tolerance_mm={tolerance_mm!r}: give a positive distance in mm.")
    if centre_mm is not None:
        try:
            centre = _vec(centre_mm, 3)
        except (TypeError, ValueError, RuntimeError):
            raise BundleInputError(f"centre_mm={centre_mm!r}: give one point [x, y, z] in mm.") from None
        if not torch.isfinite(centre).all():
            raise BundleInputError(f"centre_mm={centre_mm!r}: the point has NaN or infinite coordinates.")
        projected = []
        for view, name in zip(views, names):
            rc, depth = view.project(centre[None])
            if float(depth[0]) <= 0 or not view.contains(rc[0]):
                raise BundleInputError(
                    f"{name}: the centre {[round(float(x), 2) for x in centre]} mm projects to {_rc_text(rc[0])}, "
                    f"outside its {view.shape[0]} x {view.shape[1]} image; fix: give a point that both images show "
                    "(system frame: origin at the isocentre, RAS axes, mm)."
                )
            projected.append(rc[0])
        return centre, None, torch.stack(projected)
    try:
        rcs = _vec(centres_px).reshape(len(views), 2)
    except (TypeError, ValueError, RuntimeError):
        raise BundleInputError(
            f"centre_px={centres_px!r}: give one (row, col) per image, e.g. [[812, 640], [798, 702]]."
        ) from None
    if not torch.isfinite(rcs).all():
        raise BundleInputError(f"centre_px={centres_px!r}: the centres have NaN or infinite coordinates.")
    for view, rc, name in zip(views, rcs, names):
        if not view.contains(rc):
            raise BundleInputError(
                f"{name}: the vertebra's centre {_rc_text(rc)} lies outside the image of {view.shape[0]} x "
                f"{view.shape[1]} pixels (rows 0-{view.shape[0] - 1}, columns 0-{view.shape[1] - 1}); fix: give "
                "the centre in the file's pixels, row first."
            )
    if len(views) != 2:
        raise BundleInputError(f"two image centres are needed to place the vertebra; got {len(views)} views.")
    (s1, d1), (s2, d2) = (view.rays(rc[None]) for view, rc in zip(views, rcs))
    try:
        centre, gap = closest_point_of_rays(s1, d1[0], s2, d2[0])
    except ValueError:
        raise BundleInputError(
            f"{names[0]} and {names[1]}: the rays through the two centres are parallel, so they mark no point; "
            "fix: give two different views (e.g. AP and lateral)."
        ) from None
    if gap > tolerance_mm:
        raise BundleInputError(
            f"{names[0]} {_rc_text(rcs[0])} and {names[1]} {_rc_text(rcs[1])}: the rays through the two centres "
            f"miss each other by {gap:.1f} mm (tolerance {tolerance_mm:g} mm), so they do not mark one vertebra; "
            "fix: check that both centres mark the same vertebra at the same height, and the files' geometry "
            "(distances, pixel spacing, view)."
        )
    projected = torch.stack([view.project(centre[None])[0][0] for view in views])
    return centre, gap, projected


def beam_line_difference(angles_a, angles_b) -> tuple[float, bool]:
    """Degrees between the beam lines of two views, and whether their beams run opposite ways."""
    beams = view_rotation(torch.stack([as_angles([list(angles_a)])[0], as_angles([list(angles_b)])[0]]))[:, :, 2]
    cos = float(beams[0] @ beams[1])
    return math.degrees(math.acos(min(1.0, abs(cos)))), cos < 0


def pair_views(
    real_angles, model_angles, max_difference: float = MAX_VIEW_DIFFERENCE, names: Sequence[str] | None = None
) -> list[int]:
    """Which radiograph serves which of the model's views.

    The radiographs are taken in the model's order (the first for view 1) unless the other order fits their beam
    lines better; each radiograph's beam line (parallel or opposite) must lie within ``max_difference`` degrees of
    its model view's.

    Args:
        real_angles: ``(V, 2)`` angles of the radiographs.
        model_angles: ``(V, 2)`` angles of the model's views.
        max_difference: the largest angle between the beam lines of a radiograph and its model view.
        names: the radiographs' names for the message.

    Returns:
        ``order``: ``order[k]`` is the radiograph used for model view ``k``.

    Raises:
        BundleInputError: a radiograph whose view is not one of the model's.
    """
    real = as_angles(real_angles).tolist()
    model = as_angles(model_angles).tolist()
    names = list(names) if names is not None else [f"view {i + 1}" for i in range(len(real))]
    if len(real) != len(model):
        raise BundleInputError(f"{len(real)} radiographs for a model of {len(model)} views; give one per view.")
    orders = [list(range(len(real)))]
    if len(real) == 2:
        orders.append([1, 0])
    best, best_cost = None, math.inf
    for order in orders:
        diffs = [beam_line_difference(real[order[k]], model[k])[0] for k in range(len(model))]
        if max(diffs) <= max_difference and sum(diffs) < best_cost:
            best, best_cost = order, sum(diffs)
    if best is None:
        text = ", ".join(f"{n} [{a:g}, {b:g}]" for n, (a, b) in zip(names, real))
        views = ", ".join(f"[{a:g}, {b:g}]" for a, b in model)
        raise BundleInputError(
            f"the radiographs' views ({text}; alpha, beta in degrees) are not the model's views ({views}) within "
            f"{max_difference:g} degrees (a view opposite a model view counts); fix: give radiographs taken at the "
            "model's views (AP or PA, and a lateral), or check the files' view tags."
        )
    return best


def window_sample_points(
    view: RadiographView, geometry: ConeBeamGeometry, model_angles, centre, supersample: int = 1
) -> torch.Tensor:
    """Where each window pixel of the model's virtual system samples the radiograph: ``(row, col)`` positions.

    Args:
        view: the radiograph's geometry.
        geometry: the model's window geometry (its ``sdd``, ``sod``, ``detector_shape`` and ``pixel_spacing``).
        model_angles: ``(alpha, beta)`` of the model's view.
        centre: the vertebra's centre (3,) in the system frame: the virtual system's isocentre.
        supersample: samples per window pixel and axis (``s``): the result has ``H * s`` rows and ``W * s``
            columns, sample ``(i, j)`` at window position ``((i + 0.5) / s - 0.5, (j + 0.5) / s - 0.5)``.

    Returns:
        ``(H * s, W * s, 2)`` float64 pixel positions in the radiograph.
    """
    s = int(supersample)
    h, w = geometry.detector_shape
    dv, du = geometry.pixel_spacing
    ax = view_rotation(torch.tensor([list(model_angles)], dtype=torch.float64).reshape(1, 2))[0]
    rows = (torch.arange(h * s, dtype=torch.float64) + 0.5) / s - 0.5 - (h - 1) / 2.0
    cols = (torch.arange(w * s, dtype=torch.float64) + 0.5) / s - 0.5 - (w - 1) / 2.0
    scale = geometry.sod / geometry.sdd  # detector mm -> central-plane mm
    plane = (
        _vec(centre, 3) + (scale * cols * du)[None, :, None] * ax[:, 0] + (scale * rows * dv)[:, None, None] * ax[:, 1]
    )
    rc, _ = view.project(plane.reshape(-1, 3))
    return rc.reshape(h * s, w * s, 2)


def _footprint(view: RadiographView, geometry: ConeBeamGeometry, model_angles, centre) -> tuple[float, float]:
    """Radiograph pixels (rows, columns) that one window pixel spans at the window's centre."""
    pts = window_sample_points(view, geometry, model_angles, centre)
    h, w = geometry.detector_shape
    i, j = h // 2, w // 2
    i0, j0 = max(i - 1, 0), max(j - 1, 0)
    d_row = (pts[i, j] - pts[i0, j]) / max(i - i0, 1)  # radiograph (row, col) per window row
    d_col = (pts[i, j] - pts[i, j0]) / max(j - j0, 1)  # per window column
    return float(d_row[0].abs() + d_col[0].abs()), float(d_row[1].abs() + d_col[1].abs())


def cut_window(
    image, view: RadiographView, geometry: ConeBeamGeometry, model_angles, centre
) -> tuple[torch.Tensor, dict]:
    """The model's window of one radiograph (see the module docstring for the mapping and its approximations).

    Where the radiograph's pixels are finer than the window's, the radiograph is first averaged over blocks of
    ``floor(footprint)`` pixels per axis (``avg_pool2d``), then sampled bilinearly, ``s x s`` times per window pixel
    (``s`` up to :data:`MAX_SUPERSAMPLING`) and averaged: each window pixel is about the mean of the radiograph over
    its footprint. Samples outside the radiograph take the value of its nearest edge pixel.

    Args:
        image: ``(H, W)`` radiograph, oriented as ``view`` (seen from the source).
        view: its geometry.
        geometry: the model's window geometry (``detector_shape``, ``pixel_spacing``, ``sdd``, ``sod``).
        model_angles: ``(alpha, beta)`` of the model's view.
        centre: the vertebra's centre (3,) in the system frame.

    Returns:
        ``(window, info)``: the ``geometry.detector_shape`` float32 window, and ``info`` with ``outside_fraction``
        (the share of the window's samples outside the radiograph), ``pool`` (block size, rows and columns) and
        ``supersample``.
    """
    img = torch.as_tensor(np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image))
    img = img.to(torch.float32)
    if tuple(img.shape) != tuple(view.shape):
        raise ValueError(f"image of shape {tuple(img.shape)} for a view of shape {view.shape}.")
    foot_r, foot_c = _footprint(view, geometry, model_angles, centre)
    k_r, k_c = max(1, int(math.floor(foot_r + 1e-6))), max(1, int(math.floor(foot_c + 1e-6)))
    s = int(min(MAX_SUPERSAMPLING, max(1, math.ceil(max(foot_r / k_r, foot_c / k_c) - 1e-6))))
    pts = window_sample_points(view, geometry, model_angles, centre, s)  # (h*s, w*s, 2) radiograph (row, col)
    h_img, w_img = view.shape
    outside = (pts[..., 0] < -0.5) | (pts[..., 0] > h_img - 0.5) | (pts[..., 1] < -0.5) | (pts[..., 1] > w_img - 0.5)
    # the part of the radiograph the samples need, with a margin of two blocks
    lo_r = int(max(0, math.floor(float(pts[..., 0].min())) - 2 * k_r))
    hi_r = int(min(h_img, math.ceil(float(pts[..., 0].max())) + 2 * k_r + 1))
    lo_c = int(max(0, math.floor(float(pts[..., 1].min())) - 2 * k_c))
    hi_c = int(min(w_img, math.ceil(float(pts[..., 1].max())) + 2 * k_c + 1))
    if hi_r <= lo_r or hi_c <= lo_c:  # entirely outside: sample the nearest edge
        lo_r, hi_r = (0, h_img) if hi_r <= lo_r else (lo_r, hi_r)
        lo_c, hi_c = (0, w_img) if hi_c <= lo_c else (lo_c, hi_c)
    crop = img[lo_r:hi_r, lo_c:hi_c][None, None]
    k_r, k_c = min(k_r, crop.shape[-2]), min(k_c, crop.shape[-1])
    if k_r > 1 or k_c > 1:
        crop = F.avg_pool2d(crop, (k_r, k_c), stride=(k_r, k_c))
    n_r, n_c = crop.shape[-2:]
    # radiograph position -> pooled index: block p covers lo + p k .. lo + p k + k - 1, centred at lo + p k + (k-1)/2
    p_r = (pts[..., 0] - lo_r - (k_r - 1) / 2.0) / k_r
    p_c = (pts[..., 1] - lo_c - (k_c - 1) / 2.0) / k_c
    grid = torch.stack([(2 * p_c + 1) / n_c - 1, (2 * p_r + 1) / n_r - 1], -1).to(torch.float32)
    sampled = F.grid_sample(crop, grid[None], mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
    h, w = geometry.detector_shape
    window = sampled.reshape(h, s, w, s).mean(dim=(1, 3))
    info = {"outside_fraction": float(outside.double().mean()), "pool": (k_r, k_c), "supersample": s}
    return window.contiguous(), info


def window_affine(roi_size: int | Sequence[int], spacing: float, centre) -> torch.Tensor:
    """The 4x4 affine (system frame, mm) of the reconstruction grid: ``roi_size`` voxels of ``spacing`` mm,
    axis-aligned, centred on the vertebra's centre."""
    size = [int(s) for s in np.broadcast_to(np.asarray(roi_size), (3,))]
    return grid_affine(size, spacing, [float(x) for x in _vec(centre, 3)])
