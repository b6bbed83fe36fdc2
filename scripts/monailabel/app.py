# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The MONAI Label app of the bundle: a local datastore of X-ray images and two infer tasks, ``ear`` and ``spine``.

MONAI Label loads it from the ``main.py`` that :func:`scripts.monailabel.write_app_dir` writes::

    python -m scripts.monailabel /tmp/ear-app
    monailabel start_server --app /tmp/ear-app --studies /path/to/xrays --conf configs \
        configs/inference.json,configs/cpu.json

App settings (``--conf KEY VALUE``): ``configs`` (bundle config files of the ``ear`` task, comma-separated, relative to
the bundle; default ``configs/inference.json``), ``spine_configs`` (the ``spine`` task's reconstruction configs; default
the body model's, ``configs/inference.json,configs/cpu.json,configs/body_model.json``), ``work_root`` (parent of the
per-request work folders; default the system's temporary folder), ``keep_outputs`` (``true``: keep each request's
outputs there). Needs ``monailabel`` (see docs/monailabel.md).
"""

from __future__ import annotations

import json
import logging
from typing import Any

try:
    from fastapi import HTTPException
    from monailabel.config import settings
    from monailabel.datastore.local import LocalDatastore
    from monailabel.interfaces.app import MONAILabelApp
    from monailabel.interfaces.datastore import Datastore
    from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
    from monailabel.interfaces.tasks.infer_v2 import InferTask
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"scripts.monailabel.app needs MONAI Label ({e}); make its environment with "
        "`python -m scripts.tools.monailabel_check --setup_only` (see docs/monailabel.md)."
    ) from e

from scripts.monailabel.core import BUNDLE_ROOT, DEFAULT_CONFIGS
from scripts.monailabel.pairs import IMAGE_EXTENSIONS
from scripts.monailabel.task import EARInferTask, SpineInferTask

__all__ = ["EARApp", "MODEL_NAME", "SPINE_TASK"]

#: the infer task's name: ``POST /infer/ear?image=<id>``
MODEL_NAME = "ear"
#: the whole-spine task's name: ``POST /infer/spine?image=<id of one full radiograph>``
SPINE_TASK = "spine"

logger = logging.getLogger(__name__)


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class EARApp(MONAILabelApp):
    """MONAI Label app serving the bundle's reconstruction as the infer task ``ear``.

    Args:
        app_dir: the app folder (outside the bundle; MONAI Label writes into it).
        studies: the datastore folder of X-ray images (PNG, TIFF, DICOM, 2-D NIfTI, ...) and sidecar JSONs.
        conf: the ``--conf`` settings described in the module docstring.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.bundle_configs = conf.get("configs") or ",".join(DEFAULT_CONFIGS)
        self.spine_configs = conf.get("spine_configs") or None
        self.work_root = conf.get("work_root") or None
        self.keep_outputs = _true(conf.get("keep_outputs", "false"))
        meta = BUNDLE_ROOT / "configs" / "metadata.json"
        version = json.loads(meta.read_text()).get("version", "") if meta.is_file() else ""
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="EAR vertebra reconstruction",
            description="3-D vertebra (HU volume, surface mesh) from two X-ray images, with the EAR MONAI bundle",
            version=version,
        )

    def init_datastore(self) -> Datastore:
        """A local datastore listing the X-ray image files (not only NIfTI, MONAI Label's default)."""
        logger.info(f"EAR datastore: {self.studies}")
        return LocalDatastore(
            self.studies,
            extensions=[f"*{ext}" for ext in IMAGE_EXTENSIONS],
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        """The infer tasks: :data:`MODEL_NAME` (one vertebra) and :data:`SPINE_TASK` (the whole spine)."""
        return {
            MODEL_NAME: EARInferTask(
                bundle_root=BUNDLE_ROOT,
                configs=self.bundle_configs,
                work_root=self.work_root,
                keep_outputs=self.keep_outputs,
            ),
            SPINE_TASK: SpineInferTask(
                bundle_root=BUNDLE_ROOT,
                configs=self.spine_configs,
                work_root=self.work_root,
                keep_outputs=self.keep_outputs,
            ),
        }

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's infer, with two changes for this bundle.

        The result is never saved as a label of the 2-D input image in the datastore, and a bad input
        (unknown model, no partner view, a bad sidecar, unreadable images) answers HTTP 400 with the one-line
        cause and fix as ``detail``, instead of MONAI Label's bare 500.
        """
        try:
            return super().infer({**request, "save_label": False}, datastore)
        except MONAILabelException as e:
            if e.error != MONAILabelError.INVALID_INPUT:
                raise
            raise HTTPException(status_code=400, detail=e.msg) from e
