# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""MONAI Label infer task: one datastore X-ray in, the bundle's reconstruction of its pair out.

Needs ``monailabel`` (imported here, at module level; ``scripts.monailabel`` itself does not import this
module, so the bundle runs and is tested without MONAI Label). The task's work is
:func:`scripts.monailabel.infer_request`, which needs no MONAI Label either.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

try:
    from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
    from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"scripts.monailabel.task needs MONAI Label ({e}); make its environment with "
        "`python -m scripts.tools.monailabel_check --setup_only` or `pip install monailabel==0.8.5` "
        "(see docs/monailabel.md)."
    ) from e

from scripts.errors import BundleInputError
from scripts.monailabel.core import BUNDLE_ROOT, DEFAULT_CONFIGS
from scripts.monailabel.service import RESULTS, SPINE_RESULTS, infer_request, spine_request

__all__ = ["EARInferTask", "SpineInferTask"]

logger = logging.getLogger(__name__)


class EARInferTask(InferTask):
    """Reconstruct a vertebra from the X-ray pair of a datastore image with the bundle's inference config.

    The request's ``image`` (a path: MONAI Label resolves datastore ids before calling the task) is mapped to
    its pair (:func:`scripts.monailabel.resolve_pair`), the bundle runs in a fresh folder under
    ``work_root`` (default: the system's temporary folder), and the task returns one file, by the request's
    ``result``: ``"volume"`` (default, the HU volume as NIfTI), ``"mesh"`` (the bone surface, STL) or
    ``"mesh_ply"``, with a JSON report (shape, spacing, HU range, mesh report, the pair used, timing).

    Args:
        bundle_root: the bundle's root folder.
        configs: bundle config files run in order, relative to ``bundle_root`` (e.g.
            ``["configs/inference.json", "configs/cpu.json"]`` for the CPU model).
        overrides: further bundle config overrides.
        work_root: parent folder of the per-request work folders; must lie outside the bundle.
        keep_outputs: keep each request's work folder (all the bundle's outputs, including the preview);
            by default it is removed once the returned file has been moved out of it.
        description: shown by MONAI Label's ``/info``.
    """

    #: the task's settings shown by MONAI Label's ``/info`` (the request's ``params`` may set them)
    task_config: dict[str, Any] = {"result": "volume", "results": list(RESULTS)}

    def __init__(
        self,
        bundle_root: str | Path = BUNDLE_ROOT,
        configs: str | list[str] | tuple[str, ...] = DEFAULT_CONFIGS,
        overrides: dict[str, Any] | None = None,
        work_root: str | Path | None = None,
        keep_outputs: bool = False,
        description: str = "EAR: 3-D vertebra (HU volume and surface mesh) from its AP and lateral X-rays",
    ) -> None:
        super().__init__(
            type=InferType.OTHERS, labels=None, dimension=2, description=description, config=dict(self.task_config)
        )
        self.bundle_root = Path(bundle_root).resolve()
        self.configs = configs
        self.overrides = dict(overrides or {})
        self.work_root = work_root
        self.keep_outputs = keep_outputs

    def is_valid(self) -> bool:
        """Whether the bundle's inference config exists (the models are checked when it runs)."""
        return (self.bundle_root / "configs" / "inference.json").is_file()

    def run(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The task's work on one request (:func:`scripts.monailabel.infer_request`)."""
        return infer_request(
            request,
            bundle_root=self.bundle_root,
            configs=self.configs,
            overrides=self.overrides,
            work_root=self.work_root,
            keep_outputs=self.keep_outputs,
        )

    def __call__(self, request: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """Run one request: ``{"image": path, "result": ..., ...}`` (see the class docstring).

        Returns:
            (path of the returned file, to be deleted by the server after sending; the JSON report).

        Raises:
            MONAILabelException: a bad input (no partner view, a bad sidecar, unreadable images), with the
                bundle's one-line cause and fix as its message.
        """
        try:
            return self.run(request)
        except BundleInputError as e:
            logger.error(f"{type(e).__name__}: {e}")
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, str(e)) from e


class SpineInferTask(EARInferTask):
    """The whole spine of a patient's AP and lateral full radiographs: every vertebra found, named, reconstructed.

    The request's ``image`` is one of the two radiographs (DICOM, or PNG / TIFF with a geometry sidecar); its
    partner is found as for :class:`EARInferTask`. The work is :func:`scripts.monailabel.service.spine_request`
    (``configs/spine_radiographs.json``). The task returns, by the request's ``result``, the label map of all
    vertebrae (``"labels"``, default; NIfTI, one label per level), the HU volume (``"volume"``) or the whole
    spine's surface (``"mesh"`` STL, ``"mesh_ply"``), with the spine report: per level its 3-D centre, the
    finder's scores and the reconstruction's confidence. ``level`` (``"L5=ap:ROW,COL"``) pins one level;
    ``centres`` (a JSON path) gives the centres instead of the finder.

    Args:
        bundle_root, work_root, keep_outputs: as for :class:`EARInferTask`.
        configs: the reconstruction's inference configs (default ``None``: the body model's, trained on X-rays
            through the whole body, :data:`scripts.spine.RADIOGRAPH_MODELS`).
        description: shown by MONAI Label's ``/info``.
    """

    task_config: dict[str, Any] = {"result": "labels", "results": list(SPINE_RESULTS), "level": "", "centres": ""}

    def __init__(
        self,
        bundle_root: str | Path = BUNDLE_ROOT,
        configs: str | list[str] | tuple[str, ...] | None = None,
        work_root: str | Path | None = None,
        keep_outputs: bool = False,
        description: str = "EAR spine: every vertebra of an AP and a lateral full radiograph (label map, meshes)",
    ) -> None:
        super().__init__(bundle_root, configs, None, work_root, keep_outputs, description)

    def run(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The task's work on one request (:func:`scripts.monailabel.spine_request`)."""
        return spine_request(
            request,
            bundle_root=self.bundle_root,
            configs=self.configs,
            work_root=self.work_root,
            keep_outputs=self.keep_outputs,
        )
