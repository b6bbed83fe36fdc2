# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Files in and out of the pipeline: reading X-ray images (:mod:`scripts.io.xray`) and full radiographs with their
geometry (:mod:`scripts.io.radiograph`), and writing a run's outputs
(:mod:`scripts.io.outputs`: case folders published atomically; :mod:`scripts.io.mesh`: surface meshes;
:mod:`scripts.io.preview`: PNG previews). The load and save steps are MONAI ``MapTransform``s, importable from
configs as ``scripts.io.<Name>``; trimesh, scikit-image and matplotlib are imported only when a mesh or preview
is written."""

from scripts.io.mesh import SaveMeshd, mesh_report, volume_to_mesh, write_mesh
from scripts.io.outputs import CaseNamed, PublishCaseOutputsd, run_staging_dir
from scripts.io.preview import SavePreviewd, orthogonal_views, preview_figure
from scripts.io.radiograph import LoadRadiographsd, read_radiograph, write_radiograph_dicom
from scripts.io.xray import LoadXRayPair, LoadXRayPaird, XRayInputError, read_xray
