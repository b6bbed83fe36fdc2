# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Anatomical checks of a label map's orientation and of the size of its vertebrae in world coordinates.

Wrong orientation metadata is common in public spine data (e.g. volumes mirrored front to back). Two
checks use only the vertebra labels and the affine (RAS world mm):

- anterior-posterior: a vertebra's mass lies mostly in its body, which is anterior; the arch and the
  spinous process reach far back with little mass. The *AP offset* of a vertebra is (centroid minus
  bounding-box centre) along the world anterior axis, divided by the box's depth: positive when the
  bulk is anterior. On the example and the six scans of ``docs/spine-ct-sources.csv`` every complete
  vertebra has an offset between +0.01 and +0.18, and every scan's median lies between +0.03 and +0.15.
  A scan whose median offset is below ``-AP_MARGIN`` is mirrored front to back; between ``-AP_MARGIN``
  and ``+AP_MARGIN`` (symmetric shapes) nothing is decided.
- head-feet: the centroids of consecutive levels (C1 ... L5) must descend along the world superior axis.
  Most pairs rising means the superior-inferior axis is mirrored; a few means mislabelled levels.

Only vertebrae that do not touch the scan border and are not fragments (:func:`fragments`) are used: a
cut-off vertebra's partial mask gives a biased centroid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scripts.data.labels import LEVELS

__all__ = [
    "AP_MARGIN",
    "FRAGMENT_FRACTION",
    "VertebraGeometry",
    "OrientationReport",
    "vertebra_geometry",
    "fragments",
    "check_orientation",
]

#: Median AP offset beyond which a scan's front-back direction is decided.
AP_MARGIN = 0.02
#: A vertebra holding less than this fraction of the mean volume of its labelled neighbours is a fragment.
FRAGMENT_FRACTION = 0.25


@dataclass
class VertebraGeometry:
    """World geometry of one vertebra's mask.

    Attributes:
        level: e.g. ``"T12"``.
        centroid: mean world position (RAS mm) of its voxels.
        extent: bounding-box size along the world R, A, S axes (mm, voxel centres plus one voxel).
        ap_offset: (centroid - box centre) / box depth along the anterior axis.
        volume: mm^3.
    """

    level: str
    centroid: np.ndarray
    extent: np.ndarray
    ap_offset: float
    volume: float = 0.0


@dataclass
class OrientationReport:
    """The result of :func:`check_orientation`.

    Attributes:
        ap_median: median AP offset of the vertebrae checked (``nan`` without any).
        n: vertebrae checked.
        problems: ``(problem, fix)`` per violation, the fix naming the likely flip (empty when plausible).
    """

    ap_median: float
    n: int
    problems: list[tuple[str, str]] = field(default_factory=list)


def vertebra_geometry(labels: np.ndarray, affine: np.ndarray, levels: dict[int, str]) -> list[VertebraGeometry]:
    """Centroid, world extent and AP offset of each labelled vertebra, in cranio-caudal order.

    Args:
        labels: 3-D integer label map.
        affine: its voxel -> RAS mm affine.
        levels: label value -> level of the vertebrae to measure.
    """
    lab = np.asarray(labels)
    aff = np.asarray(affine, dtype=np.float64)
    voxel = np.abs(aff[:3, :3]).sum(1)  # one voxel's size along each world axis
    values = sorted(levels)
    boxes = ndimage.find_objects(np.where(np.isin(lab, values), lab, 0).astype(np.int32), max_label=max(values))
    out = []
    for v in values:
        box = boxes[v - 1]
        if box is None:
            continue
        idx = np.argwhere(lab[box] == v) + [s.start for s in box]
        world = idx @ aff[:3, :3].T + aff[:3, 3]
        lo, hi = world.min(0), world.max(0)
        depth = hi[1] - lo[1]
        ap = float((world[:, 1].mean() - (lo[1] + hi[1]) / 2) / depth) if depth > 0 else 0.0
        volume = len(idx) * abs(float(np.linalg.det(aff[:3, :3])))
        out.append(VertebraGeometry(levels[v], world.mean(0), hi - lo + voxel, ap, volume))
    return sorted(out, key=lambda g: LEVELS.index(g.level))


def fragments(geometry: list[VertebraGeometry]) -> set[str]:
    """Levels whose label is a fragment: under :data:`FRAGMENT_FRACTION` of the mean volume of the labelled
    levels next to it (e.g. the last level of a label map that stops short of the scan's border)."""
    out = set()
    for i, g in enumerate(geometry):
        neighbours = [n.volume for n in geometry[max(0, i - 1) : i + 2] if n is not g]
        if neighbours and g.volume < FRAGMENT_FRACTION * float(np.mean(neighbours)):
            out.add(g.level)
    return out


def _array_axis(affine: np.ndarray, world_axis: int) -> int:
    """The array axis that runs most along a world axis."""
    return int(np.argmax(np.abs(np.asarray(affine, dtype=np.float64)[world_axis, :3])))


def check_orientation(geometry: list[VertebraGeometry], affine: np.ndarray) -> OrientationReport:
    """Check that vertebral bodies lie anterior to their arches and that levels descend head to feet.

    Args:
        geometry: the complete vertebrae of one scan (see :func:`vertebra_geometry`).
        affine: the scan's voxel -> RAS mm affine (to name the array axis to flip).

    Returns:
        the report; ``problems`` is empty when the anatomy is plausible or cannot be judged.
    """
    offsets = [g.ap_offset for g in geometry]
    report = OrientationReport(float(np.median(offsets)) if offsets else float("nan"), len(offsets))
    if offsets and report.ap_median < -AP_MARGIN:
        report.problems.append((
            f"anterior-posterior axis mirrored: the vertebral bodies lie posterior to their arches (median AP "
            f"offset {report.ap_median:+.3f} over {len(offsets)} vertebrae, expected > 0)",
            f"flip array axis {_array_axis(affine, 1)} or fix the affine",
        ))  # fmt: skip
    pairs = list(zip(geometry, geometry[1:]))
    rising = [(a.level, b.level) for a, b in pairs if b.centroid[2] > a.centroid[2]]
    if pairs and len(rising) > len(pairs) / 2:
        report.problems.append((
            f"superior-inferior axis mirrored: {geometry[0].level} lies below {geometry[-1].level}",
            f"flip array axis {_array_axis(affine, 2)} or fix the affine; or, if the label map numbers its levels "
            "in another convention (levels read in reverse), give its convention with --labels",
        ))  # fmt: skip
    elif rising:
        shown = ", ".join(f"{b} above {a}" for a, b in rising[:3])
        report.problems.append((f"levels out of order ({shown})", "check the label ids or --labels"))
    return report
