# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""X-ray physics of the DRR projector, after DeepDRR (Unberath et al. 2018).

- HU -> mass density (g/cm^3): ``max(min(0.001029*HU + 1.030, 0.0005886*HU + 1.03), 0)``.
- Materials by HU: air (HU <= -800), soft tissue (-800 < HU <= 350), bone (HU > 350).
- Per-material density line integrals ``L_m`` (g/cm^2) come from the projector; the detected signal of an
  ideal energy-integrating detector is ``S = sum_E E * N(E)``, ``N(E) = N0 * p(E) * exp(-sum_m mu_m(E) L_m)``
  with ``p(E)`` the normalised spectrum (photon fluence per 1 keV bin) and ``mu_m`` the mass attenuation
  coefficients; the image is ``-log(S / S0)`` with ``S0`` the expected signal without object.
- Noise: the photon counts of every energy bin are Poisson distributed, so ``S`` is compound Poisson with
  mean ``sum E lambda_E`` and variance ``sum E^2 lambda_E``. Where a pixel expects fewer than
  ``gaussian_above`` photons the bins are sampled exactly with ``torch.poisson``; above it ``S`` is drawn
  from the normal distribution with the same mean and variance (the central limit theorem makes the two
  indistinguishable at such counts, and it is one random number per pixel instead of one per bin).

Spectra and coefficients are read from the JSON tables in ``scripts/drr/data`` that
``python -m scripts.tools.make_tables`` regenerates with spekpy and xraydb.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "MATERIALS",
    "HU_AIR_MAX",
    "HU_SOFT_MAX",
    "SPECTRUM_ALIASES",
    "hu_to_density",
    "material_densities",
    "spectrum",
    "mass_attenuation",
    "linear_attenuation",
    "available_spectra",
    "expected_photons",
    "energy_integrating_signal",
    "polychromatic_image",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
MATERIALS = ("air", "soft_tissue", "bone")
HU_AIR_MAX = -800.0
HU_SOFT_MAX = 350.0
# DeepDRR's spectrum names map to the same settings.
SPECTRUM_ALIASES = {"60KV_AL35": "60kV", "90KV_AL40": "90kV", "120KV_AL43": "120kV"}


@cache
def _table(name: str) -> dict:
    path = DATA_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; regenerate it with `python -m scripts.tools.make_tables`.")
    return json.loads(path.read_text())


def available_spectra() -> list[str]:
    """Names of the tabulated spectra."""
    return sorted(_table("spectra.json"))


def _spectrum_name(name: str) -> str:
    key = SPECTRUM_ALIASES.get(str(name), str(name))
    table = _table("spectra.json")
    if key not in table:
        raise ValueError(
            f"unknown spectrum {name!r}: choose one of {available_spectra()} (or DeepDRR's names "
            f"{sorted(SPECTRUM_ALIASES)}); add new ones to SPECTRUM_SETTINGS in scripts/tools/make_tables.py."
        )
    return key


def spectrum(name: str = "60kV") -> tuple[np.ndarray, np.ndarray]:
    """The energies (keV, bin centres) and normalised photon fluence per bin of a tabulated spectrum.

    Args:
        name: "60kV" (3.5 mm Al), "90kV" (4.0 mm Al) or "120kV" (4.3 mm Al); DeepDRR's names also work.
    """
    entry = _table("spectra.json")[_spectrum_name(name)]
    energies = np.asarray(entry["energies_keV"], dtype=np.float64)
    fluence = np.asarray(entry["fluence"], dtype=np.float64)
    return energies, fluence / fluence.sum()


@cache
def _spectrum_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    energies, fluence = spectrum(name)
    return energies, fluence


def mass_attenuation(energies_kev: np.ndarray | float) -> np.ndarray:
    """mu/rho (cm^2/g) of air, soft tissue and bone at the given energies (log-log interpolation).

    Returns:
        array of shape (3, n_energies), rows in the order of ``MATERIALS``.
    """
    table = _table("attenuation.json")
    grid = np.log(np.asarray(table["energies_keV"]))
    e = np.atleast_1d(np.asarray(energies_kev, dtype=np.float64))
    if np.any(e < np.exp(grid[0])) or np.any(e > np.exp(grid[-1])):
        raise ValueError(f"energies must lie in [{np.exp(grid[0]):g}, {np.exp(grid[-1]):g}] keV, got {e}.")
    return np.stack([np.exp(np.interp(np.log(e), grid, np.log(np.asarray(table[m])))) for m in MATERIALS])


def hu_to_density(hu: torch.Tensor) -> torch.Tensor:
    """Mass density in g/cm^3 from Hounsfield units (DeepDRR's piecewise-linear conversion)."""
    return torch.clamp(torch.minimum(0.001029 * hu + 1.030, 0.0005886 * hu + 1.03), min=0.0)


def _density(hu: torch.Tensor, out: torch.Tensor | None = None, tmp: torch.Tensor | None = None) -> torch.Tensor:
    """``hu_to_density`` in four element-wise passes (``torch.add`` with ``alpha`` fuses scale and offset)."""
    one = torch.tensor(1.03, dtype=hu.dtype, device=hu.device)  # both lines of the conversion meet at 0 HU
    rho = torch.add(one, hu, alpha=0.001029, out=out)
    return torch.minimum(rho, torch.add(one, hu, alpha=0.0005886, out=tmp), out=rho).clamp_(min=0.0)


def material_densities(hu: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Split a HU volume into per-material density volumes (g/cm^3), stacked along ``channel_dim``.

    Args:
        hu: HU values, any shape.
        channel_dim: where the material axis (air, soft tissue, bone) is inserted.
    """
    hu = hu.float().contiguous()
    dim = channel_dim % (hu.ndim + 1)
    out = torch.empty((3, *hu.shape), dtype=hu.dtype, device=hu.device)
    # written in place into the output (element-wise passes over the volume dominate the cost on CPU)
    rho = _density(hu, out=out[1], tmp=out[2])
    zero = torch.zeros((), dtype=hu.dtype, device=hu.device)
    torch.where(hu <= HU_AIR_MAX, rho, zero, out=out[0])
    torch.where(hu > HU_SOFT_MAX, rho, zero, out=out[2])
    rho.sub_(out[0]).sub_(out[2])  # soft tissue: the rest
    return out.movedim(0, dim)


def linear_attenuation(hu: torch.Tensor, energy_kev: float) -> torch.Tensor:
    """Linear attenuation coefficient (1/mm) of a HU volume at one energy."""
    mu = [float(m) * 0.1 for m in mass_attenuation(energy_kev)[:, 0]]  # cm^2/g * g/cm^3 -> 1/cm -> 1/mm
    hu = hu.float().contiguous()
    coef = torch.where(hu > HU_SOFT_MAX, mu[2], mu[1])
    coef.masked_fill_(hu <= HU_AIR_MAX, mu[0])
    return _density(hu).mul_(coef)


def expected_photons(
    line_integrals: torch.Tensor,
    spectrum_name: str = "60kV",
    photon_count: float = 1e6,
    channel_dim: int = -3,
    length_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected photon counts per energy bin behind the object.

    Args:
        line_integrals: per-material density line integrals in g/cm^2 (times ``length_scale``), materials
            along ``channel_dim``.
        spectrum_name: tabulated spectrum.
        photon_count: photons per pixel of the unattenuated beam.
        channel_dim: the material axis of ``line_integrals``.
        length_scale: factor that converts ``line_integrals`` to g/cm^2 (0.1 for g/cm^3 x mm).

    Returns:
        (counts with the material axis replaced by a trailing energy axis, energies in keV as a tensor).
    """
    energies, fluence = _spectrum_arrays(spectrum_name)
    kw = dict(dtype=line_integrals.dtype, device=line_integrals.device)
    mu = torch.as_tensor(mass_attenuation(energies) * -length_scale, **kw)  # (3, E)
    log_w = torch.as_tensor(np.log(fluence * photon_count), **kw)
    cd = channel_dim % line_integrals.ndim
    n_mat = line_integrals.shape[cd]
    rest = (*line_integrals.shape[:cd], *line_integrals.shape[cd + 1 :])
    pre = int(np.prod(line_integrals.shape[:cd], dtype=np.int64))
    # (pre, post, 3) view of the integrals (no copy), then one batched GEMM and one exp:
    # N(E) = N0 p(E) exp(-sum_m mu_m(E) L_m)
    lint = line_integrals.reshape(pre, n_mat, -1).transpose(1, 2)
    counts = torch.baddbmm(log_w, lint, mu.expand(pre, *mu.shape)).exp_()
    return counts.reshape(*rest, -1), torch.as_tensor(energies, **kw)


def energy_integrating_signal(
    counts: torch.Tensor,
    energies: torch.Tensor,
    noise: bool = False,
    generator: torch.Generator | None = None,
    gaussian_above: float = 1e4,
) -> torch.Tensor:
    """Signal of an ideal energy-integrating detector, ``sum_E E * N(E)``, optionally with quantum noise.

    Args:
        counts: expected photon counts, energy bins along the last axis.
        energies: bin energies (keV).
        noise: draw Poisson-distributed counts instead of using their expectation.
        generator: torch random generator (seeded by the caller) for reproducible noise.
        gaussian_above: pixels expecting at least this many photons in total are drawn from the normal
            distribution with the compound-Poisson mean and variance; the others exactly, bin by bin.
    """
    if not noise:
        return counts @ energies
    moments = counts @ torch.stack([energies, energies * energies, torch.ones_like(energies)], -1)
    mean, var, total = moments.unbind(-1)
    z = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    signal = torch.addcmul(mean, var.sqrt_(), z)
    few = total < gaussian_above
    if bool(few.any()):
        exact = torch.poisson(counts[few], generator=generator) @ energies
        signal = signal.masked_scatter(few, exact)
    return signal


def polychromatic_image(
    line_integrals: torch.Tensor,
    spectrum_name: str = "60kV",
    photon_count: float | None = 1e6,
    noise: bool = True,
    generator: torch.Generator | None = None,
    channel_dim: int = -3,
    length_scale: float = 1.0,
) -> torch.Tensor:
    """``-log(S / S0)`` from per-material density line integrals (g/cm^2).

    Args:
        line_integrals: materials (air, soft tissue, bone) along ``channel_dim``.
        spectrum_name: tabulated spectrum.
        photon_count: photons per pixel of the unattenuated beam (only matters for the noise).
        noise: add quantum noise (needs ``photon_count``).
        generator: torch random generator for the noise.
        channel_dim: the material axis.
        length_scale: factor that converts ``line_integrals`` to g/cm^2 (0.1 for g/cm^3 x mm).

    Returns:
        the image with the material axis removed.
    """
    n0 = 1.0 if photon_count is None else float(photon_count)
    counts, energies = expected_photons(line_integrals.float(), spectrum_name, n0, channel_dim, length_scale)
    e, fluence = _spectrum_arrays(spectrum_name)
    s0 = float((fluence * n0 * e).sum())
    noisy = noise and photon_count is not None
    signal = energy_integrating_signal(counts, energies, noisy, generator)
    # with noise, a pixel that received no photon is set to the smallest detectable signal (one photon)
    signal = signal.clamp_(min=float(e.min()) if noisy else s0 * 1e-30)
    return torch.log(signal.mul_(1.0 / s0)).neg_().to(line_integrals.dtype)
