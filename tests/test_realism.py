# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The realism draws: window shifts in world mm, scatter, per-view rotation and per-item seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import RandGaussianNoised, Randomizable
from scripts.transforms import DRR, RandScatterd, RandViewRotated, RandWindowShiftd, SeededRandomd


def _grid(origin: tuple[float, float, float], spacing: float = 2.0, size: int = 33) -> torch.Tensor:
    affine = torch.diag(torch.tensor([spacing, spacing, spacing, 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor(origin, dtype=torch.float64)
    return affine


def _point(affine: torch.Tensor, index: tuple[int, int, int], size: int = 33) -> MetaTensor:
    vol = torch.full((1, size, size, size), -1024.0)
    vol[(0, *index)] = 1000.0
    return MetaTensor(vol, affine=affine)


def _world_peak(img: MetaTensor) -> np.ndarray:
    idx = np.unravel_index(int(img[0].argmax()), img.shape[1:])
    return (img.affine.numpy() @ np.array([*idx, 1.0]))[:3]


def test_window_shift_moves_the_grid_not_the_anatomy():
    affine = _grid((-32.0, 10.0, 5.0))
    item = {"gt": _point(affine, (16, 16, 16)), "ct": _point(affine, (16, 16, 16))}
    before = _world_peak(item["gt"])
    t = RandWindowShiftd(["ct", "gt"], max_shift_mm=(6.0, 0.0, 4.0), mode=["bilinear", "nearest"])
    t.set_random_state(3)
    out = t(item)
    offset = out["window_offset_mm"].numpy()
    assert offset[1] == 0 and np.all(np.abs(offset) <= [6.0, 0.0, 4.0]) and np.any(offset != 0)
    for key in ("ct", "gt"):
        assert out[key].shape == (1, 33, 33, 33)
        np.testing.assert_allclose(out[key].affine[:3, 3].numpy(), affine[:3, 3].numpy() + offset, atol=1e-9)
        # the anatomy stays in place in world mm (to the voxel: a sub-voxel shift spreads the point)
        assert np.abs(_world_peak(out[key]) - before).max() <= 2.0 / 2 + 1e-6
        assert float(out[key].min()) == pytest.approx(-1024.0), "border padding repeats the crop's air"


def test_window_shift_whole_voxels_is_exact_and_norm_mode_has_the_length():
    affine = _grid((0.0, 0.0, 0.0))
    item = {"gt": _point(affine, (16, 16, 16))}
    t = RandWindowShiftd("gt", max_shift_mm=4.0)
    t._offset = np.array([4.0, -2.0, 0.0])  # two voxels, minus one voxel
    t.randomize = lambda data=None: None
    out = t(item)
    assert out["gt"][0, 14, 17, 16] == pytest.approx(1000.0), "the point sits 2 voxels lower in x, 1 higher in y"
    norm = RandWindowShiftd("gt", shift_norm_mm=10.0)
    for seed in range(5):
        norm.set_random_state(seed)
        assert float(np.linalg.norm(norm({"gt": item["gt"]})["window_offset_mm"])) == pytest.approx(10.0)
    assert torch.equal(RandWindowShiftd("gt", prob=0.0)(item)["gt"], item["gt"])
    with pytest.raises(ValueError, match="window shifts"):
        RandWindowShiftd("gt", max_shift_mm=-1.0)


def test_window_shift_moves_the_body_window():
    """A sphere in a whole 'scan': the shifted window sees it off centre by the shift over the pixel size."""
    scan_affine = _grid((-64.0, -64.0, -64.0), spacing=2.0)
    ijk = torch.stack(torch.meshgrid(*[torch.arange(65.0)] * 3, indexing="ij"))
    sphere = ((ijk - 32.0).pow(2).sum(0) <= 8**2).float() * 2000.0 - 1000.0
    scan = MetaTensor(sphere[None], affine=scan_affine)
    crop_affine = _grid((-32.0, -32.0, -32.0), spacing=2.0)
    ref = MetaTensor(torch.zeros(1, 33, 33, 33), affine=crop_affine)
    t = RandWindowShiftd("gt", max_shift_mm=6.0)
    t._offset = np.array([6.0, 0.0, 0.0])
    t.randomize = lambda data=None: None
    shifted = t({"gt": ref})["gt"]
    drr = DRR(angles=(0.0, 90.0), physics="mono")

    def centroid(img: torch.Tensor) -> np.ndarray:
        w = (img - img.min()).clamp_min(0)
        rows, cols = torch.meshgrid(torch.arange(img.shape[0]), torch.arange(img.shape[1]), indexing="ij")
        return np.array([float((w * rows).sum() / w.sum()), float((w * cols).sum() / w.sum())])

    plain = drr(scan, reference=ref)
    moved = drr(scan, reference=shifted)
    ap, lat = centroid(moved[0]) - centroid(plain[0]), centroid(moved[1]) - centroid(plain[1])
    assert abs(ap[1]) == pytest.approx(3.0, abs=0.3), "6 mm along x is 3 pixels of 2 mm across the AP view"
    assert abs(ap[0]) < 0.3 and np.abs(lat).max() < 0.3, "no move along z; x is the lateral view's beam direction"


def test_scatter_of_a_flat_field_and_lower_contrast():
    flat = MetaTensor(torch.full((2, 32, 32), 2.0))
    t = RandScatterd("drr", fraction=(0.25, 0.25), sigma_mm=(10.0, 10.0), prob=1.0)
    out = t({"drr": flat})["drr"]
    np.testing.assert_allclose(out.numpy(), 2.0 - math.log(1.25), atol=1e-5)
    disc = torch.zeros(1, 32, 32)
    disc[0, 12:20, 12:20] = 3.0
    img = MetaTensor(disc, meta={"drr_geometry": {"sdd": 1020.0}})
    hazy = t({"drr": img})["drr"]
    assert float(hazy[0, 16, 16] - hazy[0, 2, 2]) < 3.0 - 0.5, "scatter lowers the contrast of attenuating objects"
    assert hazy.meta["drr_geometry"] == {"sdd": 1020.0}, "the geometry travels with the image"
    assert torch.equal(RandScatterd("drr", prob=0.0)({"drr": img})["drr"], img)


def test_views_turn_by_their_own_angles():
    img = torch.zeros(2, 33, 33)
    img[:, 16, 4:29] = 1.0  # a horizontal bar in both views
    src = MetaTensor(img, meta={"drr_geometry": {"angles": [[0.0, 0.0], [90.0, 0.0]]}})
    t = RandViewRotated("drr", range_deg=20.0, prob=1.0)
    t.set_random_state(0)
    out = t({"drr": src})["drr"]
    a0, a1 = t._angles
    assert abs(a0 - a1) > 1.0
    assert out.meta["drr_geometry"] == src.meta["drr_geometry"]
    for view, angle in enumerate((a0, a1)):
        ys, xs = np.nonzero(out[view].numpy() > 0.5)
        slope = np.polyfit(xs - 16.0, ys - 16.0, 1)[0]
        assert abs(math.degrees(math.atan(abs(slope))) - abs(angle)) < 2.0


def test_seeded_random_gives_each_item_its_own_fixed_draw():
    noise = RandGaussianNoised("x", prob=1.0, std=1.0)
    seeded = SeededRandomd([noise], seed=1)
    assert not isinstance(seeded, Randomizable), "CacheDataset must cache a seeded transform"
    a = {"id": "A", "x": torch.zeros(1, 8, 8)}
    b = {"id": "B", "x": torch.zeros(1, 8, 8)}
    first, again, other = seeded(a)["x"], seeded(a)["x"], seeded(b)["x"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, SeededRandomd([noise], seed=2)(a)["x"])
    with pytest.raises(KeyError, match="'id'"):
        seeded({"x": torch.zeros(1, 8, 8)})


def test_clutter_blend_runs_from_isolated_to_whole_body():
    from scripts.transforms import RandClutterBlendd

    vert = MetaTensor(torch.full((2, 4, 4), 1.0), meta={"drr_geometry": {"who": "vertebra"}})
    body = MetaTensor(torch.full((2, 4, 4), 5.0), meta={"drr_geometry": {"who": "body"}})
    item = {"v": vert, "b": body, "b_geometry": {"sdd": 1.0}}
    t = RandClutterBlendd(["v", "b"], output_key="drr", alpha_range=(0.25, 0.25), prob=1.0)
    out = t(item)
    assert torch.allclose(out["drr"], torch.full((2, 4, 4), 2.0)), "1 + 0.25 * (5 - 1)"
    assert out["drr"].meta["drr_geometry"] == {"who": "body"} and out["drr_geometry"] == {"sdd": 1.0}
    assert "v" not in out and "b" not in out and "b_geometry" not in out
    full = RandClutterBlendd(["v", "b"], prob=0.0)(item)["drr"]
    assert torch.equal(full.as_tensor(), body.as_tensor()), "without a draw: the whole body"
    with pytest.raises(ValueError, match="two keys"):
        RandClutterBlendd(["v"])


def _body_and_window():
    """A 'body' (soft-tissue slab with a bone block inside) and the crop of its vertebra (bone in air)."""
    from scripts.drr.geometry import grid_affine

    body = torch.full((1, 48, 48, 48), -1000.0)
    body[0, 8:40, 8:40, :] = 40.0  # the trunk
    body[0, 18:30, 20:28, 10:38] = 300.0  # a column of bone
    aff = grid_affine((48, 48, 48), 2.0)
    crop = body[:, 12:36, 12:36, 12:36].clone()
    gt = torch.where(crop >= 300.0, crop, torch.full_like(crop, -1024.0))
    gt[0, :, :, :4] = -1024.0  # the vertebra: one part of the column
    gt[0, :, :, 20:] = -1024.0
    window = MetaTensor(gt, affine=grid_affine((24, 24, 24), 2.0))
    return MetaTensor(body, affine=aff), window


def test_transplant_of_a_window_into_its_own_clutter_gives_back_its_body_xray():
    """Line integrals add (monochromatic): c + p_v - p_w, with c from the same window, is the body's X-ray."""
    from monai.transforms import CopyItemsd, ThresholdIntensityd
    from scripts.transforms import DRRd, RandClutterTransplantd

    body, gt = _body_and_window()
    kw = dict(angles=[[0, 0], [90, 0]], physics="mono", photon_count=None)
    item = CopyItemsd("gt", names="water")({"id": "P_T1", "gt": gt, "body": body})
    item = ThresholdIntensityd("water", threshold=0.0, above=False, cval=0.0)(item)
    d = DRRd(["body", "gt", "water"], output_keys=["p_b", "p_v", "p_w"], ref_key="gt", **kw)(item)
    own = d["p_b"] - d["p_v"] + d["p_w"]
    assert float((d["p_v"] - d["p_w"]).min()) >= -1e-5, "the vertebra adds attenuation over water"
    bank = {"clutter": torch.stack([own.as_tensor(), torch.zeros_like(own.as_tensor())]), "ids": ["A", "B"]}
    t = RandClutterTransplantd(["p_v", "p_w"], bank=bank, photon_count=None, exclude_key=None)
    t._entry = 0
    t.randomize = lambda data=None: None  # keep the chosen entry
    out = t(dict(d))
    torch.testing.assert_close(out["drr"].as_tensor(), d["p_b"].as_tensor(), atol=1e-4, rtol=1e-4)
    assert out["drr"].meta["drr_geometry"] == d["p_v"].meta["drr_geometry"]
    assert "p_v" not in out and "p_w" not in out


def test_transplant_draws_other_vertebrae_adds_noise_and_checks_its_bank(tmp_path):
    from scripts.errors import BundleInputError
    from scripts.transforms import RandClutterTransplantd
    from scripts.transforms.realism import load_clutter_bank

    clutter = torch.stack([torch.full((2, 4, 4), float(i)) for i in range(3)])
    bank = {"clutter": clutter, "ids": ["P_T1", "P_T2", "P_T3"]}
    p_v = MetaTensor(torch.full((2, 4, 4), 2.0))
    p_w = MetaTensor(torch.full((2, 4, 4), 1.5))
    t = RandClutterTransplantd(["p_v", "p_w"], bank=bank, photon_count=None)
    seen = set()
    for seed in range(30):
        t.set_random_state(seed)
        out = t({"id": "P_T1", "p_v": p_v, "p_w": p_w})["drr"]
        seen.add(round(float(out[0, 0, 0]) - 0.5, 3))
    assert seen == {1.0, 2.0}, "never its own window (clutter 0)"
    kept = RandClutterTransplantd(["p_v", "p_w"], bank=bank, prob=0.0, photon_count=None)
    assert torch.equal(kept({"id": "x", "p_v": p_v, "p_w": p_w})["drr"].as_tensor(), p_v.as_tensor())
    noisy = RandClutterTransplantd(["p_v", "p_w"], bank=bank, prob=0.0, photon_count=100.0)
    noisy.set_random_state(0)
    flat = MetaTensor(torch.full((2, 64, 64), 2.0))
    img = noisy({"id": "x", "p_v": flat, "p_w": flat})["drr"]
    # 100 * e^-2 = 13.5 photons: the log of Poisson counts has a spread of about 1/sqrt(13.5)
    assert 0.2 < float(img.std()) < 0.4 and abs(float(img.mean()) - 2.0) < 0.1
    with pytest.raises(BundleInputError, match="make the bank with the training's views"):
        t({"id": "x", "p_v": MetaTensor(torch.ones(2, 8, 8)), "p_w": MetaTensor(torch.ones(2, 8, 8))})
    with pytest.raises(BundleInputError, match="python -m scripts.tools.clutter_bank"):
        load_clutter_bank(tmp_path / "missing.pt")
    torch.save({"ids": []}, tmp_path / "bad.pt")
    with pytest.raises(BundleInputError, match="not a clutter bank"):
        load_clutter_bank(tmp_path / "bad.pt")
