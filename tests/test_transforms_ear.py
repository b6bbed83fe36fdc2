# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""MIP, FFT, edge and z-score transforms (array and dictionary versions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, NormalizeIntensity, NormalizeIntensityd
from scripts.transforms import (
    EdgeMap,
    EdgeMapd,
    FourierRealImag,
    FourierRealImagd,
    MaximumIntensityProjection,
    MaximumIntensityProjectiond,
    ZScoreToHU,
    ZScoreToHUd,
    boundary_map,
    load_intensity_stats,
    maximum_intensity_projections,
)


def _cube(n=12, lo=3, hi=9, inside=400.0, outside=-1000.0):
    x = torch.full((1, n, n, n), outside)
    x[:, lo:hi, lo:hi, lo:hi] = inside
    return x


def test_mip_of_a_cube():
    x = _cube()
    x[0, 5, 5, 5] = 900.0  # brightest voxel inside
    square = torch.full((12, 12), -1000.0)
    square[3:9, 3:9] = 400.0
    for axis in range(3):
        mip = MaximumIntensityProjection(axis)(x)
        assert mip.shape == (1, 12, 12)
        expected = square.clone()
        expected[5, 5] = 900.0
        torch.testing.assert_close(mip[0], expected)
    np.testing.assert_array_equal(MaximumIntensityProjection(1)(x.numpy()), MaximumIntensityProjection(1)(x).numpy())
    assert [m.shape for m in maximum_intensity_projections(torch.zeros(2, 1, 4, 5, 6))] == [
        (2, 1, 5, 6),
        (2, 1, 4, 6),
        (2, 1, 4, 5),
    ]
    with pytest.raises(ValueError, match="axis"):
        MaximumIntensityProjection(3)(x)


def test_mip_dict_keeps_source_with_output_keys():
    x = MetaTensor(_cube())
    d = MaximumIntensityProjectiond("ct", axis=2, output_keys="ct_mip")({"ct": x})
    assert d["ct"] is x and d["ct_mip"].shape == (1, 12, 12)
    assert not isinstance(d["ct_mip"], MetaTensor)  # a projection has no volume affine


def test_fourier_real_imag_round_trip_and_parseval():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 10)
    out = FourierRealImag()(x)
    assert out.shape == (4, 8, 6, 10)
    back = torch.fft.ifftn(torch.complex(out[:2], out[2:]), dim=(1, 2, 3), norm="ortho")
    torch.testing.assert_close(back.real, x, atol=1e-5, rtol=1e-5)
    assert back.imag.abs().max() < 1e-5
    assert (out**2).sum().item() == pytest.approx((x**2).sum().item(), rel=1e-5)  # orthonormal
    # a constant volume has only the zero frequency; shift moves it to the centre
    c = torch.ones(1, 4, 4, 4)
    spec = FourierRealImag(norm="backward", shift=True)(c)
    assert spec[0, 2, 2, 2] == 64.0 and spec[0].abs().sum() == 64.0 and spec[1].abs().sum() == 0
    d = FourierRealImagd("img", output_keys="spec")({"img": x.numpy()})
    assert isinstance(d["spec"], np.ndarray) and d["spec"].shape == (4, 8, 6, 10)


def test_boundary_of_a_cube():
    x = _cube(lo=3, hi=9)  # 6^3
    edge = EdgeMap(threshold=-500.0)(x)
    assert edge.sum().item() == 6**3 - 4**3
    assert edge[0, 3, 5, 5] == 1 and edge[0, 5, 5, 5] == 0 and edge[0, 0, 0, 0] == 0
    # an object touching the border has its border face as boundary (outside counts as background)
    full = torch.ones(1, 5, 5, 5)
    assert boundary_map(full).sum().item() == 5**3 - 3**3


def test_sobel_edges_sit_on_the_boundary():
    x = _cube()
    sob = EdgeMap(threshold=-500.0, mode="sobel")(x)
    assert sob.shape == x.shape
    assert sob[0, 6, 6, 6] == 0 and sob[0, 0, 0, 0] == 0  # flat inside and outside
    assert sob[0, 3, 6, 6] > 0 and sob[0, 2, 6, 6] > 0  # across the face
    raw = EdgeMap(threshold=None, mode="sobel")(x)  # gradient of the raw intensities scales with contrast
    torch.testing.assert_close(raw, sob * 1400.0, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="threshold"):
        EdgeMap(threshold=None, mode="boundary")
    with pytest.raises(ValueError, match="mode"):
        EdgeMap(mode="canny")


def test_edge_dict_keeps_metadata():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    x = MetaTensor(_cube(), affine=affine)
    d = EdgeMapd("gt", threshold=-500.0, output_keys="edge")({"gt": x})
    assert isinstance(d["edge"], MetaTensor)
    torch.testing.assert_close(d["edge"].affine, x.affine)
    assert d["edge"].sum().item() == 6**3 - 4**3


def test_zscore_round_trip_and_stats_file(tmp_path):
    """MONAI's NormalizeIntensity with the stored statistics z-scores (as train.json does); ZScoreToHU undoes it."""
    x = MetaTensor(_cube())
    to_z = NormalizeIntensity(subtrahend=-800.0, divisor=200.0)
    z = to_z(x)
    assert isinstance(z, MetaTensor)
    assert z[0, 0, 0, 0].item() == pytest.approx(-1.0) and z[0, 5, 5, 5].item() == pytest.approx(6.0)
    torch.testing.assert_close(ZScoreToHU(-800.0, 200.0)(z), x)
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"hu": {"mean": -800.0, "std": 200.0}}))
    assert load_intensity_stats(stats, "hu.mean", "hu.std") == (-800.0, 200.0)
    pipeline = Compose(
        [
            NormalizeIntensityd(["gt", "ct"], subtrahend=-800.0, divisor=200.0),
            ZScoreToHUd("gt", stats_file=stats, mean_key="hu.mean", std_key="hu.std"),
        ]
    )
    out = pipeline({"gt": x, "ct": x.numpy()})
    torch.testing.assert_close(out["gt"], x)
    np.testing.assert_allclose(out["ct"], z.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="std > 0"):
        ZScoreToHU(0.0, 0.0)
    with pytest.raises(ValueError, match="needs mean and std"):
        ZScoreToHU()
    with pytest.raises(KeyError, match="hu.sd"):
        load_intensity_stats(stats, "hu.mean", "hu.sd")
    with pytest.raises(FileNotFoundError):
        ZScoreToHU(stats_file=tmp_path / "missing.json")
