# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Per-vertebra training data from spine CT with vertebra label maps.

Usage::

    python -m scripts.prepare --source example --out data/example
    python -m scripts.prepare --source example --out data/example64 --spacing 2 --roi 64
    python -m scripts.prepare --source /data/verse --out data/verse --workers 2
    python -m scripts.prepare --source pairs.csv --out data/mine --labels totalseg --levels T1-L5
    python -m scripts.prepare --source docs/spine-ct-sources.csv --out data/spine64 --spacing 2 --roi 64
    python -m scripts.prepare --source scans/ --intensity windowed --split "verse081=validation,colonog0532=test"

Output (paths relative to ``--out``)::

    <patient>/<patient>_<level>_ct.nii.gz    CT crop, float32 HU, RAS, isotropic, crop affine
    <patient>/<patient>_<level>_gt.nii.gz    ground truth: HU inside the dilated own mask, -1024 elsewhere
    <patient>/<patient>_<level>_mask.nii.gz  the vertebra's own mask, uint8
    <patient>/<patient>_<level>.json         the vertebra's manifest row (written last: marks it finished)
    <patient>/<patient>_body.nii.gz          the whole scan for X-rays through the body: int16 HU on the same
                                             isotropic RAS grid, outside the field of view -32768 (scripts.drr.body)
    manifest.csv                             one row per vertebra (also the skipped ones)
    datalist.json                            MONAI datalist: training / validation / test + statistics

A rerun with the same ``--out`` skips vertebrae whose four files exist, so an interrupted run resumes.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from scripts.data.crop import (
    BONE_HU,
    LABEL_BONE_SHARE,
    LABEL_FIT_RATIO,
    SHELL_MM,
    bounding_boxes,
    crop_vertebra,
    gt_statistics,
    label_bone_fit,
    labels_touching_border,
    labels_touching_padding,
    to_ras_isotropic,
)
from scripts.data.errors import DataError
from scripts.data.intensity import INTENSITIES, HUFit, apply_fit, check_finite, fit_hu, given_fit, looks_windowed
from scripts.data.io import check_same_grid, load_volume, save_nifti
from scripts.data.labels import LEVELS, parse_levels, read_class_map, vertebra_labels
from scripts.data.orientation import check_orientation, fragments, vertebra_geometry
from scripts.data.sources import Case, default_cache_dir, find_cases
from scripts.data.split import SPLITS, parse_split, split_given, split_items
from scripts.data.structures import combine_structure_masks
from scripts.drr.body import OUTSIDE_FOV, body_cut_fractions, outside_fov
from scripts.utils import atomic_path

__all__ = ["PrepareSummary", "CaseResult", "prepare", "process_case", "rebuild_index", "main"]

FILE_KINDS = ("ct", "gt", "mask")
MANIFEST_COLUMNS = (
    "patient", "subject", "level", "id", "label", "split", "status", "spacing_mm", "roi",
    "origin_x_mm", "origin_y_mm", "origin_z_mm", "hu_mean", "hu_std", "hu_min", "hu_max",
    "mask_voxels", "extent_x", "extent_y", "extent_z", "intensity", "hu_scale", "hu_offset", "hu_fit",
    "hu_landmarks", "hu_residuals", "hu_warning", "centre_x_mm", "centre_y_mm", "centre_z_mm", "body_cut_ap",
    "body_cut_lateral", "label_bone_share", "shell_bone_share", "source_ct", "source_mask",
)  # fmt: skip
ORIENTATION_MODES = ("check", "warn")
#: Fewest output voxels along a complete vertebra's smallest world extent (``--min_voxels``).
MIN_VOXELS = 8
CUT_OFF = "cut_off"
EMPTY = "empty_after_resampling"
CUT_OFF_FOV = "cut_off_fov"
FRAGMENT = "fragment"
_REASONS = {
    FRAGMENT: "a fragment (under a quarter of its neighbours' volume)",
    CUT_OFF: "cut off by the scan border",
    CUT_OFF_FOV: "cut off by the field of view (next to padding)",
    EMPTY: "no voxel left after resampling",
}


@dataclass
class CaseResult:
    """What happened to one scan.

    Attributes:
        patient: the scan's patient id.
        written: manifest rows of the vertebrae written now.
        done: manifest rows of the vertebrae finished by an earlier run.
        skipped: ``(level, status)`` of the vertebrae not cropped (``cut_off``, ``empty_after_resampling``).
        error: one-line message when the scan could not be used at all.
        fit: the HU map applied to a windowed scan (``None`` for a scan stored in HU, or when nothing was
            cropped now).
        warnings: one-line warnings (poor HU fit, orientation kept under ``--orientation warn``).
    """

    patient: str
    written: list[dict] = field(default_factory=list)
    done: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str, dict]] = field(default_factory=list)
    error: str | None = None
    fit: HUFit | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class PrepareSummary:
    """The outcome of :func:`prepare`.

    Attributes:
        out: the output folder.
        written / done / skipped / failed: counts of vertebrae written now, already finished, skipped,
            and of scans that failed.
        messages: the one-line messages of failed scans and unpaired files.
        split_by: ``"patient"``, ``"vertebra"`` or ``"given"``; ``split_sizes``: vertebrae per split.
        statistics: ``gt_mean`` / ``gt_std`` of the training ground truth.
        seconds: wall time.
        fits: one line per scan on how its HU were obtained (for windowed scans: the fit).
        warnings: one-line warnings of single scans (poor HU fit, orientation).
    """

    out: Path
    written: int = 0
    done: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: int = 0
    messages: list[str] = field(default_factory=list)
    split_by: str = ""
    split_sizes: dict[str, int] = field(default_factory=dict)
    statistics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    fits: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ready(self) -> int:
        """Vertebrae of this run's scans that are finished (written now or before)."""
        return self.written + self.done


def _stem(out: Path, patient: str, level: str) -> Path:
    return out / patient / f"{patient}_{level}"


def _paths(out: Path, patient: str, level: str) -> dict[str, Path]:
    stem = _stem(out, patient, level)
    files = {k: stem.with_name(f"{stem.name}_{k}.nii.gz") for k in FILE_KINDS}
    files["json"] = stem.with_name(f"{stem.name}.json")
    return files


def _body_path(out: Path, patient: str) -> Path:
    return out / patient / f"{patient}_body.nii.gz"


def _finished_row(out: Path, patient: str, level: str) -> dict | None:
    """The stored manifest row of a vertebra whose files all exist (its patient's whole scan too), else ``None``."""
    files = _paths(out, patient, level)
    if not all(p.is_file() for p in files.values()) or not _body_path(out, patient).is_file():
        return None
    try:
        row = json.loads(files["json"].read_text())
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) and "body" in row.get("files", {}) else None


def _stored_label_fit(out: Path, row: dict) -> dict:
    """A finished vertebra's bone shares (:func:`label_bone_fit`): from its row, or, for a row written before they
    were kept, measured on its saved crops and written into its row (atomically)."""
    if "label_bone_share" in row and "shell_bone_share" in row:
        return row
    import nibabel as nib

    files = _paths(out, row["patient"], row["level"])
    ct, mask = (np.asarray(nib.load(str(files[k])).dataobj) for k in ("ct", "mask"))
    fit = label_bone_fit(ct, mask, float(row["spacing_mm"]))
    row.update({k: round(v, 3) for k, v in fit.items()})
    with atomic_path(files["json"]) as tmp:
        tmp.write_text(json.dumps(row, indent=1))
    return row


def _label_fit_warning(mask_path: Any, rows: list[dict]) -> list[str]:
    """One warning naming the vertebrae (manifest rows with bone shares) whose labels may lie beside their bone:
    under :data:`LABEL_BONE_SHARE` bone and under :data:`LABEL_FIT_RATIO` times the share around them."""
    off = [
        r
        for r in rows
        if r["label_bone_share"] < LABEL_BONE_SHARE and r["label_bone_share"] < LABEL_FIT_RATIO * r["shell_bone_share"]
    ]
    if not off:
        return []
    off.sort(key=lambda r: LEVELS.index(r["level"]) if r["level"] in LEVELS else len(LEVELS))
    listed = ", ".join(f"{r['level']} {r['label_bone_share']:.0%} / {r['shell_bone_share']:.0%}" for r in off)
    return [
        f"{mask_path}: labels that may lie beside their vertebra (voxels above {BONE_HU:.0f} HU inside the label / "
        f"within {SHELL_MM:g} mm around it): {listed}; labels on their bone hold over {LABEL_BONE_SHARE:.0%}, or "
        f"{LABEL_FIT_RATIO} times the share around (a spine of low density holds less): check that the label map "
        "belongs to this CT (orientation, shift)"
    ]


def _write_body(ct_iso: Any, outside_iso: np.ndarray, path: Path) -> None:
    """The whole scan for body X-rays: int16 HU, outside the field of view :data:`OUTSIDE_FOV`."""
    if path.is_file():
        return
    body = np.clip(np.round(np.asarray(ct_iso[0], dtype=np.float32)), -1024, 32767).astype(np.int16)
    body[outside_iso] = OUTSIDE_FOV
    save_nifti(body, np.asarray(ct_iso.affine, dtype=np.float64), path)


def _load_labels(case: Case, labels: str) -> tuple[Any, dict[int, str], str]:
    """Load a case's label map (combining per-structure masks) and map its values to levels."""
    if case.structures:  # TotalSegmentator per-structure masks, combined into one map
        combined, found = combine_structure_masks(case.structures, case.label_source)
        return combined, found, case.label_source
    mask = load_volume(case.mask, "label map")
    arr = np.asarray(mask[0])
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 65535:
        raise DataError(
            case.mask,
            f"unknown label convention: values {lo:g}..{hi:g} are not label ids",
            "give a vertebra label map (0 = background), not a CT; or pass --labels verse|totalseg",
        )
    ints = arr.astype(np.int32)
    if not np.array_equal(ints, arr):
        raise DataError(
            case.mask, "label map holds non-integer values", "give an integer label map, not a CT or probabilities"
        )
    values = np.flatnonzero(np.bincount(ints.ravel())).tolist()
    convention = labels if labels != "auto" else (case.convention or "auto")
    class_map = read_class_map(case.class_map) if case.class_map and convention in ("auto", "totalseg") else None
    return mask, vertebra_labels(values, convention, class_map, case.mask), case.mask


def _row(case: Case, level: str, value: int, spacing: float, roi: int, status: str) -> dict:
    return {
        "patient": case.patient,
        "subject": case.subject,
        "level": level,
        "id": f"{case.patient}_{level}",
        "label": value,
        "status": status,
        "spacing_mm": float(spacing),
        "roi": int(roi),
        "source_ct": str(case.ct),
        "source_mask": case.label_source,
    }


def _check_anatomy(case: Case, geometry: list, affine: Any, mode: str) -> list[str]:
    """Refuse (``mode="check"``) or warn about a scan whose vertebrae contradict its orientation metadata."""
    if not geometry:
        return []
    report = check_orientation(geometry, np.asarray(affine))
    if report.problems and mode == "check":
        problem, fix = report.problems[0]
        raise DataError(case.ct, problem, f"{fix} (or pass --orientation warn to prepare it as it is)")
    return [f"{case.ct}: {problem}; {fix}" for problem, fix in report.problems]


def _is_windowed(case: Case, intensity: str) -> bool:
    """Whether the scan's values are stored windowed (with 0 as padding) rather than in HU."""
    return case.scale is not None or (case.intensity or intensity) == "windowed"


def _to_hu(case: Case, ct: Any, labels: np.ndarray, vertebrae: list[int], intensity: str) -> tuple[Any, HUFit | None]:
    """The CT in HU: checked when stored in HU, recovered when windowed (fit, or the source list's map)."""
    arr = np.asarray(ct[0])
    check_finite(arr, case.ct)
    mode = case.intensity or intensity
    if case.scale is not None and case.offset is not None:
        fit = given_fit(case.scale, case.offset)
    elif mode == "windowed":
        spacing = tuple(float(s) for s in np.sqrt((np.asarray(ct.affine)[:3, :3] ** 2).sum(0)))
        fit = fit_hu(arr, np.isin(labels, vertebrae), spacing, case.ct)
    else:
        if looks_windowed(arr):
            raise DataError(
                case.ct,
                f"values {float(arr.min()):g}..{float(arr.max()):g} hold nothing below 0, so they are not HU "
                "(air is about -1000 HU); the scan looks windowed",
                "pass --intensity windowed to recover HU from the scan (or give scale,offset in the source list)",
            )
        return ct, None
    ct.as_tensor()[0].copy_(torch.from_numpy(apply_fit(arr, fit)))
    return ct, fit


def process_case(
    case: Case,
    out: str | os.PathLike,
    spacing: float,
    roi: int,
    labels: str = "auto",
    levels: set[str] | None = None,
    intensity: str = "hu",
    orientation: str = "check",
) -> CaseResult:
    """Crop every requested, complete vertebra of one scan and write its files (skipping finished ones).

    Args:
        case: the scan.
        out: output folder.
        spacing: isotropic voxel size in mm.
        roi: cube edge in voxels.
        labels: ``auto``, ``verse`` or ``totalseg``.
        levels: levels to crop (``None``: all).
        intensity: ``hu`` (stored in HU; a scan without negative values is refused) or ``windowed``
            (HU recovered by :func:`scripts.data.intensity.fit_hu`); the case's own ``intensity``,
            ``scale`` and ``offset`` take precedence.
        orientation: ``check`` (refuse a scan whose anatomy contradicts its orientation) or ``warn``.

    Returns:
        the scan's :class:`CaseResult`; bad input is reported in ``error``, never raised.
    """
    out = Path(out)
    result = CaseResult(case.patient)
    try:
        mask, found, mask_path = _load_labels(case, labels)
        lab_np = np.asarray(mask[0]).astype(np.int32)
        touching = labels_touching_border(lab_np)
        complete = {v: lvl for v, lvl in found.items() if v not in touching}
        geometry = vertebra_geometry(lab_np, np.asarray(mask.affine), complete) if complete else []
        small = fragments(geometry)
        result.warnings += _check_anatomy(case, [g for g in geometry if g.level not in small], mask.affine, orientation)
        vertebrae = list(found)
        if levels is not None:
            found = {v: lvl for v, lvl in found.items() if lvl in levels}
        todo = {}
        for value, level in sorted(found.items(), key=lambda kv: LEVELS.index(kv[1])):
            row = _row(case, level, value, spacing, roi, "ok")
            if value in touching:
                result.skipped.append((level, CUT_OFF, {**row, "status": CUT_OFF}))
            elif level in small:
                result.skipped.append((level, FRAGMENT, {**row, "status": FRAGMENT}))
            elif (done := _finished_row(out, case.patient, level)) is not None:
                result.done.append(_stored_label_fit(out, done))
            else:
                todo[value] = row
        if not todo:
            result.warnings += _label_fit_warning(mask_path, result.done)
            return result
        ct = load_volume(case.ct, "CT")
        check_same_grid(ct, mask, mask_path, case.ct)
        if _is_windowed(case, intensity):
            for value in labels_touching_padding(lab_np, np.asarray(ct[0])) & set(todo):
                row = todo.pop(value)
                result.skipped.append((row["level"], CUT_OFF_FOV, {**row, "status": CUT_OFF_FOV}))
        outside = outside_fov(np.asarray(ct[0]), 0.0 if _is_windowed(case, intensity) else None)
        ct, result.fit = _to_hu(case, ct, lab_np, vertebrae, intensity)
        del lab_np
        outside_img = MetaTensor(torch.from_numpy(outside[None].astype(np.float32)), affine=ct.affine)
        hu_fields = {"intensity": "windowed", **result.fit.manifest_fields()} if result.fit else {"intensity": "hu"}
        if result.fit:
            result.warnings += [f"{case.ct}: HU fit poorly conditioned: {w}" for w in result.fit.warnings]
        ct_iso = to_ras_isotropic(ct, spacing)
        del ct
        lab_iso = to_ras_isotropic(mask, spacing, is_label=True)
        del mask
        outside_iso = np.asarray(to_ras_isotropic(outside_img, spacing, is_label=True)[0]) > 0.5
        del outside_img
        body_path = _body_path(out, case.patient)
        _write_body(ct_iso, outside_iso, body_path)
        ct_iso_np = np.asarray(ct_iso[0])
        boxes = bounding_boxes(np.asarray(lab_iso[0]), list(todo))
        for value, row in todo.items():
            level = row["level"]
            if value not in boxes:
                result.skipped.append((level, EMPTY, {**row, "status": EMPTY}))
                continue
            crop = crop_vertebra(ct_iso, lab_iso, value, boxes[value], roi)
            files = _paths(out, case.patient, level)
            save_nifti(crop.ct, crop.affine, files["ct"])
            save_nifti(crop.gt, crop.affine, files["gt"])
            save_nifti(crop.mask, crop.affine, files["mask"])
            origin = crop.affine[:3, 3]
            centre = crop.affine[:3, :3] @ np.full(3, (roi - 1) / 2.0) + origin
            fit = label_bone_fit(crop.ct, crop.mask, spacing, shell_mm=SHELL_MM)
            cut = body_cut_fractions(ct_iso_np, outside_iso, np.asarray(ct_iso.affine), centre, roi * spacing / 2)
            row.update(
                {f"origin_{a}_mm": round(float(o), 4) for a, o in zip("xyz", origin)},
                **{f"centre_{a}_mm": round(float(c), 4) for a, c in zip("xyz", centre)},
                **{k: round(v, 3) for k, v in cut.items()},
                **{f"extent_{a}": int(e) for a, e in zip("xyz", crop.extent)},
                mask_voxels=int(crop.mask.sum()),
                **{k: round(v, 3) for k, v in fit.items()},
                **hu_fields,
                **gt_statistics(crop),
                affine=crop.affine.tolist(),
                start=list(crop.start),
                bbox_center=list(crop.bbox_center),
                files={
                    **{k: files[k].relative_to(out).as_posix() for k in FILE_KINDS},
                    "body": body_path.relative_to(out).as_posix(),
                },
            )
            with atomic_path(files["json"]) as tmp:
                tmp.write_text(json.dumps(row, indent=1))
            result.written.append(row)
        result.warnings += _label_fit_warning(mask_path, result.done + result.written)
    except DataError as e:
        result.error = str(e)
    except MemoryError:
        result.error = f"{case.ct}: out of memory; use a larger --spacing or fewer --workers"
    except Exception as e:  # keep the other scans running; report this one in one line
        result.error = f"{case.ct}: unexpected {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    if result.error:
        result.skipped = []  # a failed scan is reported by its error only
    return result


def _sidecars(out: Path) -> list[Path]:
    """The vertebrae's JSON files in ``out`` (not the hidden temporary files of an interrupted write)."""
    return sorted(p for p in out.glob("*/*.json") if not p.name.startswith("."))


def _check_settings(out: Path, spacing: float, roi: int) -> None:
    """Refuse to mix crops of different spacing / size in one folder."""
    for sidecar in _sidecars(out)[:1000]:
        try:
            row = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if not math.isclose(float(row.get("spacing_mm", spacing)), spacing) or int(row.get("roi", roi)) != roi:
            raise DataError(
                out,
                f"holds crops made with --spacing {row.get('spacing_mm')} --roi {row.get('roi')}",
                f"choose another --out, or rerun with --spacing {row.get('spacing_mm')} --roi {row.get('roi')}",
            )


def _pooled(rows: list[dict]) -> dict[str, float]:
    """Mean and std over all gt voxels of the given vertebrae, from their per-cube mean and variance."""
    n = np.array([r["cube_n"] for r in rows], dtype=np.float64)
    m = np.array([r["cube_mean"] for r in rows], dtype=np.float64)
    v = np.array([r["cube_var"] for r in rows], dtype=np.float64)
    mean = float((n * m).sum() / n.sum())
    var = float((n * (v + (m - mean) ** 2)).sum() / n.sum())
    return {"gt_mean": mean, "gt_std": math.sqrt(max(var, 0.0)), "n_voxels": int(n.sum())}


def rebuild_index(
    out: str | os.PathLike, seed: int = 0, skipped_rows: list[dict] | None = None, given: dict[str, str] | None = None
) -> tuple[str, dict[str, int], dict[str, float]] | None:
    """Write ``manifest.csv`` and ``datalist.json`` from every finished vertebra in ``out`` (atomically).

    Args:
        out: the output folder.
        seed: split seed.
        skipped_rows: manifest rows of skipped vertebrae to list as well.
        given: patient -> split; when not empty, the split is this (patients not named go to training)
            instead of the seeded one.

    Returns:
        (``"patient"``, ``"vertebra"`` or ``"given"``, vertebrae per split, training statistics), or
        ``None`` when the folder holds no finished vertebra (then nothing is written). The statistics are
        those of the training split, or of all vertebrae when training is empty (``"of": "all"``).
    """
    out = Path(out)
    rows = []
    for sidecar in _sidecars(out):
        try:
            row = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(row, dict) and "level" in row and _finished_row(out, row["patient"], row["level"]) is not None:
            rows.append(row)
    if not rows:
        return None
    order = {lvl: i for i, lvl in enumerate(LEVELS)}
    rows.sort(key=lambda r: (r["patient"], order.get(r["level"], 99)))
    group = lambda r: r.get("subject") or r["patient"]  # noqa: E731
    if given:
        splits, by = split_given(rows, lambda r: r["patient"], group, given), "given"
    else:
        splits, by = split_items(rows, group=group, seed=seed)
    stats = {**_pooled(splits["training"]), "of": "training"} if splits["training"] else {**_pooled(rows), "of": "all"}
    datalist: dict[str, Any] = {
        "description": "per-vertebra CT crops, ground truth and masks (python -m scripts.prepare)",
        "spacing_mm": rows[0]["spacing_mm"],
        "roi": rows[0]["roi"],
        "split_by": by,
        "seed": seed,
        "statistics": {k: stats[k] for k in ("gt_mean", "gt_std", "n_voxels", "of")},
    }
    for name in SPLITS:
        datalist[name] = [
            {
                **{k: r["files"][k] for k in (*FILE_KINDS, "body")},
                "centre_mm": [r[f"centre_{a}_mm"] for a in "xyz"],
                "id": r["id"],
                "patient": r["patient"],
                "level": r["level"],
            }
            for r in splits[name]
        ]
        for r in splits[name]:
            r["split"] = name
    all_rows = rows + sorted(skipped_rows or [], key=lambda r: (r["patient"], order.get(r["level"], 99)))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in all_rows:
        writer.writerow({k: (f"{r[k]:.3f}" if isinstance(r.get(k), float) else r.get(k, "")) for k in MANIFEST_COLUMNS})
    with atomic_path(out / "manifest.csv") as tmp:
        tmp.write_text(buf.getvalue())
    with atomic_path(out / "datalist.json") as tmp:
        tmp.write_text(json.dumps(datalist, indent=1))
    return by, {k: len(v) for k, v in splits.items()}, stats


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _validate_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    text = str(value).lower()
    if text not in allowed:
        raise DataError(None, f"unknown --{name} {value!r}", f"use --{name} {' or '.join(allowed)}")
    return text


def _validate_args(spacing: Any, roi: Any, labels: Any, workers: Any) -> tuple[float, int, str, int]:
    try:
        spacing_f = float(spacing)
        if not spacing_f > 0 or not math.isfinite(spacing_f):
            raise ValueError
    except (TypeError, ValueError):
        raise DataError(None, f"--spacing {spacing!r} is not a positive number of mm", "e.g. --spacing 1.0") from None
    if isinstance(roi, bool) or not isinstance(roi, int | float) or int(roi) != roi or not 8 <= int(roi) <= 1024:
        raise DataError(None, f"--roi {roi!r} is not a whole number of voxels in 8..1024", "e.g. --roi 128")
    labels_s = str(labels).lower()
    if labels_s not in ("auto", "verse", "totalseg"):
        raise DataError(None, f"unknown label convention --labels {labels!r}", "use --labels auto, verse or totalseg")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(None, f"--workers {workers!r} is not a positive whole number", "e.g. --workers 2")
    return spacing_f, int(roi), labels_s, workers


def _smallest_vertebra(
    cases: list[Case], labels: str, levels: set[str] | None, intensity: str
) -> tuple[float, str, str] | None:
    """The smallest world extent (mm) of any requested, complete vertebra, with its patient and level."""
    smallest = None
    for case in cases:
        try:
            mask, found, _ = _load_labels(case, labels)
        except DataError:
            continue  # reported when the scan is processed
        lab = np.asarray(mask[0]).astype(np.int32)
        touching = labels_touching_border(lab)
        if _is_windowed(case, intensity):
            try:
                touching |= labels_touching_padding(lab, np.asarray(load_volume(case.ct, "CT")[0]))
            except (DataError, ValueError, IndexError):
                continue  # reported when the scan is processed
        use = {v: lvl for v, lvl in found.items() if v not in touching and (levels is None or lvl in levels)}
        geometry = vertebra_geometry(lab, np.asarray(mask.affine), use) if use else []
        small = fragments(geometry)
        for g in (g for g in geometry if g.level not in small):
            if smallest is None or float(g.extent.min()) < smallest[0]:
                smallest = (float(g.extent.min()), case.patient, g.level)
    return smallest


def _check_spacing(
    cases: list[Case], spacing: float, labels: str, levels: set[str] | None, min_voxels: float, intensity: str
) -> None:
    """Refuse a ``--spacing`` that leaves a vertebra fewer than ``min_voxels`` voxels across."""
    smallest = _smallest_vertebra(cases, labels, levels, intensity) if min_voxels > 0 else None
    if smallest is not None and smallest[0] / spacing < min_voxels:
        mm, patient, level = smallest
        finer = math.floor(mm / min_voxels * 100) / 100
        raise DataError(
            None,
            f"--spacing {spacing:g} mm leaves {patient} {level} {mm / spacing:.1f} voxels across (its smallest "
            f"extent is {mm:.1f} mm; at least {min_voxels:g} voxels are needed)",
            f"use --spacing {finer:g} or finer, or --levels without {level}",
        )


def _given_splits(cases: list[Case], split: Any) -> dict[str, str]:
    """Patient -> split from the source list's ``split`` column and ``--split`` (which wins)."""
    given = {c.patient: c.split for c in cases if c.split}
    named = parse_split(split)
    unknown = sorted(set(named) - {c.patient for c in cases})
    if unknown:
        known = ", ".join(sorted(c.patient for c in cases)[:12])
        fix = f"use patient ids of the source: {known}"
        raise DataError(None, f"--split names unknown patient(s) {', '.join(unknown)}", fix)
    given = {**given, **named}
    split_given(cases, lambda c: c.patient, lambda c: c.subject, given)  # one subject, one split
    return given


def prepare(
    source: str = "example",
    out: str | os.PathLike = "data/example",
    spacing: float = 1.0,
    roi: int = 128,
    labels: str = "auto",
    workers: int = 1,
    seed: int = 0,
    cache: str | os.PathLike | None = None,
    levels: str | list[str] | None = "all",
    progress: bool = True,
    log=print,
    intensity: str = "hu",
    split: str | dict[str, str] | None = None,
    orientation: str = "check",
    min_voxels: float = MIN_VOXELS,
) -> PrepareSummary:
    """Make per-vertebra crops of every scan of ``source`` in ``out``, then its manifest and datalist.

    Args:
        source: ``example`` (or another name of :data:`scripts.data.sources.PUBLIC_SCANS`, e.g.
            ``totalseg-example``), a dataset folder, or a CSV / JSON list of CT + label map pairs.
        out: output folder.
        spacing: isotropic voxel size in mm.
        roi: cube edge in voxels.
        labels: label convention: ``auto``, ``verse`` (VerSe / CTSpine1K) or ``totalseg``.
        workers: parallel processes (one scan each).
        seed: seed of the training / validation / test split.
        cache: download cache for the example (default ``$EAR_CACHE`` or ``~/.cache/ear-bundle``).
        levels: ``all``, a list such as ``T12,L1`` or a range such as ``T1-L1``.
        progress: show a tqdm progress bar.
        log: where the summary lines go.
        intensity: how the CTs are stored: ``hu``, or ``windowed`` (0-255 after an unknown window; HU are
            recovered per scan). A source list's ``intensity``, ``scale`` and ``offset`` columns override it.
        split: ``"patient=split,..."`` (or a dict); with it, or a source list's ``split`` column, whole
            patients go where they are named and the others to training.
        orientation: ``check`` refuses a scan whose vertebrae contradict its orientation, ``warn`` keeps it.
        min_voxels: fewest output voxels across a vertebra's smallest extent (0: no check).

    Raises:
        DataError: bad arguments, a source with no usable pair, a ``--split`` naming an unknown patient, or
            a ``--spacing`` too coarse for a vertebra. Problems of single scans are reported in the summary
            instead.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    spacing, roi, labels, workers = _validate_args(spacing, roi, labels, workers)
    intensity = _validate_choice("intensity", intensity, INTENSITIES)
    orientation = _validate_choice("orientation", orientation, ORIENTATION_MODES)
    wanted = parse_levels(levels)
    given = parse_split(split)  # syntax first, patients once the source is read
    out = Path(out)
    _check_settings(out, spacing, roi)
    cases, problems = find_cases(str(source), cache if cache else default_cache_dir())
    given = _given_splits(cases, given)
    _check_spacing(cases, spacing, labels, wanted, float(min_voxels), intensity)
    summary = PrepareSummary(out=out)
    for p in problems:
        summary.messages.append(str(p))
        log(f"warning: {p}")
    results: list[CaseResult] = []
    options = (spacing, roi, labels, wanted, intensity, orientation)

    def _collect(res: CaseResult, bar) -> None:
        results.append(res)
        if res.error:
            summary.messages.append(res.error)
            bar.write(f"error: {res.error}", file=sys.stderr)
        bar.set_postfix(written=sum(len(r.written) for r in results), refresh=False)
        bar.update(1)

    with tqdm(total=len(cases), unit="scan", desc="prepare", disable=not progress, file=sys.stderr) as bar:
        if workers == 1 or len(cases) == 1:
            for case in cases:
                _collect(process_case(case, out, *options), bar)
        else:
            # submit the function of the importable module (not ``__main__``) so that spawned workers find it
            worker_fn = importlib.import_module("scripts.prepare").process_case
            threads = max(1, (os.cpu_count() or 1) // workers)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
                futures = [pool.submit(worker_fn, c, out, *options) for c in cases]
                for fut in as_completed(futures):
                    _collect(fut.result(), bar)

    skipped_rows = []
    by_patient = {c.patient: c for c in cases}
    for res in sorted(results, key=lambda r: r.patient):
        summary.written += len(res.written)
        summary.done += len(res.done)
        summary.failed += res.error is not None
        summary.warnings += res.warnings
        for level, status, row in res.skipped:
            summary.skipped.append(f"{res.patient} {level}: {_REASONS[status]}")
            skipped_rows.append(row)
        if res.fit is not None:
            summary.fits[res.patient] = res.fit.describe()
        elif res.written and by_patient[res.patient].scale is None:
            summary.fits[res.patient] = "stored in HU"
    index = rebuild_index(out, seed, skipped_rows, given) if summary.ready else None
    if index is not None:
        summary.split_by, summary.split_sizes, summary.statistics = index
    summary.seconds = time.perf_counter() - t0
    _print_summary(summary, len(cases), spacing, roi, log)
    return summary


def _print_summary(s: PrepareSummary, n_cases: int, spacing: float, roi: int, log) -> None:
    log(
        f"summary: {s.ready} vertebrae ready from {n_cases - s.failed} of {n_cases} scan(s) in {s.out} "
        f"(spacing {spacing:g} mm, cube {roi}^3) after {s.seconds:.1f} s"
    )
    log(f"  written now {s.written}, already done {s.done}, skipped {len(s.skipped)}, failed scans {s.failed}")
    for line in s.skipped:
        log(f"  skipped {line}")
    for patient, text in s.fits.items():
        log(f"  intensity {patient}: {text}")
    for line in s.warnings:
        log(f"  warning: {line}")
    if s.split_by == "vertebra":
        log("  notice: fewer than 3 patients, so the split is by vertebra (validation/test share patients)")
    if s.split_sizes:
        sizes = ", ".join(f"{k} {v}" for k, v in s.split_sizes.items())
        how = "as given per patient (the others train)" if s.split_by == "given" else f"by {s.split_by}"
        log(f"  split {how}: {sizes}")
        st = s.statistics
        of = "training" if st.get("of", "training") == "training" else "all (no training vertebrae)"
        log(f"  {of} gt statistics: mean {st['gt_mean']:.1f} HU, std {st['gt_std']:.1f} HU")
        log(f"  wrote {s.out / 'manifest.csv'} and {s.out / 'datalist.json'}")
    else:
        log("  nothing could be prepared; no manifest or datalist written (see the messages above)")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 when nothing could be prepared)."""
    import fire

    status = {"code": 0}

    def cli(
        source: str = "example",
        out: str = "data/example",
        spacing: float = 1.0,
        roi: int = 128,
        labels: str = "auto",
        workers: int = 1,
        seed: int = 0,
        cache: str | None = None,
        levels: str = "all",
        intensity: str = "hu",
        split: str = "",
        orientation: str = "check",
        min_voxels: float = MIN_VOXELS,
    ) -> None:
        """Per-vertebra training data (CT crop, ground truth, mask, manifest, datalist) from spine CT.

        Args:
            source: example | totalseg-example | a dataset folder (VerSe, CTSpine1K, TotalSegmentator) | pairs.csv
                | pairs.json
            out: output folder
            spacing: isotropic voxel size in mm
            roi: cube edge in voxels
            labels: label convention: auto | verse | totalseg
            workers: parallel processes (one scan each)
            seed: seed of the 8:1:1 split by patient
            cache: download cache for the example (default $EAR_CACHE or ~/.cache/ear-bundle)
            levels: all | T12,L1 | T1-L1
            intensity: hu | windowed (0-255 after an unknown window: HU recovered per scan)
            split: patient=training|validation|test,... (the others train); default: seeded 8:1:1 by patient
            orientation: check (refuse a scan whose anatomy contradicts its orientation) | warn
            min_voxels: fewest voxels across a vertebra's smallest extent (0: no check)
        """
        try:
            summary = prepare(
                source, out, spacing, roi, labels, workers, seed, cache, levels,
                intensity=intensity, split=split, orientation=orientation, min_voxels=min_voxels,
            )  # fmt: skip
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            status["code"] = 1
            return
        except KeyboardInterrupt:
            print(
                f"interrupted: finished vertebrae are kept in {out}; run the same command again to resume",
                file=sys.stderr,
            )
            status["code"] = 130
            return
        status["code"] = 0 if summary.ready else 1

    from scripts.errors import BundleInputError, check_cli_flags

    try:  # a misspelt option stops here, before a dataset is prepared with the defaults
        check_cli_flags(cli, sys.argv[1:] if argv is None else argv, "python -m scripts.prepare")
    except BundleInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fire.Fire(cli, command=argv, name="prepare")
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
