# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""MONAI transforms of the bundle (array and dictionary versions), importable from configs as
``scripts.transforms.<Name>``. Reading X-ray files and writing outputs (volumes, meshes, previews) live in
:mod:`scripts.io`. The conversion to HU with the statistics stored in the model is
``scripts.transforms.model.ModelZScoreToHUd`` (:mod:`scripts.transforms.model`, which imports the networks)."""

from scripts.transforms.drr import DRR, DRRd, SeededDRRd, SpineDRRd, geometry_to_tensors, item_seed, random_rotation
from scripts.transforms.edges import EdgeMap, EdgeMapd, boundary_map
from scripts.transforms.expansion import DimensionExpansion, DimensionExpansiond, check_expansion_angles, zscore_images
from scripts.transforms.fourier import FourierRealImag, FourierRealImagd, real_imag_spectrum
from scripts.transforms.intensity import ZScoreToHU, ZScoreToHUd, load_intensity_stats
from scripts.transforms.pose import FixedGridd, RandPosed, RandPoseRotated, RandViewPairScaled
from scripts.transforms.projection import (
    MaximumIntensityProjection,
    MaximumIntensityProjectiond,
    maximum_intensity_projections,
)
from scripts.transforms.realism import (
    RandClutterBlendd,
    RandClutterTransplantd,
    RandScatterd,
    RandViewRotated,
    RandWindowShiftd,
    SeededRandomd,
)
