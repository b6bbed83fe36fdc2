# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Evaluation metrics with fixed definitions (docs/README.md, Metrics).

Per vertebra (prediction and ground truth in HU on the same isotropic grid):

=========== ===================================================================================
``mse_z``   MSE of the z-scored volumes (MONAI ``MSEMetric``), as reported in the paper
``mae_z``   MAE of the z-scored volumes (MONAI ``MAEMetric``)
``rmse_hu`` root of the MSE in HU
``mae_hu``  MAE in HU
``psnr``    PSNR (MONAI ``PSNRMetric``, MaxValue 4096) on HU clipped to [-1024, 3071]
``ssim``    3-D SSIM (MONAI ``SSIMMetric``, data range 1) on ``(clip(HU) + 1024) / 4096``
``dice``    Dice (MONAI ``DiceMetric``) of both volumes binarised at ``HU > -500``
``fd``      frequency distance ``log10(1 + D_real + D_imag)`` of the rescaled volumes (orthonormal FFT),
            divided by the same for an all-background prediction: 0 = perfect, about 1 = predicts nothing
``assd``    average symmetric surface distance in mm (MONAI ``SurfaceDistanceMetric``, symmetric)
``hd95``    95th-percentile Hausdorff distance in mm (MONAI ``HausdorffDistanceMetric``)
``nsd``     normalised surface Dice (MONAI ``SurfaceDiceMetric``) at a tolerance of one voxel, and at
            least 1 mm: 1 mm on 1 mm grids, 2 mm on 2 mm grids (:func:`nsd_tolerance`)
=========== ===================================================================================

:func:`vertebra_metrics` returns all of them for one vertebra; :class:`VertebraMetric` (one named
metric) and :class:`FrequencyDistanceMetric` are ``CumulativeIterationMetric`` s for ignite handlers
(``monai.handlers.IgniteMetricHandler``) in the bundle's configs. Surface metrics of an empty prediction
are ``inf``/``nan`` (MONAI's convention) and the FD of an empty ground truth is ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.metrics import (
    CumulativeIterationMetric,
    DiceMetric,
    HausdorffDistanceMetric,
    MAEMetric,
    MSEMetric,
    PSNRMetric,
    SSIMMetric,
    SurfaceDiceMetric,
    SurfaceDistanceMetric,
)
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction
from scripts.functional import hu_to_zscore, spectral_distance, zscore_to_hu

__all__ = [
    "HU_MIN",
    "HU_MAX",
    "MAX_VALUE",
    "DICE_THRESHOLD_HU",
    "SURFACE_TOLERANCE_MM",
    "nsd_tolerance",
    "METRIC_NAMES",
    "rescale_hu",
    "frequency_distance",
    "metric_per_item",
    "vertebra_metrics",
    "VertebraMetric",
    "ItemValueMetric",
    "FrequencyDistanceMetric",
]

HU_MIN = -1024.0
HU_MAX = 3071.0
MAX_VALUE = 4096.0
DICE_THRESHOLD_HU = -500.0
SURFACE_TOLERANCE_MM = 1.0
METRIC_NAMES = ("mse_z", "mae_z", "rmse_hu", "mae_hu", "psnr", "ssim", "dice", "fd", "assd", "hd95", "nsd")
_SURFACE = ("assd", "hd95", "nsd")


def rescale_hu(x: torch.Tensor) -> torch.Tensor:
    """``(clip(x, -1024, 3071) + 1024) / 4096``: HU to [0, 1) with air at 0."""
    return (x.clamp(HU_MIN, HU_MAX) - HU_MIN) / MAX_VALUE


def frequency_distance(pred_hu: torch.Tensor, gt_hu: torch.Tensor, fft_norm: str = "ortho") -> torch.Tensor:
    """Normalised frequency distance per batch item, ``(B,)``.

    ``log10(1 + D(p, g)) / log10(1 + D(0, g))`` with ``p, g`` = :func:`rescale_hu` of prediction and ground
    truth and ``D`` = :func:`scripts.functional.spectral_distance` (``D_real + D_imag``); ``0`` is
    the all-background prediction (-1024 HU).
    """
    p, g = rescale_hu(pred_hu.float()), rescale_hu(gt_hu.float())
    num = torch.log10(1.0 + spectral_distance(p, g, norm=fft_norm))
    den = torch.log10(1.0 + spectral_distance(torch.zeros_like(g), g, norm=fft_norm))
    return num / den


def nsd_tolerance(spacing_mm: Sequence[float]) -> float:
    """Tolerance of ``nsd`` in mm: the largest voxel spacing, and at least :data:`SURFACE_TOLERANCE_MM`.

    Surface distances on a voxel grid come in steps of the spacing, so a tolerance below one voxel counts
    only surface voxels that coincide exactly: at 2 mm voxels a 1 mm tolerance would measure overlap, not
    closeness.
    """
    return max(SURFACE_TOLERANCE_MM, max(float(s) for s in spacing_mm))


def _spacing_list(spacing: Any, ref: torch.Tensor, batch: int) -> list[list[float]]:
    """Per-item voxel spacing in mm from ``spacing`` (one for all, or one per item) or ``ref``'s affine."""
    if spacing is None:
        if not isinstance(ref, MetaTensor):
            raise ValueError("surface metrics need the voxel spacing in mm: pass spacing or MetaTensors with affines.")
        aff = ref.affine
        affs = [aff[i] for i in range(aff.shape[0])] if aff.dim() == 3 else [aff] * batch
        return [[float(s) for s in affine_to_spacing(a, r=3)] for a in affs]
    if isinstance(spacing, (int, float)):
        return [[float(spacing)] * 3] * batch
    sp = [s.tolist() if isinstance(s, torch.Tensor) else s for s in spacing]
    if len(sp) == 3 and all(isinstance(s, (int, float)) for s in sp):
        return [[float(s) for s in sp]] * batch
    if len(sp) != batch:
        raise ValueError(f"spacing {spacing} must be 3 numbers or one triple per batch item ({batch}).")
    return [[float(v) for v in s] for s in sp]


def metric_per_item(
    name: str,
    pred_hu: torch.Tensor,
    gt_hu: torch.Tensor,
    spacing: Any = None,
    mean: float | None = None,
    std: float | None = None,
) -> torch.Tensor:
    """One metric of :data:`METRIC_NAMES` per batch item, shape ``(B, 1)``.

    Args:
        name: metric name.
        pred_hu: prediction in HU, ``(B, 1, X, Y, Z)``.
        gt_hu: ground truth in HU, same shape.
        spacing: voxel spacing in mm (3 numbers, or one triple per item); surface metrics only, default
            from the inputs' affines when they are MetaTensors.
        mean: HU mean of the dataset's z-scoring (``mse_z``, ``mae_z`` only).
        std: HU standard deviation of the dataset's z-scoring.
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose from {METRIC_NAMES}.")
    if pred_hu.shape != gt_hu.shape or pred_hu.dim() != 5:
        raise ValueError(
            f"pred {tuple(pred_hu.shape)} and ground truth {tuple(gt_hu.shape)} must both be (B, C, X, Y, Z)."
        )
    batch = pred_hu.shape[0]
    spacing_mm = _spacing_list(spacing, gt_hu, batch) if name in _SURFACE else None
    p = pred_hu.as_tensor() if isinstance(pred_hu, MetaTensor) else pred_hu
    g = gt_hu.as_tensor() if isinstance(gt_hu, MetaTensor) else gt_hu
    p, g = p.float(), g.float()
    if name in ("mse_z", "mae_z"):
        if mean is None or std is None:
            raise ValueError(f"{name} needs the z-score statistics (mean, std in HU).")
        metric = MSEMetric() if name == "mse_z" else MAEMetric()
        return metric(hu_to_zscore(p, mean, std), hu_to_zscore(g, mean, std))
    if name == "rmse_hu":
        return MSEMetric()(p, g).sqrt()
    if name == "mae_hu":
        return MAEMetric()(p, g)
    if name == "psnr":
        return PSNRMetric(max_val=MAX_VALUE)(p.clamp(HU_MIN, HU_MAX), g.clamp(HU_MIN, HU_MAX))
    if name == "ssim":
        return SSIMMetric(spatial_dims=3, data_range=1.0)(rescale_hu(p), rescale_hu(g))
    if name == "fd":
        return frequency_distance(p, g).unsqueeze(1)
    pb, gb = (p > DICE_THRESHOLD_HU).float(), (g > DICE_THRESHOLD_HU).float()
    if name == "dice":
        return DiceMetric(include_background=True, ignore_empty=False)(pb, gb)
    rows = []
    for i in range(batch):
        if name == "assd":
            metric = SurfaceDistanceMetric(include_background=True, symmetric=True)
        elif name == "hd95":
            metric = HausdorffDistanceMetric(include_background=True, percentile=95.0)
        else:
            metric = SurfaceDiceMetric(class_thresholds=[nsd_tolerance(spacing_mm[i])], include_background=True)
        rows.append(metric(pb[i : i + 1], gb[i : i + 1], spacing=spacing_mm[i]).float())
    return torch.cat(rows, dim=0)


def vertebra_metrics(
    pred_hu: torch.Tensor,
    gt_hu: torch.Tensor,
    spacing: float | Sequence[float],
    mean: float,
    std: float,
    names: Sequence[str] = METRIC_NAMES,
) -> dict[str, float]:
    """Every metric of one vertebra, as a row ``{name: value}``.

    Args:
        pred_hu: prediction in HU, ``(X, Y, Z)``, ``(1, X, Y, Z)`` or ``(1, 1, X, Y, Z)`` (tensor or array).
        gt_hu: ground truth in HU, same shape.
        spacing: voxel spacing in mm (one number for isotropic grids or three).
        mean: HU mean of the dataset's z-scoring.
        std: HU standard deviation of the dataset's z-scoring.
        names: the metrics to compute (default all, :data:`METRIC_NAMES`).
    """
    p, g = torch.as_tensor(pred_hu), torch.as_tensor(gt_hu)
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} differ in shape.")
    while p.dim() < 5:
        p, g = p.unsqueeze(0), g.unsqueeze(0)
    if p.shape[0] != 1 or p.shape[1] != 1:
        raise ValueError(f"vertebra_metrics takes one single-channel volume, got shape {tuple(p.shape)}.")
    return {n: float(metric_per_item(n, p, g, spacing=spacing, mean=mean, std=std).item()) for n in names}


class VertebraMetric(CumulativeIterationMetric):
    """One metric of :data:`METRIC_NAMES` as a MONAI cumulative metric (for ``IgniteMetricHandler``).

    Example (config; ``pred`` and ``label`` z-scored, as the network gives them, so ``inputs`` is ``"zscore"``)::

        {"_target_": "IgniteMetricHandler",
         "metric_fn": {"_target_": "scripts.metrics.VertebraMetric", "name": "dice", "mean": -800, "std": 400,
                       "inputs": "zscore"},
         "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}

    With the default ``inputs="hu"`` the volumes must be in HU: a label without values below -100 HU (no fat or
    air, as a z-scored one) is refused, since the bone threshold of -500 HU would count every voxel as bone.

    Args:
        name: metric name.
        mean: HU mean of the dataset's z-scoring; with ``inputs="zscore"`` also used to convert the inputs.
        std: HU standard deviation of the dataset's z-scoring.
        inputs: ``"hu"`` or ``"zscore"`` (the network's output and label; converted with ``mean``, ``std``).
        spacing: voxel spacing in mm for the surface metrics (default: from the inputs' affines).
        reduction: MONAI metric reduction of :meth:`aggregate`.
        get_not_nans: also return the count of not-nan values.
    """

    def __init__(
        self,
        name: str,
        mean: float | None = None,
        std: float | None = None,
        inputs: str = "hu",
        spacing: float | Sequence[float] | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        if name not in METRIC_NAMES:
            raise ValueError(f"unknown metric {name!r}; choose from {METRIC_NAMES}.")
        if inputs not in ("hu", "zscore"):
            raise ValueError(f"inputs must be 'hu' or 'zscore', got {inputs!r}.")
        if (inputs == "zscore" or name in ("mse_z", "mae_z")) and (mean is None or std is None):
            raise ValueError(f"metric {name!r} with inputs={inputs!r} needs the z-score statistics mean and std.")
        if std is not None and not (math.isfinite(float(std)) and float(std) > 0):
            raise ValueError(f"std must be positive, got {std}.")
        self.name = name
        self.mean = None if mean is None else float(mean)
        self.std = None if std is None else float(std)
        self.inputs = inputs
        self.spacing = spacing
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if y_pred.dim() == 4:  # a single channel-first volume
            y_pred, y = y_pred.unsqueeze(0), y.unsqueeze(0)
        if self.inputs == "zscore":
            y_pred, y = zscore_to_hu(y_pred, self.mean, self.std), zscore_to_hu(y, self.mean, self.std)
        elif y.numel() and float(y.min()) > -100.0:  # a vertebra's crop in HU holds fat or air somewhere
            raise ValueError(
                f"VertebraMetric({self.name!r}) reads HU (inputs='hu'), but the label's values lie in "
                f"[{float(y.min()):.3g}, {float(y.max()):.3g}], without the fat or air (< -100 HU) of any vertebra "
                "crop: z-scored volumes (the network's output and label)? Give inputs='zscore' with the statistics "
                "mean and std."
            )
        spacing = kwargs.get("spacing", self.spacing)
        return metric_per_item(self.name, y_pred, y, spacing=spacing, mean=self.mean, std=self.std)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered per-item values (``reduction`` as in MONAI's metrics)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{type(self).__name__} has no buffered values to aggregate.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class FrequencyDistanceMetric(VertebraMetric):
    """Normalised frequency distance (:func:`frequency_distance`) as a MONAI cumulative metric.

    Args:
        mean: HU mean of the dataset's z-scoring (needed with ``inputs="zscore"``).
        std: HU standard deviation of the dataset's z-scoring.
        inputs: ``"hu"`` or ``"zscore"``.
        reduction: MONAI metric reduction of :meth:`aggregate`.
        get_not_nans: also return the count of not-nan values.
    """

    def __init__(
        self,
        mean: float | None = None,
        std: float | None = None,
        inputs: str = "hu",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__("fd", mean=mean, std=std, inputs=inputs, reduction=reduction, get_not_nans=get_not_nans)


class ItemValueMetric(CumulativeIterationMetric):
    """A per-item number that the workflow already computed (e.g. a reconstruction's confidence) as a MONAI metric.

    ``y_pred`` holds the values (one per item); ``y`` is ignored. With ``IgniteMetricHandler(save_details=True)``
    the values join the per-vertebra table beside the metrics (:class:`scripts.handlers.VertebraMetricsTable`).
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.as_tensor(y_pred, dtype=torch.float32).reshape(-1, 1)

    def aggregate(self) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("ItemValueMetric has no values yet.")
        return data.nanmean()
