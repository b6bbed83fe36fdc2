# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""CT intensities: checks of the stored values, and recovery of Hounsfield units from a windowed scan.

Some public spine CTs are stored as 0-255 after an unknown linear window per scan, with 0 as padding
outside the scanned field of view. :func:`fit_hu` recovers ``HU = scale * value + offset`` from four
landmarks that every spine CT holds, found in the stored values:

- ``air`` (-1000 HU): the mode of the field of view's values far below soft tissue (outside the body,
  bowel gas, trachea). The field of view is every voxel that is not padding (value 0).
- ``fat`` (-100 HU): a histogram peak between air and soft tissue, near where the other landmarks
  predict it.
- ``soft`` (+40 HU): the mode of the values within 30 mm of the vertebrae (muscle, organs), below bone.
- ``bone`` (+250 HU): the median of the voxels inside the vertebra labels (cancellous bone with its
  cortical shell). On the example (LIDC-IDRI-0001) that median is 243-245 HU at every grid from its own
  to 3.7 mm isotropic.

The line is a least-squares fit through the landmarks found, each weighted by the inverse of its
spread between patients (:data:`LANDMARK_SPREAD_HU`); the residual of each (fitted minus nominal
HU) and a warning when the fit is poorly conditioned (no air in view, air at the padding value, landmarks
too close together, landmarks that disagree) are reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scripts.data.errors import DataError

__all__ = [
    "LANDMARK_HU",
    "LANDMARK_SPREAD_HU",
    "PADDING_VALUE",
    "INTENSITIES",
    "HUFit",
    "check_finite",
    "looks_windowed",
    "fit_hu",
    "given_fit",
    "apply_fit",
]

#: Nominal HU of each landmark.
LANDMARK_HU: dict[str, float] = {"air": -1000.0, "fat": -100.0, "soft": 40.0, "bone": 250.0}
#: How far (HU, one standard deviation) a scan's landmark may lie from its nominal HU: the weights of the
#: fit. Bone density varies most between patients, so bone counts least where other landmarks exist.
LANDMARK_SPREAD_HU: dict[str, float] = {"air": 20.0, "fat": 20.0, "soft": 20.0, "bone": 80.0}
#: Stored value of the padding outside the field of view of a windowed scan.
PADDING_VALUE = 0.0
#: ``--intensity`` choices.
INTENSITIES = ("hu", "windowed")

_SOFT_RADIUS_MM = 30.0  # soft-tissue landmark: voxels within this distance of the vertebrae
_AIR_BELOW_HU = 600.0  # air landmark: values more than this below soft tissue (predicted)
_AIR_MIN_FRACTION = 0.005  # ... held by at least this fraction of the field of view
_FAT_WINDOW_HU = (70.0, 250.0)  # fat landmark: a peak this far below soft tissue
_MIN_SPAN_STEPS = 20.0  # fewer stored steps between the lowest and highest landmark: poorly conditioned
_MAX_RESIDUAL_HU = 100.0  # a larger residual: landmarks disagree
_ANALYSIS_MM = 2.0  # the landmarks are found on a grid subsampled to about this spacing


@dataclass
class HUFit:
    """A linear map from stored values to HU, ``HU = scale * value + offset``.

    Attributes:
        scale: HU per stored unit.
        offset: HU of stored value 0.
        source: ``"fit"`` (found in the scan) or ``"given"`` (``scale`` / ``offset`` of the source list).
        landmarks: stored value of each landmark found (``air``, ``fat``, ``soft``, ``bone``).
        residuals: fitted minus nominal HU of each landmark found.
        warnings: why the fit may be poor (empty when it is well conditioned).
    """

    scale: float
    offset: float
    source: str = "fit"
    landmarks: dict[str, float] = field(default_factory=dict)
    residuals: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line: ``HU = 16.12 * v - 1024.3 (fit; residuals air +3, ...)``."""
        text = f"HU = {self.scale:.4g} * v {'+' if self.offset >= 0 else '-'} {abs(self.offset):.1f} ({self.source}"
        if self.residuals:
            text += "; residuals " + ", ".join(f"{k} {r:+.0f}" for k, r in self.residuals.items())
        return text + ")"

    def manifest_fields(self) -> dict[str, object]:
        """The fit as manifest columns."""
        return {
            "hu_scale": round(self.scale, 6),
            "hu_offset": round(self.offset, 3),
            "hu_fit": self.source,
            "hu_landmarks": " ".join(f"{k}={v:g}" for k, v in self.landmarks.items()),
            "hu_residuals": " ".join(f"{k}={r:+.1f}" for k, r in self.residuals.items()),
            "hu_warning": "; ".join(self.warnings),
        }


def check_finite(values: np.ndarray, path: str | os.PathLike | None) -> None:
    """Raise :class:`DataError` when a CT holds NaN or infinite values."""
    arr = np.asarray(values)
    if not np.isfinite(arr).all():
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        raise DataError(
            path,
            f"CT holds {n_nan} NaN and {n_inf} infinite value(s)",
            "replace them (e.g. with -1024 HU) or export the scan again",
        )


def looks_windowed(values: np.ndarray) -> bool:
    """Whether stored values cannot be HU: no negative value at all (a CT in HU has air near -1000)."""
    return float(np.min(values)) >= 0.0


def given_fit(scale: float, offset: float) -> HUFit:
    """The map given in the source list (no landmarks, no residuals)."""
    return HUFit(float(scale), float(offset), source="given")


def apply_fit(values: np.ndarray, fit: HUFit, padding: float | None = PADDING_VALUE) -> np.ndarray:
    """Stored values -> HU (float32); padding voxels (``values == padding``) become -1024 HU."""
    arr = np.asarray(values, dtype=np.float64)
    out = arr * fit.scale + fit.offset
    if padding is not None:
        out[arr == padding] = -1024.0
    return out.astype(np.float32)


def _strides(spacing: tuple[float, float, float]) -> tuple[slice, slice, slice]:
    return tuple(slice(None, None, max(1, int(round(_ANALYSIS_MM / s)))) for s in spacing)  # type: ignore[return-value]


def _histogram(values: np.ndarray, lo: float, step: float, n: int, smooth: bool = True) -> np.ndarray:
    idx = np.clip(np.round((values - lo) / step).astype(np.int64), 0, n - 1)
    counts = np.bincount(idx, minlength=n).astype(np.float64)
    return ndimage.gaussian_filter1d(counts, 1.0) if smooth else counts


def _peak_in(hist: np.ndarray, lo_bin: float, hi_bin: float) -> int | None:
    """The highest local maximum of ``hist`` strictly inside ``[lo_bin, hi_bin]``, or ``None``."""
    a, b = max(1, int(np.ceil(lo_bin))), min(len(hist) - 2, int(np.floor(hi_bin)))
    if b < a:
        return None
    seg = np.arange(a, b + 1)
    peaks = seg[(hist[seg] > hist[seg - 1]) & (hist[seg] >= hist[seg + 1])]
    return int(peaks[np.argmax(hist[peaks])]) if len(peaks) else None


def _lsq(points: dict[str, float]) -> tuple[float, float]:
    v = np.array(list(points.values()))
    hu = np.array([LANDMARK_HU[k] for k in points])
    weights = np.array([1.0 / LANDMARK_SPREAD_HU[k] for k in points])
    scale, offset = np.polyfit(v, hu, 1, w=weights)
    return float(scale), float(offset)


def fit_hu(
    values: np.ndarray,
    vertebrae: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    path: str | os.PathLike | None = None,
) -> HUFit:
    """Fit ``HU = scale * value + offset`` to a windowed CT from its air, fat, soft-tissue and bone values.

    Args:
        values: the stored CT, 3-D.
        vertebrae: boolean mask of the vertebra labels, same shape.
        spacing: voxel size in mm along each array axis.
        path: the CT, named in errors.

    Returns:
        the fit with its landmarks, residuals and warnings.

    Raises:
        DataError: too few landmarks to fit a line (no vertebra voxels, or bone not above soft tissue).
    """
    sl = _strides(tuple(float(s) for s in spacing))
    v = np.asarray(values, dtype=np.float64)[sl]
    vert = np.asarray(vertebrae, dtype=bool)[sl]
    sub_spacing = tuple(float(s) * max(1, int(round(_ANALYSIS_MM / float(s)))) for s in spacing)
    fov = v != PADDING_VALUE
    fix = "give this scan's scale and offset in the source list (columns scale, offset)"
    if not (vert & fov).any():
        raise DataError(path, "cannot recover HU: no vertebra voxel inside the field of view", fix)
    inside = v[fov]
    step = 1.0 if np.array_equal(inside, np.round(inside)) else max((inside.max() - inside.min()) / 255.0, 1e-6)
    lo = float(inside.min())
    n = int(round((float(inside.max()) - lo) / step)) + 1
    to_v = lambda b: lo + b * step  # noqa: E731
    raw = _histogram(inside, lo, step, n, smooth=False)
    hist = ndimage.gaussian_filter1d(raw, 1.0)

    v_bone = float(np.median(v[vert & fov]))
    near = ndimage.distance_transform_edt(~vert, sampling=sub_spacing) <= _SOFT_RADIUS_MM
    near &= fov & ~vert & (v < v_bone)
    if near.sum() < 100:
        raise DataError(path, "cannot recover HU: too little soft tissue around the vertebrae", fix)
    soft_bin = int(np.argmax(_histogram(v[near], lo, step, n)))
    points = {"soft": to_v(soft_bin)}
    if v_bone - points["soft"] < step:
        raise DataError(path, "cannot recover HU: the vertebrae are not brighter than the soft tissue", fix)
    points["bone"] = v_bone
    warnings: list[str] = []

    # air: far below soft tissue, on the scale that bone and soft tissue suggest
    scale0 = (LANDMARK_HU["bone"] - LANDMARK_HU["soft"]) / (v_bone - points["soft"])
    air_top = soft_bin - _AIR_BELOW_HU / scale0 / step
    n_low = float(np.sum(inside < to_v(air_top)))
    if n_low >= _AIR_MIN_FRACTION * inside.size and air_top >= 0:
        air_bin = int(np.argmax(hist[: int(np.floor(air_top)) + 1]))
        points["air"] = to_v(air_bin)
        # the air peak cut off at the padding value: air below the window reads as padding
        touches = lo - PADDING_VALUE <= 1.5 * step and raw[0] >= 0.25 * raw[air_bin]
        if (touches or points["air"] - PADDING_VALUE <= 2 * step) and (~fov).any():
            warnings.append(f"air lies at the padding value ({points['air']:g}): padding and air cannot be told apart")
    else:
        warnings.append("no air in the field of view")

    # fat: a peak between air and soft tissue, where the other landmarks put it
    scale1, offset1 = _lsq(points)
    lo_hu, hi_hu = LANDMARK_HU["soft"] - _FAT_WINDOW_HU[1], LANDMARK_HU["soft"] - _FAT_WINDOW_HU[0]
    fat_bin = _peak_in(hist, ((lo_hu - offset1) / scale1 - lo) / step, ((hi_hu - offset1) / scale1 - lo) / step)
    if fat_bin is not None:
        points["fat"] = to_v(fat_bin)

    order = ("air", "fat", "soft", "bone")
    points = {k: points[k] for k in order if k in points}
    scale, offset = _lsq(points)
    residuals = {k: scale * x + offset - LANDMARK_HU[k] for k, x in points.items()}
    span = (max(points.values()) - min(points.values())) / step
    if span < _MIN_SPAN_STEPS:
        warnings.append(f"landmarks only {span:.0f} stored steps apart")
    if len(points) < 3:
        warnings.append(f"only {len(points)} landmarks ({', '.join(points)})")
    worst = max(residuals, key=lambda k: abs(residuals[k]))
    if abs(residuals[worst]) > _MAX_RESIDUAL_HU:
        warnings.append(f"landmarks disagree ({worst} residual {residuals[worst]:+.0f} HU)")
    return HUFit(scale, offset, "fit", points, residuals, warnings)
