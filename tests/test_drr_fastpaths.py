# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The projector's fast paths (cached sampling plans, strided slice stacks, batched physics) against the plain
definitions they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scripts.drr.geometry import ConeBeamGeometry, grid_affine
from scripts.drr.physics import (
    HU_AIR_MAX,
    HU_SOFT_MAX,
    expected_photons,
    hu_to_density,
    mass_attenuation,
    material_densities,
    spectrum,
)
from scripts.drr.projector import DRRProjector, _c_order, line_integrals

N = 24
AFFINE = grid_affine((N, N, N), 2.0)
GEO = ConeBeamGeometry(detector_shape=(20, 18), pixel_spacing=(3.0, 3.2))
ANGLES = [[0, 0], [90, 0], [30, 10], [-75, -25], [180, 80]]  # slice axes y, x, y, x and z


def phantom(seed: int = 0) -> torch.Tensor:
    """HU values across every material boundary, including the exact thresholds."""
    gen = torch.Generator().manual_seed(seed)
    hu = torch.empty(1, 1, N, N, N).uniform_(-1100.0, 1600.0, generator=gen)
    hu.view(-1)[:6] = torch.tensor([HU_AIR_MAX, HU_AIR_MAX + 1, 0.0, HU_SOFT_MAX, HU_SOFT_MAX + 1, -2048.0])
    return hu


def test_material_split_matches_the_definition():
    hu = phantom()[0, 0]
    rho = hu_to_density(hu)
    soft = (hu > HU_AIR_MAX) & (hu <= HU_SOFT_MAX)
    expected = torch.stack([rho * (hu <= HU_AIR_MAX), rho * soft, rho * (hu > HU_SOFT_MAX)])
    split = material_densities(hu, channel_dim=0)
    torch.testing.assert_close(split, expected, rtol=0, atol=1e-6)
    # exactly one material per voxel, and densities are never negative
    assert ((split > 0).sum(0) <= 1).all() and (split >= 0).all()
    assert split[:, 0, 0, 5].sum() == 0  # -2048 HU has no density


def test_fortran_ordered_volume_gives_the_same_images():
    hu = phantom()
    fortran = hu.permute(0, 1, 4, 3, 2).contiguous().permute(0, 1, 4, 3, 2)  # as NIfTI arrays arrive
    assert not fortran.is_contiguous()
    assert torch.equal(_c_order(fortran), hu) and _c_order(fortran).is_contiguous()
    proj = DRRProjector(GEO, physics="poly", photon_count=None)
    torch.testing.assert_close(proj(fortran, AFFINE, ANGLES), proj(hu, AFFINE, ANGLES), rtol=0, atol=1e-6)


def test_channels_are_integrated_independently():
    """A multi-channel volume (channels share the sampling grid) equals each channel projected alone."""
    rho = material_densities(phantom()[:, 0], channel_dim=1)
    both = line_integrals(rho, AFFINE, GEO, ANGLES)
    for c in range(3):
        alone = line_integrals(rho[:, c : c + 1].contiguous(), AFFINE, GEO, ANGLES)
        torch.testing.assert_close(both[:, :, c : c + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("samples_per_voxel", [1, 2])
def test_batch_with_different_grids_equals_single_projections(samples_per_voxel):
    """Volumes with different affines (different sampling plans) and equal affines (one shared plan)."""
    vols = torch.cat([phantom(0), phantom(1), phantom(2)])
    shifted = AFFINE.clone()
    shifted[:3, 3] += torch.tensor([7.0, -3.0, 5.0], dtype=torch.float64)
    affines = torch.stack([AFFINE, shifted, AFFINE])
    proj = DRRProjector(GEO, physics="mono", samples_per_voxel=samples_per_voxel)
    out = proj(vols, affines, ANGLES)
    for i in range(3):
        torch.testing.assert_close(out[i], proj(vols[i : i + 1], affines[i], ANGLES)[0], rtol=1e-5, atol=1e-5)
    # the default isocentre is the volume centre: a translated grid gives the same images
    torch.testing.assert_close(proj(vols[:1], shifted, ANGLES), proj(vols[:1], AFFINE, ANGLES), rtol=1e-5, atol=1e-5)


def test_repeated_calls_reuse_the_plan_and_agree():
    proj = DRRProjector(GEO, physics="poly", photon_count=None)
    hu = phantom()
    first = proj(hu, AFFINE, ANGLES)
    again = proj(hu, AFFINE, ANGLES)
    assert torch.equal(first, again)
    other = proj(hu, AFFINE, ANGLES[:2])  # another view list: its own plan
    torch.testing.assert_close(other, first[:, :2], rtol=0, atol=1e-6)


def test_expected_photons_any_material_axis():
    """Counts do not depend on where the material axis is, and follow Beer-Lambert per bin."""
    gen = torch.Generator().manual_seed(0)
    lint = torch.rand(2, 3, 4, 5, generator=gen)  # g/cm^2, materials on axis 1
    counts, energies = expected_photons(lint, "90kV", 1e6, channel_dim=1)
    last, _ = expected_photons(lint.movedim(1, -1).contiguous(), "90kV", 1e6, channel_dim=-1)
    assert counts.shape == (2, 4, 5, energies.numel())
    torch.testing.assert_close(counts, last)
    scaled, _ = expected_photons(lint * 10.0, "90kV", 1e6, channel_dim=1, length_scale=0.1)
    torch.testing.assert_close(scaled, counts, rtol=1e-5, atol=1e-3)
    e, p = spectrum("90kV")
    mu = mass_attenuation(e)  # (3, E)
    ref = 1e6 * p * np.exp(-(lint[0, :, 1, 2].double().numpy()[:, None] * mu).sum(0))
    np.testing.assert_allclose(counts[0, 1, 2].double().numpy(), ref, rtol=1e-4)
