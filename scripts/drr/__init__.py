# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""X-ray simulation: cone-beam geometry, DeepDRR-style physics and a PyTorch DRR projector.

See ``geometry.py`` for the angle and image orientation conventions.
"""

from __future__ import annotations

from .geometry import ConeBeamGeometry, as_angles, crop_centre, grid_affine, view_rotation
from .physics import (
    MATERIALS,
    available_spectra,
    hu_to_density,
    linear_attenuation,
    mass_attenuation,
    material_densities,
    polychromatic_image,
    spectrum,
)
from .projector import DRRProjector, default_geometry, line_integrals

__all__ = [
    "ConeBeamGeometry",
    "DRRProjector",
    "MATERIALS",
    "as_angles",
    "available_spectra",
    "crop_centre",
    "default_geometry",
    "grid_affine",
    "hu_to_density",
    "line_integrals",
    "linear_attenuation",
    "mass_attenuation",
    "material_densities",
    "polychromatic_image",
    "spectrum",
    "view_rotation",
]
