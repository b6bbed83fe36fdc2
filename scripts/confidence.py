# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Confidence of a reconstruction: test-time augmentation (TTA), a voxel-wise uncertainty and a calibrated score.

The method (``docs/confidence.md``): the network sees the case once as given and ``K`` more times through
fixed perturbations of its input, batched: the window moved by a few voxels (both views at once, as a
person's window placement would move it), one view turned in its own plane (a geometry that is not quite what
the model is told) and the images' contrast curve changed (display processing). Each perturbed prediction is
moved back onto the case's grid. Then:

- the **uncertainty map** is the voxel-wise standard deviation of the ``1 + K`` predictions (HU when the
  predictions are HU);
- the **agreement** is the mean Dice between the bone mask of each perturbed prediction and that of the
  prediction as given (bone: above the threshold, -500 HU as the Dice metric);
- the **confidence** is the agreement mapped to an estimate of the vertebra's Dice by a monotone (isotonic)
  calibration fitted on the validation patient's vertebrae under degradations
  (:class:`ConfidenceCalibration`, stored in the model's contract).

The output reconstruction is the prediction as given: the confidence never changes it.

Why not MONAI's ``monai.data.TestTimeAugmentation``: it inverts transforms whose output lies in the input's
space (e.g. a flip of a CT and its segmentation), while here two X-rays go in and a volume comes out. On the
expanded input volume (:class:`scripts.transforms.DimensionExpansiond`), though, a window shift is a shift of the
volume, which has an exact inverse on the output for whole voxels; that is what :class:`TTAInferer` uses.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.metrics import compute_dice
from monai.transforms import MapTransform
from scripts.errors import BundleInputError

__all__ = [
    "DEFAULT_PERTURBATIONS",
    "TTAInferer",
    "TTAConfidenced",
    "ConfidenceCalibration",
    "shift_volume",
    "perturb_input",
    "mask_agreement",
]

#: the default perturbations: window shifts in voxels (x, y, z), in-plane turns of the views (degrees, one per
#: view) and a gamma of each view's contrast curve. Four extra passes cost about four forward passes (batched).
DEFAULT_PERTURBATIONS: tuple[dict[str, Any], ...] = (
    {"shift": (2, 0, 2)},
    {"shift": (0, -2, -2)},
    {"shift": (-2, 2, 0), "gamma": (0.8, 1.25)},
    {"rotate_deg": (0.0, 4.0), "gamma": (1.25, 0.8)},
)


def shift_volume(x: torch.Tensor, shift: Sequence[int]) -> torch.Tensor:
    """Move the content of ``x`` (B, C, X, Y, Z) by whole voxels ``shift``, repeating the border.

    ``shift_volume(shift_volume(x, s), -s)`` equals ``x`` away from the ``|s|`` voxels at the faces.
    """
    s = [int(v) for v in shift]
    if not any(s):
        return x
    pad = []
    for v in reversed(s):  # F.pad takes the last dimension first
        pad += [max(v, 0), max(-v, 0)]
    padded = F.pad(x, pad, mode="replicate")
    index = [slice(None), slice(None)]
    for dim, v in enumerate(s):
        size = x.shape[2 + dim]
        start = max(-v, 0)
        index.append(slice(start, start + size))
    return padded[tuple(index)]


def _rotate_about_axis(x: torch.Tensor, degrees: float, axis: int) -> torch.Tensor:
    """Turn (B, 1, X, Y, Z) about the grid's ``axis`` (0 x, 1 y, 2 z) through its centre, repeating the border.

    One ``affine_grid`` / ``grid_sample`` for the whole batch: MONAI's ``Rotate`` turns one item at a time, and the
    inferer perturbs every item of a batch alike.
    """
    t = math.radians(float(degrees))
    c, s = math.cos(t), math.sin(t)
    # affine_grid works in (x=W=Z, y=H=Y, z=D=X) order of the last three dimensions
    dims = [2, 1, 0]  # grid coordinate index of volume axis 0 (X), 1 (Y), 2 (Z)
    rot = torch.eye(3, dtype=x.dtype, device=x.device)
    a, b = [d for d in (0, 1, 2) if d != axis]
    i, j = dims[a], dims[b]
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    theta = torch.cat([rot, torch.zeros(3, 1, dtype=x.dtype, device=x.device)], dim=1)[None].expand(x.shape[0], 3, 4)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def perturb_input(
    x: torch.Tensor,
    shift: Sequence[int] = (0, 0, 0),
    rotate_deg: Sequence[float] | None = None,
    gamma: Sequence[float] | None = None,
    beam_axes: Sequence[int] = (1, 0),
) -> torch.Tensor:
    """One TTA perturbation of the network input ``x`` (B, V, X, Y, Z): one channel per view (expanded X-ray).

    Args:
        x: the expanded views, z-scored per view.
        shift: move the window by whole voxels (x, y, z): the content moves by ``shift``.
        rotate_deg: per view, a turn in the view's own plane (about its beam axis), degrees.
        gamma: per view, a gamma of its contrast curve (on the view rescaled to [0, 1], z-scored again after).
        beam_axes: the grid axis of each view's beam (AP along y = 1, lateral along x = 0).
    """
    out = x
    if rotate_deg is not None or gamma is not None:
        views = []
        for v in range(x.shape[1]):
            ch = x[:, v : v + 1]
            if rotate_deg is not None and float(rotate_deg[v]) != 0.0:
                ch = _rotate_about_axis(ch, float(rotate_deg[v]), int(beam_axes[v]))
            if gamma is not None and float(gamma[v]) != 1.0:
                flat = ch.flatten(1)
                lo, hi = flat.min(1).values.view(-1, 1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1, 1)
                ch = ((ch - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) ** float(gamma[v])
                flat = ch.flatten(1)
                mean, std = flat.mean(1).view(-1, 1, 1, 1, 1), flat.std(1).view(-1, 1, 1, 1, 1)
                ch = (ch - mean) / std.clamp_min(1e-6)
            views.append(ch)
        out = torch.cat(views, dim=1)
    return shift_volume(out, shift)


class TTAInferer(Inferer):
    """Run ``network`` on the input as given and on ``K`` perturbed copies, batched; stack the predictions.

    Returns ``(B, 1 + K, X, Y, Z)`` for a single-channel network: channel 0 is the prediction of the input as
    given, channels ``1..K`` the perturbed predictions moved back onto the input's grid (window shifts undone).
    :class:`TTAConfidenced` reduces them to the prediction, an uncertainty map and a confidence.

    Args:
        perturbations: dicts of :func:`perturb_input` arguments (``shift``, ``rotate_deg``, ``gamma``); default
            :data:`DEFAULT_PERTURBATIONS`. An empty list turns TTA off (the output has one channel).
        batch_size: most inputs per forward pass (the input as given and its copies are batched).
        beam_axes: the grid axis of each view's beam.
    """

    def __init__(
        self,
        perturbations: Sequence[Mapping[str, Any]] | None = None,
        batch_size: int = 5,
        beam_axes: Sequence[int] = (1, 0),
    ) -> None:
        super().__init__()
        self.perturbations = [dict(p) for p in (DEFAULT_PERTURBATIONS if perturbations is None else perturbations)]
        allowed = {"shift", "rotate_deg", "gamma"}
        for p in self.perturbations:
            unknown = set(p) - allowed
            if unknown:
                raise BundleInputError(f"unknown TTA perturbation keys {sorted(unknown)}; use {sorted(allowed)}.")
        if int(batch_size) < 1:
            raise BundleInputError(f"batch_size must be >= 1, got {batch_size}.")
        self.batch_size = int(batch_size)
        self.beam_axes = tuple(int(a) for a in beam_axes)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        copies = [plain] + [perturb_input(plain, beam_axes=self.beam_axes, **p) for p in self.perturbations]
        stacked = torch.cat(copies, dim=0)  # (B * (1 + K), V, X, Y, Z), item-major per copy
        outs = [network(chunk, *args, **kwargs) for chunk in torch.split(stacked, self.batch_size, dim=0)]
        pred = torch.cat(outs, dim=0)
        b = plain.shape[0]
        preds = list(torch.split(pred, b, dim=0))
        for k, p in enumerate(self.perturbations, start=1):
            back = [-int(v) for v in p.get("shift", (0, 0, 0))]
            preds[k] = shift_volume(preds[k], back)
        out = torch.cat(preds, dim=1)
        if isinstance(inputs, MetaTensor):  # the input's metadata (affine, names) as MONAI's inferers keep it
            out = MetaTensor(out)
            out.copy_meta_from(inputs)
        return out


def mask_agreement(masks: torch.Tensor) -> torch.Tensor:
    """Mean Dice of masks ``1..K`` against mask 0, per item: ``masks`` (B, 1 + K, ...) boolean; returns (B,).

    MONAI's ``compute_dice`` with each perturbed mask as a channel; both empty counts as agreement 1 (nothing
    predicted, consistently).
    """
    others = masks[:, 1:].float()
    ref = masks[:, :1].float().expand_as(others)
    return compute_dice(others, ref, include_background=True, ignore_empty=False).mean(dim=1)


class ConfidenceCalibration:
    """A monotone map from the TTA agreement to an estimate of the vertebra's Dice, fitted by isotonic regression.

    Fitted with scipy's ``isotonic_regression`` (pool adjacent violators) on (agreement, true Dice) pairs of the
    validation patient's vertebrae under degradations; applied by linear interpolation between the fitted steps'
    centres, flat above the last, and linear down to (0, 0) below the first: an agreement below anything seen in
    calibration (perturbed predictions that disagree more than any calibration case did) must not inherit the
    lowest calibrated Dice, and an agreement of 0 (no overlap at all) means no evidence of any. Clipped to [0, 1].
    Serialised as ``{"x": [...], "y": [...], "n": N, "fitted_on": ...}`` in the model's contract.

    Args:
        x: increasing agreement values of the knots.
        y: non-decreasing Dice estimates at the knots.
        n: number of pairs it was fitted on.
        fitted_on: a description of the fitting data.
    """

    def __init__(self, x: Sequence[float], y: Sequence[float], n: int = 0, fitted_on: str = "") -> None:
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        if self.x.ndim != 1 or self.x.shape != self.y.shape or len(self.x) == 0:
            raise ValueError("a calibration needs matching, non-empty 1-D knots x and y.")
        if np.any(np.diff(self.x) <= 0) or np.any(np.diff(self.y) < -1e-9):
            raise ValueError("calibration knots must have increasing x and non-decreasing y.")
        self.n = int(n)
        self.fitted_on = str(fitted_on)

    @classmethod
    def fit(cls, agreement: Sequence[float], dice: Sequence[float], fitted_on: str = "") -> ConfidenceCalibration:
        """Isotonic regression of ``dice`` on ``agreement``; one knot per pooled block (at its mean agreement)."""
        from scipy.optimize import isotonic_regression

        a = np.asarray(agreement, dtype=np.float64)
        d = np.asarray(dice, dtype=np.float64)
        ok = np.isfinite(a) & np.isfinite(d)
        a, d = a[ok], d[ok]
        if len(a) < 2:
            raise ValueError(f"a calibration needs at least 2 finite (agreement, Dice) pairs, got {len(a)}.")
        order = np.argsort(a, kind="stable")
        a, d = a[order], d[order]
        fitted = isotonic_regression(d, increasing=True).x
        # one knot per block of equal fitted value, at the block's mean agreement
        starts = np.flatnonzero(np.r_[True, np.diff(fitted) != 0])
        ends = np.r_[starts[1:], len(fitted)]
        kx = np.array([a[s:e].mean() for s, e in zip(starts, ends)])
        ky = np.array([fitted[s] for s in starts])
        keep = np.r_[True, np.diff(kx) > 0]
        return cls(kx[keep], np.clip(ky[keep], 0.0, 1.0), n=len(a), fitted_on=fitted_on)

    def __call__(self, agreement: float | np.ndarray) -> np.ndarray:
        x, y = (np.r_[0.0, self.x], np.r_[0.0, self.y]) if self.x[0] > 0 else (self.x, self.y)
        return np.clip(np.interp(np.asarray(agreement, dtype=np.float64), x, y), 0.0, 1.0)

    def to_dict(self, decimals: int = 4) -> dict[str, Any]:
        return {
            "x": [round(float(v), decimals) for v in self.x],
            "y": [round(float(v), decimals) for v in self.y],
            "n": self.n,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConfidenceCalibration:
        return cls(d["x"], d["y"], int(d.get("n", 0)), str(d.get("fitted_on", "")))


class TTAConfidenced(MapTransform):
    """Reduce the stacked TTA predictions of :class:`TTAInferer` to the prediction, an uncertainty and a confidence.

    For each key (``pred``, ``(1 + K, X, Y, Z)`` after MONAI's decollation): the key becomes channel 0 (the
    prediction of the input as given); ``uncertainty_key`` gets the voxel-wise standard deviation over the
    ``1 + K`` predictions ``(1, X, Y, Z)``, same units as the prediction; ``agreement_key`` the mean Dice of the
    perturbed bone masks against the given one; ``confidence_key`` the calibrated estimate of the Dice (the
    agreement itself when no calibration is given, marked so by ``calibrated_key`` False); and ``flag_key``
    ``"low confidence"`` when the confidence is below ``threshold`` (else ``""``). A single-channel prediction (TTA
    off) passes through with no confidence entries.

    Args:
        keys: the stacked predictions.
        threshold: bone threshold of the masks, in the prediction's units (e.g. -500 for HU).
        calibration: a :class:`ConfidenceCalibration`, its dict, or ``None``.
        flag_below: confidence below which the case is flagged (``None``: never).
        uncertainty_key, agreement_key, confidence_key, calibrated_key, flag_key: output entries.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float,
        calibration: ConfidenceCalibration | Mapping[str, Any] | None = None,
        flag_below: float | None = None,
        uncertainty_key: str = "uncertainty",
        agreement_key: str = "tta_agreement",
        confidence_key: str = "confidence",
        calibrated_key: str = "confidence_calibrated",
        flag_key: str = "flag",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = float(threshold)
        if isinstance(calibration, Mapping):
            calibration = ConfidenceCalibration.from_dict(calibration)
        self.calibration = calibration
        if flag_below is not None and not 0.0 <= float(flag_below) <= 1.0:
            raise BundleInputError(f"--flag_below is a confidence in [0, 1], got {flag_below}.")
        self.flag_below = None if flag_below is None else float(flag_below)
        self.uncertainty_key = uncertainty_key
        self.agreement_key = agreement_key
        self.confidence_key = confidence_key
        self.calibrated_key = calibrated_key
        self.flag_key = flag_key

    def confidence(self, agreement: float) -> float:
        return float(self.calibration(agreement)) if self.calibration is not None else float(agreement)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            stack = d[key]
            if stack.shape[0] < 2:
                continue
            plain = stack.as_tensor() if isinstance(stack, MetaTensor) else torch.as_tensor(stack)
            agreement = float(mask_agreement((plain > self.threshold)[None])[0])
            spread = plain.float().std(dim=0, keepdim=True).to(plain.dtype)
            d[key] = stack[:1]
            d[self.uncertainty_key] = (
                MetaTensor(spread, meta=dict(stack.meta)) if isinstance(stack, MetaTensor) else spread
            )
            conf = self.confidence(agreement)
            d[self.agreement_key] = agreement
            d[self.confidence_key] = conf
            d[self.calibrated_key] = self.calibration is not None
            d[self.flag_key] = "low confidence" if self.flag_below is not None and conf < self.flag_below else ""
        return d
