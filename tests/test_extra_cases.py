# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""scripts.tools.extra_cases: the source's volumes turned front to back as the shared copies, on the CT's grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scripts.tools.extra_cases import CASES, extra_cases, write_case


def _pair(tmp_path, gap_mm: float):
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    affine[:3, 3] = (100.0, 50.0, -300.0)
    ct = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 0, 2] = 20  # L1 at the front of the second axis
    off = affine.copy()
    off[0, 3] += gap_mm
    nib.save(nib.Nifti1Image(ct, affine), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(labels, off), str(tmp_path / "lab.nii.gz"))
    return ct, labels, affine


def test_write_case_flips_the_second_axis_and_keeps_the_cts_affine(tmp_path):
    ct, labels, affine = _pair(tmp_path, gap_mm=0.004)  # the rounding of the source's colonog0510
    write_case(tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz", tmp_path / "out", "p")
    out_ct, out_lab = nib.load(str(tmp_path / "out" / "p_ct.nii.gz")), nib.load(str(tmp_path / "out" / "p_seg.nii.gz"))
    np.testing.assert_array_equal(np.asarray(out_ct.dataobj), ct[:, ::-1])
    assert np.asarray(out_lab.dataobj)[1, 4, 2] == 20 and int(np.count_nonzero(np.asarray(out_lab.dataobj))) == 1
    np.testing.assert_allclose(out_lab.affine, affine)
    np.testing.assert_allclose(out_ct.affine, affine)


def test_write_case_refuses_another_grid_and_a_missing_clone(tmp_path):
    _pair(tmp_path, gap_mm=1.0)
    with pytest.raises(ValueError, match="does not lie on"):
        write_case(tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz", tmp_path / "out", "p")
    assert not (tmp_path / "out" / "p_ct.nii.gz").exists()
    with pytest.raises(FileNotFoundError, match="9f45808c6"):
        extra_cases(str(tmp_path / "no-clone"), str(tmp_path / "out"))
    assert set(CASES) == {"colonog0646", "colonog0510"}
