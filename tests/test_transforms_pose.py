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
