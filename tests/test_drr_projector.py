# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Projector and physics against analytic answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scripts.drr.geometry import ConeBeamGeometry, grid_affine
from scripts.drr.physics import (
    energy_integrating_signal,
    expected_photons,
    hu_to_density,
    linear_attenuation,
    mass_attenuation,
    spectrum,
)
from scripts.drr.projector import DRRProjector, line_integrals

N = 64
SPACING = 1.0
AFFINE = grid_affine((N, N, N), SPACING)  # RAS, centred on the world origin


def coords(n: int = N, spacing: float = SPACING):
    idx = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing
    return torch.meshgrid(idx, idx, idx, indexing="ij")


def sphere(radius: float, centre=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """Anti-aliased homogeneous sphere of value 1 (partial-volume edge one voxel wide)."""
    x, y, z = coords()
    r = torch.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    return (radius - r + 0.5).clamp(0, 1).float()[None, None]


def cylinder(radius: float) -> torch.Tensor:
    """Homogeneous cylinder along the superior (z) axis through the centre, value 1."""
    x, y, _ = coords()
    r = torch.sqrt(x**2 + y**2)
    return (radius - r + 0.5).clamp(0, 1).float()[None, None]


def chord(source, pixels, centre, radius, axis=None):
    """Analytic chord lengths of the rays source -> pixels through a sphere (or an infinite cylinder)."""
    d = pixels - source
    d = d / torch.linalg.norm(d, dim=-1, keepdim=True)
    w = centre - source
    if axis is not None:  # project onto the plane perpendicular to the cylinder axis
        a = torch.as_tensor(axis, dtype=torch.float64)
        d_perp = d - (d @ a)[..., None] * a
        w_perp = w - (w @ a) * a
        nd = torch.linalg.norm(d_perp, dim=-1)
        cross = torch.linalg.norm(torch.cross(w_perp.expand_as(d_perp), d_perp / nd[..., None], dim=-1), dim=-1)
        half = torch.sqrt((radius**2 - cross**2).clamp(min=0))
        return 2 * half / nd, cross
    dist = torch.linalg.norm(torch.cross(w.expand_as(d), d, dim=-1), dim=-1)
    return 2 * torch.sqrt((radius**2 - dist**2).clamp(min=0)), dist


GEOMETRIES = {
    "cone": ConeBeamGeometry(detector_shape=(33, 33), pixel_spacing=(3.0, 3.0)),
    # near-parallel: source 1e5 mm away, same magnification
    "parallel": ConeBeamGeometry(sdd=1e5 * 1020 / 700, sod=1e5, detector_shape=(33, 33), pixel_spacing=(3.0, 3.0)),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
@pytest.mark.parametrize("angles", [[0, 0], [90, 0], [35, 15]])
def test_sphere_chord_lengths(name, angles):
    geo = GEOMETRIES[name]
    radius = 22.0
    centre = torch.tensor([3.0, -2.0, 4.0], dtype=torch.float64)
    out = line_integrals(sphere(radius, centre.tolist()), AFFINE, geo, [angles])[0, 0, 0].double()
    source, pix = geo.pixel_positions([angles])
    expected, dist = chord(source[0], pix[0], centre, radius)
    h, w = geo.detector_shape
    assert abs(out[h // 2, w // 2] - expected[h // 2, w // 2]) / expected[h // 2, w // 2] < 0.01
    inner = dist < 0.85 * radius
    assert inner.sum() > 20
    np.testing.assert_allclose(out[inner].numpy(), expected[inner].numpy(), rtol=0.02, atol=0.3)
    assert out[dist > radius + 2.5].abs().max() < 1e-4  # beyond the interpolation footprint


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_cylinder_chord_lengths_times_mu(name):
    """Monochromatic DRR of a water-like cylinder = chord length x mu."""
    geo = GEOMETRIES[name]
    radius = 20.0
    hu = torch.where(cylinder(radius) > 0.5, 0.0, -1024.0)  # soft tissue at 0 HU
    proj = DRRProjector(geo, physics="mono", energy_kev=60.0)
    img = proj(hu, AFFINE, [0])[0, 0].double()
    mu = float(hu_to_density(torch.tensor(0.0))) * mass_attenuation(60.0)[1, 0] * 0.1  # 1/mm
    source, pix = geo.pixel_positions([[0, 0]])
    expected, dist = chord(source[0], pix[0], torch.zeros(3, dtype=torch.float64), radius, axis=(0, 0, 1))
    # cylinder voxels were thresholded: compare away from the edge and the volume's top/bottom faces
    rows = slice(8, 25)
    inner = (dist < 0.8 * radius)[rows]
    np.testing.assert_allclose(img[rows][inner].numpy(), (expected[rows][inner] * mu).numpy(), rtol=0.03)
    # every row of the AP image of a vertical cylinder carries the same profile up to the cone-beam obliquity
    assert (img[rows].std(0) / img[rows].mean(0).clamp(min=1e-6))[inner[0]].max() < 0.01


def asymmetric_phantom() -> torch.Tensor:
    hu = torch.full((1, 1, N, N, N), -1024.0)
    hu[0, 0, 20:30, 25:45, 10:50] = 1200.0  # bone block on the patient's left, posterior-central
    hu[0, 0, 38:50, 40:52, 30:60] = 40.0  # soft block on the right, anterior, superior
    hu[0, 0, 30:34, 10:20, 5:12] = 600.0  # small bone block, posterior inferior
    return hu


def test_mirror_symmetry():
    geo = ConeBeamGeometry(detector_shape=(48, 48), pixel_spacing=(2.0, 2.0))
    proj = DRRProjector(geo, physics="poly", photon_count=None)
    hu = asymmetric_phantom()
    img = proj(hu, AFFINE, [0, 90])[0]
    lr = proj(hu.flip(2), AFFINE, [0])[0, 0]  # mirrored left-right: AP image mirrored horizontally
    si = proj(hu.flip(4), AFFINE, [0, 90])[0]  # mirrored superior-inferior: both images flip rows
    torch.testing.assert_close(lr, img[0].flip(-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(si, img.flip(-2), atol=1e-4, rtol=1e-4)
    assert (img[0] - img[0].flip(-1)).abs().max() > 0.1  # the phantom itself is not symmetric


def test_rotating_the_phantom_90_degrees_swaps_the_views():
    geo = ConeBeamGeometry(detector_shape=(48, 48), pixel_spacing=(2.0, 2.0))
    proj = DRRProjector(geo, physics="poly", photon_count=None)
    hu = asymmetric_phantom()
    # rotate the object by +90 degrees about the superior axis: f'(x, y) = f(y, -x), i.e. f'[i, j] = f[j, n-1-i]
    rot = hu.flip(3).transpose(2, 3)
    a = proj(hu, AFFINE, [[0, 0], [-90, 0]])[0]
    b = proj(rot, AFFINE, [[90, 0], [0, 0]])[0]
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    # the same with the rotation given to the projector instead of resampling the volume
    rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    c = proj(hu, AFFINE, [[90, 0], [0, 0]], object_rotation=rz)[0]
    torch.testing.assert_close(c, a, atol=1e-4, rtol=1e-4)


def test_image_orientation_conventions():
    """Row 0 is superior; AP seen from the front (patient's right on the image left); lateral: anterior left."""
    geo = ConeBeamGeometry(detector_shape=(64, 64), pixel_spacing=(1.5, 1.5))
    hu = torch.full((1, 1, N, N, N), -1024.0)
    bead = (50, 45, 52)  # right (x > 0), anterior (y > 0), superior (z > 0)
    hu[0, 0, bead[0] - 1 : bead[0] + 2, bead[1] - 1 : bead[1] + 2, bead[2] - 1 : bead[2] + 2] = 2000.0
    img = DRRProjector(geo, physics="mono")(hu, AFFINE, [0, 90])[0]
    (r_ap, c_ap), (r_lat, c_lat) = [divmod(int(i.argmax()), 64) for i in img]
    assert r_ap < 32 and r_lat < 32  # superior is up in both
    assert c_ap < 32  # AP: the patient's right is on the image's left
    assert c_lat < 32  # lateral (source on the patient's left): anterior is on the image's left
    # the projection matrices agree with the rendered images
    world = (AFFINE @ torch.tensor([*bead, 1.0], dtype=torch.float64))[:3]
    uv = geo.project_points(world[None], [[0, 0], [90, 0]])[:, 0]
    assert abs(uv[0, 0] - c_ap) <= 1 and abs(uv[0, 1] - r_ap) <= 1
    assert abs(uv[1, 0] - c_lat) <= 1 and abs(uv[1, 1] - r_lat) <= 1
    # source positions: AP source anterior, lateral source on the patient's left
    _, src = geo.frames([[0, 0], [90, 0]])
    torch.testing.assert_close(src, torch.tensor([[0.0, 700.0, 0.0], [-700.0, 0.0, 0.0]], dtype=torch.float64))


def test_poisson_noise_mean_and_variance():
    energies = torch.tensor([30.0, 50.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for lam in (40.0, 5e5):  # exact Poisson sampling and the normal approximation at high counts
        counts = torch.tensor([lam * 0.6, lam * 0.4], dtype=torch.float64).expand(200_000, 2)
        s = energy_integrating_signal(counts, energies, noise=True, generator=gen)
        mean = (counts[0] * energies).sum()
        var = (counts[0] * energies**2).sum()
        assert abs(s.mean() - mean) / mean < 3e-3
        assert abs(s.var() - var) / var < 0.02
    # a flat field at 1e6 photons: the -log image has zero mean and the predicted noise
    geo = ConeBeamGeometry(detector_shape=(64, 64), pixel_spacing=(1.0, 1.0))
    flat = torch.full((1, 1, 8, 8, 8), -1024.0)
    img = DRRProjector(geo, photon_count=1e6)(flat, AFFINE, [0], generator=torch.Generator().manual_seed(1))
    e, p = spectrum("60kV")
    rel = math.sqrt((p * e**2).sum() * 1e6) / ((p * e).sum() * 1e6)
    assert abs(float(img.mean())) < 3 * rel / 64
    assert abs(float(img.std()) / rel - 1) < 0.05
    # seeded: the same generator seed gives the same noise
    again = DRRProjector(geo, photon_count=1e6)(flat, AFFINE, [0], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(img, again)


def test_beam_hardening_and_monochromatic_limit():
    """Effective mu = DRR / thickness falls with bone thickness (poly) and is constant (mono)."""
    thickness = torch.tensor([2.0, 10.0, 30.0, 60.0]) * 0.1  # cm of bone
    lint = torch.zeros(4, 3)
    lint[:, 2] = thickness * 1.92  # g/cm^2
    counts, e = expected_photons(lint, "60kV", 1.0, channel_dim=-1)
    _, p = spectrum("60kV")
    s0 = float((torch.as_tensor(p) * e).sum())
    poly = -torch.log((counts @ e) / s0)
    mu_eff = poly / thickness
    assert (mu_eff[1:] < mu_eff[:-1]).all() and mu_eff[0] / mu_eff[-1] > 1.3
    # through the projector: a bone wedge, thickness growing along the image rows
    hu = torch.full((1, 1, N, N, N), -1024.0)
    for k in range(N):
        hu[0, 0, 20:44, 32 - k // 4 : 32 + k // 4 + 1, k] = 1500.0
    geo = ConeBeamGeometry(sdd=1e5 * 1020 / 700, sod=1e5, detector_shape=(64, 64), pixel_spacing=(1.457, 1.457))
    t = (2 * (torch.arange(N) // 4) + 1).flip(0).float()  # thickness per row (row 0 = superior = z = N-1)
    poly_img = DRRProjector(geo, photon_count=None)(hu, AFFINE, [0])[0, 0, 2:-2, 32]
    mono_img = DRRProjector(geo, physics="mono")(hu, AFFINE, [0])[0, 0, 2:-2, 32]
    t = t[2:-2]
    eff_poly, eff_mono = poly_img / t, mono_img / t
    assert eff_poly[0] / eff_poly[-1] < 0.8 and eff_mono.std() / eff_mono.mean() < 0.01


def test_attenuation_tables_match_nist():
    """Spot values of the NIST (Hubbell-Seltzer) tables: air and ICRU-44 tissues at 30 and 60 keV."""
    mu = mass_attenuation(np.array([30.0, 60.0]))
    np.testing.assert_allclose(mu[0], [0.3538, 0.1875], rtol=0.01)  # air, dry
    np.testing.assert_allclose(mu[2], [1.331, 0.3148], rtol=0.01)  # bone, cortical (ICRU-44)
    for name in ("60kV", "90kV", "120kV"):
        e, p = spectrum(name)
        assert abs(p.sum() - 1) < 1e-9 and e.max() < float(name[:-2])
    assert linear_attenuation(torch.tensor([-1024.0]), 60.0).item() == 0.0


def test_batched_over_volumes_and_views():
    geo = ConeBeamGeometry(detector_shape=(24, 20), pixel_spacing=(3.0, 3.0))
    hu = asymmetric_phantom()
    batch = torch.cat([hu, hu.flip(2)])
    proj = DRRProjector(geo, physics="mono")
    out = proj(batch, AFFINE, [[0, 0], [90, 0], [45, 10]])
    assert out.shape == (2, 3, 24, 20)
    torch.testing.assert_close(out[1:], proj(hu.flip(2), AFFINE, [[0, 0], [90, 0], [45, 10]]))
    # a denser sampling changes little
    dense = DRRProjector(geo, physics="mono", samples_per_voxel=3)(hu, AFFINE, [[0, 0], [45, 10]])
    torch.testing.assert_close(dense[0], out[0, [0, 2]], atol=0.05, rtol=0.02)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(angles=[[0, 0], [400, 0]]), "-360, 360"),
        (dict(angles=[[float("nan"), 0]]), "NaN"),
        (dict(volume=torch.zeros(1, 8, 8)), "shape"),
        (dict(affine=None), "no affine"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = dict(volume=torch.zeros(1, 8, 8, 8), affine=torch.eye(4), angles=[0, 90])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DRRProjector(physics="mono")(args["volume"], args["affine"], args["angles"])


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown spectrum"):
        DRRProjector(spectrum="70kV")
    with pytest.raises(ValueError, match="at least 1 x 1"):
        ConeBeamGeometry(detector_shape=(0, 128))
    with pytest.raises(ValueError, match=">= 1"):
        ConeBeamGeometry.for_crop(128, 1.0, detector_size=0)
    with pytest.raises(ValueError, match="physics"):
        DRRProjector(physics="laser")
    with pytest.raises(ValueError, match="sod"):
        ConeBeamGeometry(sdd=500, sod=700)
