# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""MONAI Label adapter of the bundle: one datastore X-ray in, the reconstructed vertebra (NIfTI, mesh) out.

- :func:`resolve_pair` maps a datastore image to its AP/lateral pair (sidecar JSON or naming convention);
- :func:`run_inference` runs the bundle's own ``configs/inference.json`` on the pair through
  :class:`monai.bundle.ConfigWorkflow`, every output in a work folder outside the bundle;
- :func:`infer_request` is one MONAI Label request (image -> pair -> run -> the file asked for + a report);
- :func:`spine_request` is one request of the ``spine`` task: two full radiographs -> every vertebra found and
  reconstructed (:func:`scripts.spine.radiographs`) -> the label map (or HU volume, mesh) + the spine report;
- :func:`write_app_dir` writes the app folder that ``monailabel start_server --app`` loads.

Nothing imported here needs MONAI Label. The MONAI Label classes live in :mod:`scripts.monailabel.task`
(``EARInferTask``, ``SpineInferTask``) and :mod:`scripts.monailabel.app` (``EARApp``), which import ``monailabel``
and are imported only by the server. ``python -m scripts.tools.monailabel_check`` makes a separate environment with
MONAI Label, starts a real server and checks a REST request (docs/monailabel.md).
"""

from scripts.monailabel.core import (
    BUNDLE_ROOT,
    DEFAULT_CONFIGS,
    InferenceResult,
    check_outside_bundle,
    config_files,
    run_inference,
    run_spine,
    volume_summary,
)
from scripts.monailabel.pairs import IMAGE_EXTENSIONS, PairError, XRayPair, image_stem, resolve_pair
from scripts.monailabel.service import RESULTS, SPINE_RESULTS, infer_request, spine_request, write_app_dir

__all__ = [
    "BUNDLE_ROOT",
    "DEFAULT_CONFIGS",
    "IMAGE_EXTENSIONS",
    "RESULTS",
    "SPINE_RESULTS",
    "InferenceResult",
    "PairError",
    "XRayPair",
    "check_outside_bundle",
    "config_files",
    "image_stem",
    "infer_request",
    "resolve_pair",
    "run_inference",
    "run_spine",
    "spine_request",
    "volume_summary",
    "write_app_dir",
]
