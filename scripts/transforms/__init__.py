# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""MONAI transforms of the bundle (array and dictionary versions), importable from configs as
``scripts.transforms.<Name>``."""

from scripts.transforms.drr import DRR, DRRd, SeededDRRd, geometry_to_tensors, item_seed, random_rotation  # noqa: F401
from scripts.transforms.edges import EdgeMap, EdgeMapd, boundary_map  # noqa: F401
from scripts.transforms.expansion import DimensionExpansion, DimensionExpansiond, zscore_images  # noqa: F401
from scripts.transforms.fourier import FourierRealImag, FourierRealImagd, real_imag_spectrum  # noqa: F401
from scripts.transforms.intensity import (  # noqa: F401
    HUToZScore,
    HUToZScored,
    ModelZScoreToHUd,
    ZScoreToHU,
    ZScoreToHUd,
    load_intensity_stats,
)
from scripts.transforms.mesh import SaveMeshd, mesh_report, volume_to_mesh, write_mesh  # noqa: F401
from scripts.transforms.outputs import CaseNamed, PublishCaseOutputsd  # noqa: F401
from scripts.transforms.pose import FixedGridd, RandPoseRotated  # noqa: F401
from scripts.transforms.preview import SavePreviewd, orthogonal_views, preview_figure  # noqa: F401
from scripts.transforms.projection import (  # noqa: F401
    MaximumIntensityProjection,
    MaximumIntensityProjectiond,
    maximum_intensity_projections,
)
from scripts.transforms.xray_io import (  # noqa: F401
    LoadXRayPair,
    LoadXRayPaird,
    XRayInputError,
    check_xray_cases,
    parse_angles,
    read_xray,
)
