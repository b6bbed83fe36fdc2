# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Dimension expansion of X-rays whose pixel spacing is known (real radiographs) but carry no DRR geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scripts.drr.geometry import ConeBeamGeometry
from scripts.transforms import DRR, DimensionExpansion

N, SPACING = 32, 2.0


def _ball() -> MetaTensor:
    x, y, z = torch.meshgrid(*[torch.arange(N, dtype=torch.float32)] * 3, indexing="ij")
    inside = (x - 15.5) ** 2 + (y - 17.5) ** 2 + (z - 14.5) ** 2 <= 6.0**2
    vol = torch.where(inside, torch.tensor(800.0), torch.tensor(-1024.0))[None]
    aff = torch.diag(torch.tensor([SPACING, SPACING, SPACING, 1.0], dtype=torch.float64))
    aff[:3, 3] = -SPACING * (N - 1) / 2
    return MetaTensor(vol, affine=aff)


def _as_radiograph(drr: MetaTensor, spacing) -> MetaTensor:
    """The DRR as a loaded radiograph: pixels, angles and pixel spacing, no simulation geometry."""
    return MetaTensor(drr.as_tensor(), meta={"angles": drr.meta["angles"], "pixel_spacing": spacing})


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


@pytest.mark.parametrize("mode", ["replicate", "backproject"])
def test_known_pixel_spacing_restores_the_scale(mode):
    vol = _ball()
    default = ConeBeamGeometry.for_crop(N, SPACING)
    wide = ConeBeamGeometry(
        default.sdd, default.sod, default.detector_shape, tuple(2 * s for s in default.pixel_spacing)
    )
    expand = DimensionExpansion(mode, spatial_size=N, spacing=SPACING)
    ref = expand(DRR(physics="mono", photon_count=None)(vol), affine=vol.affine)

    wide_drr = DRR(geometry=wide, physics="mono", photon_count=None)(vol)
    with_spacing = expand(_as_radiograph(wide_drr, np.tile(wide.pixel_spacing, (2, 1))), affine=vol.affine)
    without = expand(_as_radiograph(wide_drr, np.full((2, 2), np.nan)), affine=vol.affine)
    assert _corr(with_spacing, ref) > 0.97, "with the pixel spacing the ball lands where it is"
    assert _corr(without, ref) < _corr(with_spacing, ref) - 0.1, "ignoring it shrinks the ball"


def test_different_spacings_per_view_are_refused():
    img = MetaTensor(
        torch.rand(2, 8, 8),
        meta={"angles": np.array([[0.0, 0.0], [90.0, 0.0]]), "pixel_spacing": np.array([[1.0, 1.0], [2.0, 2.0]])},
    )
    with pytest.raises(ValueError, match="different pixel spacings"):
        DimensionExpansion(spatial_size=8, spacing=2.0)(img)
