# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""RandPoseRotated turns the object inside a fixed grid, the same way for every key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scripts.transforms import RandPoseRotated, RandViewPairScaled


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


def _ellipsoid_views(a: float, b: float, c: float, n: int = 65) -> np.ndarray:
    """The parallel-ray AP and lateral views (line integrals, unit attenuation) of an ellipsoid with semi-axes
    ``a``, ``b``, ``c`` (x, y, z, in pixels) at the centre of ``n`` x ``n`` views: rows along z, columns along x
    (AP) and y (lateral)."""
    z, u = np.meshgrid(np.arange(n) - (n - 1) / 2, np.arange(n) - (n - 1) / 2, indexing="ij")

    def view(across: float, depth: float) -> np.ndarray:
        return 2 * depth * np.sqrt(np.clip(1 - (u / across) ** 2 - (z / c) ** 2, 0, None))

    return np.stack([view(a, b), view(b, a)])


def test_view_pair_scaling_turns_a_sphere_into_the_ellipsoid():
    """A sphere's two views scaled by (sx, sy, sz) are the views of the ellipsoid with semi-axes r * (sx, sy, sz):
    each view stretched across and along z, its line integrals as long as the depth factor says."""
    r = 14.0
    t = RandViewPairScaled(["x", "mask"], scale_range=0.2, prob=1.0)
    t.set_random_state(21)  # draws about (0.92, 1.09, 0.81): every axis its own factor
    sphere = torch.tensor(_ellipsoid_views(r, r, r), dtype=torch.float32)
    out = t({"x": sphere, "mask": (sphere > 0).float()})
    sx, sy, sz = t._factors
    assert min(abs(sx - 1), abs(sy - 1), abs(sz - 1), abs(sx - sy), abs(sz - sx), abs(sz - sy)) > 0.05
    want = _ellipsoid_views(r * sx, r * sy, r * sz)
    inner = want > 0.3 * want.max()
    got = out["x"].numpy()
    assert np.abs(got - want)[inner].max() / want.max() < 0.03
    assert np.abs(got - want).mean() < 0.05
    # the scale the other way round (an object 1/s as large) is far off
    for wrong in (
        _ellipsoid_views(r / sx, r * sy, r / sz),  # an object 1 / s as large
        _ellipsoid_views(r * sx, r * sy, r),  # z left as it was
        _ellipsoid_views(r * sy, r * sx, r * sz),  # the views' factors swapped
    ):
        assert np.abs(got - wrong).mean() > 3 * np.abs(got - want).mean()
    # both keys got the same draw: the mask alone, drawn with the same seed, comes out the same
    alone = RandViewPairScaled("x", scale_range=0.2, prob=1.0).set_random_state(21)
    assert torch.equal(alone({"x": (sphere > 0).float()})["x"], out["mask"])
    silhouette = out["mask"] / torch.tensor([sy, sx], dtype=torch.float32).view(2, 1, 1) > 0.5
    assert (silhouette != torch.as_tensor(want > 0)).float().mean() < 0.02


def test_view_pair_scaling_keeps_batches_metadata_and_refuses_bad_input():
    views = MetaTensor(torch.rand(3, 2, 16, 16), meta={"pixel_spacing": [2.0, 2.0]})
    t = RandViewPairScaled("x", scale_range=(0.0, 0.0, 0.3), prob=1.0, line_integrals=False)
    t.set_random_state(0)
    out = t({"x": views})["x"]
    assert isinstance(out, MetaTensor) and out.meta["pixel_spacing"] == [2.0, 2.0] and out.shape == views.shape
    assert not torch.allclose(out, views)
    assert t._factors[0] == t._factors[1] == 1.0
    # one draw for the batch: every item's views change alike
    ones = torch.ones(2, 2, 16, 16)
    ones[:, :, 4:12, 4:12] = 5.0
    t.set_random_state(0)
    twice = t({"x": ones})["x"]
    assert torch.equal(twice[0], twice[1])
    assert torch.equal(RandViewPairScaled("x", prob=0.0)({"x": views})["x"], views)
    with pytest.raises(ValueError, match=r"expects an AP and a lateral view \(2, H, W\)"):
        RandViewPairScaled("x", prob=1.0)({"x": torch.rand(3, 16, 16)})
    with pytest.raises(ValueError, match="scale_range must be"):
        RandViewPairScaled("x", scale_range=1.0)
