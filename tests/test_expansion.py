# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""DimensionExpansion: replicate and backproject, orientation and consistency with the projector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scripts.drr.geometry import ConeBeamGeometry, grid_affine
from scripts.transforms import DimensionExpansion, DimensionExpansiond, DRRd, zscore_images

N = 40
AFFINE = grid_affine((N, N, N), 2.0, centre=(5.0, 0.0, -8.0))


def test_backprojected_pixel_lands_on_its_ray():
    geo = ConeBeamGeometry.for_crop(N, 2.0)
    img = torch.zeros(2, N, N)
    pix = (13, 27)  # (row, col)
    img[:, pix[0], pix[1]] = 1.0
    iso = (AFFINE @ torch.tensor([(N - 1) / 2] * 3 + [1.0], dtype=torch.float64))[:3]
    vol = DimensionExpansion("backproject", N, 2.0, geo, zscore=False)(img, [0, 90], affine=AFFINE)
    assert vol.shape == (2, N, N, N) and torch.allclose(vol.affine.double(), AFFINE)
    source, pixels = geo.pixel_positions([[0, 0], [90, 0]], iso)
    idx = torch.stack(torch.meshgrid(*[torch.arange(N, dtype=torch.float64)] * 3, indexing="ij"), -1)
    world = idx @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    for v in range(2):
        ray = pixels[v, pix[0], pix[1]] - source[v]
        ray = ray / ray.norm()
        rel = world - source[v]
        dist = torch.linalg.norm(rel - (rel @ ray)[..., None] * ray, dim=-1)
        # one detector pixel is about 2.1 mm at the isocentre, the voxels 2 mm
        assert (vol[v] > 0.5).sum() >= 10  # a line of voxels along the beam
        assert dist[vol[v] > 0].max() < 3.2  # every touched voxel lies within one pixel of the ray
        assert dist[vol[v] > 0.5].max() < 1.6  # the strongly hit ones within half a pixel
        assert (vol[v][dist < 0.3] > 0.5).all()  # and the voxels the ray passes through are hit


def test_bead_is_recovered_where_the_two_views_intersect():
    hu = torch.full((1, N, N, N), -1024.0)
    bead = (28, 11, 30)
    hu[0, bead[0], bead[1], bead[2]] = 3000.0
    d = DRRd(keys="ct", physics="mono")({"ct": MetaTensor(hu, affine=AFFINE)})
    for mode in ("backproject", "replicate"):
        out = DimensionExpansiond(keys="drr", mode=mode, ref_key="ct", zscore=False)(d)["image"]
        assert out.shape == (2, N, N, N)
        peak = np.unravel_index(int((out[0] * out[1]).argmax()), (N, N, N))
        assert np.abs(np.asarray(peak) - bead).max() <= (0 if mode == "backproject" else 2), (mode, peak)


def test_replicate_and_backproject_agree_near_parallel():
    far = ConeBeamGeometry(sdd=1e6 * 1020 / 700, sod=1e6, detector_shape=(N, N), pixel_spacing=(2.0 * 1020 / 700,) * 2)
    r, c = torch.meshgrid(torch.arange(N, dtype=torch.float32), torch.arange(N, dtype=torch.float32), indexing="ij")
    img = torch.stack([torch.sin(r / 5) + torch.cos(c / 7) + c / 20, torch.cos(r / 6) * torch.sin(c / 4) - r / 30])
    a = DimensionExpansion("replicate", N, 2.0, far)(img, [0, 90])
    b = DimensionExpansion("backproject", N, 2.0, far)(img, [0, 90])
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))  # the outermost voxels sit on the detector edge
    torch.testing.assert_close(a[inner], b[inner], atol=2e-3, rtol=0)
    # replicate copies AP along the antero-posterior axis and lateral along the left-right axis
    assert (a[0].std(1).max() < 1e-6) and (a[1].std(0).max() < 1e-6)
    # orientation: AP image column 0 (patient's right) lands at the right (high x), row 0 at the top (high z)
    z = (img[0] - img[0].mean()) / img[0].std()
    torch.testing.assert_close(a[0, -1, 0, -1], z[0, 0], atol=1e-4, rtol=0)
    # lateral image column 0 (anterior) lands at high y, row 0 at high z
    zl = (img[1] - img[1].mean()) / img[1].std()
    torch.testing.assert_close(a[1, 0, -1, -1], zl[0, 0], atol=1e-4, rtol=0)


def test_zscore_and_inference_without_ct():
    raw = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(0)) * 5 + 3
    z = zscore_images(raw)
    torch.testing.assert_close(z.mean((1, 2)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std((1, 2)), torch.ones(2), atol=1e-5, rtol=0)
    # real radiographs: angles from the loader's meta, default geometry, grid centred on the isocentre
    img = MetaTensor(raw, meta={"angles": np.array([[0.0, 0.0], [90.0, 0.0]])})
    vol = DimensionExpansiond(keys="x", output_keys="image", spatial_size=64, spacing=1.0)({"x": img})["image"]
    assert vol.shape == (2, 64, 64, 64)
    np.testing.assert_allclose(vol.affine[:3, 3].numpy(), [-31.5] * 3)
    plain = DimensionExpansion("replicate", 64, 1.0, zscore=False)(z, [0, 90])
    torch.testing.assert_close(vol.as_tensor(), plain.as_tensor())


def test_refuses_bad_views_and_shapes():
    img = torch.rand(2, 32, 32)
    with pytest.raises(ValueError, match="backproject"):
        DimensionExpansion("replicate", 32)(img, [[30, 0], [90, 0]])
    with pytest.raises(ValueError, match="backproject"):
        DimensionExpansion("replicate", 32)(img, [[0, 10], [90, 0]])
    DimensionExpansion("backproject", 32)(img, [[30, 0], [90, 10]])  # any angle
    with pytest.raises(ValueError, match="detector"):
        DimensionExpansion("backproject", 32, geometry=ConeBeamGeometry(detector_shape=(16, 16)))(img, [0, 90])
    with pytest.raises(ValueError, match=r"\(V, H, W\)"):
        DimensionExpansion()(torch.rand(32, 32))
    with pytest.raises(ValueError, match="mode"):
        DimensionExpansion("stretch")
    with pytest.raises(ValueError, match="-360, 360"):
        DimensionExpansion("backproject", 32)(img, [[0, 0], [1000, 0]])
