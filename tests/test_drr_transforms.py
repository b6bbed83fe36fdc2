# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""DRR / DRRd MONAI transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from scripts.drr.geometry import grid_affine
from scripts.transforms import DRR, DRRd

N = 48
AFFINE = grid_affine((N, N, N), 1.5, centre=(10.0, -20.0, 30.0))


def phantom() -> MetaTensor:
    hu = torch.full((1, N, N, N), -1024.0)
    hu[0, 14:30, 18:34, 10:40] = 900.0
    hu[0, 28:36, 30:40, 30:44] = 50.0
    return MetaTensor(hu, affine=AFFINE.float(), meta={"filename_or_obj": "phantom.nii.gz"})


def test_drrd_outputs_images_and_geometry():
    t = DRRd(keys="ct", angles=(0, 90), photon_count=1e5)
    t.set_random_state(3)
    d = t({"ct": phantom()})
    drr = d["drr"]
    assert isinstance(drr, MetaTensor) and drr.shape == (2, N, N)
    geo = drr.meta["drr_geometry"]
    assert geo["sdd"] == 1020.0 and geo["sod"] == 700.0 and geo["detector_shape"] == [N, N]
    np.testing.assert_allclose(geo["isocentre"], [10.0, -20.0, 30.0], atol=1e-5)
    np.testing.assert_allclose(drr.meta["angles"], [[0, 0], [90, 0]])
    tens = d["drr_geometry"]
    assert tens["angles"].shape == (2, 2) and tens["object_rotation"].shape == (3, 3)
    # the detector sees the whole crop: no bone at the image border
    assert drr[:, 0].abs().max() < 0.05 and drr[:, :, -1].abs().max() < 0.05
    assert drr.max() > 1.0
    # seeded: the same seed gives the same noise; another seed other noise
    again = DRRd(keys="ct", angles=(0, 90), photon_count=1e5).set_random_state(3)({"ct": phantom()})["drr"]
    other = DRRd(keys="ct", angles=(0, 90), photon_count=1e5).set_random_state(4)({"ct": phantom()})["drr"]
    torch.testing.assert_close(drr.as_tensor(), again.as_tensor())
    assert (drr - other).abs().max() > 1e-4


def test_random_angles_and_pose_are_seeded_and_bounded():
    t = DRRd(keys=["ct"], angles=(0, 90), photon_count=None, angle_jitter=(5, 3), rotation_range=4)
    t.set_random_state(0)
    seen = []
    for _ in range(4):
        geo = t({"ct": phantom()})["drr"].meta["drr_geometry"]
        off = np.asarray(geo["angles"]) - np.asarray(geo["nominal_angles"])
        assert np.all(np.abs(off) <= [5, 3])
        rot = np.asarray(geo["object_rotation"])
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
        assert np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))) <= 4 * np.sqrt(3) + 1e-6
        seen.append(off)
    assert np.std(np.asarray(seen)[:, :, 0]) > 0.1
    t2 = DRRd(keys=["ct"], angles=(0, 90), photon_count=None, angle_jitter=(5, 3), rotation_range=4)
    t2.set_random_state(0)
    first = t2({"ct": phantom()})["drr"].meta["drr_geometry"]["angles"]
    np.testing.assert_allclose(np.asarray(first) - [[0, 0], [90, 0]], seen[0])


def test_isolated_and_in_context_keys_share_the_randomness():
    data = {"ct": phantom(), "gt": phantom()}
    out = Compose([DRRd(keys=["ct", "gt"], angle_jitter=10, photon_count=1e4)]).set_random_state(1)(data)
    torch.testing.assert_close(out["ct_drr"].as_tensor(), out["gt_drr"].as_tensor())


def test_bad_inputs():
    with pytest.raises(ValueError, match="affine"):
        DRR()(torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"\(1, X, Y, Z\)"):
        DRR()(MetaTensor(torch.zeros(8, 8, 8)))
    with pytest.raises(ValueError, match="-360, 360"):
        DRR(angles=(0, 720))
    with pytest.raises(ValueError, match="NaN"):
        DRR(angles=(0, float("nan")))
    with pytest.raises(ValueError, match="unknown spectrum"):
        DRR(spectrum="80kV")
    with pytest.raises(ValueError, match="at least 1 x 1"):
        DRR(geometry={"detector_shape": (0, 0), "pixel_spacing": (1, 1)})


def test_spectrum_and_photon_count_drawn_per_item():
    vol = torch.full((1, 32, 32, 32), -1024.0)
    vol[:, 8:24, 8:24, 8:24] = 500.0
    item = {"gt": MetaTensor(vol, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))}
    t = DRRd("gt", output_keys="drr", spectrum=["60kV", "120kV"], photon_count=[1e4, 1e6])
    t.set_random_state(0)
    spectra, photons = set(), []
    for _ in range(12):
        meta = t(item)["drr"].meta["drr_geometry"]
        spectra.add(meta["spectrum"])
        photons.append(meta["photon_count"])
    assert spectra == {"60kV", "120kV"}
    assert 1e4 <= min(photons) < max(photons) <= 1e6
    with pytest.raises(ValueError, match="low <= high"):
        DRRd("gt", photon_count=[1e6, 1e4])
    with pytest.raises(ValueError):
        DRRd("gt", spectrum=["60kV", "42kV"])


def test_random_rotation_turns_about_x_then_y_then_z():
    from scripts.transforms import random_rotation

    rot = random_rotation([90.0, 0.0, 90.0])  # Rz(90) @ Rx(90): x -> y, y -> z, z -> x
    np.testing.assert_allclose(rot @ np.eye(3), [[0, 0, 1], [1, 0, 0], [0, 1, 0]], atol=1e-12)
    rot = random_rotation([10.0, -20.0, 35.0])
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0)
