# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Find and name every vertebra in an AP and a lateral full radiograph (the vertebra finder's inference).

Steps (:func:`localise_vertebrae` on two read images and their views; :func:`scripts.spine.find_vertebrae` reads
two files first):

1. **Detect per view** (:func:`detect_view`). Each image is resampled to the finder's pixel size
   (:data:`~scripts.networks.finder.FINDER_PIXEL_MM` on the detector), scaled by its 1st and 99th percentiles, and
   run through :class:`~scripts.networks.finder.VertebraFinder` with its view flag (AP or lateral, from the view's
   angles). The heatmap's peaks (non-maximum suppression, :func:`~scripts.networks.finder.heatmap_peaks`) above
   ``threshold`` are the view's detections, each with its score (the peak's height) and level evidence (the level
   map at the peak), mapped back to the image's pixels.
2. **Match the views** (:func:`match_detections`). Every AP detection is paired with every lateral one through the
   projection geometry (:class:`~scripts.drr.windows.RadiographView`): the rays from each source through the two
   detections, and the midpoint of their shortest connecting segment
   (:func:`~scripts.drr.windows.closest_point_of_rays`). A pair whose rays miss each other by more than
   ``tolerance_mm`` (default :data:`DEFAULT_MATCH_TOLERANCE_MM`) is not one vertebra. The pairs are chosen one to
   one, fewest millimetres of miss in all (``scipy.optimize.linear_sum_assignment``).
3. **Order and name** (:func:`name_levels`). The matched vertebrae are sorted top to bottom (system ``z``). Of two
   neighbours closer than :data:`CROWD_RATIO` times the step per level nearby, the weaker is dropped
   (:func:`drop_crowded`).
   A gap in the chain (a vertebra missed in one view) is a step between neighbours longer than :data:`GAP_RATIO`
   times the median of the steps nearby, counted as two levels. The chain's first level is the one that best fits
   the network's level evidence (least absolute difference over the chain), or, with a pinned level
   (:class:`LevelPin`: ``"L5=ap:row,col"``, ``"L5=lateral:row,col"`` or ``"L5"`` with a 3-D point), the one that
   gives the pinned vertebra its name (a pinned vertebra that was not found takes its place in the chain by height).

Each vertebra found is reported (:class:`FoundVertebra`) with its level, its 3-D centre in the X-ray system's frame
(mm; origin at the isocentre, RAS axes, :mod:`scripts.drr.windows`), its ``(row, col)`` in each image as oriented
by :func:`scripts.io.radiograph.read_radiograph` and in each file's pixels, the miss of its two rays (mm), the
distance between each detection and the 3-D centre's projection (reprojection error, mm on the detector), and the
finder's scores.

Bad input ends in one line (:class:`~scripts.errors.BundleInputError` / :class:`~scripts.errors.XRayInputError`):
one view only, two views that are not two distinct directions, no spine found in a view, no consistent pair of
detections, a pinned level that names nothing found.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scripts.drr.windows import RadiographView, beam_line_difference, closest_point_of_rays
from scripts.errors import BundleInputError, XRayInputError
from scripts.networks.finder import (
    FINDER_MAGNIFICATION,
    FINDER_PIXEL_MM,
    LEVELS,
    VertebraFinder,
    heatmap_peaks,
    level_index,
    level_name,
)

__all__ = [
    "DEFAULT_FINDER_MODEL",
    "DEFAULT_MATCH_TOLERANCE_MM",
    "DEFAULT_THRESHOLD",
    "MIN_VIEW_SEPARATION_DEG",
    "GAP_RATIO",
    "PIN_RADIUS_MM",
    "ViewDetections",
    "FoundVertebra",
    "LevelPin",
    "parse_level_pin",
    "load_finder",
    "view_flag",
    "finder_maps",
    "detect_view",
    "detections_from_maps",
    "triangulate",
    "match_detections",
    "match_chain",
    "match_epipolar",
    "epipolar_profiles",
    "MATCHING_MODES",
    "EPIPOLAR_DEPTH_MM",
    "EPIPOLAR_STEP_MM",
    "EPIPOLAR_DEPTH_WEIGHT",
    "EPIPOLAR_DEPTH_SIGMA_MM",
    "EPIPOLAR_MIN_MEDIAN_SCORE",
    "CANDIDATE_THRESHOLD",
    "DEFAULT_MATCHING",
    "DEPTH_WEIGHT",
    "chain_steps",
    "drop_crowded",
    "CROWD_RATIO",
    "UNPINNED_WARNING",
    "name_levels",
    "localise_vertebrae",
    "WindowCentring",
    "CENTRING_RADIUS_MM",
]

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)

#: logged when the levels are named without a pin (measured: docs/spine-radiographs.md, the finder's tables)
UNPINNED_WARNING = (
    "levels named without a pin, from the chain's order and the finder's level evidence: on the simulated "
    "radiographs of the seven patients it found vertebrae of, they were right for one patient and one to six "
    'levels off for the others; pin one level, e.g. --level "L5=ap:row,col" (its centre in the file\'s pixels), to '
    "name the rest from it"
)

#: the shipped finder's weights.
DEFAULT_FINDER_MODEL = ROOT / "models" / "finder" / "model.pt"
#: the farthest (mm) the rays through an AP and a lateral detection may pass from each other to be one vertebra.
DEFAULT_MATCH_TOLERANCE_MM = 8.0
#: the smallest heatmap peak that counts as a detection (chosen on the validation patient among 0.15-0.3).
DEFAULT_THRESHOLD = 0.2
#: two views whose beam lines are closer than this (degrees) do not locate points in 3-D.
MIN_VIEW_SEPARATION_DEG = 20.0
#: a step between neighbours in the chain longer than this times the median of the nearby steps is a gap.
GAP_RATIO = 1.6
#: how the views are paired: ``"epipolar"`` (:func:`match_epipolar`), ``"assignment"`` or ``"chain"``
#: (docs/spine-radiographs.md says how the default was chosen).
DEFAULT_MATCHING = "epipolar"
#: the matching modes of :func:`localise_vertebrae`.
MATCHING_MODES = ("assignment", "chain", "epipolar")
#: the depths searched (mm from the isocentre along the anchor view's beam) and their step, in :func:`match_epipolar`.
EPIPOLAR_DEPTH_MM = 200.0
EPIPOLAR_STEP_MM = 1.0
#: the cost per mm of depth change between neighbouring vertebrae in :func:`match_epipolar`.
EPIPOLAR_DEPTH_WEIGHT = 0.1
#: the least median heatmap, over the chain, of the second view at the places :func:`match_epipolar` chose: below
#: it the two radiographs do not show one spine.
EPIPOLAR_MIN_MEDIAN_SCORE = 0.02
#: the spread (mm) of the prior on the spine's depth about the isocentre in :func:`match_epipolar`: spine
#: radiographs are centred on the spine, so the two central beams cross near it.
EPIPOLAR_DEPTH_SIGMA_MM = 50.0
#: the smallest heatmap peak of the second view that may pair with a detection of the first (:func:`match_chain`).
CANDIDATE_THRESHOLD = 0.05
#: the cost per mm of depth change between neighbouring vertebrae in :func:`match_chain`.
DEPTH_WEIGHT = 0.05
#: two neighbours in the chain closer than this share of the median step are one vertebra (the weaker is dropped).
CROWD_RATIO = 0.55
#: the farthest (mm) a pinned position may lie from the vertebra it names (on the detector or in 3-D).
PIN_RADIUS_MM = 15.0
#: the radius (mm at the isocentre) about a window's centre in which :class:`WindowCentring` reads the heatmap:
#: 1.5 times the heatmap Gaussian's spread (2 of the finder's 2 mm detector pixels, 2.7 mm at the isocentre at its
#: magnification); of 4 and 8 mm, the better on the validation patient.
CENTRING_RADIUS_MM = 4.0
_VIEWS = ("ap", "lateral")


@dataclass
class ViewDetections:
    """The finder's detections in one image.

    Attributes:
        rc: ``(N, 2)`` ``(row, col)`` in the image's pixels (as oriented), highest score first.
        scores: ``(N,)`` heatmap peak heights (0-1).
        levels: ``(N,)`` level evidence: the regressed level index (C1 = 0 ... L5 = 23) at each peak.
    """

    rc: np.ndarray
    scores: np.ndarray
    levels: np.ndarray

    def __len__(self) -> int:
        return int(len(self.scores))


@dataclass
class FoundVertebra:
    """One vertebra found in both views.

    Attributes:
        level: its name (``None`` when the chain runs beyond C1-L5).
        level_index: the index of ``level`` in :data:`~scripts.networks.finder.LEVELS` (may lie outside 0-23).
        level_evidence: the network's level estimate (mean over the two views).
        named_by: ``"chain"`` (order and evidence) or ``"pin"`` (order and the pinned level).
        centre_mm: 3-D centre in the X-ray system's frame (mm).
        rc: per view name, ``(row, col)`` of the detection in the image as oriented.
        file_rc: per view name, the same in the file's pixels (when the radiographs were read from files).
        ray_gap_mm: how far the two rays miss each other.
        reprojection_mm: per view, the distance on the detector between the detection and the centre's projection.
        scores: per view the heatmap peak, and ``pair`` their geometric mean.
    """

    level: str | None
    level_index: int
    level_evidence: float
    named_by: str
    centre_mm: list[float]
    rc: dict[str, list[float]]
    ray_gap_mm: float
    reprojection_mm: dict[str, float]
    scores: dict[str, float]
    file_rc: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON)."""
        return asdict(self)


@dataclass(frozen=True)
class LevelPin:
    """A level the user names: a position in one view (``view``, ``rc``) or a 3-D point (``centre_mm``).

    Attributes:
        level: e.g. ``"L5"``.
        view: ``"ap"`` or ``"lateral"`` when a pixel position is given.
        rc: ``(row, col)`` in that view (file pixels for :func:`find_vertebrae`, image pixels for
            :func:`localise_vertebrae`).
        centre_mm: a point in the system frame (mm), when no pixel position is given.
    """

    level: str
    view: str | None = None
    rc: tuple[float, float] | None = None
    centre_mm: tuple[float, float, float] | None = None


_PIN = re.compile(
    r"^\s*([A-Za-z]\d{1,2})\s*(?:=\s*(ap|lat|lateral)\s*:\s*([-+\d.eE]+)\s*,\s*([-+\d.eE]+)\s*)?$", re.IGNORECASE
)


def parse_level_pin(text: str | LevelPin | None, centre_mm: Sequence[float] | None = None) -> LevelPin | None:
    """Read a pinned level: ``"L5=ap:812,640"``, ``"L5=lateral:798,702"``, or ``"L5"`` with ``centre_mm``.

    Raises:
        BundleInputError: text in no such form, an unknown level, or a bare level without a 3-D point.
    """
    if text is None or isinstance(text, LevelPin):
        return text
    m = _PIN.match(str(text))
    if not m:
        raise BundleInputError(
            f'level pin {text!r}: write LEVEL=VIEW:ROW,COL, e.g. "L5=ap:812,640" (view ap or lateral, the file\'s '
            "pixels), or LEVEL alone with a 3-D point (centre_mm)."
        )
    level = m.group(1).upper()
    try:
        level_index(level)
    except ValueError as e:
        raise BundleInputError(f"level pin {text!r}: {e}") from None
    if m.group(2):
        view = "ap" if m.group(2).lower() == "ap" else "lateral"
        return LevelPin(level, view=view, rc=(float(m.group(3)), float(m.group(4))))
    if centre_mm is None:
        raise BundleInputError(
            f'level pin {text!r} says no position: add one ("{level}=ap:ROW,COL") or give its 3-D point (centre_mm).'
        )
    point = tuple(float(v) for v in np.asarray(centre_mm, dtype=np.float64).reshape(3))
    return LevelPin(level, centre_mm=point)  # type: ignore[arg-type]


def load_finder(model: str | os.PathLike | torch.nn.Module | None = None, device: str | torch.device = "cpu"):
    """The finder network in evaluation mode: a module as it is, or the weights of a ``model.pt`` (state dict,
    or a checkpoint holding it under ``"model"``); default :data:`DEFAULT_FINDER_MODEL`.

    Raises:
        BundleInputError: the file does not exist or does not hold the finder's weights.
    """
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval()
    path = Path(model) if model is not None else DEFAULT_FINDER_MODEL
    if not path.is_file():
        raise BundleInputError(f"finder model {path} not found; fix: give the finder's model.pt (models/finder/).")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    net = VertebraFinder()
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise BundleInputError(f"{path} does not hold the vertebra finder's weights ({str(e)[:120]}).") from None
    return net.to(device).eval()


def view_flag(angles: Sequence[float]) -> int:
    """The finder's view flag of a view's angles: 0 when its beam line is nearer AP / PA, 1 when nearer lateral."""
    to_ap, _ = beam_line_difference(tuple(angles), (0.0, 0.0))
    to_lat, _ = beam_line_difference(tuple(angles), (90.0, 0.0))
    return 0 if to_ap <= to_lat else 1


def finder_maps(
    network: torch.nn.Module, image: np.ndarray, pixel_spacing: Sequence[float], view: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    """The finder's heatmap and level map of one image, at the finder's pixel size.

    Returns:
        ``(heatmap (h, w), level map (h, w), (row scale, col scale))``: a finder pixel ``(r, c)`` lies at image pixel
        ``((r + 0.5) * row_scale - 0.5, (c + 0.5) * col_scale - 0.5)``.
    """
    img = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
    if img.dim() != 2:
        raise XRayInputError(f"a radiograph is one 2-D image; got shape {list(img.shape)}.")
    sr, sc = (FINDER_PIXEL_MM / float(s) for s in pixel_spacing)
    h, w = max(int(round(img.shape[0] / sr)), 16), max(int(round(img.shape[1] / sc)), 16)
    small = F.interpolate(img[None, None], size=(h, w), mode="area" if sr > 1 or sc > 1 else "bilinear")[0, 0]
    lo, hi = torch.quantile(small.flatten(), torch.tensor([0.01, 0.99]))
    scaled = (small - lo) / (hi - lo).clamp_min(1e-6)
    device = next(network.parameters()).device
    with torch.no_grad():
        x = torch.stack([scaled, torch.full_like(scaled, float(view))])[None].to(device)
        out = network(x)[0].cpu()
    return torch.sigmoid(out[0]), out[1], (img.shape[0] / h, img.shape[1] / w)


def detect_view(
    network: torch.nn.Module,
    image: np.ndarray,
    pixel_spacing: Sequence[float],
    view: int,
    threshold: float = DEFAULT_THRESHOLD,
    min_distance: int = 3,
) -> ViewDetections:
    """The finder's detections in one image (step 1 of the module docstring)."""
    return detections_from_maps(*finder_maps(network, image, pixel_spacing, view), threshold, min_distance)


def detections_from_maps(
    heat: torch.Tensor,
    levels: torch.Tensor,
    scale: tuple[float, float],
    threshold: float = DEFAULT_THRESHOLD,
    min_distance: int = 3,
) -> ViewDetections:
    """The peaks of a heatmap of :func:`finder_maps` as detections, in the image's pixels."""
    fr, fc = scale
    rc, scores = heatmap_peaks(heat, threshold, min_distance)
    h, w = levels.shape
    ev = [float(levels[min(int(round(float(r))), h - 1), min(int(round(float(c))), w - 1)]) for r, c in rc]
    img_rc = np.stack([(rc[:, 0].numpy() + 0.5) * fr - 0.5, (rc[:, 1].numpy() + 0.5) * fc - 0.5], -1).reshape(-1, 2)
    return ViewDetections(img_rc, scores.numpy(), np.asarray(ev, dtype=np.float64))


def _map_at(values: torch.Tensor, scale: tuple[float, float], rc: np.ndarray) -> float:
    """A finder map's value (nearest pixel) at an image position ``(row, col)``."""
    h, w = values.shape
    r = int(np.clip(round((float(rc[0]) + 0.5) / scale[0] - 0.5), 0, h - 1))
    c = int(np.clip(round((float(rc[1]) + 0.5) / scale[1] - 0.5), 0, w - 1))
    return float(values[r, c])


def triangulate(views: Sequence[RadiographView], rc_a: Any, rc_b: Any) -> tuple[np.ndarray, np.ndarray]:
    """The 3-D point and the ray miss of every pair of positions in two views.

    Args:
        views: the two views.
        rc_a: ``(N, 2)`` ``(row, col)`` in the first view's image.
        rc_b: ``(M, 2)`` in the second's.

    Returns:
        ``(points (N, M, 3), gaps (N, M))``, mm in the system frame; parallel rays give NaN points and infinite gaps.
    """
    a = np.asarray(rc_a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(rc_b, dtype=np.float64).reshape(-1, 2)
    points = np.full((len(a), len(b), 3), np.nan)
    gaps = np.full((len(a), len(b)), np.inf)
    if len(a) == 0 or len(b) == 0:
        return points, gaps
    (sa, da), (sb, db) = views[0].rays(a), views[1].rays(b)
    for i in range(len(a)):
        for j in range(len(b)):
            try:
                p, g = closest_point_of_rays(sa, da[i], sb, db[j])
            except ValueError:
                continue
            points[i, j], gaps[i, j] = p.numpy(), g
    return points, gaps


def match_detections(
    views: Sequence[RadiographView],
    first: ViewDetections,
    second: ViewDetections,
    tolerance_mm: float = DEFAULT_MATCH_TOLERANCE_MM,
) -> list[tuple[int, int, np.ndarray, float]]:
    """One-to-one pairs of detections whose rays miss by at most ``tolerance_mm`` (step 2 of the module docstring).

    Returns:
        ``[(i, j, centre (3,), gap mm), ...]``: detection ``i`` of ``first`` with ``j`` of ``second``.
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm > 0):
        raise BundleInputError(f"tolerance_mm={tolerance_mm!r}: give a positive distance in mm.")
    from scipy.optimize import linear_sum_assignment

    points, gaps = triangulate(views, first.rc, second.rc)
    if gaps.size == 0:
        return []
    # behind a source, or a point no image shows: not a vertebra
    ok = gaps <= tolerance_mm
    cost = np.where(ok, gaps, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return [(int(i), int(j), points[i, j], float(gaps[i, j])) for i, j in zip(rows, cols) if ok[i, j]]


def match_chain(
    views: Sequence[RadiographView],
    anchors: ViewDetections,
    candidates: ViewDetections,
    tolerance_mm: float = DEFAULT_MATCH_TOLERANCE_MM,
    depth_weight: float = DEPTH_WEIGHT,
) -> list[tuple[int, int, np.ndarray, float]]:
    """Pairs along the spine: one candidate of the second view (or none) for each anchor of the first.

    The anchors are taken top to bottom (image rows). Each may pair with any candidate whose ray passes within
    ``tolerance_mm`` of its own, at a cost of ``-log`` of the candidate's score, plus ``depth_weight`` times the
    change (mm) of depth along the first view's beam from the previous anchor's pair: the spine runs on, so a
    candidate far in front of or behind its neighbours (bowel gas, ribs) loses against a weaker one in line with
    them. The cheapest chain (dynamic programming, Viterbi) is kept; a candidate chosen twice stays with the pair
    whose rays meet closer.

    Returns:
        ``[(i, j, centre (3,), gap mm), ...]``: anchor ``i`` with candidate ``j``.
    """
    points, gaps = triangulate(views, anchors.rc, candidates.rc)
    if gaps.size == 0:
        return []
    beam = views[0].axes()[:, 2].numpy()
    order = np.argsort(anchors.rc[:, 0], kind="stable")
    skip = -math.log(CANDIDATE_THRESHOLD) + 1.0
    unary = -np.log(np.clip(candidates.scores, 1e-6, 1.0))
    # per anchor: its options (candidate index, or -1 for none), their costs and depths, and back pointers
    options, costs, depths, backs = [], [], [], []
    for step, i in enumerate(order):
        opts = [int(j) for j in np.nonzero(gaps[i] <= tolerance_mm)[0]] + [-1]
        dep = [float(points[i, j] @ beam) if j >= 0 else math.nan for j in opts]
        cost = np.array([unary[j] if j >= 0 else skip for j in opts])
        back = np.full(len(opts), -1)
        if step:
            for a, d in enumerate(dep):
                move = np.array(
                    [0.0 if (math.isnan(d) or math.isnan(p)) else depth_weight * abs(d - p) for p in depths[-1]]
                )
                total = costs[-1] + move
                back[a] = int(np.argmin(total))
                cost[a] += total[back[a]]
        options.append(opts)
        costs.append(cost)
        depths.append(dep)
        backs.append(back)
    chosen: dict[int, tuple[int, float]] = {}
    a = int(np.argmin(costs[-1]))
    for step in range(len(order) - 1, -1, -1):
        j, i = options[step][a], int(order[step])
        if j >= 0 and (j not in chosen or gaps[i, j] < chosen[j][1]):
            chosen[j] = (i, float(gaps[i, j]))
        a = int(backs[step][a])
    return sorted((i, j, points[i, j], g) for j, (i, g) in chosen.items())


def epipolar_profiles(
    views: Sequence[RadiographView],
    anchors: np.ndarray,
    heatmap: torch.Tensor,
    scale: tuple[float, float],
    depth_mm: float = EPIPOLAR_DEPTH_MM,
    step_mm: float = EPIPOLAR_STEP_MM,
) -> tuple[np.ndarray, np.ndarray]:
    """The second view's heatmap along each anchor's ray: where on the ray the second view sees a vertebra centre.

    Args:
        views: the anchors' view, then the heatmap's view.
        anchors: ``(N, 2)`` ``(row, col)`` in the first view's image.
        heatmap: ``(h, w)`` the second view's finder heatmap (:func:`finder_maps`).
        scale: its ``(row scale, col scale)`` to the second image's pixels.
        depth_mm: the depths searched, ``-depth_mm`` to ``depth_mm`` from the isocentre along the first view's beam.
        step_mm: the step between depths.

    Returns:
        ``(points (N, K, 3) mm in the system frame, profiles (N, K))``: the heatmap (bilinear) at each point's
        projection, 0 outside the second image.
    """
    a = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    depths = torch.arange(-float(depth_mm), float(depth_mm) + 1e-9, float(step_mm), dtype=torch.float64)
    if len(a) == 0:
        return np.zeros((0, len(depths), 3)), np.zeros((0, len(depths)))
    src, dirs = views[0].rays(a)
    beam = views[0].axes()[:, 2]
    # the point of each ray at depth t from the isocentre's plane (normal: the central beam)
    along = (views[0].sod + depths)[None, :] / (dirs @ beam)[:, None]  # (N, K) distance from the source
    points = src + along[..., None] * dirs[:, None, :]
    rc, _ = views[1].project(points.reshape(-1, 3))
    h, w = heatmap.shape
    fr, fc = scale
    r = (rc[:, 0] + 0.5) / fr - 0.5
    c = (rc[:, 1] + 0.5) / fc - 0.5
    grid = torch.stack([2 * c / max(w - 1, 1) - 1, 2 * r / max(h - 1, 1) - 1], -1).float()
    prof = F.grid_sample(
        torch.as_tensor(heatmap, dtype=torch.float32)[None, None], grid[None, None], align_corners=True
    ).reshape(len(a), len(depths))
    return points.numpy(), prof.numpy().astype(np.float64)


def match_epipolar(
    views: Sequence[RadiographView],
    anchors: ViewDetections,
    heatmap: torch.Tensor,
    scale: tuple[float, float],
    depth_weight: float = EPIPOLAR_DEPTH_WEIGHT,
    depth_sigma_mm: float | None = EPIPOLAR_DEPTH_SIGMA_MM,
    depth_mm: float = EPIPOLAR_DEPTH_MM,
    step_mm: float = EPIPOLAR_STEP_MM,
) -> list[tuple[int, np.ndarray, float]]:
    """Place every anchor of one view on its ray with the other view's heatmap, the spine kept continuous.

    Where the second view's detections fail (e.g. a lateral view with gas-filled bowel, whose pockets the finder
    answers), its heatmap along the spine is still higher than elsewhere on each anchor's ray. The anchors are
    taken top to bottom (image rows); each takes one depth on its ray (:func:`epipolar_profiles`) at a cost of
    ``-log`` of the heatmap there, plus ``depth_weight`` per mm of depth change from the previous anchor: the
    cheapest chain (dynamic programming, Viterbi) over all anchors is kept, and each depth is refined to the
    parabola through its profile's neighbours. With ``depth_sigma_mm``, a depth ``t`` from the isocentre costs
    ``t^2 / (2 depth_sigma_mm^2)`` more: spine radiographs are centred on the spine, so their central beams cross
    near it, while the gas and body edges that the lateral heatmap also answers lie far in front of it.

    Returns:
        ``[(i, centre (3,), score), ...]``: anchor ``i``, its 3-D centre (on its ray) and the second view's heatmap
        there.
    """
    if len(anchors) == 0:
        return []
    points, prof = epipolar_profiles(views, anchors.rc, heatmap, scale, depth_mm, step_mm)
    order = np.argsort(anchors.rc[:, 0], kind="stable")
    k = prof.shape[1]
    depth = np.arange(k) * float(step_mm)
    jump = float(depth_weight) * np.abs(depth[:, None] - depth[None, :])  # (to, from)
    unary = -np.log(np.clip(prof, 1e-4, 1.0))
    if depth_sigma_mm:
        unary = unary + 0.5 * ((depth - float(depth_mm)) / float(depth_sigma_mm))[None, :] ** 2
    cost = unary[order[0]].copy()
    backs = []
    for i in order[1:]:
        total = cost[None, :] + jump
        back = np.argmin(total, axis=1)
        cost = total[np.arange(k), back] + unary[i]
        backs.append(back)
    best = [int(np.argmin(cost))]
    for back in reversed(backs):
        best.append(int(back[best[-1]]))
    best.reverse()
    out = []
    for i, b in zip(order, best):
        p = prof[i]
        shift = 0.0
        if 0 < b < k - 1:
            den = p[b - 1] - 2 * p[b] + p[b + 1]
            shift = float(np.clip(0.5 * (p[b - 1] - p[b + 1]) / den, -0.5, 0.5)) if den < 0 else 0.0
        lo = points[i, b]
        hi = points[i, min(b + 1, k - 1)] if shift >= 0 else points[i, max(b - 1, 0)]
        centre = lo + abs(shift) * (hi - lo)
        out.append((int(i), centre, float(p[b])))
    return sorted(out)


def chain_steps(centres: np.ndarray, gap_ratio: float = GAP_RATIO) -> np.ndarray:
    """The level steps along a chain of centres ``(N, 3)`` ordered top to bottom: 1 between neighbours, more where
    the step is longer than ``gap_ratio`` times the median of the nearby steps (a missed vertebra)."""
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    if len(c) < 2:
        return np.zeros(0, dtype=np.int64)
    d = np.linalg.norm(np.diff(c, axis=0), axis=1)
    steps = np.ones(len(d), dtype=np.int64)
    if len(d) < 3:
        return steps
    for i in range(len(d)):
        near = np.concatenate([d[max(0, i - 3) : i], d[i + 1 : i + 4]])
        ref = float(np.median(near))
        if ref > 0 and d[i] > gap_ratio * ref:
            steps[i] = max(2, int(round(d[i] / ref)))
    return steps


def _nearest_others(n: int, i: int, count: int) -> np.ndarray:
    """The indices of the ``count`` places nearest to ``i`` among ``0..n-1`` (``i`` left out; ties: the lower)."""
    others = np.array([j for j in range(n) if j != i], dtype=np.int64)
    return others[np.argsort(np.abs(others - i), kind="stable")[:count]]


def drop_crowded(found: list[dict], ratio: float = CROWD_RATIO, window: int = 3) -> list[dict]:
    """Drop the weaker of two neighbours in the chain (top to bottom) that lie closer than ``ratio`` times the
    step per level nearby: two detections of one vertebra, or a detection between two vertebrae.

    The reference is local, the ``2 * window`` steps nearest to the one judged, because steps grow down the spine
    (about 15 mm in the upper thoracic spine, 30-35 mm in the lumbar spine) and because several extra detections
    shorten the chain's overall median until none of them looks crowded. Each step of the reference is first
    divided by the levels it spans, its length over the median of its own nearest steps, rounded (a missed
    vertebra makes a step of two levels), so that gaps do not make the steps beside them look crowded. A chain of
    fewer than three steps cannot tell a gap from a normal step and is judged against the median of its steps. The
    most crowded pair goes first, and the steps are measured again after each drop.

    Args:
        found: the chain, each with ``centre`` (3,) and ``scores`` (per view).
        ratio: the shortest step kept, as a share of the step per level nearby.
        window: the reference holds the ``2 * window`` nearest steps.
    """
    chain = list(found)
    while len(chain) >= 3:
        centres = np.stack([np.asarray(f["centre"], dtype=np.float64) for f in chain])
        d = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        n = len(d)
        if n < 3:
            ref = np.full(n, float(np.median(d)))
        else:
            near = [_nearest_others(n, i, 2 * window) for i in range(n)]
            levels = np.array([max(1, int(round(d[i] / max(float(np.median(d[near[i]])), 1e-9)))) for i in range(n)])
            per_level = d / levels
            ref = np.array([float(np.median(per_level[near[i]])) for i in range(n)])
        share = d / np.maximum(ref, 1e-9)
        i = int(np.argmin(share))
        if share[i] >= ratio:
            break
        weaker = i if np.prod(chain[i]["scores"]) < np.prod(chain[i + 1]["scores"]) else i + 1
        del chain[weaker]
    return chain


def name_levels(
    evidence: Sequence[float], steps: Sequence[int] | None = None, pinned: tuple[int, int] | None = None
) -> np.ndarray:
    """Level indices of a chain ordered top to bottom (step 3 of the module docstring).

    Args:
        evidence: the network's level estimate per vertebra.
        steps: the level step between neighbours (default all 1).
        pinned: ``(position in the chain, level index)`` of a vertebra the user named.

    Returns:
        ``(N,)`` int level indices (may leave 0-23 when the chain is longer than the levels from its start).
    """
    e = np.asarray(evidence, dtype=np.float64).reshape(-1)
    n = len(e)
    s = np.ones(max(n - 1, 0), dtype=np.int64) if steps is None else np.asarray(steps, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(s)]).astype(np.int64)
    if pinned is not None:
        pos, idx = int(pinned[0]), int(pinned[1])
        return offsets + (idx - offsets[pos])
    if n == 0:
        return offsets
    last = len(LEVELS) - 1
    starts = range(0, max(last - int(offsets[-1]), 0) + 1)
    fit = np.nan_to_num(e, nan=0.0)
    best = min(starts, key=lambda k: (float(np.abs(fit - (k + offsets)).sum()), k))
    return offsets + best


def _distance_to_chain(coords: np.ndarray, target: np.ndarray) -> float:
    """How far ``target`` lies beside a chain of points ``(N, D)``: its distance to the polyline through them, and
    beyond either end, to the line of the end's step carried on."""
    if len(coords) == 1:
        return float(np.linalg.norm(target - coords[0]))
    best = math.inf
    for a, b in zip(coords[:-1], coords[1:]):
        ab = b - a
        t = float(np.clip(np.dot(target - a, ab) / max(float(np.dot(ab, ab)), 1e-12), 0.0, 1.0))
        best = min(best, float(np.linalg.norm(target - (a + t * ab))))
    for a, b in ((coords[0], coords[1]), (coords[-1], coords[-2])):
        ab = b - a
        t = float(np.dot(target - a, ab) / max(float(np.dot(ab, ab)), 1e-12))
        if t < 0:  # beyond this end: the distance across the chain's direction there
            best = min(best, float(np.linalg.norm(target - (a + t * ab))))
    return best


def _pinned_levels(
    pin: LevelPin, views: Sequence[RadiographView], found: list[dict], names: Sequence[str], steps: np.ndarray
) -> np.ndarray:
    """The level indices of a chain named from a pin.

    The pin names the vertebra found within :data:`PIN_RADIUS_MM` of it (on the detector, or in 3-D). When none was
    found there (the pinned vertebra was missed), the pin takes its place in the chain by height, the steps are
    counted again with it (:func:`chain_steps`), and the chain is named from its place; a pin farther than three
    steps beyond either end of the chain, or farther than that radius beside it, names nothing (an input error).
    """
    if pin.centre_mm is not None:
        coords = np.stack([np.asarray(f["centre"], dtype=np.float64) for f in found])
        target = np.asarray(pin.centre_mm, dtype=np.float64)
        where, limit, height = f"the 3-D point {list(pin.centre_mm)} mm", PIN_RADIUS_MM, 2
    else:
        k = list(names).index(pin.view) if pin.view in names else _VIEWS.index(str(pin.view))
        sp = np.asarray(views[k].pixel_spacing, dtype=np.float64)
        coords = np.stack([np.append(np.asarray(f["rc"][k]) * sp, 0.0) for f in found])
        target = np.append(np.asarray(pin.rc, dtype=np.float64) * sp, 0.0)
        where = f"{pin.view} (row {pin.rc[0]:g}, col {pin.rc[1]:g})"  # type: ignore[index]
        limit, height = PIN_RADIUS_MM * views[k].sdd / views[k].sod, 0
    dist = np.linalg.norm(coords - target, axis=1)
    offsets = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
    best = int(np.argmin(dist))
    if dist[best] <= limit:
        return offsets + (level_index(pin.level) - offsets[best])
    side = _distance_to_chain(coords, target)
    if side > limit:
        raise BundleInputError(
            f"level pin {pin.level} at {where}: it lies {side:.0f} mm beside the spine found (the nearest vertebra "
            f"{dist[best]:.0f} mm away{'' if height == 2 else ', on the detector'}); fix: give the pinned vertebra's "
            f"centre, row first, in the file's pixels; {_FINDER_MISSED}"
        )
    sign = -1.0 if height == 2 else 1.0  # z falls down the chain; image rows grow
    place = int(np.searchsorted(sign * coords[:, height], sign * target[height]))
    chain = np.insert(coords, place, target, axis=0)
    aug = np.concatenate([[0], np.cumsum(chain_steps(chain))]).astype(np.int64)
    step = float(np.median(np.linalg.norm(np.diff(coords, axis=0), axis=1))) if len(coords) > 1 else limit
    beyond = 0.0 if 0 < place < len(coords) else float(dist[0 if place == 0 else -1])
    if beyond > 3.0 * max(step, limit):
        raise BundleInputError(
            f"level pin {pin.level} at {where}: it lies {beyond:.0f} mm beyond the vertebrae found (nearest "
            f"{dist[best]:.0f} mm); fix: give the pinned vertebra's centre, row first, in the file's pixels; "
            f"{_FINDER_MISSED}"
        )
    return np.delete(aug, place) + (level_index(pin.level) - aug[place])


#: the second half of a pin error's fix: the pin can be right and the finder wrong (e.g. bowel gas in the lateral view)
_FINDER_MISSED = (
    "if it is right, the finder missed this spine: give the vertebrae's 3-D centres yourself (--centres FILE), or "
    "reconstruct each vertebra from its centre in both images (docs/reference.md, inference from full radiographs)"
)


def _strong(det: ViewDetections, threshold: float) -> tuple[ViewDetections, np.ndarray]:
    keep = np.nonzero(det.scores >= threshold)[0]
    return ViewDetections(det.rc[keep], det.scores[keep], det.levels[keep]), keep


def _match_both_ways(
    views: Sequence[RadiographView], dets: Sequence[ViewDetections], threshold: float, tolerance_mm: float
) -> list[tuple[int, int, np.ndarray, float]]:
    """:func:`match_chain` with the detections (at ``threshold``) of the view that finds the spine more surely (the
    higher mean of its ten best scores) as anchors and the other view's (at :data:`CANDIDATE_THRESHOLD`) as
    candidates, keeping the pairs whose scores' geometric mean reaches ``threshold``. Indices refer to ``dets``."""
    if not (math.isfinite(tolerance_mm) and tolerance_mm > 0):
        raise BundleInputError(f"tolerance_mm={tolerance_mm!r}: give a positive distance in mm.")
    sure = [float(np.mean(np.sort(d.scores)[::-1][:10])) if len(d) else 0.0 for d in dets]
    a = 0 if sure[0] >= sure[1] else 1
    anchors, keep = _strong(dets[a], threshold)
    pairs = match_chain(views if a == 0 else views[::-1], anchors, dets[1 - a], tolerance_mm)
    pairs = [(int(keep[i]), j, c, g) if a == 0 else (j, int(keep[i]), c, g) for i, j, c, g in pairs]
    return [q for q in pairs if math.sqrt(dets[0].scores[q[0]] * dets[1].scores[q[1]]) >= threshold]


def _reprojection(views: Sequence[RadiographView], centre: np.ndarray, rcs: Sequence[np.ndarray]) -> list[float]:
    """The distance (mm on each detector) between each view's position and the 3-D centre's projection."""
    out = []
    for view, rc in zip(views, rcs):
        proj = view.project(torch.as_tensor(centre)[None])[0][0].numpy()
        out.append(float(np.linalg.norm((proj - np.asarray(rc)) * np.asarray(view.pixel_spacing))))
    return out


def _found_epipolar(
    views: Sequence[RadiographView], dets: Sequence[ViewDetections], maps: Sequence[tuple], threshold: float
) -> list[dict]:
    """:func:`match_epipolar` with the detections (at ``threshold``) of the view that finds the spine more surely
    (the higher mean of its ten best scores) as anchors, on the other view's heatmap. The second view's position
    is the centre's projection (ray miss 0 by construction); its score is its heatmap there; the level evidence is
    the mean of both views' level maps."""
    sure = [float(np.mean(np.sort(d.scores)[::-1][:10])) if len(d) else 0.0 for d in dets]
    a = 0 if sure[0] >= sure[1] else 1
    view = views[a]
    # the same centring prior across the anchor view's beam: an anchor's score falls with its distance from the
    # central column (mm at the isocentre), so detections in the bowel or at the body's edge do not anchor the chain
    off = (dets[a].rc[:, 1] - view.centre_px[1]) * view.pixel_spacing[1] * view.sod / view.sdd
    centred = ViewDetections(
        dets[a].rc, dets[a].scores * np.exp(-0.5 * (off / EPIPOLAR_DEPTH_SIGMA_MM) ** 2), dets[a].levels
    )
    anchors, keep = _strong(centred, threshold)
    anchors = ViewDetections(anchors.rc, dets[a].scores[keep], anchors.levels)
    pair = [views[a], views[1 - a]]
    found = []
    for i, centre, score in match_epipolar(pair, anchors, maps[1 - a][0], maps[1 - a][2]):
        rc_b = views[1 - a].project(torch.as_tensor(centre)[None])[0][0].numpy()
        rcs = [anchors.rc[i], rc_b] if a == 0 else [rc_b, anchors.rc[i]]
        scores = [float(anchors.scores[i]), score] if a == 0 else [score, float(anchors.scores[i])]
        evidence = float(np.mean([anchors.levels[i], _map_at(maps[1 - a][1], maps[1 - a][2], rc_b)]))
        found.append(
            {
                "centre": centre,
                "gap": 0.0,
                "rc": rcs,
                "reproj": _reprojection(views, centre, rcs),
                "scores": scores,
                "evidence": evidence,
            }
        )
    return found


def localise_vertebrae(
    images: Sequence[np.ndarray],
    views: Sequence[RadiographView],
    network: torch.nn.Module | str | os.PathLike | None = None,
    pin: LevelPin | str | None = None,
    tolerance_mm: float = DEFAULT_MATCH_TOLERANCE_MM,
    threshold: float = DEFAULT_THRESHOLD,
    names: Sequence[str] = _VIEWS,
    matching: str | None = None,
) -> list[FoundVertebra]:
    """Find and name the vertebrae of two radiographs (see the module docstring).

    Args:
        images: the two images ``(H, W)``, oriented as seen from the source (``Radiograph.image``).
        views: their geometry (:func:`scripts.io.radiograph.radiograph_views`).
        network: the finder (a module or a ``model.pt``; default :data:`DEFAULT_FINDER_MODEL`).
        pin: a pinned level (:class:`LevelPin` or its text, pixel positions in the images as oriented).
        tolerance_mm: the largest ray miss of a pair (mm).
        threshold: the smallest heatmap peak kept.
        names: the views' names in messages and outputs.
        matching: ``"assignment"`` (:func:`match_detections`, one to one by ray miss), ``"chain"``
            (:func:`match_chain` along the spine) or ``"epipolar"`` (:func:`match_epipolar`: the surer view's
            detections placed on their rays by the other view's heatmap); default :data:`DEFAULT_MATCHING`.

    Returns:
        the vertebrae found, top to bottom.

    Raises:
        BundleInputError: see the module docstring.
    """
    names = list(names)
    if len(images) != 2 or len(views) != 2:
        raise XRayInputError(
            f"the finder needs two radiographs of the patient, an AP and a lateral; got {len(images)}; fix: give both."
        )
    separation, _ = beam_line_difference(views[0].angles, views[1].angles)
    if separation < MIN_VIEW_SEPARATION_DEG:
        raise XRayInputError(
            f"{names[0]} {list(views[0].angles)} and {names[1]} {list(views[1].angles)} look along lines only "
            f"{separation:.1f} degrees apart (at least {MIN_VIEW_SEPARATION_DEG:g} needed): they do not place "
            "points in 3-D; fix: give two different directions (AP and lateral), or check the files' view tags."
        )
    pin = parse_level_pin(pin)
    matching = DEFAULT_MATCHING if matching is None else matching
    if matching not in MATCHING_MODES:
        raise BundleInputError(f"matching={matching!r}: use one of {', '.join(MATCHING_MODES)}.")
    net = load_finder(network)
    low = min(float(threshold), CANDIDATE_THRESHOLD)
    dets, maps = [], []
    for image, view, name in zip(images, views, names):
        if tuple(np.shape(image)) != tuple(view.shape):
            raise XRayInputError(f"{name}: image shape {np.shape(image)} is not its view's {view.shape}.")
        maps.append(finder_maps(net, image, view.pixel_spacing, view_flag(view.angles)))
        det = detections_from_maps(*maps[-1], low)
        if not (det.scores >= threshold).any():
            raise XRayInputError(
                f"{name}: no spine found (no vertebra centre scored {threshold:g} or more); fix: check that the "
                "image shows the spine, bone bright, at its stated pixel spacing."
            )
        dets.append(det)
    if matching == "epipolar":
        found = _found_epipolar(views, dets, maps, threshold)
        other = [min(f["scores"]) for f in found]
        if not found or float(np.median(other)) < EPIPOLAR_MIN_MEDIAN_SCORE:
            raise XRayInputError(
                f"{names[0]} ({len(dets[0])} vertebrae found) and {names[1]} ({len(dets[1])}): along the rays through "
                f"one view's vertebrae the other view shows none (median heatmap {np.median(other or [0.0]):.3f}), so "
                "the two images give no consistent vertebra; fix: check that they show one patient at one time and "
                "the files' geometry (distances, pixel spacing, view angles)."
            )
    else:
        if matching == "chain":
            pairs = _match_both_ways(views, dets, threshold, tolerance_mm)
        else:
            pairs = match_detections(views, *(_strong(d, threshold)[0] for d in dets), tolerance_mm)
            keeps = [_strong(d, threshold)[1] for d in dets]
            pairs = [(int(keeps[0][i]), int(keeps[1][j]), c, g) for i, j, c, g in pairs]
        if not pairs:
            raise XRayInputError(
                f"{names[0]} ({len(dets[0])} vertebrae found) and {names[1]} ({len(dets[1])}): no pair of detections "
                f"meets within {tolerance_mm:g} mm, so the two images give no consistent vertebra; fix: check that "
                "they show one patient at one time and the files' geometry (distances, pixel spacing, view angles)."
            )
        found = []
        for i, j, centre, gap in pairs:
            rcs = [dets[0].rc[i], dets[1].rc[j]]
            found.append(
                {
                    "centre": centre,
                    "gap": gap,
                    "rc": rcs,
                    "reproj": _reprojection(views, centre, rcs),
                    "scores": [float(dets[0].scores[i]), float(dets[1].scores[j])],
                    "evidence": float(np.mean([dets[0].levels[i], dets[1].levels[j]])),
                }
            )
    found.sort(key=lambda f: -float(f["centre"][2]))
    found = drop_crowded(found)
    steps = chain_steps(np.stack([f["centre"] for f in found]))
    if pin is not None:
        indices = _pinned_levels(pin, views, found, names, steps)
    else:
        indices = name_levels([f["evidence"] for f in found], steps)
        if found:
            logger.warning(UNPINNED_WARNING)
    out = []
    for f, idx in zip(found, indices):
        out.append(
            FoundVertebra(
                level=level_name(idx) if 0 <= idx < len(LEVELS) else None,
                level_index=int(idx),
                level_evidence=round(f["evidence"], 3),
                named_by="pin" if pin is not None else "chain",
                centre_mm=[round(float(v), 3) for v in f["centre"]],
                rc={n: [round(float(v), 2) for v in rc] for n, rc in zip(names, f["rc"])},
                ray_gap_mm=round(f["gap"], 3),
                reprojection_mm={n: round(r, 3) for n, r in zip(names, f["reproj"])},
                scores={
                    **{n: round(s, 4) for n, s in zip(names, f["scores"])},
                    "pair": round(math.sqrt(f["scores"][0] * f["scores"][1]), 4),
                },
            )  # fmt: skip
        )
    return out


class WindowCentring:
    """Does the finder see a vertebra at the centre of a model's window? The confidence signal of window placement.

    A reconstruction model reads a window that should be centred on its vertebra; a window placed off the vertebra
    (a centre clicked or found 10-20 mm away) still gives a plausible, confident-looking vertebra at the grid's
    centre, and the TTA agreement cannot tell (docs/confidence.md). This reads the two views out of the model's
    expanded input (:func:`scripts.networks.stack_views`), runs the finder on each at its own scale (pixels of
    ``spacing_mm`` at the isocentre read as detector pixels of ``spacing_mm *``
    :data:`~scripts.networks.finder.FINDER_MAGNIFICATION`) with its view flag (AP, lateral), and returns the mean
    over the two views of the heatmap's highest value within ``radius_mm`` of the window's centre: about 0.2 for a
    centred window of a training-like body X-ray, 0.04-0.07 for a window 20 mm off, about 0.045 for a blank one.

    Args:
        spacing_mm: the grid's voxel size (mm), i.e. the views' pixel size at the isocentre.
        finder: the finder (a module or a ``model.pt``; default the shipped one, :func:`load_finder`).
        radius_mm: the radius about the centre, mm at the isocentre.
        device: where the finder runs.

    Raises:
        BundleInputError: a spacing or radius that is not positive, finder weights that cannot be read, or (on a
            call) an input that is not one expanded pair of views.
    """

    def __init__(
        self,
        spacing_mm: float,
        finder: str | os.PathLike | torch.nn.Module | None = None,
        radius_mm: float = CENTRING_RADIUS_MM,
        device: str | torch.device = "cpu",
    ) -> None:
        if not float(spacing_mm) > 0 or not float(radius_mm) > 0:
            raise BundleInputError(
                f"window centring needs a positive spacing and radius, got {spacing_mm}, {radius_mm}."
            )
        self.spacing_mm = float(spacing_mm)
        self.radius_mm = float(radius_mm)
        self.network = load_finder(finder, device)

    def view_scores(self, image: torch.Tensor) -> list[float]:
        """The heatmap's highest value within the radius of the centre, per view (AP, lateral), of one expanded
        input ``(V, X, Y, Z)`` (or ``(1, V, X, Y, Z)``) with the two views as channels."""
        from scripts.networks import stack_views

        x = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image).detach().float().cpu()
        if x.dim() == 4:
            x = x[None]
        if x.dim() != 5 or x.shape[:2] != (1, 2):
            raise BundleInputError(f"window centring reads one expanded pair (2, X, Y, Z); got {list(x.shape)}.")
        views = stack_views(x)[0]
        pixel = self.spacing_mm * FINDER_MAGNIFICATION
        out = []
        for v in range(2):
            img = views[v]
            heat, _, (sr, sc) = finder_maps(self.network, img.numpy(), (pixel, pixel), v)
            rows = (torch.arange(heat.shape[0], dtype=torch.float32) + 0.5) * sr - 0.5 - (img.shape[0] - 1) / 2.0
            cols = (torch.arange(heat.shape[1], dtype=torch.float32) + 0.5) * sc - 0.5 - (img.shape[1] - 1) / 2.0
            dist = torch.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2) * self.spacing_mm
            out.append(float(heat[dist <= self.radius_mm].max()) if bool((dist <= self.radius_mm).any()) else 0.0)
        return out

    def __call__(self, image: torch.Tensor) -> float:
        """The mean over the two views of :meth:`view_scores`, in [0, 1]."""
        return float(np.mean(self.view_scores(image)))
