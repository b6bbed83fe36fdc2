# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Run the bundle's own inference config on one X-ray pair, with every output in a folder outside the bundle.

:func:`run_inference` writes the pair as a one-case datalist into a work folder, runs
``configs/inference.json`` (plus any overlay, e.g. ``configs/cpu.json``) through
:class:`monai.bundle.ConfigWorkflow` with ``output_dir`` in that work folder, and returns the volume, mesh
and preview the bundle wrote there. It does not import MONAI Label, so it is tested without it, and it
imports nothing of the bundle's internals: the config names the transforms.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scripts.errors import BundleInputError
from scripts.monailabel.pairs import XRayPair

__all__ = [
    "BUNDLE_ROOT",
    "DEFAULT_CONFIGS",
    "InferenceResult",
    "check_outside_bundle",
    "config_files",
    "run_inference",
    "run_spine",
    "volume_summary",
]

#: the bundle's root folder (the one holding ``configs/`` and ``scripts/``)
BUNDLE_ROOT = Path(__file__).resolve().parents[2]
#: the case report's confidence entries returned with a result (``scripts.io.outputs.REPORT_KEYS``, repeated here
#: because this module imports nothing of the bundle's internals; a test keeps the two equal).
CONFIDENCE_KEYS = (
    "confidence",
    "confidence_calibrated",
    "tta_agreement",
    "window_centring",
    "flag",
    "input_type",
    "input_background_share",
)

#: configs run by default, relative to the bundle root
DEFAULT_CONFIGS: tuple[str, ...] = ("configs/inference.json",)

# one reconstruction at a time per process: the bundle's initialisation seeds global random state
_LOCK = threading.Lock()


@dataclass
class InferenceResult:
    """What one reconstruction wrote (all paths inside the work folder given to :func:`run_inference`).

    Attributes:
        case_id: the case's name (its output folder).
        volume: the reconstructed volume, HU, NIfTI with the crop's affine.
        mesh_stl: the bone surface (STL, world mm), ``None`` when the prediction has no bone.
        mesh_ply: the same surface as PLY, ``None`` when the prediction has no bone.
        mesh_report: the bundle's mesh report (vertices, faces, watertight, ...), ``{}`` if none.
        preview: the bundle's preview PNG, ``None`` if none.
        confidence: the case report's confidence entries (``confidence``, ``confidence_calibrated``,
            ``tta_agreement``, ``window_centring``, ``flag``; ``docs/confidence.md``), ``{}`` when inference ran
            without confidence.
        uncertainty: the voxel-wise uncertainty (HU, NIfTI), ``None`` without confidence.
        summary: shape, spacing and HU statistics of ``volume`` (:func:`volume_summary`).
        seconds: wall time of the bundle run (config parsing, model loading and inference).
        pair: the input pair.
    """

    case_id: str
    volume: Path
    mesh_stl: Path | None
    mesh_ply: Path | None
    mesh_report: dict[str, Any]
    preview: Path | None
    summary: dict[str, Any]
    seconds: float
    pair: XRayPair = field(repr=False)
    confidence: dict[str, Any] = field(default_factory=dict)
    uncertainty: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable report (file names, not paths; the pair's inputs as given)."""
        return {
            "case_id": self.case_id,
            "volume": self.volume.name,
            "mesh": self.mesh_stl.name if self.mesh_stl else None,
            "mesh_report": self.mesh_report,
            **self.confidence,
            "uncertainty": self.uncertainty.name if self.uncertainty else None,
            "seconds": round(self.seconds, 3),
            **self.summary,
            "pair": {**asdict(self.pair), "xray": [Path(p).name for p in self.pair.xray]},
        }


def check_outside_bundle(path: str | os.PathLike, bundle_root: str | os.PathLike = BUNDLE_ROOT) -> Path:
    """``path`` as an absolute path, refused when it lies inside the bundle folder.

    Raises:
        BundleInputError: ``path`` is the bundle folder or inside it.
    """
    resolved = Path(path).expanduser().resolve()
    root = Path(bundle_root).resolve()
    if resolved == root or root in resolved.parents:
        raise BundleInputError(
            f"{resolved} is inside the bundle folder {root}; the MONAI Label adapter writes nothing there: "
            "give a work folder elsewhere (e.g. under /tmp)."
        )
    return resolved


def volume_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Shape, voxel spacing (mm), orientation and HU statistics of a NIfTI volume."""
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    finite = data[np.isfinite(data)]
    return {
        "shape": [int(s) for s in data.shape],
        "spacing_mm": [round(float(s), 4) for s in img.header.get_zooms()[:3]],
        "orientation": "".join(nib.aff2axcodes(img.affine)),
        "dtype": str(img.get_data_dtype()),
        "hu_min": float(finite.min()) if finite.size else None,
        "hu_max": float(finite.max()) if finite.size else None,
        "hu_mean": float(finite.mean()) if finite.size else None,
        "bone_voxels": int((finite > -500).sum()),
        "nonfinite_voxels": int(data.size - finite.size),
    }


def _input_error(exc: BaseException) -> BundleInputError | None:
    """The bundle's one-line input error inside MONAI's wrapping exceptions, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BundleInputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _one(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[0] if found else None


def _run_workflow(config_file: str | list[str], root: Path, settings: dict[str, Any]) -> None:
    """Run a bundle config as an inference workflow, one at a time per process, with the bundle's input errors
    passed on as they are (their one-line cause and fix)."""
    from monai.bundle import ConfigWorkflow

    meta = root / "configs" / "metadata.json"
    with _LOCK:
        try:
            workflow = ConfigWorkflow(
                config_file=config_file,
                meta_file=str(meta) if meta.is_file() else None,
                logging_file=False,  # never reconfigure the host program's logging
                workflow_type="infer",
                **settings,
            )
            workflow.initialize()
            workflow.run()
            workflow.finalize()
        except Exception as e:
            cause = _input_error(e)
            if cause is not None and cause is not e:
                raise type(cause)(str(cause)) from e
            raise


def config_files(configs: str | list[str] | tuple[str, ...], bundle_root: str | os.PathLike = BUNDLE_ROOT) -> list[str]:
    """Config files as absolute paths: relative ones lie under ``bundle_root``; a string may list several,
    comma-separated.

    Raises:
        BundleInputError: none given, or a file is missing.
    """
    root = Path(bundle_root).resolve()
    if isinstance(configs, str):
        configs = [c.strip() for c in configs.split(",") if c.strip()]
    files = [str(p if p.is_absolute() else root / p) for p in (Path(c) for c in configs)]
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise BundleInputError(
            f"bundle config files {missing or configs} not found under {root}; give paths such as "
            "configs/inference.json,configs/cpu.json."
        )
    return files


def run_inference(
    pair: XRayPair,
    work_dir: str | os.PathLike,
    bundle_root: str | os.PathLike = BUNDLE_ROOT,
    configs: str | list[str] | tuple[str, ...] = DEFAULT_CONFIGS,
    overrides: dict[str, Any] | None = None,
) -> InferenceResult:
    """Reconstruct one X-ray pair with the bundle's inference config; every file goes to ``work_dir``.

    Args:
        pair: the two views and their angles (:func:`scripts.monailabel.resolve_pair`).
        work_dir: folder for the datalist and the outputs (created; must lie outside the bundle folder).
        bundle_root: the bundle's root folder.
        configs: config files, relative to ``bundle_root`` or absolute, run in this order (e.g.
            ``["configs/inference.json", "configs/cpu.json"]``); a string may list several, comma-separated.
        overrides: further config overrides (e.g. ``{"device": "$torch.device('cpu')"}``); ``output_dir``,
            ``datalist``, ``xrays`` and ``bundle_root`` are set here and cannot be overridden.

    Raises:
        BundleInputError: a bad input (the work folder lies in the bundle, a config is missing, the images
            are unreadable or blank, ...), with the bundle's one-line cause and fix.
    """
    root = Path(bundle_root).resolve()
    work = check_outside_bundle(work_dir, root)
    files = config_files(configs, root)
    fixed = {"bundle_root", "output_dir", "datalist", "xrays"}
    clash = sorted(fixed & set(overrides or {}))
    if clash:
        raise BundleInputError(f"overrides {clash} are set by the adapter; leave them out.")
    output_dir = work / "outputs"
    output_dir.mkdir(parents=True, exist_ok=True)
    datalist = work / "cases.json"
    datalist.write_text(json.dumps([pair.datalist_entry()], indent=1) + "\n")
    settings = {
        **(overrides or {}),
        "bundle_root": str(root),
        "output_dir": str(output_dir),
        "datalist": str(datalist),
        "xrays": None,
    }
    start = time.perf_counter()
    _run_workflow(files, root, settings)
    seconds = time.perf_counter() - start
    case_dir = output_dir / pair.case_id
    volume = _one(case_dir, "*_hu.nii.gz") or _one(case_dir, "*.nii.gz")
    if volume is None:
        raise RuntimeError(f"the bundle run wrote no volume into {case_dir}; see its log above.")
    report_file = _one(case_dir, "*_mesh.json")
    case_report = _one(case_dir, "*_report.json")
    confidence = {}
    if case_report:
        report = json.loads(case_report.read_text())
        confidence = {k: v for k, v in report.items() if k in CONFIDENCE_KEYS and v is not None}
    return InferenceResult(
        case_id=pair.case_id,
        volume=volume,
        mesh_stl=_one(case_dir, "*_mesh.stl"),
        mesh_ply=_one(case_dir, "*_mesh.ply"),
        mesh_report=json.loads(report_file.read_text()) if report_file else {},
        preview=_one(case_dir, "*_preview.png"),
        summary=volume_summary(volume),
        seconds=seconds,
        pair=pair,
        confidence=confidence,
        uncertainty=_one(case_dir, "*_uncertainty.nii.gz"),
    )


def run_spine(
    ap: str | os.PathLike,
    lateral: str | os.PathLike,
    case_id: str,
    work_dir: str | os.PathLike,
    bundle_root: str | os.PathLike = BUNDLE_ROOT,
    configs: str | list[str] | tuple[str, ...] | None = None,
    level: str | None = None,
    centres: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The whole spine of two full radiographs with the bundle's ``configs/spine_radiographs.json``.

    Every vertebra is found (or taken from ``centres``), reconstructed with ``configs`` (the inference configs; default
    the body model's, :data:`scripts.spine.RADIOGRAPH_MODELS`) and assembled; the outputs go to ``work_dir/<case_id>/``
    (``docs/reference.md``, whole spine from two full radiographs).

    Returns:
        the spine report (``<case_id>_spine.json``).

    Raises:
        BundleInputError: a bad input, with the bundle's one-line cause and fix.
    """
    root = Path(bundle_root).resolve()
    work = check_outside_bundle(work_dir, root)
    settings = {
        "bundle_root": str(root),
        "ap": str(ap),
        "lateral": str(lateral),
        "patient": case_id,
        "output_dir": str(work),
        "level": level,
        "centres": None if centres is None else str(centres),
    }
    if configs:
        settings["inference_configs"] = config_files(configs, root)
    _run_workflow(str(root / "configs" / "spine_radiographs.json"), root, settings)
    report = work / case_id / f"{case_id}_spine.json"
    if not report.is_file():
        raise RuntimeError(f"the spine run wrote no {report}; see its log above.")
    return json.loads(report.read_text())
