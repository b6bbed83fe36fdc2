# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""One MONAI Label infer request, without MONAI Label: image -> pair -> bundle run -> one file and a report.

:func:`infer_request` is the whole work of :class:`scripts.monailabel.task.EARInferTask`; it is kept free
of MONAI Label so that it is tested in the bundle's own environment. :func:`write_app_dir` writes the
folder that ``monailabel start_server --app`` loads (MONAI Label creates ``model/``, ``logs/``, ``lib/`` and
``bin/`` in its app folder, so that folder must not be inside the bundle).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from scripts.errors import BundleInputError
from scripts.monailabel.core import BUNDLE_ROOT, DEFAULT_CONFIGS, check_outside_bundle, run_inference, run_spine
from scripts.monailabel.pairs import XRayPair, resolve_pair

__all__ = ["RESULTS", "SPINE_RESULTS", "infer_request", "spine_request", "write_app_dir"]

#: the request's ``result`` -> (attribute of :class:`scripts.monailabel.core.InferenceResult`, file ending)
RESULTS: dict[str, tuple[str, str]] = {
    "volume": ("volume", "_hu.nii.gz"),
    "mesh": ("mesh_stl", "_mesh.stl"),
    "mesh_ply": ("mesh_ply", "_mesh.ply"),
}

#: the ``spine`` task's ``result`` -> the file ending of :func:`scripts.spine.radiographs`' patient outputs
SPINE_RESULTS: dict[str, str] = {
    "labels": "_labels.nii.gz",
    "volume": "_hu.nii.gz",
    "mesh": "_spine.stl",
    "mesh_ply": "_spine.ply",
}

_APP_MAIN = '''\
"""MONAI Label app of the EAR bundle at {root} (written by scripts.monailabel.write_app_dir)."""

import sys

BUNDLE_ROOT = {root!r}
if BUNDLE_ROOT not in sys.path:
    sys.path.insert(0, BUNDLE_ROOT)

from scripts.monailabel.app import EARApp  # noqa: E402,F401  (MONAI Label loads the app class from here)
'''


def _image_and_result(request: dict[str, Any], results: list[str], task: str, image: str) -> tuple[str, str]:
    """The request's image and asked-for result (the first of ``results`` by default), checked."""
    path = request.get("image")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise BundleInputError(
            f"the request's image must be a datastore image id or a file path, got {type(path).__name__}; "
            f"send /infer/{task}?image=<id of {image}>."
        )
    kind = str(request.get("result") or results[0])
    if kind not in results:
        raise BundleInputError(f"result {kind!r} is unknown; ask for one of {results} (params result).")
    return str(path), kind


def _work_folder(work_root: str | os.PathLike | None, bundle_root: str | os.PathLike, prefix: str) -> tuple[Path, Path]:
    """``(parent, work)``: the parent of the request's work folder and returned file (outside the bundle), and a
    fresh work folder in it."""
    parent = check_outside_bundle(work_root if work_root is not None else tempfile.gettempdir(), bundle_root)
    parent.mkdir(parents=True, exist_ok=True)
    return parent, Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def _copy_out(chosen: str | os.PathLike, case_id: str, ending: str, parent: Path) -> str:
    """A copy of ``chosen`` beside the work folder, which the server deletes once it is sent."""
    handle, returned = tempfile.mkstemp(prefix=f"{case_id}_", suffix=ending, dir=parent)
    os.close(handle)
    shutil.copyfile(chosen, returned)
    return returned


def infer_request(
    request: dict[str, Any],
    bundle_root: str | os.PathLike = BUNDLE_ROOT,
    configs: str | list[str] | tuple[str, ...] = DEFAULT_CONFIGS,
    overrides: dict[str, Any] | None = None,
    work_root: str | os.PathLike | None = None,
    keep_outputs: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Reconstruct the pair of ``request["image"]`` and return the file asked for by ``request["result"]``.

    Args:
        request: ``{"image": path of one view, "result": "volume" (default) | "mesh" | "mesh_ply"}``; other
            keys (MONAI Label adds several) are ignored.
        bundle_root: the bundle's root folder.
        configs: bundle config files (see :func:`scripts.monailabel.run_inference`).
        overrides: further bundle config overrides.
        work_root: parent of the per-request work folder and of the returned file (default: the system's
            temporary folder); must lie outside the bundle.
        keep_outputs: keep the work folder (its path is reported as ``work_dir``).

    Returns:
        (path of the returned file, outside the bundle and outside the work folder; the JSON report).

    Raises:
        BundleInputError: a bad request or input, naming the cause and the fix.
    """
    image, kind = _image_and_result(request, list(RESULTS), "<model>", "one of the two views")
    pair = resolve_pair(image)
    parent, work = _work_folder(work_root, bundle_root, f"ear-{pair.case_id}-")
    try:
        result = run_inference(pair, work, bundle_root=bundle_root, configs=configs, overrides=overrides)
        attribute, ending = RESULTS[kind]
        chosen = getattr(result, attribute)
        if chosen is None:
            raise BundleInputError(
                f"{pair.case_id}: the reconstruction has no voxel above the mesh level, so there is no mesh; "
                "ask for result=volume."
            )
        returned = _copy_out(chosen, pair.case_id, ending, parent)
        report = {
            **result.to_json(),
            "result": kind,
            "file": Path(returned).name,
            "work_dir": str(work) if keep_outputs else None,
        }
        return returned, report
    finally:
        if not keep_outputs:
            shutil.rmtree(work, ignore_errors=True)


def _ap_first(pair: XRayPair) -> tuple[str, str]:
    """The pair's (AP, lateral) files: the AP is the view whose beam runs front to back (alpha 0 or 180)."""
    frontal = [abs(((a[0] + 90.0) % 180.0) - 90.0) < 20.0 for a in pair.angles]
    if frontal == [True, False]:
        return pair.xray[0], pair.xray[1]
    if frontal == [False, True]:
        return pair.xray[1], pair.xray[0]
    raise BundleInputError(
        f"{pair.case_id}: the spine task needs an AP and a lateral radiograph, got views at {list(pair.angles)} "
        "degrees; name them <case>_ap and <case>_lat, or give their angles in the sidecar."
    )


def spine_request(
    request: dict[str, Any],
    bundle_root: str | os.PathLike = BUNDLE_ROOT,
    configs: str | list[str] | tuple[str, ...] | None = None,
    work_root: str | os.PathLike | None = None,
    keep_outputs: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The whole spine of the two full radiographs of ``request["image"]``: every vertebra found and reconstructed.

    The image's partner is found as for :func:`infer_request` (naming convention or sidecar); the two files must
    carry their geometry (DICOM, or a sidecar JSON beside a PNG / TIFF, ``docs/reference.md``). The job is the
    bundle's ``configs/spine_radiographs.json`` (:func:`scripts.monailabel.core.run_spine`: the vertebra finder,
    then each vertebra's reconstruction with its confidence), run in a fresh work folder.

    Args:
        request: ``{"image": path of one radiograph, "result": "labels" (default, the label map of all vertebrae)
            | "volume" (HU) | "mesh" | "mesh_ply" (the whole spine's surface), "level": optional pin such as
            "L5=ap:812,640" (the file's pixels), "centres": optional path of a JSON of known centres, used instead
            of the finder (``--centres`` of ``python -m scripts.spine radiographs``)}``; other keys are ignored.
        bundle_root, work_root, keep_outputs: as for :func:`infer_request`.
        configs: the inference configs of the reconstruction (default the body model's, as
            ``configs/spine_radiographs.json`` chooses it).

    Returns:
        (path of the returned file, outside the bundle and the work folder; the JSON report: the spine report of
        :func:`scripts.spine.radiographs`, per level its centre, finder scores and confidence).

    Raises:
        BundleInputError: a bad request or input (no partner, missing geometry, no spine found, ...), naming the
            cause and the fix.
    """
    image, kind = _image_and_result(request, list(SPINE_RESULTS), "spine", "one of the two radiographs")
    pair = resolve_pair(image)
    ap, lateral = _ap_first(pair)
    parent, work = _work_folder(work_root, bundle_root, f"ear-spine-{pair.case_id}-")
    try:
        report = run_spine(
            ap, lateral, pair.case_id, work, bundle_root, configs, request.get("level") or None,
            request.get("centres") or None,
        )  # fmt: skip
        chosen = work / pair.case_id / f"{pair.case_id}{SPINE_RESULTS[kind]}"
        if not chosen.is_file():
            raise BundleInputError(f"{pair.case_id}: the spine job wrote no {chosen.name}; ask for result=labels.")
        returned = _copy_out(chosen, pair.case_id, SPINE_RESULTS[kind], parent)
        return returned, {
            **report,
            "result": kind,
            "file": Path(returned).name,
            "work_dir": str(work) if keep_outputs else None,
        }
    finally:
        if not keep_outputs:
            shutil.rmtree(work, ignore_errors=True)


def write_app_dir(app_dir: str | os.PathLike, bundle_root: str | os.PathLike = BUNDLE_ROOT) -> Path:
    """Write the MONAI Label app folder (one ``main.py`` that loads :class:`scripts.monailabel.app.EARApp`).

    Args:
        app_dir: the folder to give ``monailabel start_server --app``; must lie outside the bundle, because
            MONAI Label writes ``model/``, ``logs/``, ``lib/`` and ``bin/`` into it.
        bundle_root: the bundle whose ``scripts`` the app imports.

    Returns:
        the path of the written ``main.py``.

    Raises:
        BundleInputError: ``app_dir`` lies inside the bundle.
    """
    folder = check_outside_bundle(app_dir, bundle_root)
    folder.mkdir(parents=True, exist_ok=True)
    main = folder / "main.py"
    main.write_text(_APP_MAIN.format(root=str(Path(bundle_root).resolve())))
    return main
