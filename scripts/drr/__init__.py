# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""X-ray simulation: cone-beam geometry, DeepDRR-style physics and a PyTorch DRR projector.

Import from the modules; importing the package loads none of them:

- :mod:`scripts.drr.geometry`: ``ConeBeamGeometry``, view angles and rotations, crop grids (see it for the angle
  and image orientation conventions);
- :mod:`scripts.drr.physics`: materials, attenuation tables, X-ray spectra and the polychromatic image;
- :mod:`scripts.drr.projector`: ``DRRProjector``, the line integrals through a volume;
- :mod:`scripts.drr.deepdrr_backend`: the optional DeepDRR backend of the projector;
- :mod:`scripts.drr.body`: whole-patient scans (storage convention, completion, per-window cut fractions);
- :mod:`scripts.drr.windows`: model windows cut from full radiographs.
"""
