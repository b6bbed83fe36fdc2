# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Surface-distance heat maps: distances against an analytic case, and the figure is written."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scripts.tools.figures import surface_distances, surface_figure


def _sphere(radius_vox: float, shape=(40, 40, 40)) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    r = np.sqrt(((grid - 19.5) ** 2).sum(0))
    return np.where(r <= radius_vox, 500.0, -1024.0).astype(np.float32)


def test_concentric_spheres_are_their_radius_difference_apart():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    verts, faces, d = surface_distances(_sphere(12), _sphere(9), affine)
    assert faces.shape[1] == 3 and len(verts) == len(d)
    assert np.median(d) == pytest.approx(3 * 2.0, abs=1.0), "3 voxels of 2 mm between the surfaces"
    _, _, same = surface_distances(_sphere(9), _sphere(9), affine)
    assert np.median(same) < 0.5, "a surface is half-way between bone and background voxels in both"


def test_figure_has_one_row_per_method(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for name, radius in (("gt", 9), ("a", 10), ("b", 12)):
        nib.save(nib.Nifti1Image(_sphere(radius), affine), str(tmp_path / f"{name}.nii.gz"))
    out = surface_figure(
        {"A": tmp_path / "a.nii.gz", "B": tmp_path / "b.nii.gz"}, tmp_path / "gt.nii.gz", tmp_path / "f.png"
    )
    width, height = Image.open(out).size
    assert 1.3 < width / height < 2.0, "two rows of three views (one row would be about 3:1)"
    nib.save(nib.Nifti1Image(_sphere(9), np.diag([1.0, 1.0, 1.0, 1.0])), str(tmp_path / "other.nii.gz"))
    with pytest.raises(ValueError, match="grid"):
        surface_figure({"A": tmp_path / "other.nii.gz"}, tmp_path / "gt.nii.gz", tmp_path / "g.png")
