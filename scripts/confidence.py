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
- the **window centring** (for models whose calibration uses it, e.g. the body model) is the vertebra finder's
  evidence of a vertebra at the window's centre, read from the network's input
  (:class:`scripts.localise.WindowCentring`): the TTA copies of a window placed off its vertebra agree on a
  vertebra drawn at the window's centre, so the agreement cannot see that error, and the finder can;
- the **confidence** is the agreement (plus the weighted window centring) mapped to an estimate of the
  vertebra's Dice by a monotone (isotonic) calibration fitted on the validation patient's vertebrae under
  degradations (:class:`ConfidenceCalibration`, stored in the model's contract);
- the **input type check** compares the views with the X-rays the model was trained on: X-rays of an isolated
  vertebra (``drr_source`` ``gt``) are mostly empty detector around the vertebra, while X-rays through a body or
  a CT crop (``body``, ``ct``) and every real radiograph are covered (:func:`view_background_share`). A model
  trained on one type reconstructs the other badly, and its TTA copies agree on the wrong shape, so its
  calibration does not hold: such a case gets the confidence 0 and a flag that names both types.

The output reconstruction is the prediction as given: the confidence never changes it.

Why not MONAI's ``monai.data.TestTimeAugmentation``: it inverts transforms whose output lies in the input's
space (e.g. a flip of a CT and its segmentation), while here two X-rays go in and a volume comes out. On the
expanded input volume (:class:`scripts.transforms.DimensionExpansiond`), though, a window shift is a shift of the
volume, which has an exact inverse on the output for whole voxels; that is what :class:`TTAInferer` uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
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
    "calibration_uses_centring",
    "INPUT_TYPES",
    "ISOLATED_BACKGROUND_SHARE",
    "view_background_share",
    "input_type_of",
    "shift_volume",
    "perturb_input",
    "mask_agreement",
]

#: the type of X-ray each training source gives (the model contract's ``drr_source``): an isolated vertebra on an
#: empty detector, or a vertebra surrounded by what the rays cross besides it.
INPUT_TYPES: dict[str, str] = {"gt": "isolated", "ct": "surrounded", "body": "surrounded"}

#: the smallest share of empty detector (:func:`view_background_share`, mean of the views) read as X-rays of an
#: isolated vertebra. Measured on every vertebra of the training, validation and test patients on the CPU model's
#: grid (64^3 at 2 mm; docs/confidence.md): 0.74-0.92 for isolated vertebrae (at 10^3 to 10^6 photons), 0.02-0.40
#: for body windows and CT crops (the highest where the scan ends just above the vertebra).
ISOLATED_BACKGROUND_SHARE = 0.55

#: a pixel within this fraction of the view's range (1st to 99th percentile) above its 1st percentile is empty
#: detector (:func:`view_background_share`).
BACKGROUND_LEVEL = 0.05

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
    """A monotone map from the TTA agreement (with, optionally, the window centring) to an estimate of the
    vertebra's Dice, fitted by isotonic regression.

    The score is the agreement, or ``agreement + centring_weight * centring`` when the calibration uses the
    finder's window centring (:class:`scripts.localise.WindowCentring`), the weight being the ratio of the two
    features' coefficients in a least-squares fit of Dice on both (:meth:`fit` with ``centring``). The score is
    mapped to Dice by scipy's ``isotonic_regression`` (pool adjacent violators) fitted on (score, true Dice) pairs
    of the validation patient's vertebrae under degradations, applied by linear interpolation between the fitted
    steps' centres, flat above the last, and linear down to (0, 0) below the first: a score below anything seen in
    calibration (perturbed predictions that disagree more than any calibration case did) must not inherit the
    lowest calibrated Dice, and a score of 0 (no overlap at all) means no evidence of any. Clipped to [0, 1].
    Serialised as ``{"x": [...], "y": [...], "n": N, "fitted_on": ...}`` (plus ``"centring_weight"``) in the
    model's contract.

    Args:
        x: increasing score values of the knots.
        y: non-decreasing Dice estimates at the knots.
        n: number of pairs it was fitted on.
        fitted_on: a description of the fitting data.
        centring_weight: the window centring's weight in the score; ``None``: the score is the agreement alone.
    """

    def __init__(
        self,
        x: Sequence[float],
        y: Sequence[float],
        n: int = 0,
        fitted_on: str = "",
        centring_weight: float | None = None,
    ) -> None:
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        if self.x.ndim != 1 or self.x.shape != self.y.shape or len(self.x) == 0:
            raise ValueError("a calibration needs matching, non-empty 1-D knots x and y.")
        if np.any(np.diff(self.x) <= 0) or np.any(np.diff(self.y) < -1e-9):
            raise ValueError("calibration knots must have increasing x and non-decreasing y.")
        if centring_weight is not None and not (math.isfinite(float(centring_weight)) and centring_weight >= 0):
            raise ValueError(f"the centring weight must be finite and >= 0, got {centring_weight}.")
        self.n = int(n)
        self.fitted_on = str(fitted_on)
        self.centring_weight = None if centring_weight is None else float(centring_weight)

    @property
    def uses_centring(self) -> bool:
        """Whether the score needs the window centring."""
        return self.centring_weight is not None

    @staticmethod
    def centring_weight_of(agreement: Sequence[float], centring: Sequence[float], dice: Sequence[float]) -> float:
        """The centring's weight relative to the agreement's: the ratio of their coefficients in the least-squares
        fit ``dice ~ a * agreement + c * centring + b`` (``c`` below 0 counts as 0: a centring that falls as Dice
        rises is no evidence).

        Raises:
            ValueError: the agreement's coefficient is not positive (the agreement does not rise with Dice).
        """
        design = np.stack([np.asarray(agreement, float), np.asarray(centring, float), np.ones(len(agreement))], 1)
        (a, c, _), *_ = np.linalg.lstsq(design, np.asarray(dice, dtype=np.float64), rcond=None)
        if not a > 0:
            raise ValueError(f"the agreement does not rise with Dice in the calibration data (coefficient {a:.3g}).")
        return float(max(c, 0.0) / a)

    def score(self, agreement: float | np.ndarray, centring: float | np.ndarray | None = None) -> np.ndarray:
        """The calibrated quantity: the agreement, plus the weighted centring when the calibration uses it."""
        a = np.asarray(agreement, dtype=np.float64)
        if self.centring_weight is None:
            return a
        if centring is None:
            raise BundleInputError(
                "this confidence calibration uses the finder's window centring; fix: give it (configs: "
                "window_centring, scripts.localise.WindowCentring), or turn confidence off with --confidence False."
            )
        return a + self.centring_weight * np.asarray(centring, dtype=np.float64)

    @classmethod
    def fit(
        cls,
        agreement: Sequence[float],
        dice: Sequence[float],
        fitted_on: str = "",
        centring: Sequence[float] | None = None,
    ) -> ConfidenceCalibration:
        """Isotonic regression of ``dice`` on the score; one knot per pooled block (at its mean score). With
        ``centring``, the score is ``agreement + w * centring`` with ``w`` from :meth:`centring_weight_of`; a weight
        of 0 leaves the centring out (the calibration then does not need it)."""
        from scipy.optimize import isotonic_regression

        a = np.asarray(agreement, dtype=np.float64)
        d = np.asarray(dice, dtype=np.float64)
        c = None if centring is None else np.asarray(centring, dtype=np.float64)
        ok = np.isfinite(a) & np.isfinite(d) & (np.isfinite(c) if c is not None else True)
        a, d = a[ok], d[ok]
        if len(a) < 2:
            raise ValueError(f"a calibration needs at least 2 finite (agreement, Dice) pairs, got {len(a)}.")
        weight = None
        if c is not None:
            c = c[ok]
            weight = cls.centring_weight_of(a, c, d) or None  # a weight of 0: the calibration does without it
            if weight is not None:
                a = a + weight * c
        order = np.argsort(a, kind="stable")
        a, d = a[order], d[order]
        fitted = isotonic_regression(d, increasing=True).x
        # one knot per block of equal fitted value, at the block's mean score
        starts = np.flatnonzero(np.r_[True, np.diff(fitted) != 0])
        ends = np.r_[starts[1:], len(fitted)]
        kx = np.array([a[s:e].mean() for s, e in zip(starts, ends)])
        ky = np.array([fitted[s] for s in starts])
        keep = np.r_[True, np.diff(kx) > 0]
        return cls(kx[keep], np.clip(ky[keep], 0.0, 1.0), n=len(a), fitted_on=fitted_on, centring_weight=weight)

    def __call__(self, agreement: float | np.ndarray, centring: float | np.ndarray | None = None) -> np.ndarray:
        x, y = (np.r_[0.0, self.x], np.r_[0.0, self.y]) if self.x[0] > 0 else (self.x, self.y)
        return np.clip(np.interp(self.score(agreement, centring), x, y), 0.0, 1.0)

    def to_dict(self, decimals: int = 4) -> dict[str, Any]:
        out: dict[str, Any] = {
            "x": [round(float(v), decimals) for v in self.x],
            "y": [round(float(v), decimals) for v in self.y],
            "n": self.n,
            "fitted_on": self.fitted_on,
        }
        if self.centring_weight is not None:
            out["centring_weight"] = round(self.centring_weight, decimals)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConfidenceCalibration:
        w = d.get("centring_weight")
        return cls(d["x"], d["y"], int(d.get("n", 0)), str(d.get("fitted_on", "")), None if w is None else float(w))


def calibration_uses_centring(calibration: ConfidenceCalibration | Mapping[str, Any] | None) -> bool:
    """Whether a calibration (object or contract dict) needs the window centring."""
    if isinstance(calibration, ConfidenceCalibration):
        return calibration.uses_centring
    return isinstance(calibration, Mapping) and calibration.get("centring_weight") is not None


def _beam_image(volume: torch.Tensor) -> torch.Tensor:
    """The 2-D image of one expanded view ``(X, Y, Z)``: the volume averaged along the grid axis it varies least
    along (its beam, along which the replicate expansion repeats the view)."""
    step = max(1, min(volume.shape) // 32)  # the variation of a 32^3 subsample tells the axes apart
    sub = volume[::step, ::step, ::step]
    variation = [float(sub.diff(dim=a).abs().mean()) for a in range(3)]
    return volume.mean(dim=int(np.argmin(variation)))


def _view_values(image: torch.Tensor, smooth: int) -> list[torch.Tensor]:
    """Per view, its finite pixel values after a ``smooth``-wide box filter (see :func:`view_background_share`)."""
    x = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    x = x.detach().float()
    if x.dim() not in (3, 4):
        raise ValueError(f"views (V, H, W) or expanded views (V, X, Y, Z) expected, got shape {tuple(x.shape)}.")
    out = []
    for view in x:
        view = _beam_image(view) if view.dim() == 3 else view
        if int(smooth) > 1:
            view = F.avg_pool2d(view[None], int(smooth), stride=1, padding=int(smooth) // 2, count_include_pad=False)[0]
        values = view.flatten()
        out.append(values[torch.isfinite(values)])
    return out


def _ends(values: torch.Tensor, level: float) -> tuple[float, float, bool]:
    """The shares of ``values`` at the low and at the high end of their range (1st to 99th percentile), each
    ``level`` times the range wide, and whether the range is empty (a blank view)."""
    if values.numel() == 0:
        return 0.0, 0.0, True
    lo, hi = torch.quantile(values, torch.tensor([0.01, 0.99], device=values.device, dtype=values.dtype))
    width = float(hi - lo)
    if not width > 1e-6 * max(float(hi.abs()), float(lo.abs()), 1e-6):
        return 1.0, 1.0, True
    low = float((values <= lo + level * width).float().mean())
    high = float((values >= hi - level * width).float().mean())
    return low, high, False


def view_background_share(image: torch.Tensor, level: float = BACKGROUND_LEVEL, smooth: int = 5) -> list[float]:
    """Per view, the share of the view that is empty detector: after a ``smooth``-wide box filter (photon noise
    would otherwise spread the background's values), the pixels within ``level`` times the view's range (its 1st
    to its 99th percentile) above its 1st percentile. Non-finite pixels are left out; a view without contrast has
    the share 1.

    Args:
        image: the views, one per channel: 2-D images ``(V, H, W)``, or the network's input expanded by
            replication ``(V, X, Y, Z)`` (each view repeated along its beam; it is averaged along the grid axis it
            varies least along, which gives the view back at the grid's scale).
        level: the background's width as a share of the range.
        smooth: the box filter's width in pixels; 1 turns it off.

    Returns:
        one share in [0, 1] per view: about 0.8 for the X-rays of an isolated vertebra in the bundle's windows,
        near 0 for X-rays through a body.
    """
    return [_ends(values, level)[0] for values in _view_values(image, smooth)]


def input_type_of(image: torch.Tensor) -> tuple[str, float]:
    """The type of X-rays of views ``(V, ...)`` and their mean share of empty detector
    (:func:`view_background_share`):

    - ``"blank"``: a view without contrast;
    - ``"isolated"``: a share from :data:`ISOLATED_BACKGROUND_SHARE` up (an isolated vertebra's X-rays);
    - ``"inverted"``: as much of the views at the bright end of their range instead (an isolated vertebra's X-rays
      with bone dark, as a transmission image or a negative shows it; ``--invert True`` reads them);
    - ``"surrounded"``: else (X-rays through a body or a CT crop, as every radiograph).
    """
    ends = [_ends(values, BACKGROUND_LEVEL) for values in _view_values(image, 5)]
    share = float(np.mean([e[0] for e in ends]))
    if any(e[2] for e in ends):
        return "blank", share
    if share >= ISOLATED_BACKGROUND_SHARE:
        return "isolated", share
    if float(np.mean([e[1] for e in ends])) >= ISOLATED_BACKGROUND_SHARE:
        return "inverted", share
    return "surrounded", share


class TTAConfidenced(MapTransform):
    """Reduce the stacked TTA predictions of :class:`TTAInferer` to the prediction, an uncertainty and a confidence.

    For each key (``pred``, ``(1 + K, X, Y, Z)`` after MONAI's decollation): the key becomes channel 0 (the
    prediction of the input as given); ``uncertainty_key`` gets the voxel-wise standard deviation over the
    ``1 + K`` predictions ``(1, X, Y, Z)``, same units as the prediction; ``agreement_key`` the mean Dice of the
    perturbed bone masks against the given one; with ``centring``, ``centring_key`` the window centring of the
    network's input (``image_key``, :class:`scripts.localise.WindowCentring`); ``confidence_key`` the calibrated
    estimate of the Dice (the agreement itself when no calibration is given, marked so by ``calibrated_key``
    False); and ``flag_key`` ``"low confidence"`` when the confidence is below ``threshold`` (else ``""``). A
    single-channel prediction (TTA off) passes through with no confidence entries.

    With ``expected_input`` (the type of X-rays the model was trained on, :data:`INPUT_TYPES`), the network's
    input is checked first (:func:`input_type_of`, with TTA on or off): ``input_type_key`` gets the views' type and
    ``background_key`` their share of empty detector. Views of another type (or blank, or inverted views) set the
    confidence to 0 (the calibration does not hold for them; ``calibrated_key`` False) and the flag to ``"input
    unlike the model's X-rays: ..."``, which says what the views look like and what to do.

    Args:
        keys: the stacked predictions.
        threshold: bone threshold of the masks, in the prediction's units (e.g. -500 for HU).
        calibration: a :class:`ConfidenceCalibration`, its dict, or ``None``.
        flag_below: confidence below which the case is flagged (``None``: never).
        centring: a callable from the network's input ``(V, X, Y, Z)`` to the window centring in [0, 1]
            (:class:`scripts.localise.WindowCentring`); needed by a calibration that uses it, recorded otherwise.
        image_key: the network's input, read by ``centring`` and the input type check (a replicate expansion, one
            view per channel).
        expected_input: ``"isolated"`` or ``"surrounded"``, the X-rays the model was trained on; ``None``: no check.
        input_type_key, background_key: output entries of the input type check.
        uncertainty_key, agreement_key, centring_key, confidence_key, calibrated_key, flag_key: output entries.
        allow_missing_keys: skip missing keys.

    Raises:
        BundleInputError: TTA predictions to reduce, a calibration that uses the window centring, and no
            ``centring``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float,
        calibration: ConfidenceCalibration | Mapping[str, Any] | None = None,
        flag_below: float | None = None,
        centring: Callable[[torch.Tensor], float] | None = None,
        image_key: str = "image",
        uncertainty_key: str = "uncertainty",
        agreement_key: str = "tta_agreement",
        centring_key: str = "window_centring",
        confidence_key: str = "confidence",
        calibrated_key: str = "confidence_calibrated",
        flag_key: str = "flag",
        expected_input: str | None = None,
        input_type_key: str = "input_type",
        background_key: str = "input_background_share",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if expected_input is not None and expected_input not in set(INPUT_TYPES.values()):
            raise BundleInputError(
                f"expected_input {expected_input!r}: use one of {sorted(set(INPUT_TYPES.values()))} or None."
            )
        self.expected_input = expected_input
        self.input_type_key = input_type_key
        self.background_key = background_key
        self.threshold = float(threshold)
        if isinstance(calibration, Mapping):
            calibration = ConfidenceCalibration.from_dict(calibration)
        self.calibration = calibration
        if flag_below is not None and not 0.0 <= float(flag_below) <= 1.0:
            raise BundleInputError(f"--flag_below is a confidence in [0, 1], got {flag_below}.")
        self.flag_below = None if flag_below is None else float(flag_below)
        self.centring = centring
        self.image_key = image_key
        self.uncertainty_key = uncertainty_key
        self.agreement_key = agreement_key
        self.centring_key = centring_key
        self.confidence_key = confidence_key
        self.calibrated_key = calibrated_key
        self.flag_key = flag_key

    def confidence(self, agreement: float, centring: float | None = None) -> float:
        """The calibrated estimate of the Dice (the agreement itself without a calibration)."""
        if self.calibration is None:
            return float(agreement)
        return float(self.calibration(agreement, centring))

    def _input_mismatch(self, d: dict) -> str:
        """Check the network's input against ``expected_input``; the flag text of a mismatch, else ``""``."""
        if self.expected_input is None:
            return ""
        if self.image_key not in d:
            raise BundleInputError(f"the input type check reads the network's input {self.image_key!r}; not found.")
        kind, share = input_type_of(d[self.image_key])
        d[self.input_type_key] = kind
        d[self.background_key] = round(share, 4)
        if kind == self.expected_input:
            return ""
        head = "input unlike the model's X-rays: "
        if kind == "blank":
            return head + "a view has no contrast; check the X-ray files or the window"
        if kind == "inverted":
            return head + (
                "the views look like an isolated vertebra's X-rays with bone dark; read them with --invert True"
            )
        if kind == "surrounded":
            return (
                head + "the views look like X-rays through a body (little empty detector) and the model was "
                "trained on isolated vertebrae; use the body model (add configs/body_model.json to --config_file; "
                "scripts.spine radiographs: --reconstruction_model body)"
            )
        return (
            head + "the views look like X-rays of an isolated vertebra (mostly empty detector) and the model was "
            "trained on X-rays through a body; use a model of isolated vertebrae (configs/cpu.json without "
            "configs/body_model.json in --config_file; scripts.spine radiographs: --reconstruction_model cpu)"
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            stack = d[key]
            mismatch = self._input_mismatch(d)
            if stack.shape[0] < 2:
                if mismatch:
                    d[self.flag_key] = mismatch
                continue
            plain = stack.as_tensor() if isinstance(stack, MetaTensor) else torch.as_tensor(stack)
            agreement = float(mask_agreement((plain > self.threshold)[None])[0])
            spread = plain.float().std(dim=0, keepdim=True).to(plain.dtype)
            d[key] = stack[:1]
            d[self.uncertainty_key] = (
                MetaTensor(spread, meta=dict(stack.meta)) if isinstance(stack, MetaTensor) else spread
            )
            centring = None
            if self.centring is None and self.calibration is not None and self.calibration.uses_centring:
                raise BundleInputError(
                    "the model's confidence calibration uses the finder's window centring, and none is set; fix: "
                    "leave --window_centring at its default, or run with --confidence False."
                )
            if self.centring is not None:
                if self.image_key not in d:
                    raise BundleInputError(f"window centring reads the network's input {self.image_key!r}; not found.")
                centring = float(self.centring(d[self.image_key]))
                d[self.centring_key] = centring
            conf = 0.0 if mismatch else self.confidence(agreement, centring)
            d[self.agreement_key] = agreement
            d[self.confidence_key] = conf
            d[self.calibrated_key] = self.calibration is not None and not mismatch
            low = self.flag_below is not None and conf < self.flag_below
            d[self.flag_key] = mismatch or ("low confidence" if low else "")
        return d
