# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Evaluation metrics against analytic answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler, from_engine
from scripts.metrics import (
    METRIC_NAMES,
    FrequencyDistanceMetric,
    VertebraMetric,
    frequency_distance,
    nsd_tolerance,
    rescale_hu,
    vertebra_metrics,
)
from scripts.transforms.fourier import spectral_distance

N = 48
MEAN, STD = -900.0, 300.0


def _sphere(centre, radius, n=N, inside=500.0):
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"))
    d2 = ((grid - torch.tensor(centre, dtype=torch.float32).view(3, 1, 1, 1)) ** 2).sum(0)
    return torch.where(d2 <= radius**2, inside, -1024.0)


def _analytic_offset_spheres(radius, offset):
    """Dice (lens volume) and ASSD (mean over one sphere of the distance to the other) of two spheres."""
    lens = math.pi * (4 * radius + offset) * (2 * radius - offset) ** 2 / 12
    dice = lens / (4 / 3 * math.pi * radius**3)
    u = np.linspace(-1, 1, 200001)  # cos(angle to the offset direction), uniform on the sphere
    assd = float(np.mean(np.abs(np.sqrt(radius**2 + offset**2 - 2 * radius * offset * u) - radius)))
    return dice, assd


def test_identical_volumes():
    gt = _sphere((24, 24, 24), 10) + 50 * torch.rand(N, N, N)
    row = vertebra_metrics(gt, gt, 1.0, MEAN, STD)
    assert set(row) == set(METRIC_NAMES)
    assert row["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert row["fd"] == 0.0
    assert row["dice"] == 1.0 and row["nsd"] == 1.0
    assert row["assd"] == 0.0 and row["hd95"] == 0.0
    assert row["mse_z"] == row["mae_z"] == row["rmse_hu"] == row["mae_hu"] == 0.0
    assert math.isinf(row["psnr"])


@pytest.mark.parametrize("spacing", [1.0, 2.0])
def test_offset_spheres_against_analytic_dice_and_assd(spacing):
    radius, offset = 14.0, 4.0
    gt = _sphere((24, 24, 24), radius)
    pred = _sphere((28, 24, 24), radius)
    dice, assd = _analytic_offset_spheres(radius, offset)
    row = vertebra_metrics(pred, gt, spacing, MEAN, STD, names=("dice", "assd", "hd95", "nsd"))
    assert row["dice"] == pytest.approx(dice, abs=0.01)
    assert row["assd"] == pytest.approx(assd * spacing, rel=0.08)  # voxelised surfaces
    assert row["hd95"] <= offset * spacing + 1e-6 and row["hd95"] > 0.5 * offset * spacing
    assert 0.0 < row["nsd"] < 1.0


def test_psnr_of_gaussian_noise():
    torch.manual_seed(0)
    sigma = 20.0
    gt = torch.zeros(1, 1, 40, 40, 40)  # 0 HU: noise stays inside the clipping range
    pred = gt + sigma * torch.randn_like(gt)
    row = vertebra_metrics(pred, gt, 1.0, MEAN, STD, names=("psnr", "rmse_hu", "mse_z", "mae_hu"))
    assert row["psnr"] == pytest.approx(20 * math.log10(4096 / sigma), abs=0.05)
    assert row["rmse_hu"] == pytest.approx(sigma, rel=0.01)
    assert row["mse_z"] == pytest.approx((sigma / STD) ** 2, rel=0.02)
    assert row["mae_hu"] == pytest.approx(sigma * math.sqrt(2 / math.pi), rel=0.01)


def test_psnr_uses_the_clipped_range():
    gt = torch.zeros(1, 1, 8, 8, 8)
    pred = torch.full_like(gt, 10000.0)  # clipped to 3071
    expected = 20 * math.log10(4096) - 10 * math.log10(3071.0**2)
    assert vertebra_metrics(pred, gt, 1.0, MEAN, STD, names=("psnr",))["psnr"] == pytest.approx(expected, rel=1e-5)


def test_fd_is_one_for_an_empty_prediction_and_between():
    gt = _sphere((24, 24, 24), 10)[None, None]
    empty = torch.full_like(gt, -1024.0)
    assert frequency_distance(empty, gt).item() == pytest.approx(1.0)
    half = (gt + 1024.0) / 2 - 1024.0  # halfway to air: D halves
    fd_half = frequency_distance(half, gt).item()
    assert 0.0 < fd_half < 1.0
    # D is linear in a scaled difference: log10(1 + D/2) / log10(1 + D)
    d = spectral_distance(torch.zeros_like(gt), rescale_hu(gt)).item()
    assert fd_half == pytest.approx(math.log10(1 + d / 2) / math.log10(1 + d), rel=1e-5)


def test_cumulative_metric_with_ignite_handler():
    gt = _sphere((24, 24, 24), 10)
    preds = [gt, torch.full_like(gt, -1024.0)]
    batches = [{"pred": (p[None] - MEAN) / STD, "label": (gt[None] - MEAN) / STD} for p in preds]  # (C, X, Y, Z)

    engine = Engine(lambda e, batch: {"pred": [batch["pred"]], "label": [batch["label"]]})
    handler = IgniteMetricHandler(
        metric_fn=FrequencyDistanceMetric(mean=MEAN, std=STD, inputs="zscore"),
        output_transform=from_engine(["pred", "label"]),
    )
    handler.attach(engine, name="fd")
    dice = IgniteMetricHandler(
        metric_fn=VertebraMetric("dice", mean=MEAN, std=STD, inputs="zscore"),
        output_transform=from_engine(["pred", "label"]),
    )
    dice.attach(engine, name="dice")
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["fd"] == pytest.approx(0.5, abs=1e-5)  # mean of 0 and 1
    assert engine.state.metrics["dice"] == pytest.approx(0.5, abs=1e-5)


def test_vertebra_metric_spacing_from_metatensor_and_batch_buffer():
    radius = 12.0
    gt = _sphere((24, 24, 24), radius)[None, None]
    pred = _sphere((26, 24, 24), radius)[None, None]
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    metric = VertebraMetric("assd")
    metric(MetaTensor(pred, affine=affine), MetaTensor(gt, affine=affine))
    with_meta = metric.aggregate().item()
    metric.reset()
    metric(pred, gt, spacing=(2.0, 2.0, 2.0))
    metric(pred, gt, spacing=(1.0, 1.0, 1.0))
    values = metric.aggregate(reduction="none").flatten()
    assert values[0].item() == pytest.approx(with_meta)
    assert values[0].item() == pytest.approx(2 * values[1].item())
    with pytest.raises(ValueError, match="spacing"):
        VertebraMetric("hd95")(pred, gt)
    with pytest.raises(ValueError, match="unknown metric"):
        VertebraMetric("psnr_db")
    with pytest.raises(ValueError, match="z-score statistics"):
        VertebraMetric("mse_z")


def test_vertebra_metric_refuses_z_scored_volumes_read_as_hu():
    """z-scored volumes with the default ``inputs="hu"`` gave Dice 1 (every voxel above -500 "HU"): refused."""
    gt = _sphere((24, 24, 24), 12.0)[None, None]
    zscored = (gt - MEAN) / STD
    with pytest.raises(ValueError, match="lie in .* without the fat or air .* Give inputs='zscore'"):
        VertebraMetric("dice")(zscored, zscored)
    right = VertebraMetric("dice", mean=MEAN, std=STD, inputs="zscore")
    right(zscored, zscored)
    assert right.aggregate().item() == pytest.approx(1.0)


def test_nsd_tolerance_is_one_voxel_and_at_least_1mm():
    assert nsd_tolerance([1.0, 1.0, 1.0]) == 1.0
    assert nsd_tolerance([2.0, 2.0, 2.0]) == 2.0
    assert nsd_tolerance([0.5, 0.5, 0.8]) == 1.0
    # a sphere shifted by one voxel: every surface voxel lies one voxel from the other surface, within tolerance
    gt = _sphere((24, 24, 24), 10.0)
    pred = _sphere((25, 24, 24), 10.0)
    row = vertebra_metrics(pred, gt, 2.0, MEAN, STD, names=("nsd",))
    assert row["nsd"] > 0.95


def test_fd_is_a_log_compressed_l2_error_by_parseval():
    """The paper's FD (Eq. 7-8) with an orthonormal FFT: D_real + D_imag lies between ||p - g|| and sqrt(2)||p - g||."""
    from scripts.metrics import rescale_hu
    from scripts.transforms.fourier import spectral_distance

    torch.manual_seed(0)
    gt = _sphere((24, 24, 24), 10.0)[None, None]
    pred = gt + 100 * torch.randn_like(gt)
    d = float(spectral_distance(rescale_hu(pred), rescale_hu(gt))[0])
    l2 = float(torch.linalg.vector_norm(rescale_hu(pred) - rescale_hu(gt)))
    assert l2 <= d * (1 + 1e-5) and d <= math.sqrt(2) * l2 * (1 + 1e-5)
