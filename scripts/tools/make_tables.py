# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Regenerate the X-ray spectrum and mass-attenuation tables in ``scripts/drr/data/``.

The projector reads two small JSON tables so that it needs neither spekpy nor xraydb at run time:

- ``spectra.json``: tungsten-anode X-ray spectra from spekpy (anode angle 12 degrees, 1 keV bins) for
  60 kV with 3.5 mm Al, 90 kV with 4.0 mm Al and 120 kV with 4.3 mm Al filtration (the three settings
  DeepDRR offers), as photon fluence per bin normalised to sum 1.
- ``attenuation.json``: mass attenuation coefficients mu/rho (cm^2/g, total including coherent
  scattering) from xraydb's Elam tables, for dry air and the ICRU-44 soft tissue and cortical bone
  compositions (elemental mass fractions as tabulated by NIST, Hubbell and Seltzer, Table 2), on a
  0.5 keV grid from 1 to 150 keV.

Usage (needs ``requirements-dev.txt``)::

    python -m scripts.tools.make_tables            # rewrite the tables in scripts/drr/data/
    python -m scripts.tools.make_tables --out DIR  # write them elsewhere
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scripts.utils import atomic_path

__all__ = ["COMPOSITIONS", "DENSITIES", "SPECTRUM_SETTINGS", "make_spectra", "make_attenuation", "main"]

DATA_DIR = Path(__file__).resolve().parents[1] / "drr" / "data"

# Elemental mass fractions (NIST X-ray mass attenuation coefficients, Table 2; ICRU Report 44).
COMPOSITIONS: dict[str, dict[str, float]] = {
    "air": {"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827},
    "soft_tissue": {
        "H": 0.102,
        "C": 0.143,
        "N": 0.034,
        "O": 0.708,
        "Na": 0.002,
        "P": 0.003,
        "S": 0.003,
        "Cl": 0.002,
        "K": 0.003,
    },
    "bone": {
        "H": 0.034,
        "C": 0.155,
        "N": 0.042,
        "O": 0.435,
        "Na": 0.001,
        "Mg": 0.002,
        "P": 0.103,
        "S": 0.003,
        "Ca": 0.225,
    },
}
# Nominal densities (g/cm^3) of the same materials, for reference only (the projector takes density from HU).
DENSITIES = {"air": 1.205e-3, "soft_tissue": 1.06, "bone": 1.92}

# name -> (peak kilovoltage, aluminium filtration in mm)
SPECTRUM_SETTINGS: dict[str, tuple[float, float]] = {"60kV": (60.0, 3.5), "90kV": (90.0, 4.0), "120kV": (120.0, 4.3)}
ANODE_ANGLE_DEG = 12.0


def make_spectra() -> dict:
    """Spectra from spekpy: {name: {kvp, filter_mm_al, anode_angle_deg, energies_keV, fluence}}."""
    import spekpy

    out = {}
    for name, (kvp, al_mm) in SPECTRUM_SETTINGS.items():
        spek = spekpy.Spek(kvp=kvp, th=ANODE_ANGLE_DEG, dk=1.0)
        spek.filter("Al", al_mm)
        energies, fluence = spek.get_spectrum()
        fluence = np.asarray(fluence, dtype=np.float64)
        keep = fluence > fluence.max() * 1e-6  # drop empty low-energy bins
        energies, fluence = np.asarray(energies)[keep], fluence[keep]
        fluence = fluence / fluence.sum()
        out[name] = {
            "kvp": kvp,
            "filter_mm_al": al_mm,
            "anode_angle_deg": ANODE_ANGLE_DEG,
            "energies_keV": [round(float(e), 4) for e in energies],
            "fluence": [float(f"{f:.6g}") for f in fluence],
            "mean_energy_keV": round(float((energies * fluence).sum()), 4),
        }
    return out


def make_attenuation() -> dict:
    """mu/rho tables (cm^2/g) from xraydb on a 0.5 keV grid, 1 to 150 keV."""
    import xraydb

    energies = np.arange(1.0, 150.0 + 1e-9, 0.5)
    out: dict = {"energies_keV": [float(e) for e in energies], "source": f"xraydb {xraydb.__version__} (Elam)"}
    for name, fractions in COMPOSITIONS.items():
        mu = sum(w * np.asarray(xraydb.mu_elam(el, energies * 1000.0)) for el, w in fractions.items())
        out[name] = [float(f"{m:.6g}") for m in mu]
    out["compositions"] = COMPOSITIONS
    return out


def main(out: str | None = None) -> None:
    """Write ``spectra.json`` and ``attenuation.json`` to ``out`` (default: ``scripts/drr/data``)."""
    folder = Path(out) if out else DATA_DIR
    for fname, table in (("spectra.json", make_spectra()), ("attenuation.json", make_attenuation())):
        with atomic_path(folder / fname) as tmp:
            tmp.write_text(json.dumps(table, indent=1) + "\n")
        print(f"wrote {folder / fname}")


if __name__ == "__main__":
    import sys

    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)
    # a misspelt option stops before the work
    check_cli_flags(main, sys.argv[1:], "python -m scripts.tools.make_tables")

    fire.Fire(main)
