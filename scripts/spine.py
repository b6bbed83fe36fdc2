# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Put each reconstructed vertebra of a patient back into patient space (the paper's Fig. 5).

Usage::

    python -m scripts.spine --pred_dir eval --datalist data/example/datalist.json --out spine
    python -m scripts.spine --pred_dir eval --manifest data/example/manifest.csv --out spine --patient P1
    python -m scripts.spine reconstruct --datalist data/example64/datalist.json --out spine \
        --config_file "['configs/inference.json','configs/cpu.json']" --batch_size 8

The first two (``assemble``, the default command) put predictions written by an inference run together;
``reconstruct`` (:func:`reconstruct`) first reconstructs every vertebra from its X-ray pair with the bundle's
inference workflow (``configs/inference.json``, batched through its DataLoader, with a progress bar), then
assembles them the same way.

Every prediction (a NIfTI volume in HU) is matched to its datalist or manifest entry by the case id
(``<patient>_<level>``): the file name must be the id or start with it followed by ``_``, ``-`` or ``.``
(``P1_T12_ct_pred.nii.gz``), searched recursively under ``pred_dir``. The crop's affine comes from the
entry (the header of its ``ct`` / ``gt`` / ``mask`` file, an ``affine`` entry, or the manifest's origin
and spacing columns); a prediction on a different grid than its crop (e.g. 64^3 at 2 mm from a 128^3
crop at 1 mm) is taken to cover the same field of view. Without crop information the prediction's own
affine is used.

Per patient, under ``<out>/<patient>/``:

- ``<patient>_labels.nii.gz``: label map on a RAS grid covering all crops (spacing: the finest of the
  predictions, or ``--spacing``), one VerSe label value per level (C1-C7 = 1-7, T1-T12 = 8-19,
  L1-L6 = 20-25, S1 = 26, T13 = 28); a voxel belongs to a level where that vertebra's prediction is above
  ``--level`` HU (where two overlap, the higher HU wins).
- ``<patient>_hu.nii.gz``: the predictions resampled (linear) onto the same grid, int16 HU, -1024 outside.
- ``<patient>_<level>.stl`` / ``.ply``: one mesh per vertebra (marching cubes at ``--level`` HU in its
  own crop grid, vertices in world mm); ``<patient>_spine.stl`` / ``.ply``: all of them in one file (the
  PLY with one colour per level).
- ``<patient>_spine.png``: anterior and left-lateral surface renderings of the label map.
- ``<patient>_spine.json``: per level the label value, source prediction, centroid (mm) and mesh report, and
  (``reconstruct``, with the inference's confidence on) the confidence, its calibration flag, the TTA agreement
  and any low-confidence flag (docs/confidence.md).

Every file is written atomically, inside ``<out>``: patient names and case ids follow the inference's name
rules (:func:`scripts.io.outputs.check_case_names`: no path separator, no leading ``.``, a length the file
system takes), checked before anything is read or written.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch
from scripts.data.errors import DataError
from scripts.data.io import save_nifti
from scripts.data.labels import VERSE_LABELS
from scripts.errors import BundleInputError, XRayInputError
from scripts.io.mesh import BONE_LEVEL_HU, EmptyMeshError, mesh_report, volume_to_mesh, write_mesh
from scripts.io.outputs import REPORT_KEYS
from scripts.utils import atomic_path, file_sha256
from tqdm import tqdm

if TYPE_CHECKING:  # matplotlib and trimesh are imported where a rendering or mesh is made
    from matplotlib.figure import Figure

__all__ = [
    "Vertebra",
    "LEVEL_LABELS",
    "level_colour",
    "load_cases",
    "find_predictions",
    "reassemble",
    "render_spine",
    "spine",
    "file_record",
    "run_inference",
    "reconstruct",
    "radiographs",
    "RADIOGRAPH_MODELS",
    "radiograph_configs",
    "find_vertebrae",
    "file_px",
    "check_output_names",
    "main",
]

logger = logging.getLogger(__name__)

#: level -> label value in the written label map (VerSe / CTSpine1K numbering; S1 = the sacrum's 26)
LEVEL_LABELS: dict[str, int] = {**{v: k for k, v in VERSE_LABELS.items()}, "S1": 26}
_BACKGROUND_HU = -1024.0
_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def level_colour(label: int) -> np.ndarray:
    """RGB colour (0-1) of a label value: ``tab10`` cycled, so neighbouring levels differ."""
    from matplotlib import colormaps

    return np.asarray(colormaps["tab10"]((int(label) - 1) % 10)[:3])


@dataclass
class Vertebra:
    """One vertebra of a patient: its case id, level, crop geometry (if known) and prediction file.

    For :func:`reconstruct` also its two X-ray images (``xray``, absolute paths), their view angles and,
    where no crop geometry is known, the world position of the crop centre (``centre_mm``).
    """

    id: str
    patient: str
    level: str
    crop_affine: np.ndarray | None = None
    crop_shape: tuple[int, int, int] | None = None
    pred: str | None = None
    xray: list[str] | None = None
    angles: Any = None
    centre_mm: tuple[float, float, float] | None = None


def _affine_from_value(value: Any, where: str) -> np.ndarray:
    try:
        a = np.asarray(json.loads(value) if isinstance(value, str) else value, dtype=np.float64)
        if a.size == 16:
            return a.reshape(4, 4)
    except (ValueError, TypeError):
        pass
    raise DataError(where, f"affine {value!r} is not 16 numbers", "give the 4x4 voxel -> world (mm) matrix")


def _geometry_from_files(item: dict[str, Any], base: Path) -> tuple[np.ndarray | None, tuple[int, int, int] | None]:
    if item.get("affine") is not None:
        shape = tuple(int(n) for n in item["shape"]) if item.get("shape") else None
        return _affine_from_value(item["affine"], str(item.get("id", "entry"))), shape  # type: ignore[return-value]
    for key in ("ct", "gt", "mask"):
        value = item.get(key)
        if isinstance(value, str) and value:
            path = Path(value) if os.path.isabs(value) else base / value
            if path.is_file():
                img = nib.load(str(path))  # header only: the data is not read
                return np.asarray(img.affine, dtype=np.float64), tuple(int(n) for n in img.shape[:3])  # type: ignore[return-value]
    return None, None


def _geometry_from_manifest_row(row: dict[str, str], base: Path) -> tuple[np.ndarray | None, tuple | None]:
    affine, shape = _geometry_from_files(row, base)
    if affine is not None:
        return affine, shape
    keys = {k.lower(): k for k in row}
    origin_cols = [keys.get(f"origin_{a}_mm") or keys.get(f"origin_{a}") for a in "xyz"]
    spacing_col = keys.get("spacing_mm") or keys.get("spacing")
    if all(origin_cols) and spacing_col:
        s = float(row[spacing_col])
        affine = np.diag([s, s, s, 1.0])
        affine[:3, 3] = [float(row[c]) for c in origin_cols]  # type: ignore[index]
        roi = keys.get("roi") or keys.get("roi_size")
        return affine, ((int(row[roi]),) * 3 if roi else None)
    return None, None


def load_cases(
    datalist: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    sections: Sequence[str] = ("training", "validation", "test"),
) -> list[Vertebra]:
    """Read the vertebrae (id, patient, level, crop geometry) from a MONAI datalist or a manifest CSV.

    Args:
        datalist: datalist JSON (entries with ``id``, ``patient``, ``level`` and ``ct`` / ``gt`` / ``mask``
            paths relative to its folder, or an ``affine``).
        manifest: manifest CSV with ``patient`` and ``level`` columns (``id`` optional) and the crop's
            geometry as ``ct`` / ``gt`` / ``mask`` paths, an ``affine`` column (16 numbers, JSON), or
            ``origin_x_mm, origin_y_mm, origin_z_mm, spacing_mm, roi`` (RAS, isotropic; as written by
            ``python -m scripts.prepare``) columns; rows whose ``status`` is not ``ok`` are skipped.
        sections: datalist sections to read (a datalist that is a plain JSON list is read whole).

    Entries may also name their two X-ray images (``xray``, or ``drr_png`` as ``python -m scripts.simulate``
    writes them; paths relative to the file), their angles (``angles`` / ``drr_angles``) and the crop centre in
    world mm (``centre_mm``), which :func:`reconstruct` uses.
    """
    if (datalist is None) == (manifest is None):
        raise DataError(None, "give exactly one of --datalist and --manifest", "name the prepared dataset's file")
    source = Path(datalist if datalist is not None else manifest)  # type: ignore[arg-type]
    if not source.is_file():
        raise DataError(source, "file not found", "run `python -m scripts.prepare` or check the path")
    rows: list[dict[str, Any]] = []
    try:
        if datalist is not None:
            content = json.loads(source.read_text())
            secs = [sections] if isinstance(sections, str) else list(sections)
            if isinstance(content, list):
                rows = [item for item in content if isinstance(item, dict)]
            else:
                rows = [item for s in secs for item in (content.get(s) or [])]
        else:
            with open(source, newline="") as f:
                rows = list(csv.DictReader(f))
    except (ValueError, OSError, csv.Error) as e:
        raise DataError(
            source, f"cannot read it ({e})", "give the datalist.json / manifest.csv of a prepared dataset"
        ) from e
    cases, seen = [], set()
    for i, row in enumerate(rows):
        if str(row.get("status") or "ok") != "ok":  # manifest rows of skipped vertebrae (cut off, empty)
            continue
        patient, level = str(row.get("patient", "") or ""), str(row.get("level", "") or "")
        cid = str(row.get("id") or (f"{patient}_{level}" if patient and level else ""))
        if not cid or not patient or not level:
            raise DataError(
                source, f"entry {i} lacks 'patient' or 'level' ({row})", "use a datalist from scripts.prepare"
            )
        if cid in seen:
            continue
        seen.add(cid)
        geo = _geometry_from_files if datalist is not None else _geometry_from_manifest_row
        affine, shape = geo(row, source.parent)
        case = Vertebra(cid, patient, level, affine, shape)
        files = row.get("xray") or row.get("drr_png")
        if isinstance(files, (list, tuple)):
            # absolute: the inference reads them from a datalist of its own, in another folder
            case.xray = [str(f if os.path.isabs(f) else os.path.abspath(source.parent / f)) for f in files]
            case.angles = row.get("angles", row.get("drr_angles"))
        if row.get("centre_mm") is not None:
            centre = np.asarray(row["centre_mm"], dtype=np.float64).reshape(-1)
            if centre.size != 3 or not np.all(np.isfinite(centre)):
                raise DataError(source, f"centre_mm of {cid} is not 3 numbers", "give the crop centre as [x, y, z] mm")
            case.centre_mm = tuple(float(c) for c in centre)
        cases.append(case)
    if not cases:
        raise DataError(source, f"no vertebra entries (sections {list(sections)})", "check the file and --sections")
    return cases


def check_output_names(cases: Sequence[Vertebra], out: str | os.PathLike, ids: bool = False) -> None:
    """Check, before any work, that every output of ``cases`` stays inside ``out``: the patient names (a folder
    each), the levels (in file names) and, with ``ids``, the case ids (``vertebrae/<id>_hu.nii.gz``).

    Patient names and ids follow the rules of the inference's case names
    (:func:`scripts.io.outputs.check_case_names`).

    Raises:
        BundleInputError: a patient name or id that holds a path separator, starts with ``.``, is too long for
            the file system, or names the same folder or file as another (compared without case).
        DataError: an unknown level.
    """
    from scripts.io.outputs import check_case_names

    check_case_names(list(dict.fromkeys(c.patient for c in cases)), "patient", output_dir=out)
    if ids:
        check_case_names([c.id for c in cases], "case id", output_dir=out)
    levels = [c.id for c in cases if c.level not in LEVEL_LABELS]
    if levels:
        raise DataError(None, f"unknown level of {', '.join(levels[:4])}", f"use one of {', '.join(LEVEL_LABELS)}")


def find_predictions(pred_dir: str | os.PathLike, cases: Sequence[Vertebra], postfix: str = "") -> None:
    """Fill ``case.pred`` for each case whose prediction NIfTI is under ``pred_dir`` (see the module doc)."""
    root = Path(pred_dir)
    if not root.is_dir():
        raise DataError(root, "prediction folder not found", "give the output_dir of the inference run as --pred_dir")
    files = sorted(p for p in root.rglob("*") if p.is_file() and _NIFTI_RE.search(p.name))
    stems = [(_NIFTI_RE.sub("", p.name), p) for p in files]
    for case in cases:
        hits = [
            p
            for stem, p in stems
            if (stem == case.id or (stem.startswith(case.id) and stem[len(case.id)] in "_-."))
            and (not postfix or stem.endswith(f"_{postfix}") or stem == postfix)
        ]
        if len(hits) > 1:
            shown = ", ".join(str(p.relative_to(root)) for p in hits[:4])
            names = {p.name for p in hits}
            fix = (
                "pick one with --postfix (the output_postfix of the inference run, e.g. --postfix hu)"
                if len(names) > 1
                else "they are one run's outputs in different folders: give the folder of one run as --pred_dir"
            )
            raise DataError(root, f"{len(hits)} predictions match {case.id}: {shown}", fix)
        case.pred = str(hits[0]) if hits else None


def _pred_affine(case: Vertebra, pred_shape: Sequence[int], pred_affine: np.ndarray, affine_from: str) -> np.ndarray:
    """Voxel -> world matrix of a prediction: its crop's (see the module doc), its own, or moved to ``centre_mm``."""
    shape = np.asarray(pred_shape[:3], dtype=np.float64)
    if affine_from == "pred" or case.crop_affine is None:
        if affine_from == "crop":
            raise DataError(case.pred, f"no crop geometry for {case.id}", "give a datalist with 'ct' paths")
        own = np.asarray(pred_affine, dtype=np.float64).copy()
        if affine_from == "auto" and case.centre_mm is not None:  # the grid keeps its axes, centred there
            own[:3, 3] += np.asarray(case.centre_mm) - (own[:3, :3] @ ((shape - 1.0) / 2.0) + own[:3, 3])
        return own
    crop_shape = np.asarray(case.crop_shape if case.crop_shape else shape, dtype=np.float64)
    if np.array_equal(crop_shape, shape):
        return case.crop_affine
    # same field of view on a different grid: voxel i of the prediction sits at crop index
    # zoom * (i + 0.5) - 0.5 (voxel centres, the outer faces of both grids coincide)
    zoom = crop_shape / shape
    logger.info("%s: prediction grid %s differs from the crop's %s, same field of view assumed",
                case.id, tuple(int(n) for n in shape), tuple(int(n) for n in crop_shape))  # fmt: skip
    scale = np.eye(4)
    scale[:3, :3] = np.diag(zoom)
    scale[:3, 3] = (zoom - 1.0) / 2.0
    return case.crop_affine @ scale


def _target_grid(vols: Sequence[tuple[np.ndarray, tuple[int, ...]]], spacing: float | None) -> tuple[np.ndarray, tuple]:
    corners_all = []
    for affine, shape in vols:
        idx = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
        corners_all.append(idx @ affine[:3, :3].T + affine[:3, 3])
    corners = np.concatenate(corners_all)
    if spacing is None:
        spacing = min(float(np.linalg.norm(a[:3, :3], axis=0).min()) for a, _ in vols)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    shape = tuple(int(math.floor((h - lo_) / spacing + 1e-6)) + 1 for lo_, h in zip(lo, hi))
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = lo
    return affine, shape


def reassemble(
    items: Sequence[tuple[Vertebra, np.ndarray, np.ndarray]],
    level: float = BONE_LEVEL_HU,
    spacing: float | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample vertebra volumes (HU) onto one RAS grid covering them all.

    Args:
        items: ``(vertebra, volume (X, Y, Z) in HU, its voxel -> world affine)``.
        level: HU above which a voxel belongs to the vertebra.
        spacing: grid spacing in mm; ``None``: the finest spacing of the volumes.
        progress: show a progress bar.

    Returns:
        ``(labels, hu, affine)``: label map (uint8, VerSe values), HU volume (float32) and the grid's affine.
    """
    from nibabel.processing import resample_from_to  # (imports scipy)

    affine, shape = _target_grid([(a, v.shape) for _, v, a in items], spacing)
    hu = np.full(shape, _BACKGROUND_HU, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    best = np.full(shape, -np.inf, dtype=np.float32)
    inv = np.linalg.inv(affine)
    for case, vol, vaff in tqdm(items, desc="resample", disable=not progress):
        # only the target sub-box this crop covers is resampled
        n = vol.shape
        idx = np.array([[i, j, k] for i in (0, n[0] - 1) for j in (0, n[1] - 1) for k in (0, n[2] - 1)])
        t = (idx @ vaff[:3, :3].T + vaff[:3, 3]) @ inv[:3, :3].T + inv[:3, 3]
        lo = np.clip(np.floor(t.min(axis=0) + 1e-6).astype(int), 0, None)
        hi = np.minimum(np.ceil(t.max(axis=0) - 1e-6).astype(int) + 1, shape)
        sub_aff = affine.copy()
        sub_aff[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
        sub_shape = tuple(int(h - lo_) for lo_, h in zip(lo, hi))
        res = resample_from_to(
            nib.Nifti1Image(vol.astype(np.float32), vaff),
            (sub_shape, sub_aff),
            order=1,
            mode="constant",
            cval=_BACKGROUND_HU,
        )
        r = np.asarray(res.dataobj, dtype=np.float32)
        box = tuple(slice(lo_, h) for lo_, h in zip(lo, hi))
        hu[box] = np.maximum(hu[box], r)
        win = (r > level) & (r > best[box])
        labels[box][win] = LEVEL_LABELS[case.level]
        best[box][win] = r[win]
    return labels, hu, affine


def _shade(hit: np.ndarray, depth: np.ndarray, spacing: float) -> np.ndarray:
    """Lambert shading (light from the viewer) from the normals of a depth map; 0 where nothing is hit.

    A z-buffer rendering of the label map, written here because matplotlib's 3-D axes cannot draw the
    millions of triangles of a whole spine in reasonable time, and it needs no extra renderer package.
    """
    d = np.where(hit, depth, np.nan) * spacing
    gu, gv = np.gradient(np.nan_to_num(d, nan=np.nanmax(d) if hit.any() else 0.0))
    gu, gv = np.clip(gu, -5, 5), np.clip(gv, -5, 5)
    shade = 1.0 / np.sqrt(1.0 + gu**2 + gv**2)
    return np.where(hit, 0.25 + 0.75 * shade, 0.0)


def render_spine(labels: np.ndarray, affine: np.ndarray, level_names: dict[int, str], title: str = "") -> Figure:
    """Anterior and left-lateral surface renderings of a label map (RAS grid), coloured per level.

    Anterior view: superior up, the patient's right on the image's left. Left lateral view (seen from the
    patient's left side): superior up, anterior on the image's left.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spacing = float(np.linalg.norm(affine[:3, :3], axis=0).mean())
    fg = labels > 0
    views = []
    # anterior: viewer at +y looking towards -y; the first hit is the largest y index
    hit_a = fg.any(axis=1)
    first_a = labels.shape[1] - 1 - np.argmax(fg[:, ::-1, :], axis=1)
    lab_a = np.take_along_axis(labels, first_a[:, None, :], axis=1)[:, 0, :]
    views.append(("anterior", hit_a, -first_a.astype(float), lab_a))
    # left lateral: viewer at -x (patient's left) looking towards +x; the first hit is the smallest x index
    hit_l = fg.any(axis=0)
    first_l = np.argmax(fg, axis=0)
    lab_l = np.take_along_axis(labels, first_l[None, :, :], axis=0)[0]
    views.append(("left lateral", hit_l, first_l.astype(float), lab_l))
    values = sorted(int(v) for v in np.unique(labels) if v > 0)
    colour = {v: level_colour(v) for v in values}
    fig = Figure(figsize=(10, 8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, (name, hit, depth, lab) in zip(axes, views):
        shade = _shade(hit, depth, spacing)
        rgb = np.ones(lab.shape + (3,))
        for v, c in colour.items():
            m = lab == v
            rgb[m] = c[None, :] * shade[m][:, None]
        # (a, z) plane -> display rows = z from superior, columns = a reversed (see the docstring)
        ax.imshow(np.flip(rgb, (0, 1)).transpose(1, 0, 2), interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
        for v in values:
            cols, rows = np.nonzero(lab == v)
            if len(rows):
                ax.text(
                    lab.shape[0] - 1 - cols.mean(), lab.shape[1] - 1 - rows.mean(), level_names.get(v, str(v)),
                    fontsize=7, color="black", ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.6, "lw": 0},
                )  # fmt: skip
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class _Stopwatch:
    """Adds the seconds spent in ``with watch("stage"):`` blocks to ``timings[stage]`` (no-op without a dict)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.stage = ""
        self.t0 = 0.0

    def __call__(self, stage: str) -> _Stopwatch:
        self.stage = stage
        return self

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        if self.timings is not None:
            self.timings[self.stage] = self.timings.get(self.stage, 0.0) + time.perf_counter() - self.t0


def _read_prediction(case: Vertebra) -> tuple[np.ndarray, np.ndarray]:
    """The HU volume (X, Y, Z) of a prediction file and its own affine."""
    try:
        img = nib.load(case.pred)
        vol = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:
        raise DataError(case.pred, f"cannot read the prediction ({e})", "re-run inference for this case") from e
    vol = vol.reshape(vol.shape[:3]) if vol.ndim == 4 and vol.shape[3] == 1 else vol
    if vol.ndim != 3:
        raise DataError(case.pred, f"prediction of shape {vol.shape} is not 3-D", "give the HU volume")
    return vol, np.asarray(img.affine, dtype=np.float64)


def _write_patient(
    patient: str,
    cases: Sequence[Vertebra],
    out: Path,
    level: float,
    spacing: float | None,
    affine_from: str,
    formats: Sequence[str],
    volumes: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    timings: dict[str, float] | None = None,
    confidences: Mapping[str, Mapping[str, Any]] | None = None,
    models: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Meshes, label map, HU volume, rendering and report of one patient's vertebrae.

    ``volumes`` (``{case id: (HU volume (X, Y, Z), its own affine)}``) gives the predictions in memory;
    without it they are read from ``case.pred``. ``timings`` collects seconds per stage. ``confidences`` (by case
    id) adds each vertebra's confidence entries to the report, ``models`` the model files that ran (``"models"``).
    """
    import trimesh

    watch = _Stopwatch(timings)
    folder = out / patient
    items, meshes, summary = [], [], {}
    for case in tqdm(cases, desc=f"{patient}: meshes", leave=False):
        if case.level not in LEVEL_LABELS:
            raise DataError(case.pred, f"unknown level {case.level!r}", f"use one of {', '.join(LEVEL_LABELS)}")
        with watch("read"):
            vol, own = volumes[case.id] if volumes is not None else _read_prediction(case)
        vaff = _pred_affine(case, vol.shape, own, affine_from)
        items.append((case, vol, vaff))
        entry: dict[str, Any] = {"label": LEVEL_LABELS[case.level], "id": case.id, "prediction": case.pred}
        entry.update((confidences or {}).get(case.id, {}))
        try:
            with watch("mesh"):
                mesh = volume_to_mesh(vol, vaff, level=level)
        except EmptyMeshError as e:
            logger.warning("%s: no mesh, %s", case.id, e)
            entry["mesh"] = None
        else:
            with watch("mesh_write"):
                files = write_mesh(mesh, folder / f"{patient}_{case.level}", formats)
            with watch("mesh"):
                entry["mesh"] = asdict(mesh_report(mesh, level, files))
            entry["centroid_mm"] = [float(c) for c in mesh.vertices.mean(axis=0)]
            meshes.append((case, mesh))
        summary[case.level] = entry
    with watch("assemble"):
        labels, hu, affine = reassemble(items, level, spacing, progress=True)
    with watch("write"):
        save_nifti(labels, affine, folder / f"{patient}_labels.nii.gz")
        save_nifti(np.clip(np.rint(hu), -32768, 32767).astype(np.int16), affine, folder / f"{patient}_hu.nii.gz")
    combined = None
    if meshes:
        with watch("mesh_write"):
            parts = []
            for case, m in meshes:
                m = m.copy()
                m.visual.vertex_colors = np.append(level_colour(LEVEL_LABELS[case.level]) * 255, 255).astype(np.uint8)
                parts.append(m)
            combined = trimesh.util.concatenate(parts)
            files = write_mesh(combined, folder / f"{patient}_spine", formats)
            combined = asdict(mesh_report(combined, level, files))
    names = {LEVEL_LABELS[c.level]: c.level for c in cases}
    with watch("render"):
        fig = render_spine(labels, affine, names, title=f"{patient}: {len(cases)} vertebrae")
        with atomic_path(folder / f"{patient}_spine.png") as tmp:
            fig.savefig(tmp, format="png")
    report = {
        "patient": patient,
        "grid": {"shape": list(labels.shape), "affine": affine.tolist(), "spacing_mm": float(affine[0, 0])},
        "level_hu": level,
        "labels": {c.level: LEVEL_LABELS[c.level] for c in cases},
        "vertebrae": summary,
        "combined_mesh": combined,
    }
    if models is not None:
        report["models"] = dict(models)
    with watch("write"), atomic_path(folder / f"{patient}_spine.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return report


def spine(
    pred_dir: str,
    datalist: str | None = None,
    manifest: str | None = None,
    out: str = "./spine",
    patient: str | Sequence[str] | None = None,
    sections: Sequence[str] = ("training", "validation", "test"),
    postfix: str = "",
    level: float = BONE_LEVEL_HU,
    spacing: float | None = None,
    affine_from: str = "auto",
    formats: Sequence[str] = ("stl", "ply"),
) -> dict[str, Any]:
    """Reassemble the predicted vertebrae of each patient in patient space (see the module docstring).

    Args:
        pred_dir: folder with the predicted volumes (NIfTI, HU), searched recursively.
        datalist: prepared datalist JSON (or use ``manifest``).
        manifest: prepared manifest CSV (or use ``datalist``).
        out: output folder; one sub-folder per patient.
        patient: only these patient(s).
        sections: datalist sections to read.
        postfix: only prediction files whose name ends with ``_<postfix>`` (e.g. ``pred``).
        level: bone iso-level in HU for label map and meshes.
        spacing: grid spacing of the label map in mm (default: the finest of the predictions).
        affine_from: ``"auto"`` (crop geometry when known, else the prediction's), ``"crop"`` or ``"pred"``.
        formats: mesh formats.

    Returns:
        ``{patient: report}`` (also written as ``<patient>_spine.json``).
    """
    if affine_from not in ("auto", "crop", "pred"):
        raise DataError(None, f"--affine_from {affine_from!r} is unknown", "use auto, crop or pred")
    cases = load_cases(datalist, manifest, sections)
    if patient is not None:
        wanted = {str(patient)} if isinstance(patient, (str, int)) else {str(p) for p in patient}
        cases = [c for c in cases if c.patient in wanted]
        if not cases:
            raise DataError(datalist or manifest, f"no vertebrae of patient(s) {sorted(wanted)}", "check --patient")
    check_output_names(cases, out)
    find_predictions(pred_dir, cases, postfix)
    missing = [c.id for c in cases if c.pred is None]
    found = [c for c in cases if c.pred is not None]
    if not found:
        raise DataError(
            pred_dir, f"no prediction matches any of the {len(cases)} vertebrae (e.g. {cases[0].id})",
            "run inference first, or point --pred_dir at its output_dir",
        )  # fmt: skip
    if missing:
        logger.warning("no prediction for %d vertebrae, skipped: %s", len(missing), ", ".join(missing))
    by_patient: dict[str, list[Vertebra]] = {}
    for c in found:
        by_patient.setdefault(c.patient, []).append(c)
    reports = {}
    for pid, group in tqdm(sorted(by_patient.items()), desc="patients"):
        reports[pid] = _write_patient(pid, group, Path(out), float(level), spacing, affine_from, formats)
        print(f"{pid}: {len(group)} vertebrae -> {Path(out) / pid}", file=sys.stderr)
    return reports


#: the bundle root: the folder above ``scripts/``
BUNDLE_ROOT = Path(__file__).resolve().parents[1]

#: the reconstruction models of full radiographs (``--reconstruction_model``): their inference config files.
#: ``body`` (default) is the only shipped model trained on X-rays through the whole body, which is what a radiograph
#: shows; ``cpu`` and ``paper`` were trained on X-rays of the isolated vertebra (docs/body-xrays.md).
RADIOGRAPH_MODELS: dict[str, tuple[str, ...]] = {
    "body": ("configs/inference.json", "configs/cpu.json", "configs/body_model.json"),
    "cpu": ("configs/inference.json", "configs/cpu.json"),
    "paper": ("configs/inference.json",),
}


def radiograph_configs(model: str = "body", bundle_root: str | os.PathLike = BUNDLE_ROOT) -> list[str]:
    """The inference config files (absolute paths) of a reconstruction model of :data:`RADIOGRAPH_MODELS`.

    Raises:
        DataError: an unknown model name.
    """
    if model not in RADIOGRAPH_MODELS:
        raise DataError(
            None, f"unknown reconstruction model {model!r}", f"use one of {', '.join(sorted(RADIOGRAPH_MODELS))}"
        )
    return [str(Path(bundle_root) / c) for c in RADIOGRAPH_MODELS[model]]


def _check_overrides(
    files: str | os.PathLike | Sequence[str], overrides: Mapping[str, Any], options: Sequence[str] = ()
) -> None:
    """Refuse overrides that none of the config files defines (the workflow would add them and go on).

    ``options`` are the command's own options: a misspelt one (``--lat`` for ``--lateral``) lands in the overrides,
    so the closest name is sought among them and the config's keys alike.
    """
    from monai.bundle import ConfigParser
    from scripts.errors import unknown_override

    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    unknown = unknown_override(list(overrides), list(ConfigParser.load_config_files([str(f) for f in files])), options)
    if unknown is not None:
        key, hint = unknown
        what = "an option of this command nor a key" if options else "a key"
        raise DataError(
            None, f"--{key} is {'neither ' if options else 'not '}{what} of the inference config",
            hint or "check the config's keys",
        )  # fmt: skip


def _own_options(fn: Any) -> list[str]:
    """The command-line options of a command that passes the rest to the inference config (``**overrides``)."""
    from scripts.errors import command_options

    return [n for n in command_options(fn) if n != "timings"]


#: the confidence entries of an inference output (scripts.confidence.TTAConfidenced) kept in the spine report.
CONFIDENCE_KEYS = REPORT_KEYS


def _collect_predictions(
    engine: Any, volumes: dict[str, tuple[np.ndarray, np.ndarray]], confidences: dict[str, dict] | None = None
) -> None:
    """After each iteration: every item's HU volume (X, Y, Z) and the affine of its expanded input, by case id, and
    (into ``confidences``) its confidence entries when inference computed them (the input type check's with the
    confidence off)."""
    for item, output in zip(engine.state.batch, engine.state.output):
        image = item["image"]
        affine = np.asarray(torch.as_tensor(getattr(image, "affine", torch.eye(4))).cpu(), dtype=np.float64)
        volumes[str(item["id"])] = (np.asarray(torch.as_tensor(output["pred"])[0].float().cpu()), affine)
        if confidences is not None and any(k in output for k in CONFIDENCE_KEYS):
            confidences[str(item["id"])] = {
                k: (v.item() if hasattr(v, "item") else v) for k, v in output.items() if k in CONFIDENCE_KEYS
            }


def _stage_timer(engine: Any, resume: Any, pause: Any) -> Any:
    """An ignite ``Timer`` of the time between the ``resume`` and ``pause`` events of ``engine``, summed over the
    run (it is reset when the run starts and paused at once, so that only those spans count)."""
    from ignite.engine import Events
    from ignite.handlers import Timer

    timer = Timer().attach(engine, start=Events.STARTED, resume=resume, pause=pause)
    engine.add_event_handler(Events.STARTED, timer.pause)
    return timer


def _time_stages(engine: Any) -> dict[str, Any]:
    """Timers of the inference's stages: ``load`` (reading and expanding the pairs, in the DataLoader),
    ``network`` and ``hu`` (decollation and the conversion to HU); read them with :func:`_read_timers`."""
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents

    return {
        "load": _stage_timer(engine, Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED),
        "network": _stage_timer(engine, Events.ITERATION_STARTED, IterationEvents.FORWARD_COMPLETED),
        "hu": _stage_timer(engine, IterationEvents.FORWARD_COMPLETED, Events.ITERATION_COMPLETED),
    }


def _read_timers(timers: Mapping[str, Any], timings: dict[str, float] | None) -> None:
    if timings is not None:
        for stage, timer in timers.items():
            timings[stage] = timings.get(stage, 0.0) + float(timer.value())


def file_record(path: str | os.PathLike) -> dict[str, str]:
    """``{"file", "sha256"}`` of a model file, for reports: the path relative to the bundle root when inside it."""
    p = Path(path).resolve()
    name = os.path.relpath(p, BUNDLE_ROOT) if p.is_relative_to(BUNDLE_ROOT.resolve()) else str(p)
    return {"file": name, "sha256": file_sha256(p)}


def run_inference(
    cases: Sequence[Mapping[str, Any]],
    config_file: str | Sequence[str] | None = None,
    batch_size: int = 8,
    output_dir: str | os.PathLike | None = None,
    timings: dict[str, float] | None = None,
    progress: bool = True,
    confidences: dict[str, dict] | None = None,
    model: dict[str, str] | None = None,
    **overrides: Any,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reconstruct inference cases with the bundle's inference workflow, ``batch_size`` cases per network call.

    The workflow of ``config_file`` (``configs/inference.json``, the files merged in order as by
    ``python -m monai.bundle run``) is built with :func:`monai.bundle.create_workflow`, given the cases as its
    datalist, ``dataloader#batch_size`` and ``overrides``, and run; its own checks (the cases, the model
    contract) stop a bad input before any reconstruction. Its writers (``save_transforms``) are left out: the
    HU volumes are collected in memory, after the workflow's conversion to HU.

    Args:
        cases: ``{"xray": [view 1, view 2], "angles": ..., "id": ...}`` items of an inference datalist.
        config_file: inference config files; default the bundle's ``configs/inference.json``.
        batch_size: cases per network call (the DataLoader's batch size).
        output_dir: the run's ``output_dir`` (its case names are checked against it; nothing is written there).
        timings: if given, seconds per stage are added to it: ``workflow`` (parsing, the checks, the network and
            its weights), ``load``, ``network``, ``hu``.
        progress: show a progress bar over the batches.
        confidences: if given, each case's confidence entries (``confidence``, ``confidence_calibrated``,
            ``tta_agreement``, ``window_centring``, ``flag``, ``input_type``, ``input_background_share``;
            docs/confidence.md) are put in it by case id.
        model: if given, the model file the workflow loaded is put in it (:func:`file_record`: ``file``,
            ``sha256``).
        overrides: values of the inference config (``ckpt_dir``, ``invert``, ``sdd``, ``device``, ...).

    Returns:
        ``{case id: (HU volume (X, Y, Z), the voxel -> world affine of the expanded input)}``.

    Raises:
        DataError: a batch size below 1, or an override that no config file defines.
        BundleInputError: a bad case, or a model that does not fit the config (the workflow's checks).
    """
    import tempfile

    from ignite.engine import Events
    from monai.bundle import create_workflow

    if int(batch_size) < 1:
        raise DataError(None, f"--batch_size {batch_size} is not positive", "give a batch size of 1 or more")
    files = [str(BUNDLE_ROOT / "configs" / "inference.json")] if config_file is None else config_file
    files = [files] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]
    _check_overrides(files, overrides)
    watch = _Stopwatch(timings)
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        datalist = Path(tmp) / "cases.json"
        datalist.write_text(json.dumps([dict(c) for c in cases]))
        settings = {"datalist": str(datalist), "save_transforms": [], "dataloader#batch_size": int(batch_size)}
        if output_dir is not None:
            settings["output_dir"] = str(output_dir)
        with watch("workflow"):
            workflow = create_workflow(config_file=files, workflow_type="infer", **{**overrides, **settings})
        if model is not None and workflow.parser.get_parsed_content("load_pretrain"):
            model.update(file_record(workflow.parser.get_parsed_content("model_file")))
        evaluator = workflow.evaluator
        timers = _time_stages(evaluator)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, _collect_predictions, volumes, confidences)
        if progress:
            from ignite.handlers import ProgressBar

            ProgressBar(desc="reconstruct").attach(evaluator)
        workflow.run()
        workflow.finalize()
    _read_timers(timers, timings)
    return volumes


def _save_vertebrae(
    cases: Sequence[Vertebra],
    volumes: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out: Path,
    timings: dict[str, float] | None = None,
) -> None:
    """Write each reconstruction, placed in patient space, as ``<out>/<patient>/vertebrae/<id>_hu.nii.gz`` (the
    case's ``pred``, which the report names)."""
    watch = _Stopwatch(timings)
    for case in cases:
        vol, aff = volumes[case.id]
        with watch("write"):
            placed = _pred_affine(case, vol.shape, aff, "auto")
            path = out / case.patient / "vertebrae" / f"{case.id}_hu.nii.gz"
            save_nifti(vol, placed, path)
            case.pred = str(path)


def reconstruct(
    datalist: str,
    out: str = "./spine",
    config_file: str | Sequence[str] | None = None,
    batch_size: int = 8,
    patient: str | Sequence[str] | None = None,
    sections: Sequence[str] = ("training", "validation", "test"),
    level: float = BONE_LEVEL_HU,
    spacing: float | None = None,
    formats: Sequence[str] = ("stl", "ply"),
    save_vertebrae: bool = True,
    device: str | None = None,
    timings: dict[str, float] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Reconstruct every vertebra of each patient from its X-ray pair, in batches, and assemble the spine.

    ``python -m scripts.spine reconstruct --datalist data/example64/datalist.json --config_file
    "['configs/inference.json','configs/cpu.json']" --out spine``

    The vertebrae come from ``datalist`` (a prepared dataset's datalist after ``python -m scripts.simulate``,
    whose items name their pairs as ``drr_png``, or a JSON list of ``{"xray": [...], "angles": ...,
    "id", "patient", "level"}`` items), each placed in patient space by its crop (``ct`` / ``gt`` / ``mask``
    file or ``affine``) or by ``centre_mm``, the world position of its crop centre. The reconstruction is the
    bundle's inference workflow (:func:`run_inference`: its checks read every pair before any is
    reconstructed, its DataLoader batches them); this adds the placement and the assembly. Output per patient
    under ``<out>/<patient>/``: the files of :func:`spine` and, with ``save_vertebrae``,
    ``vertebrae/<id>_hu.nii.gz`` (each reconstruction placed in patient space, so ``python -m scripts.spine
    --pred_dir <out>/<patient>/vertebrae --datalist <the same> --affine_from pred`` reassembles them again).

    Args:
        datalist: the datalist (see above).
        out: output folder; one sub-folder per patient.
        config_file: inference config files (default ``configs/inference.json``; add ``configs/cpu.json``
            for the CPU model).
        batch_size: vertebrae per network call.
        patient: only these patient(s).
        sections: datalist sections to read.
        level: bone iso-level in HU.
        spacing: grid spacing of the label map in mm (default: the predictions').
        formats: mesh formats.
        save_vertebrae: also write each vertebra's HU volume.
        device: where the network runs (default the config's ``device``).
        timings: if given, seconds per stage are added to it (those of :func:`run_inference`, then ``read``,
            ``mesh``, ``mesh_write``, ``assemble``, ``write``, ``render``).
        overrides: inference config values (``ckpt_dir``, ``invert``, ``sdd``, ...).

    Returns:
        ``{patient: report}``, as :func:`spine`.
    """
    cases = load_cases(datalist, None, sections)
    if patient is not None:
        wanted = {str(patient)} if isinstance(patient, (str, int)) else {str(p) for p in patient}
        cases = [c for c in cases if c.patient in wanted]
        if not cases:
            raise DataError(datalist, f"no vertebrae of patient(s) {sorted(wanted)}", "check --patient")
    pairs = [c for c in cases if c.xray]
    if not pairs:
        raise DataError(
            datalist, f"none of the {len(cases)} vertebrae names its X-ray pair ('xray' or 'drr_png')",
            f"run python -m scripts.simulate --data {Path(datalist).parent}, or add the two image paths",
        )  # fmt: skip
    if len(pairs) < len(cases):
        skipped = ", ".join(c.id for c in cases if not c.xray)
        logger.warning("no X-ray pair for %d vertebrae, skipped: %s", len(cases) - len(pairs), skipped)
    unplaced = [c.id for c in pairs if c.crop_affine is None and c.centre_mm is None]
    if unplaced:
        raise DataError(
            datalist, f"no position in patient space for {', '.join(unplaced[:4])}",
            "give each entry its crop ('ct' path or 'affine') or the crop centre 'centre_mm' ([x, y, z] mm)",
        )  # fmt: skip
    levels = [c.id for c in pairs if c.level not in LEVEL_LABELS]
    if levels:
        raise DataError(datalist, f"unknown level of {', '.join(levels[:4])}", f"use one of {', '.join(LEVEL_LABELS)}")
    check_output_names(pairs, out, ids=save_vertebrae)
    if overrides:  # a misspelt option lands here: named among the command's options and the config's keys
        files = [str(BUNDLE_ROOT / "configs" / "inference.json")] if config_file is None else config_file
        _check_overrides(files, overrides, _own_options(reconstruct))
    if device is not None:
        overrides["device"] = f"$torch.device({str(device)!r})"
    inputs = [{"xray": c.xray, "id": c.id, **({} if c.angles is None else {"angles": c.angles})} for c in pairs]
    confidences: dict[str, dict] = {}
    reconstruction: dict[str, str] = {}
    volumes = run_inference(
        inputs, config_file, batch_size, output_dir=out, timings=timings, confidences=confidences,
        model=reconstruction, **overrides,
    )  # fmt: skip
    if save_vertebrae:
        _save_vertebrae(pairs, volumes, Path(out), timings)
    by_patient: dict[str, list[Vertebra]] = {}
    for c in pairs:
        by_patient.setdefault(c.patient, []).append(c)
    reports = {}
    for pid, group in sorted(by_patient.items()):
        reports[pid] = _write_patient(
            pid, group, Path(out), float(level), spacing, "auto", formats, volumes=volumes, timings=timings,
            confidences=confidences, models={"reconstruction": reconstruction},
        )  # fmt: skip
        print(f"{pid}: {len(group)} vertebrae reconstructed -> {Path(out) / pid}", file=sys.stderr)
    return reports


def find_vertebrae(
    ap: str | os.PathLike | None,
    lateral: str | os.PathLike | None,
    model: str | os.PathLike | torch.nn.Module | None = None,
    level: str | Any = None,
    level_centre_mm: Sequence[float] | None = None,
    sod: float | None = None,
    tolerance_mm: float | None = None,
    threshold: float | None = None,
    matching: str | None = None,
) -> dict[str, Any]:
    """Find and name the vertebrae of an AP and a lateral radiograph file (DICOM, or PNG / TIFF with a sidecar).

    The files are read (:func:`scripts.io.radiograph.read_radiograph`) and the vertebrae found in the images
    (:func:`scripts.localise.localise_vertebrae`, docs/spine-radiographs.md).

    Args:
        ap: the AP (or PA) radiograph.
        lateral: the lateral radiograph.
        model: the finder (default :data:`scripts.localise.DEFAULT_FINDER_MODEL`).
        level: a pinned level (text or :class:`scripts.localise.LevelPin`): ``"L5=ap:row,col"`` (the file's pixels)
            or ``"L5"`` with ``level_centre_mm``.
        level_centre_mm: the pinned vertebra's 3-D point in the system frame (mm).
        sod: the source-to-isocentre distance of both views when the files do not say it.
        tolerance_mm: the largest ray miss of a pair (mm; default the finder's).
        threshold: the smallest heatmap peak kept (default the finder's).
        matching: how the views are paired: ``"epipolar"``, ``"assignment"`` or ``"chain"`` (default
            :data:`scripts.localise.DEFAULT_MATCHING`).

    Returns:
        ``{"vertebrae": [FoundVertebra.to_dict(), ...] top to bottom, "views": per view its file and geometry,
        "world_to_system": the files' 4x4 matrix or None, "settings": {...}}``; each vertebra's ``file_rc`` holds
        its positions in the files' pixels.

    Raises:
        BundleInputError: one view only, and those of :func:`scripts.localise.localise_vertebrae`.
    """
    from scripts.io.radiograph import radiograph_views, read_radiograph

    if ap is None or lateral is None:
        given = "the lateral" if ap is None and lateral is not None else "the AP" if lateral is None and ap else "none"
        raise XRayInputError(
            f"the finder needs two radiographs, an AP and a lateral; got {given}; fix: give both (--ap and --lateral)."
        )
    rads = [read_radiograph(ap), read_radiograph(lateral)]
    _check_view_order(rads)
    views = radiograph_views(rads, sod)
    return _find_in(rads, views, model, level, level_centre_mm, tolerance_mm, threshold, matching)


def _check_view_order(rads: Sequence[Any]) -> None:
    """Refuse an AP and a lateral file given the other way round, as their view tags (or sidecars) say."""
    sideways = [abs(math.sin(math.radians(float(r.angles[0])))) > math.sin(math.radians(45.0)) for r in rads]
    if sideways[0] and not sideways[1]:
        a, b = (Path(r.path).name for r in rads)
        raise DataError(
            None,
            f"--ap {a} is a lateral view by its view tags or sidecar (alpha {rads[0].angles[0]:g} degrees) and "
            f"--lateral {b} a frontal one (alpha {rads[1].angles[0]:g})",
            f"give them the other way round: --ap {b} --lateral {a}",
        )


def _find_in(
    rads: Sequence[Any],
    views: Sequence[Any],
    model: Any,
    level: Any,
    level_centre_mm: Sequence[float] | None,
    tolerance_mm: float | None,
    threshold: float | None,
    matching: str | None = None,
) -> dict[str, Any]:
    """:func:`find_vertebrae` on two radiographs already read, with their views."""
    import scripts.localise
    from scripts.localise import (
        _VIEWS,
        DEFAULT_MATCH_TOLERANCE_MM,
        DEFAULT_THRESHOLD,
        LevelPin,
        localise_vertebrae,
        parse_level_pin,
    )

    tolerance_mm = DEFAULT_MATCH_TOLERANCE_MM if tolerance_mm is None else float(tolerance_mm)
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    pin = parse_level_pin(level, level_centre_mm)
    if pin is not None and pin.rc is not None:  # file pixels -> the image as oriented
        rad = rads[_VIEWS.index(str(pin.view))]
        rows, cols = rad.file_shape
        if not (0 <= pin.rc[0] <= rows - 1 and 0 <= pin.rc[1] <= cols - 1):
            raise BundleInputError(
                f"level pin {pin.level} at {pin.view} (row {pin.rc[0]:g}, col {pin.rc[1]:g}) lies outside "
                f"{Path(rad.path).name} ({rows} rows x {cols} columns); fix: give the pinned vertebra's centre, row "
                "first, in the file's pixels."
            )
        pin = LevelPin(pin.level, pin.view, rad.to_image_px(pin.rc))
    matching = scripts.localise.DEFAULT_MATCHING if matching is None else str(matching)
    found = localise_vertebrae([r.image for r in rads], views, model, pin, tolerance_mm, threshold, _VIEWS, matching)
    for v in found:
        for k, rad in enumerate(rads):
            v.file_rc[_VIEWS[k]] = [round(float(x), 2) for x in file_px(rad, v.rc[_VIEWS[k]])]
    w2s = rads[0].world_to_system
    return {
        "vertebrae": [v.to_dict() for v in found],
        "views": {n: {"file": str(r.path), **vw.to_dict()} for n, r, vw in zip(_VIEWS, rads, views)},
        "world_to_system": None if w2s is None else np.asarray(w2s).tolist(),
        "settings": {"tolerance_mm": tolerance_mm, "threshold": threshold, "matching": matching,
                     "level_pin": None if pin is None else asdict(pin)},
    }  # fmt: skip


def file_px(rad: Any, rc: Sequence[float]) -> tuple[float, float]:
    """An oriented image position back to the file's pixels (the inverse of ``Radiograph.to_image_px``)."""
    transpose, flip_rows, flip_cols = rad.orientation
    h, w = rad.image.shape
    r, c = float(rc[0]), float(rc[1])
    if flip_cols:
        c = w - 1 - c
    if flip_rows:
        r = h - 1 - r
    if transpose:
        r, c = c, r
    return r, c


def _given_centres(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Vertebra centres given by hand or by a simulation: a JSON list (or ``{"vertebrae": [...]}``, as the
    ``centres.json`` of ``python -m scripts.simulate radiographs``) of ``{"level", "centre_mm"}`` entries in the
    X-ray system's frame (``centre_mm_system`` is read too); entries with ``"inside_both": false`` are left out."""
    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise DataError(file, f"cannot read the centres ({e})", "give a JSON list of {level, centre_mm}") from None
    entries = data.get("vertebrae") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise DataError(file, "no list of vertebrae", 'write [{"level": "L1", "centre_mm": [x, y, z]}, ...]')
    out, outside = [], []
    for k, e in enumerate(entries):
        centre = e.get("centre_mm", e.get("centre_mm_system")) if isinstance(e, dict) else None
        if centre is None or "level" not in e or np.asarray(centre).shape != (3,):
            raise DataError(file, f"entry {k} has no level or 3-D centre", "give level and centre_mm [x, y, z] (mm)")
        if e.get("inside_both", True):
            out.append({"level": str(e["level"]), "centre_mm": [float(v) for v in centre], "named_by": "given"})
        else:
            outside.append(str(e["level"]))
    if outside:
        logger.info("%d given centres lie outside an image and are left out: %s", len(outside), ", ".join(outside))
    if not out:
        raise DataError(file, "no vertebra lies inside both images", "check the centres")
    return out


def _outline_points(vol: np.ndarray, affine: np.ndarray, level: float, max_points: int = 4000) -> np.ndarray:
    """Centres (N, 3, system mm) of the reconstruction's bone voxels, at most ``max_points`` evenly taken."""
    ijk = np.argwhere(vol > level)
    if len(ijk) > max_points:
        ijk = ijk[np.linspace(0, len(ijk) - 1, max_points).astype(int)]
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _where(vertebra: dict) -> str:
    """A found vertebra for a message: its level (or ``unnamed``) and its 3-D centre in the system frame (mm)."""
    centre = ", ".join(f"{float(c):.0f}" for c in np.asarray(vertebra["centre_mm"], dtype=np.float64).reshape(-1))
    return f"{vertebra.get('level') or 'unnamed'} at ({centre}) mm"


def _inside_both(found: list[dict], views: Sequence[Any]) -> list[dict]:
    """The found vertebrae whose 3-D centre projects inside both images (an edge detection can land just outside
    one: it is left out with a warning, as a given centre there would be refused)."""
    kept = []
    for v in found:
        projected = [view.project(torch.as_tensor(np.asarray(v["centre_mm"], np.float64))[None]) for view in views]
        if all(float(depth[0]) > 0 and view.contains(rc[0]) for view, (rc, depth) in zip(views, projected)):
            kept.append(v)
        else:
            logger.warning("%s found at the edge of an image, outside the other: not reconstructed", _where(v))
    return kept


def radiographs(
    ap: str | None = None,
    lateral: str | None = None,
    out: str = "./spine",
    patient: str = "patient",
    level: str | None = None,
    level_centre_mm: Sequence[float] | None = None,
    centres: str | None = None,
    finder: str | None = None,
    sod: float | None = None,
    tolerance_mm: float | None = None,
    threshold: float | None = None,
    matching: str | None = None,
    reconstruction_model: str | None = None,
    config_file: str | Sequence[str] | None = None,
    batch_size: int = 8,
    bone_level: float = BONE_LEVEL_HU,
    spacing: float | None = None,
    formats: Sequence[str] = ("stl", "ply"),
    save_vertebrae: bool = True,
    device: str | None = None,
    timings: dict[str, float] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Find, name and reconstruct every vertebra of an AP and a lateral radiograph, and assemble the spine.

    ``python -m scripts.spine radiographs --ap ap.dcm --lateral lateral.dcm --out spine``

    The vertebra finder (:func:`find_vertebrae`, docs/spine-radiographs.md) finds the vertebrae in both files and names
    them (``--level "L5=ap:ROW,COL"`` pins one level, in the file's pixels); ``--centres`` gives the centres instead (a
    JSON list of ``{"level", "centre_mm"}`` in the system frame, or the ``centres.json`` of ``python -m scripts.simulate
    radiographs``). Each vertebra is then reconstructed from the two files, cut around its centre (radiograph cases of
    the inference configs, batched, with the confidence) by the body model (``models/body``, trained on X-rays
    through the whole body; ``--reconstruction_model`` chooses another of :data:`RADIOGRAPH_MODELS`), and the spine is
    assembled as by :func:`reconstruct`, in the X-ray system's frame (origin at the isocentre, RAS axes). Besides the
    files of :func:`spine`, ``<out>/<patient>/`` gets ``<patient>_radiographs.png`` (both radiographs with each
    vertebra's centre, name and projected outline), and the report ``<patient>_spine.json`` gains per level the finder's
    centre (system mm, and the scan's world mm when the files record ``world_to_system``), the ray miss, the
    reprojection errors, the scores and how the level was named, plus the files and their geometry under
    ``"radiographs"``.

    Args:
        ap: the AP (or PA) radiograph (DICOM, or PNG / TIFF with a sidecar JSON).
        lateral: the lateral radiograph.
        out: output folder; the patient's files go to ``<out>/<patient>/``.
        patient: the patient's name in file names.
        level: a pinned level (``"L5=ap:812,640"``), or a bare level with ``level_centre_mm``.
        level_centre_mm: the pinned level's 3-D point (system mm).
        centres: a JSON file of given centres, instead of the finder.
        finder: the finder's weights (default ``models/finder/model.pt``).
        sod: the source-to-isocentre distance (mm) when the files do not say it.
        tolerance_mm: the largest miss (mm) of the two rays of one vertebra (default the finder's).
        threshold: the smallest heatmap peak the finder keeps (default the finder's).
        matching: how the finder pairs the views (``"epipolar"``, ``"assignment"`` or ``"chain"``; default the
            finder's, docs/spine-radiographs.md).
        reconstruction_model: ``body`` (the default), ``cpu`` or ``paper`` (:data:`RADIOGRAPH_MODELS`).
        config_file: inference config files, in place of a reconstruction model's (not with ``reconstruction_model``).
        batch_size: vertebrae per network call.
        bone_level: bone iso-level in HU for label map and meshes.
        spacing: grid spacing of the label map in mm.
        formats: mesh formats.
        save_vertebrae: also write each vertebra's HU volume.
        device: where the networks run.
        timings: if given, seconds per stage are added to it (``find``, then those of :func:`reconstruct`).
        overrides: inference config values (``ckpt_dir``, ``confidence``, ...).

    Returns:
        the patient's report (as written to ``<patient>_spine.json``).
    """
    from scripts.io.outputs import check_case_names
    from scripts.io.preview import radiograph_figure
    from scripts.io.radiograph import radiograph_views, read_radiograph, system_to_world_affine

    if overrides:  # a misspelt option lands here: named before the finder runs
        configs = config_file if config_file is not None else radiograph_configs(reconstruction_model or "body")
        _check_overrides(configs, overrides, _own_options(radiographs))
    if ap is None or lateral is None:
        given = "only the lateral" if ap is None and lateral is not None else "only the AP" if ap else "neither"
        raise DataError(
            None, f"two radiographs are needed, an AP and a lateral; got {given}", "give --ap and --lateral"
        )
    if Path(ap).resolve() == Path(lateral).resolve():
        raise DataError(ap, "given as both --ap and --lateral", "give the AP and the lateral radiograph, two files")
    check_case_names([patient], what="patient")
    if config_file is not None and reconstruction_model is not None:
        raise DataError(
            None, "both --reconstruction_model and --config_file name the reconstruction's configs", "give one of them"
        )
    if config_file is None:
        config_file = radiograph_configs(reconstruction_model or "body")
    watch = _Stopwatch(timings)
    with watch("find"):
        rads = [read_radiograph(ap), read_radiograph(lateral)]
        _check_view_order(rads)
        views = radiograph_views(rads, sod)
        finder_settings = None
        if centres is not None:
            found = _given_centres(centres)
            for v in found:
                v["rc"] = {n: view.project(torch.as_tensor(v["centre_mm"]))[0][0].tolist() for n, view in
                           zip(("ap", "lateral"), views)}  # fmt: skip
        else:
            result = _find_in(rads, views, finder, level, level_centre_mm, tolerance_mm, threshold, matching)
            finder_settings = result["settings"]
            found = _inside_both(result["vertebrae"], views)
    unnamed = [v for v in found if v.get("level") not in LEVEL_LABELS]
    if unnamed:
        logger.warning(
            "%d vertebrae without a level of the label map (C1-L6, T13, S1) are not reconstructed: %s",
            len(unnamed),
            "; ".join(_where(v) for v in unnamed),
        )
    found = [v for v in found if v.get("level") in LEVEL_LABELS]
    if not found and centres is not None:
        levels = sorted({str(v.get("level")) for v in unnamed})
        raise DataError(
            centres, f"no entry names a level of the label map (C1-L6, T13, S1); its levels: {', '.join(levels)}",
            "fix the levels",
        )  # fmt: skip
    if not found:
        raise DataError(
            ap, "no vertebra between C1 and S1 was found in both radiographs", "check the files or pin a level"
        )
    cases = [
        Vertebra(id=f"{patient}_{v['level']}", patient=patient, level=v["level"], centre_mm=tuple(v["centre_mm"]))
        for v in found
    ]
    check_output_names(cases, out, ids=save_vertebrae)
    if device is not None:
        overrides["device"] = f"$torch.device({str(device)!r})"
    files = [str(Path(ap).resolve()), str(Path(lateral).resolve())]
    extra = {} if sod is None else {"sod_mm": float(sod)}
    inputs = [{"radiographs": files, "centre_mm": list(c.centre_mm), "id": c.id, **extra} for c in cases]
    confidences: dict[str, dict] = {}
    earlier = _earlier_outputs(Path(out) / patient, patient)
    reconstruction: dict[str, str] = {}
    volumes = run_inference(
        inputs, config_file, batch_size, output_dir=out, timings=timings, confidences=confidences,
        model=reconstruction, **overrides,
    )  # fmt: skip
    flagged: dict[str, list[str]] = {}
    for case in cases:
        flag = (confidences.get(case.id) or {}).get("flag")
        if flag:
            flagged.setdefault(str(flag), []).append(case.level)
    for flag, levels in flagged.items():
        logger.warning("%d of %d vertebrae (%s): %s", len(levels), len(cases), ", ".join(levels), flag)
    if save_vertebrae:
        _save_vertebrae(cases, volumes, Path(out), timings)
    report = _write_patient(
        patient, cases, Path(out), float(bone_level), spacing, "auto", formats, volumes=volumes, timings=timings,
        confidences=confidences,
    )  # fmt: skip
    w2s = rads[0].world_to_system
    to_world = None if w2s is None else system_to_world_affine(np.eye(4), w2s)
    marks = []
    for case, v in zip(cases, found):
        entry = report["vertebrae"][case.level]
        entry["centre_system_mm"] = [round(float(x), 3) for x in v["centre_mm"]]
        if to_world is not None:
            entry["centre_world_mm"] = [round(float(x), 3) for x in to_world[:3, :3] @ v["centre_mm"] + to_world[:3, 3]]
        for key in ("named_by", "level_evidence", "ray_gap_mm", "reprojection_mm", "scores", "file_rc"):
            if key in v:
                entry["finder_scores" if key == "scores" else key] = v[key]
        vol, own = volumes[case.id]
        points = _outline_points(vol, _pred_affine(case, vol.shape, own, "auto"), float(bone_level))
        outline = {n: view.project(torch.as_tensor(points))[0].numpy() for n, view in zip(("ap", "lateral"), views)}
        marks.append({"level": case.level, "rc": v.get("rc", {}), "outline": outline})
    report["radiographs"] = {
        "files": {"ap": str(ap), "lateral": str(lateral)},
        "views": {n: view.to_dict() for n, view in zip(("ap", "lateral"), views)},
        "frame": "X-ray system: origin at the isocentre, RAS axes (x patient's right, y anterior, z superior), mm",
        "world_to_system": None if w2s is None else np.asarray(w2s).tolist(),
        "found_by": "given centres" if centres is not None else "vertebra finder",
        "finder_settings": finder_settings,
    }
    from scripts.localise import DEFAULT_FINDER_MODEL

    report["models"] = {
        "finder": None if centres is not None else file_record(finder or DEFAULT_FINDER_MODEL),
        "reconstruction": reconstruction,
    }
    report["reconstruction_configs"] = [
        os.path.relpath(c, BUNDLE_ROOT) if str(c).startswith(str(BUNDLE_ROOT)) else str(c)
        for c in ([config_file] if isinstance(config_file, (str, os.PathLike)) else config_file)
    ]
    unpinned = any(v.get("named_by") == "chain" for v in found)
    folder = Path(out) / patient
    with watch("render"):
        title = f"{patient}: {len(cases)} vertebrae" + ("; levels named without a pin: check them" if unpinned else "")
        fig = radiograph_figure([r.image for r in rads], ("ap", "lateral"), marks, title=title)
        with atomic_path(folder / f"{patient}_radiographs.png") as tmp:
            fig.savefig(tmp, format="png")
    with watch("write"), atomic_path(folder / f"{patient}_spine.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    _remove_earlier_outputs(earlier, folder)
    n_flagged = sum(len(v) for v in flagged.values())
    print(
        f"{patient}: {len(cases)} {'vertebra' if len(cases) == 1 else 'vertebrae'} "
        f"{'given' if centres is not None else 'found'} and reconstructed ({cases[0].level} to {cases[-1].level}"
        f"{', named without a pin' if unpinned else ''}; {n_flagged} flagged) -> {folder / f'{patient}_spine.json'}",
        file=sys.stderr,
    )
    return report


def _earlier_outputs(folder: Path, patient: str) -> dict[Path, tuple[int, int]]:
    """The files an earlier run left in a patient's output folder (names starting with the patient's), each with
    its inode and modification time: a file this run writes again gets new ones (atomic replacement)."""
    if not folder.is_dir():
        return {}
    out = {}
    for p in folder.rglob(f"{patient}_*"):
        if p.is_file():
            st = p.stat()
            out[p] = (st.st_ino, st.st_mtime_ns)
    return out


def _remove_earlier_outputs(earlier: dict[Path, tuple[int, int]], folder: Path) -> None:
    """Remove the files of an earlier run that this run did not write again (e.g. the meshes of vertebrae not found
    this time), then the folders they leave empty, with one warning."""
    stale = []
    for p, (ino, mtime) in earlier.items():
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if (st.st_ino, st.st_mtime_ns) == (ino, mtime):
            p.unlink()
            stale.append(p)
    for p in sorted({q.parent for q in stale}, key=lambda q: -len(q.parts)):
        if p != folder and p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    if stale:
        logger.warning(
            "removed %d files of an earlier run in %s that this run did not write (e.g. %s)",
            len(stale),
            folder,
            ", ".join(sorted(p.name for p in stale)[:3]),
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m scripts.spine [assemble] --pred_dir DIR --datalist FILE --out DIR`` puts
    predictions together (:func:`spine`); ``python -m scripts.spine reconstruct --datalist FILE --out DIR``
    reconstructs the vertebrae from their X-ray pairs first (:func:`reconstruct`)."""
    import fire
    from scripts.errors import BundleInputError, check_cli_flags

    args = list(sys.argv[1:] if argv is None else argv)
    command, fn = "assemble", spine
    commands = {"assemble": spine, "reconstruct": reconstruct, "radiographs": radiographs}
    named = bool(args) and args[0] in commands
    if named:
        command = args.pop(0)
        fn = commands[command]
    elif args and not args[0].startswith("-") and not Path(args[0]).is_dir():
        # a misspelt command would be read as assemble's first argument, the prediction folder
        close = difflib.get_close_matches(args[0], list(commands), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        sys.exit(
            f"error: python -m scripts.spine: unknown command {args[0]!r}; {hint}commands: {', '.join(commands)} "
            "(assemble's prediction folder: --pred_dir DIR)."
        )
    if "--" not in args and {"--help", "-h"} & set(args):  # fire would pass it to **overrides and run the job
        if not named:
            print(
                "python -m scripts.spine [assemble | reconstruct | radiographs] ...: assemble (the default) puts "
                "reconstructed vertebrae together, reconstruct reconstructs a datalist's X-ray pairs first, "
                "radiographs finds and reconstructs every vertebra of two full radiographs; --help after a command "
                "shows its options.\n"
            )
        args = ["--", "--help"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        check_cli_flags(fn, args, f"python -m scripts.spine {command}")
        fire.Fire(fn, command=args, name="scripts.spine", serialize=lambda result: None)
    except Exception as e:  # a bad input raised inside a config expression arrives wrapped by MONAI
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, BundleInputError):
            cause = cause.__cause__
        if cause is None:
            raise
        sys.exit(f"error: {cause}")


if __name__ == "__main__":
    main()
