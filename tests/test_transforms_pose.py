# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""RandPoseRotated turns the object inside a fixed grid, the same way for every key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scripts.transforms import RandPoseRotated


def _point_volume(affine: torch.Tensor) -> MetaTensor:
    vol = torch.zeros(1, 33, 33, 33)
    vol[0, 26, 16, 16] = 1.0  # 10 voxels right of the centre (16, 16, 16)
    return MetaTensor(vol, affine=affine)


def test_rotation_about_z_keeps_grid_and_moves_object():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    affine[:3, 3] = torch.tensor([-10.0, 5.0, 3.0])
    t = RandPoseRotated(["a", "b"], range_deg=(0.0, 0.0, 90.0), prob=1.0, mode=["bilinear", "nearest"])
    t.set_random_state(1)  # draws about -35.6 degrees
    out = t({"a": _point_volume(affine), "b": _point_volume(affine)})
    for k in ("a", "b"):
        assert torch.equal(out[k].affine.float(), affine), "the grid (affine) must stay as it was"
        assert out[k].shape == (1, 33, 33, 33)
    # the same rotation for both keys: their peaks coincide
    ia = np.unravel_index(int(out["a"].argmax()), out["a"].shape[1:])
    ib = np.unravel_index(int(out["b"].argmax()), out["b"].shape[1:])
    assert ia == ib
    # the peak stays 10 voxels from the centre in the xy plane and at z = 16: a rotation about z
    dx, dy = ia[0] - 16, ia[1] - 16
    assert ia[2] == 16
    assert np.hypot(dx, dy) == pytest.approx(10.0, abs=1.0)
    # the peak is where RandRotated's drawn angle puts it (MONAI's sense of rotation about z)
    angle = t.rotate.rand_rotate.z
    assert abs(np.rad2deg(angle)) > 20
    assert abs(ia[0] - (16 + 10 * np.cos(angle))) <= 1
    assert abs(ia[1] - (16 - 10 * np.sin(angle))) <= 1


def test_probability_zero_is_identity():
    vol = _point_volume(torch.eye(4))
    out = RandPoseRotated("a", range_deg=30.0, prob=0.0)({"a": vol})
    assert torch.equal(out["a"], vol)


def test_bad_range():
    with pytest.raises(ValueError, match="range_deg"):
        RandPoseRotated("a", range_deg=-1.0)


def test_fixed_grid_scales_the_object_inside_the_grid():
    from monai.transforms import RandAffined, Randomizable
    from scripts.transforms import FixedGridd

    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    inner = RandAffined(["a", "b"], prob=1.0, scale_range=[(0.3, 0.3), (0.0, 0.0), (0.0, 0.0)], mode="bilinear")
    t = FixedGridd(["a", "b"], inner)
    assert isinstance(t, Randomizable), "CacheDataset must stop caching before it"
    t.set_random_state(0)
    out = t({"a": _point_volume(affine), "b": _point_volume(affine)})
    for k in ("a", "b"):
        assert torch.equal(out[k].affine.float(), affine), "the grid (affine) stays as it was"
    ia = np.unravel_index(int(out["a"].argmax()), out["a"].shape[1:])
    assert ia == np.unravel_index(int(out["b"].argmax()), out["b"].shape[1:]), "one draw for every key"
    assert ia[1:] == (16, 16), "a scaling along x keeps the point on the x axis"
    factor = float(inner.rand_affine.rand_affine_grid.scale_params[0])  # 1 + the drawn offset
    assert abs(factor - 1.0) > 0.01
    assert abs((ia[0] - 16) - 10 / factor) <= 1.0, "the object is resampled, the grid is not moved"
