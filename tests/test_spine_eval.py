# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The end-to-end scoring of scripts.tools.spine_eval: masks against known overlaps, and the one-to-one matching."""

from __future__ import annotations

import numpy as np
import pytest
from scripts.tools.spine_eval import _match, score_reconstruction


def test_score_of_two_offset_cubes():
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[5:15, 5:15, 5:15] = True
    b[7:17, 5:15, 5:15] = True  # moved 2 voxels: overlap 8 of 10 along x
    dice, hd95 = score_reconstruction(a, b, (1.5, 1.5, 1.5))
    assert dice == pytest.approx(0.8)
    assert hd95 == pytest.approx(3.0)  # 2 voxels of 1.5 mm
    assert score_reconstruction(a, a, (1.0, 1.0, 1.0)) == (1.0, 0.0)
    dice, hd95 = score_reconstruction(np.zeros_like(a), a, (1.0, 1.0, 1.0))
    assert dice == 0.0 and hd95 is None, "a missed vertebra: Dice 0, no HD95"


def test_match_is_one_to_one_within_the_hit_distance():
    truth = [{"level": lv, "centre_mm_world": [0.0, 0.0, z]} for lv, z in (("L1", 0.0), ("L2", -30.0), ("L3", -60.0))]
    reported = [
        {"level": "T12", "centre_world_mm": [1.0, 0.0, -2.0]},  # named wrong, placed at L1
        {"level": "L1", "centre_world_mm": [0.0, 2.0, -5.0]},  # a second report near L1
        {"level": "L2", "centre_world_mm": [0.0, 0.0, -45.0]},  # 15 mm from L2 and L3: no hit
    ]
    got = _match(reported, truth, 10.0)
    assert set(got) == {"L1"} and got["L1"]["level"] == "T12"
    assert _match([], truth, 10.0) == {}


def test_reference_mask_is_the_ground_truth_the_crops_hold():
    """reference_mask equals scripts.data.crop's ground truth at -500 HU: the own mask grown by one voxel, where the
    scan is not air (a lung-like plane beside the vertebra stays out), and not the neighbour."""
    import torch
    from monai.data import MetaTensor
    from scripts.data.crop import bounding_boxes, crop_vertebra
    from scripts.tools.spine_eval import reference_mask

    hu = np.full((24, 24, 24), 40.0, np.float32)  # soft tissue
    hu[:, :, 14:] = -800.0  # lung above the vertebra, touching it
    lab = np.zeros((24, 24, 24), np.int16)
    lab[8:16, 8:16, 6:14] = 20
    lab[8:16, 8:16, 3:5] = 21  # a neighbour below, one voxel away
    hu[lab > 0] = 300.0
    ct_t = MetaTensor(torch.as_tensor(hu)[None], affine=torch.eye(4, dtype=torch.float64))
    lab_t = MetaTensor(torch.as_tensor(lab.astype(np.float32))[None], affine=torch.eye(4, dtype=torch.float64))
    crop = crop_vertebra(ct_t, lab_t, 20, bounding_boxes(lab, [20])[20], 24)
    np.testing.assert_array_equal(reference_mask(crop.mask > 0, crop.ct), crop.gt > -500.0)
    ref = reference_mask(lab == 20, hu)
    assert ref.sum() == 10 * 10 * 9, "grown by one voxel except into the lung (z >= 14)"
    assert ref[7:17, 7:17, 5].all() and not ref[:, :, 4].any(), "the gap between them is grown into, not the neighbour"


def test_resample_hu_onto_a_shifted_grid(tmp_path):
    """finder_data.resample_hu: a linear ramp in HU read back half a voxel along, -1024 outside the scan."""
    import nibabel as nib
    from scripts.tools.finder_data import resample_hu

    x = np.arange(10, dtype=np.float32)
    ramp = np.broadcast_to((100.0 * x)[:, None, None], (10, 10, 10)).copy()
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(ramp, aff), tmp_path / "ct.nii.gz")
    dst = aff.copy()
    dst[0, 3] = 1.0  # half a voxel along x
    out = resample_hu(str(tmp_path / "ct.nii.gz"), dst, (12, 10, 10))
    np.testing.assert_allclose(out[:9, 4, 4], 100.0 * (x[:9] + 0.5), atol=1e-3)
    assert out[11, 4, 4] == pytest.approx(-1024.0)
