# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Training data of the vertebra finder: full AP and lateral radiographs of whole scans, simulated in advance.

Usage::

    python -m scripts.tools.finder_data --data data/body64 --out data/finder --pairs 40 --val_pairs 8

For every patient of the ``training`` and ``validation`` splits of ``DATA/datalist.json`` this simulates
``--pairs`` (validation: ``--val_pairs``) AP + lateral pairs of its whole scan (``<patient>_body.nii.gz``, HU, the
field of view completed as :func:`scripts.drr.body.complete_body` does for ``python -m scripts.simulate
radiographs``) onto a 430 mm detector of 2 mm pixels, each pair with its own draw (:func:`draw_pair`):

- source-detector distance uniform in 1000-1500 mm, the isocentre 200-500 mm in front of the detector;
- the isocentre at the labelled vertebrae's mean centre, moved by up to 40 mm left-right and front-back and 60 mm
  along the spine;
- the patient turned about the isocentre by up to 5 degrees about the left-right axis, 5 about the front-back axis
  and 8 about the long axis (``--rotation_deg``; one rotation for both views, as when a patient stands turned in the
  system). ``--rotation_deg "(30, 5, 8)"`` also tilts the spine forward and back by up to 30 degrees, as a lordotic
  lumbar spine or a patient leaning stands in a lateral radiograph;
- the tube's spectrum (60, 90 or 120 kV) and 10^4-10^6 photons per pixel (Poisson noise).

The vertebrae and their levels come from the patient's label map (the raw ``<patient>_seg.nii.gz`` of
``--labels_dir``, VerSe ids; the TotalSegmentator maps of the public scans, e.g. LIDC-IDRI-0001), each centre the mean
of its voxels in world mm (:func:`scripts.data.labels.vertebra_centres`), projected with the pair's geometry. Only
vertebrae whose projected centre lies inside an image count for that image; vertebrae the scan cuts are kept (the
image shows what the scan holds of them).

Written under ``OUT``: per pair ``<patient>/<patient>_<k>_ap.npy`` and ``_lateral.npy`` (float32 ``(H, W)`` line
integrals, oriented as the bundle's radiographs) and ``<patient>_<k>.json`` (the draw, the geometry of each view,
and per vertebra its level, world centre and ``(row, col)`` in each view), the JSON last; then
``datalist.json`` with one item per image (``image``, ``view`` 0 AP / 1 lateral, ``centres`` ``[[row, col], ...]``
and ``levels`` (indices of :data:`scripts.networks.finder.LEVELS`) of the vertebrae inside it, ``id``, ``patient``,
``pair``). Each file is written atomically and a pair whose JSON exists is skipped, so an interrupted run resumes;
the draws are seeded per patient and pair (``--seed``), so a rerun gives the same images.
"""

from __future__ import annotations

import json
import math
import os
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "body_file",
    "DETECTOR_MM",
    "PIXEL_MM",
    "manifest_levels",
    "label_source",
    "patient_vertebrae",
    "levels_class_map",
    "segment_tilts",
    "spine_tilts",
    "label_fit",
    "label_fits",
    "resample_labels",
    "resample_hu",
    "labels_on_grid",
    "match_centres",
    "simulate_patient",
    "rotation_matrix",
    "draw_pair",
    "add_bowel_gas",
    "simulate_pair",
    "build_datalist",
    "finder_data",
]

ROOT = Path(__file__).resolve().parents[2]
#: the detector's side (mm) and pixel size (mm) of the training radiographs (``scripts.simulate``'s defaults).
DETECTOR_MM = 430.0
PIXEL_MM = 2.0
VIEW_NAMES = ("ap", "lateral")
_ANGLES = np.array([[0.0, 0.0], [90.0, 0.0]])
#: the default bound of the patient's turn (degrees) about the left-right, front-back and long axes
ROTATION_DEG = (5.0, 5.0, 8.0)


def manifest_levels(data: str | os.PathLike, patient: str) -> tuple[str, dict[int, str]] | None:
    """A patient's label map and its vertebrae as a prepared dataset records them: ``(source_mask, {label:
    level})`` from ``<data>/manifest.csv`` (every labelled vertebra, the ones the scan cuts included), or None when
    the manifest does not name the patient's label map (datasets prepared before it did)."""
    import csv

    path = Path(data) / "manifest.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("patient") == patient and r.get("source_mask")]
    if not rows:
        return None
    masks = {r["source_mask"] for r in rows}
    if len(masks) != 1:
        raise ValueError(f"{path} names {len(masks)} label maps for {patient}; one per patient is expected.")
    return masks.pop(), {int(float(r["label"])): r["level"] for r in rows if r.get("label") and r.get("level")}


def label_source(
    patient: str, labels_dir: str | os.PathLike, data: str | os.PathLike | None = None
) -> tuple[str, str, str | None, dict[int, str] | None]:
    """Where a patient's vertebra label map is: ``(path, convention, class_map, levels)``.

    In this order: the public scans of :data:`scripts.data.sources.PUBLIC_SCANS` (LIDC-IDRI-0001,
    TotalSegmentator-example) with their TotalSegmentator maps (fetched by
    :func:`scripts.data.sources.fetch_public_scan`); the label map the prepared dataset ``data`` was made from, with
    the level of each label value from its ``manifest.csv`` (:func:`manifest_levels`: the levels ``scripts.prepare``
    read, in any convention, e.g. TotalSegmentator outputs; a multilabel map, not a folder of masks); else
    ``<labels_dir>/<patient>_seg.nii.gz`` with VerSe ids (datasets whose manifest does not name the map). For the
    shipped patients both give the same vertebrae.

    Raises:
        FileNotFoundError: no label map for the patient.
    """
    from scripts.data.sources import PUBLIC_SCANS, fetch_public_scan

    public = {spec["patient"]: name for name, spec in PUBLIC_SCANS.items()}
    if patient in public:
        case = fetch_public_scan(public[patient])
        return case.mask, case.convention, case.class_map, None
    recorded = manifest_levels(data, patient) if data is not None else None
    if recorded is not None and Path(recorded[0]).is_file():
        return recorded[0], "auto", None, recorded[1]
    path = Path(labels_dir) / f"{patient}_seg.nii.gz"
    if path.is_file():
        return str(path), "verse", None, None
    where = ""
    if recorded is not None:
        kind = "a folder (per-structure masks)" if Path(recorded[0]).is_dir() else "missing"
        where = f"; the label map that {data}/manifest.csv names, {recorded[0]}, is {kind}"
    raise FileNotFoundError(
        f"no label map {path} for {patient}{where}: prepare the dataset from one multilabel map per patient (run "
        "from the folder it was prepared in), or give --labels_dir (a folder of <patient>_seg.nii.gz, VerSe ids)."
    )


def patient_vertebrae(
    label_path: str, convention: str = "verse", class_map: str | None = None, levels: dict[int, str] | None = None
) -> list[dict]:
    """Every labelled vertebra of a label map: ``{"level", "label", "centre_mm_world"}``, top to bottom, the levels
    the finder names only (C1-L5). ``levels`` (label value -> level) replaces the convention and class map."""
    from scripts.data.io import load_volume
    from scripts.data.labels import read_class_map, vertebra_centres
    from scripts.networks.finder import LEVELS

    lab = load_volume(label_path, "labels")
    cmap = read_class_map(class_map) if class_map else None
    if levels:
        cmap, convention = levels_class_map(levels), "totalseg"
    found = vertebra_centres(np.asarray(lab[0]).astype(np.int64), np.asarray(lab.affine), convention, cmap)
    return [c for c in found if c["level"] in LEVELS]


def levels_class_map(levels: dict[int, str]) -> dict[int, str]:
    """Label value -> level as a TotalSegmentator-style class map (``vertebrae_<level>`` names)."""
    return {int(v): f"vertebrae_{level}" for v, level in levels.items()}


def segment_tilts(centres_mm: Any) -> np.ndarray:
    """The tilt of the spine between consecutive vertebra centres (top to bottom, world mm): per segment, its angle
    from the long (z) axis in the sagittal plane (toward y, front-back) and in the coronal plane (toward x), degrees,
    ``(N - 1, 2)``. The sign follows the world axes."""
    c = np.asarray(centres_mm, dtype=np.float64).reshape(-1, 3)
    d = np.diff(c, axis=0)
    return np.degrees(np.stack([np.arctan2(d[:, 1], np.abs(d[:, 2])), np.arctan2(d[:, 0], np.abs(d[:, 2]))], axis=1))


def spine_tilts(data: str = "data/body64", labels_dir: str = "../shared/data/spine-ct") -> dict[str, dict]:
    """Per patient of a prepared dataset, the sagittal and coronal tilt of each segment between two vertebrae it holds
    complete (:func:`segment_tilts`); printed as JSON lines.

    Usage: ``python -m scripts.tools.finder_data spine_tilts --data data/body64``.
    """
    dl = json.loads((Path(data) / "datalist.json").read_text())
    complete: dict[str, tuple[str, set]] = {}
    for split in ("training", "validation", "test"):
        for item in dl.get(split, []):
            complete.setdefault(item["patient"], (split, set()))[1].add(item["level"])
    out = {}
    for patient, (split, levels) in complete.items():
        vertebrae = patient_vertebrae(*label_source(patient, labels_dir, data))
        kept = [v for v in vertebrae if v["level"] in levels]
        names = [v["level"] for v in kept]
        tilts = segment_tilts([v["centre_mm_world"] for v in kept]) if len(kept) > 1 else np.zeros((0, 2))
        segments = [f"{a}-{b}" for a, b in zip(names, names[1:])]
        out[patient] = {
            "split": split,
            "segments": segments,
            "sagittal_deg": [round(float(t), 1) for t in tilts[:, 0]],
            "coronal_deg": [round(float(t), 1) for t in tilts[:, 1]],
            "max_abs_sagittal_deg": round(float(np.abs(tilts[:, 0]).max()), 1) if len(tilts) else None,
        }
        print(json.dumps({"patient": patient, **out[patient]}))
    return out


def _resample(path: str, what: str, dst_affine: np.ndarray, shape: Any, mode: str, fill: float) -> np.ndarray:
    """A volume file resampled (MONAI ``SpatialResample``, ``mode``) onto a grid given by its voxel-to-world affine and
    shape, ``fill`` outside it."""
    from monai.transforms import SpatialResample
    from scripts.data.io import load_volume

    img = load_volume(path, what) - float(fill)  # zero padding outside reads back as ``fill``
    out = SpatialResample(mode=mode, padding_mode="zeros")(
        img, dst_affine=torch.as_tensor(np.asarray(dst_affine), dtype=torch.float64), spatial_size=tuple(shape)
    )
    return np.asarray(out[0], dtype=np.float32) + float(fill)


def body_file(data: str | os.PathLike, item: dict) -> str:
    """The whole-scan file (``<patient>_body.nii.gz``) of a prepared dataset's item.

    Raises:
        BundleInputError: the item has none (a dataset prepared before whole scans were kept), with the fix.
    """
    if "body" not in item:
        from scripts.errors import BundleInputError

        raise BundleInputError(
            f"{Path(data) / 'datalist.json'}: {item.get('id', item.get('patient'))} has no 'body' entry (the dataset "
            f"was prepared before whole scans were kept); prepare it again with python -m scripts.prepare --out {data} "
            "and the --source, --spacing and --roi it was prepared with."
        )
    return str(Path(data) / item["body"])


def label_fit(hu: np.ndarray, labels: np.ndarray, bone_hu: float = 150.0, shell_voxels: int = 5) -> dict[str, float]:
    """How well a label map lies on the bone of its scan (one grid): the median HU inside the labels, and the share of
    voxels above ``bone_hu`` inside the labels and in a shell of ``shell_voxels`` voxels around them. Labels on bone
    hold mostly bone and little lies next to them; labels off the bone hold as little as their surroundings."""
    from scripts.data.crop import label_bone_fit

    inside = np.asarray(labels) > 0
    fit = label_bone_fit(hu, inside, spacing=1.0, bone_hu=bone_hu, shell_mm=float(shell_voxels))
    return {
        "median_hu_inside": round(float(np.median(np.asarray(hu)[inside])), 1) if inside.any() else float("nan"),
        "bone_share_inside": round(fit["label_bone_share"], 3),
        "bone_share_shell": round(fit["shell_bone_share"], 3),
    }


def label_fits(data: str = "data/body64", labels_dir: str = "../shared/data/spine-ct") -> dict[str, dict]:
    """:func:`label_fit` of every patient of a prepared dataset, on its body scan's grid (its label map resampled
    nearest; a 5-voxel shell); printed as JSON lines.

    Usage: ``python -m scripts.tools.finder_data label_fits --data data/body64``.
    """
    import nibabel as nib

    dl = json.loads((Path(data) / "datalist.json").read_text())
    bodies: dict[str, tuple[str, str]] = {}
    for split in ("training", "validation", "test"):
        for item in dl.get(split, []):
            bodies.setdefault(item["patient"], (split, body_file(data, item)))
    out = {}
    for patient, (split, body) in bodies.items():
        img = nib.load(body)
        hu = np.asarray(img.dataobj, dtype=np.float32)
        labels = resample_labels(label_source(patient, labels_dir, data)[0], img.affine, hu.shape)
        out[patient] = {"split": split, **label_fit(hu, labels)}
        print(json.dumps({"patient": patient, **out[patient]}))
    return out


def resample_labels(label_path: str, dst_affine: np.ndarray, shape: Any) -> np.ndarray:
    """A label map resampled (nearest) onto a grid given by its voxel-to-world affine and shape; int16 array."""
    return _resample(label_path, "labels", dst_affine, shape, "nearest", 0.0).round().astype(np.int16)


def resample_hu(path: str, dst_affine: np.ndarray, shape: Any) -> np.ndarray:
    """A scan in HU resampled (linear) onto a grid given by its voxel-to-world affine and shape; -1024 outside."""
    return _resample(path, "CT", dst_affine, shape, "bilinear", -1024.0)


def labels_on_grid(label_path: str, reference: str, out_path: str | os.PathLike) -> Path:
    """Resample a label map (nearest) onto another volume's grid (e.g. a prepared body scan) and save it.

    ``python -m scripts.simulate radiographs`` takes a CT and a label map on one grid; the prepared body scans (HU)
    and the raw label maps are on different grids of the same world frame.

    Usage: ``python -m scripts.tools.finder_data labels_on_grid --label_path SEG.nii.gz --reference
    data/body64/P/P_body.nii.gz --out_path P_labels.nii.gz``.
    """
    import nibabel as nib

    ref = nib.load(str(reference))
    arr = resample_labels(label_path, ref.affine, ref.shape[:3])
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, ref.affine), str(path))
    return path


def match_centres(true_mm: Any, found_mm: Any, hit_mm: float) -> dict[int, tuple[int, float]]:
    """One-to-one matching of found to true 3-D centres: ``{true index: (found index, distance mm)}`` for the pairs
    within ``hit_mm`` (``linear_sum_assignment`` on the distances, pairs farther than ``hit_mm`` priced out)."""
    from scipy.optimize import linear_sum_assignment

    t = np.asarray(true_mm, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(found_mm, dtype=np.float64).reshape(-1, 3)
    if not len(t) or not len(f):
        return {}
    dist = np.linalg.norm(t[:, None] - f[None], axis=-1)
    rows, cols = linear_sum_assignment(np.where(dist <= hit_mm, dist, 1e6))
    return {int(i): (int(j), float(dist[i, j])) for i, j in zip(rows, cols) if dist[i, j] <= hit_mm}


def simulate_patient(
    body: str,
    label_path: str,
    work: Path,
    convention: str = "verse",
    class_map: str | None = None,
    levels: dict[int, str] | None = None,
) -> Path:
    """The default simulated radiograph pair of a patient's body scan (reused when ``work/rad`` holds it).

    Args:
        body: the prepared body scan (``<patient>_body.nii.gz``).
        label_path: the patient's vertebra label map (:func:`label_source`).
        work: the patient's work folder.
        convention: the label map's ids, ``verse`` or ``totalseg`` (:func:`label_source`).
        class_map: the label map's class map, if any.
        levels: label value -> level, in place of ``convention`` and ``class_map`` (:func:`label_source`; written
            as a class map of ``vertebrae_<level>`` names for ``scripts.simulate``).
    """
    import subprocess
    import sys

    rad = work / "rad"
    if (rad / "centres.json").is_file() and (rad / "ap.dcm").is_file() and (rad / "lateral.dcm").is_file():
        return rad
    labels = labels_on_grid(label_path, body, work / "labels.nii.gz")
    if levels:
        class_map, convention = str(work / "levels_class_map.json"), "totalseg"
        Path(class_map).write_text(json.dumps({str(v): name for v, name in levels_class_map(levels).items()}))
    # the command itself (importing scripts.simulate here would pass the six floors of tests/test_import_graph.py)
    cmd = [sys.executable, "-m", "scripts.simulate", "radiographs", "--ct", str(body), "--labels", str(labels),
           "--label_convention", convention, "--out", str(rad), "--overwrite", "True"]  # fmt: skip
    if class_map:
        cmd += ["--class_map", str(class_map)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr[-2000:]}")
    return rad


def rotation_matrix(degrees_xyz: Any) -> np.ndarray:
    """The rotation ``Rz @ Ry @ Rx`` (3, 3) of angles (degrees) about the x (left-right), y (front-back) and z
    (long) axes."""
    ax, ay, az = (math.radians(float(a)) for a in degrees_xyz)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_pair(rng: np.random.Generator, rotation_deg: Any = ROTATION_DEG) -> dict[str, Any]:
    """One pair's random draw (see the module docstring); ``rotation_deg`` bounds the patient's turn about the
    left-right, front-back and long axes (degrees)."""
    rotation = np.broadcast_to(np.asarray(rotation_deg, dtype=np.float64), (3,))
    if np.any(rotation < 0) or np.any(rotation > 90):
        raise ValueError(f"rotation_deg must be three angles in [0, 90] degrees, got {rotation_deg!r}.")
    sdd = float(rng.uniform(1000.0, 1500.0))
    return {
        "sdd": round(sdd, 1),
        "sod": round(sdd - float(rng.uniform(200.0, 500.0)), 1),
        "isocentre_offset_mm": [round(float(v), 2) for v in rng.uniform(-1, 1, 3) * np.array([40.0, 40.0, 60.0])],
        "rotation_deg": [round(float(v), 2) for v in rng.uniform(-1, 1, 3) * rotation],
        "spectrum": str(rng.choice(["60kV", "90kV", "120kV"])),
        "photon_count": float(10 ** rng.uniform(4.0, 6.0)),
    }


def add_bowel_gas(
    hu: torch.Tensor, affine: torch.Tensor, vertebrae: list[dict], rng: np.random.Generator
) -> tuple[torch.Tensor, list[dict]]:
    """A copy of a scan with 5-25 pockets of gas (-1000 HU ellipsoids of 10-40 mm semi-axes) in the body in front of
    the lower spine, as in a gas-filled bowel (CT colonography insufflates the colon).

    Each pocket is centred 30-150 mm anterior of the spine's line, up to 120 mm left or right, at the height of a
    vertebra from T10 down (or of the lowest third of the labelled vertebrae); only tissue (above -500 HU) turns to gas.

    Returns:
        ``(hu, pockets)``: the new volume and each pocket's centre and semi-axes (world mm).
    """
    from scripts.networks.finder import level_index

    vol = hu.clone()
    aff = np.asarray(affine, dtype=np.float64)
    inv = np.linalg.inv(aff)
    spacing = np.abs(np.diag(aff)[:3])
    low = [v for v in vertebrae if level_index(v["level"]) >= level_index("T10")]
    low = low or vertebrae[-max(1, len(vertebrae) // 3) :]
    pockets = []
    for _ in range(int(rng.integers(5, 26))):
        v = low[int(rng.integers(len(low)))]
        shift = [rng.uniform(-120, 120), rng.uniform(30, 150), rng.uniform(-20, 20)]
        c = np.asarray(v["centre_mm_world"], dtype=np.float64) + shift
        axes = rng.uniform(10.0, 40.0, 3)
        lo = np.floor(inv[:3, :3] @ (c - axes) + inv[:3, 3]).astype(int)
        hi = np.ceil(inv[:3, :3] @ (c + axes) + inv[:3, 3]).astype(int)
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        lo = np.clip(lo, 0, np.asarray(vol.shape[1:]) - 1)
        hi = np.clip(hi + 1, 0, np.asarray(vol.shape[1:]))
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        world = [aff[k, k] * grids[k] + aff[k, 3] for k in range(3)]
        inside = sum(((world[k] - c[k]) / axes[k]) ** 2 for k in range(3)) <= 1.0
        block = vol[0, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        mask = torch.as_tensor(inside) & (block > -500.0)
        block[mask] = -1000.0
        pockets.append({"centre_mm_world": [round(float(x), 1) for x in c], "semi_axes_mm": axes.round(1).tolist()})
    del spacing
    return vol, pockets


def simulate_pair(
    hu: torch.Tensor,
    affine: torch.Tensor,
    vertebrae: list[dict],
    draw: dict[str, Any],
    seed: int,
    detector_mm: float = DETECTOR_MM,
    pixel_mm: float = PIXEL_MM,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Project a completed whole scan as one AP + lateral pair of ``draw``.

    Returns:
        ``(images (2, H, W) float32, record)``: the record holds the draw, the isocentre, each view's geometry
        (:class:`scripts.drr.windows.RadiographView` fields) and per vertebra its ``ap_rc`` / ``lateral_rc`` and
        ``inside`` (per view).
    """
    from scripts.drr.geometry import ConeBeamGeometry
    from scripts.drr.projector import DRRProjector

    n = int(round(detector_mm / pixel_mm))
    geo = ConeBeamGeometry(draw["sdd"], draw["sod"], (n, n), (pixel_mm, pixel_mm))
    centres = np.array([v["centre_mm_world"] for v in vertebrae], dtype=np.float64).reshape(-1, 3)
    iso = centres.mean(axis=0) + np.asarray(draw["isocentre_offset_mm"])
    rot = rotation_matrix(draw["rotation_deg"])
    projector = DRRProjector(geo, physics="poly", spectrum=draw["spectrum"], photon_count=draw["photon_count"])
    gen = torch.Generator().manual_seed(int(seed))
    images = projector(hu, affine, _ANGLES, isocentre=torch.as_tensor(iso), object_rotation=rot, generator=gen)
    pix = geo.project_points(centres, _ANGLES, iso, rot).numpy() if len(centres) else np.zeros((2, 0, 2))
    out = []
    for i, v in enumerate(vertebrae):
        item = {"level": v["level"], "label": v.get("label"), "centre_mm_world": v["centre_mm_world"]}
        for k, name in enumerate(VIEW_NAMES):
            rc = [round(float(pix[k, i, 1]), 2), round(float(pix[k, i, 0]), 2)]
            item[f"{name}_rc"] = rc
            item[f"{name}_inside"] = bool(0 <= rc[0] <= n - 1 and 0 <= rc[1] <= n - 1)
        out.append(item)
    record = {
        "draw": draw,
        "isocentre_mm_world": [round(float(x), 3) for x in iso],
        "object_rotation": rot.tolist(),
        "views": {
            name: {
                "sdd": geo.sdd,
                "sod": geo.sod,
                "shape": [n, n],
                "pixel_spacing": [pixel_mm, pixel_mm],
                "angles": _ANGLES[k].tolist(),
            }
            for k, name in enumerate(VIEW_NAMES)
        },  # fmt: skip
        "vertebrae": out,
    }
    return images.numpy().astype(np.float32), record


def build_datalist(out: Path, patients: dict[str, str]) -> dict[str, list[dict]]:
    """The datalist of the pairs written under ``out``: one item per image (see the module docstring)."""
    from scripts.networks.finder import level_index

    dl: dict[str, list[dict]] = {"training": [], "validation": []}
    for patient, split in patients.items():
        for rec_path in sorted((out / patient).glob(f"{patient}_*.json")):
            rec = json.loads(rec_path.read_text())
            pair = rec_path.stem
            for k, name in enumerate(VIEW_NAMES):
                inside = [v for v in rec["vertebrae"] if v[f"{name}_inside"]]
                dl[split].append(
                    {
                        "image": f"{patient}/{pair}_{name}.npy",
                        "view": k,
                        "centres": [v[f"{name}_rc"] for v in inside],
                        "levels": [level_index(v["level"]) for v in inside],
                        "id": f"{pair}_{name}",
                        "patient": patient,
                        "pair": pair,
                    }
                )
    return dl


def finder_data(
    data: str = "data/body64",
    out: str = "data/finder",
    labels_dir: str = "../shared/data/spine-ct",
    pairs: int = 40,
    val_pairs: int = 8,
    seed: int = 0,
    splits: tuple[str, ...] = ("training", "validation"),
    bowel_gas: float = 0.0,
    rotation_deg: tuple[float, float, float] = ROTATION_DEG,
) -> dict[str, Any]:
    """Simulate the finder's training and validation radiograph pairs (see the module docstring).

    Args:
        data: the prepared dataset (its ``datalist.json`` names each patient's split and body scan).
        out: the output folder.
        labels_dir: the raw label maps ``<patient>_seg.nii.gz`` (VerSe ids), for patients whose label map ``data``'s
            ``manifest.csv`` does not name (:func:`label_source`).
        pairs: pairs per training patient.
        val_pairs: pairs per validation patient.
        seed: base seed of the draws and the noise.
        splits: the splits of ``data`` simulated.
        bowel_gas: the share of pairs whose scan gets pockets of bowel gas (:func:`add_bowel_gas`), training and
            validation alike.
        rotation_deg: the largest turn of the patient about the left-right, front-back and long axes (degrees),
            training and validation alike.

    Returns:
        a summary (also printed as JSON).
    """
    from scripts.drr.body import load_body_scan
    from scripts.utils import atomic_path

    root = Path(data)
    src = json.loads((root / "datalist.json").read_text())
    patients: dict[str, str] = {}
    bodies: dict[str, str] = {}
    for split in splits:
        for item in src.get(split, []):
            patients.setdefault(item["patient"], split)
            bodies.setdefault(item["patient"], body_file(root, item))
    dest = Path(out)
    computed = skipped = 0
    for patient, split in patients.items():
        count = pairs if split == "training" else val_pairs
        todo = [k for k in range(count) if not (dest / patient / f"{patient}_{k:03d}.json").is_file()]
        skipped += count - len(todo)
        if not todo:
            continue
        vertebrae = patient_vertebrae(*label_source(patient, labels_dir, root))
        hu, affine, _ = load_body_scan(bodies[patient])
        for k in todo:
            s = zlib.crc32(f"{seed}/{patient}/{k}".encode()) & 0x7FFFFFFF
            rng = np.random.default_rng(s)
            draw = draw_pair(rng, rotation_deg)
            scan, pockets = hu, []
            if bowel_gas > 0 and rng.random() < bowel_gas:
                scan, pockets = add_bowel_gas(hu, affine, vertebrae, rng)
            images, record = simulate_pair(scan, affine, vertebrae, draw, seed=s)
            record["bowel_gas"] = pockets
            stem = dest / patient / f"{patient}_{k:03d}"
            for img, name in zip(images, VIEW_NAMES):
                with atomic_path(stem.with_name(f"{stem.name}_{name}.npy")) as tmp, open(tmp, "wb") as f:
                    np.save(f, img)
            record.update(patient=patient, split=split, seed=s, body=bodies[patient])
            with atomic_path(stem.with_suffix(".json")) as tmp:
                tmp.write_text(json.dumps(record, indent=1) + "\n")
            computed += 1
            print(json.dumps({"pair": stem.name, "vertebrae_inside_both": sum(
                v["ap_inside"] and v["lateral_inside"] for v in record["vertebrae"])}), flush=True)  # fmt: skip
    dl = build_datalist(dest, patients)
    with atomic_path(dest / "datalist.json") as tmp:
        tmp.write_text(json.dumps(dl, indent=1) + "\n")
    summary = {
        "out": str(dest),
        "computed": computed,
        "skipped": skipped,
        "images": {k: len(v) for k, v in dl.items()},
        "patients": patients,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)  # a bad input ends in its one line, not a traceback

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if sys.argv[1:2] in (["spine_tilts"], ["label_fits"], ["labels_on_grid"]):
        command = {"spine_tilts": spine_tilts, "label_fits": label_fits, "labels_on_grid": labels_on_grid}[sys.argv[1]]
        check_cli_flags(command, sys.argv[2:], f"python -m scripts.tools.finder_data {sys.argv[1]}")
        fire.Fire(command, command=sys.argv[2:], serialize=lambda result: None)
    else:
        check_cli_flags(finder_data, sys.argv[1:], "python -m scripts.tools.finder_data")
        fire.Fire(finder_data, serialize=lambda result: None)
