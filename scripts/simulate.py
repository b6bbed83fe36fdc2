# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Simulate the X-ray (DRR) pairs of a prepared dataset and add them to its datalist.

Usage::

    python -m scripts.simulate --data data/example --angles "[[0, 90]]"
    python -m scripts.simulate radiographs --ct CT.nii.gz --labels LABELS.nii.gz --out DIR   # full radiographs
    python -m scripts.simulate --data data/example --angles "[[0, 90], [30, 90], [[0, 10], [90, 0]]]" \
        --source in_context --spectrum 90kV --photon_count 1e5

``--angles`` is a list of view sets; a view set is a list of alphas (beta = 0) or of (alpha, beta) pairs
in degrees. For every item of every split of ``DATA/datalist.json`` and every view set this writes, under
``DATA/<out_subdir>/<patient>/``, ``<id>_<source>_<views>``:

- ``.nii.gz``: float32 DRRs, array (W, H, V) = (image x/column, image y/row, view), affine = pixel spacing;
- ``_v1.png``, ``_v2.png``, ...: 16-bit grayscale PNGs, ``value = round(drr / png_max * 65535)``, shown the
  way the bundle's images are oriented (row 0 superior; AP with the patient's right on the left);
- ``.json``: the geometry (``meta["drr_geometry"]`` of :class:`scripts.transforms.DRR`) and ``png_max``.

Each file is written atomically and the ``.json`` last, so an interrupted run resumes where it stopped
(finished pairs are skipped unless ``--overwrite``). The datalist (rewritten atomically) gets, per item,
``drr`` (NIfTI), ``drr_png`` (list of PNGs), ``drr_angles`` ((V, 2)) and ``drr_geometry`` (JSON) of the
first view set, and ``drrs``: the same four entries for every view set. Paths are relative to the datalist.
Noise is seeded per item and view set from ``--seed``, so reruns give identical images.

**Full radiographs of a whole scan** (``python -m scripts.simulate radiographs --ct CT.nii.gz [--labels
LABELS.nii.gz] --out DIR``, :func:`simulate_radiographs`). The scan (HU, or any CT ``scripts.data.io.load_volume``
reads) is resampled to an isotropic RAS grid of ``--spacing`` mm. Its field of view is completed as the body X-ray
source completes it (air outside the body, a smooth soft-tissue trunk where the scan cuts the body,
:func:`scripts.drr.body.complete_body`), so the scan's box edges show only where the completion cannot hide them
(its top and bottom). It is projected onto a full detector in AP and lateral (default: source-detector 1200 mm,
source-isocentre 800 mm, a 430 mm detector of 2 mm pixels, polychromatic 60 kV with 10^6 photons, seeded noise),
both views turning about one isocentre: the centre of the labelled vertebrae, else the scan's centre, or
``--isocentre``. Written in ``DIR``:

- ``ap.dcm`` and ``lateral.dcm`` (or ``.png`` / ``.tif`` with a sidecar JSON, ``--fmt``): the radiographs with the
  geometry :mod:`scripts.io.radiograph` reads, and the transform from the scan's world coordinates to the X-ray
  system's frame (``world_to_system``: the translation by minus the isocentre);
- ``centres.json`` (with ``--labels``): per vertebra, top to bottom, its level name, label value, centre in world mm
  and in the system frame, its projected centre ``(row, col)`` in each image, and whether it lies inside both;
- ``simulation.json``: the settings, the geometry and ``world_to_system``.

The files are written into a temporary folder beside ``DIR`` and moved in when all are done (reports last): a failed
run leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import LoadImage
from scripts.drr.geometry import ConeBeamGeometry, as_angles
from scripts.functional import SIMULATION_SOURCES
from scripts.io.xray import write_png16
from scripts.transforms.drr import DRR
from scripts.utils import atomic_path
from tqdm import tqdm

__all__ = ["main", "simulate_item", "parse_view_sets", "simulate_radiographs", "SOURCES", "write_png16"]

SOURCES = SIMULATION_SOURCES  # --source -> the drr_source projected
SPLITS = ("training", "validation", "test")


def parse_view_sets(angles) -> list[torch.Tensor]:
    """``[[0, 90], [[0, 10], [90, 0]]]`` -> list of (2, 2) angle tensors (a single view set is accepted too); a view
    set of other than two views is refused (every model of the bundle reads two X-rays)."""
    if isinstance(angles, str):
        try:
            angles = json.loads(angles)
        except json.JSONDecodeError as e:
            raise ValueError(f'--angles {angles!r} is not a JSON list; example: --angles "[[0, 90]]".') from e
    if not isinstance(angles, (list, tuple)) or not angles:
        raise ValueError(f"--angles must be a non-empty list of view sets, e.g. [[0, 90]]; got {angles!r}.")
    if all(isinstance(a, (int, float)) for a in angles):  # one view set of alphas
        angles = [angles]
    sets = [as_angles(s) for s in angles]
    for given, s in zip(angles, sets):
        if s.shape[0] != 2:
            raise ValueError(
                f"view set {given!r} of --angles holds {s.shape[0]} view(s); the bundle's models and inference take "
                'two X-rays per vertebra: give pairs, e.g. --angles "[[0, 90]]" or "[[0, 90], [60, 90]]".'
            )
    return sets


def _tag(ang: torch.Tensor) -> str:
    def num(x: float) -> str:
        return f"{x:g}".replace("-", "m").replace(".", "p")

    return "_".join(f"a{num(a)}" + (f"b{num(b)}" if b != 0 else "") for a, b in ang.tolist())


def simulate_item(
    item: dict,
    root: Path,
    out_dir: Path,
    views: torch.Tensor,
    drr: DRR,
    source: str,
    seed: int,
    png_max: float,
    overwrite: bool = False,
) -> tuple[dict, bool]:
    """Simulate one item at one view set.

    Returns:
        (its datalist entries with paths relative to ``root``, whether it was computed (False: skipped)).
    """
    key = SOURCES[source]
    ident = str(item.get("id", Path(item[key]).name.split(".")[0]))
    stem = out_dir / str(item.get("patient", "")) / f"{ident}_{source}_{_tag(views)}"
    files = {
        "nii": stem.with_name(stem.name + ".nii.gz"),
        "json": stem.with_name(stem.name + ".json"),
        "png": [stem.with_name(f"{stem.name}_v{v + 1}.png") for v in range(views.shape[0])],
    }
    entry = {
        "drr": str(files["nii"].relative_to(root)),
        "drr_png": [str(p.relative_to(root)) for p in files["png"]],
        "drr_angles": views.tolist(),
        "drr_geometry": str(files["json"].relative_to(root)),
    }
    done = files["json"].exists() and files["nii"].exists() and all(p.exists() for p in files["png"])
    if done and not overwrite:
        return entry, False
    vol = LoadImage(image_only=True, ensure_channel_first=True)(str(root / item[key]))
    drr.angles = views
    drr.set_random_state(seed=zlib.crc32(f"{seed}/{ident}/{_tag(views)}/{source}".encode()) & 0x7FFFFFFF)
    img = drr(vol)
    geo = dict(img.meta["drr_geometry"])
    arr = img.numpy()  # (V, H, W)
    dv, du = geo["pixel_spacing"]
    with atomic_path(files["nii"]) as tmp:
        nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), np.diag([du, dv, 1.0, 1.0])), tmp)
    for v, path in enumerate(files["png"]):
        write_png16(arr[v], path, png_max)
    geo.update(png_max=png_max, source=source, item_id=ident, nifti_axes="x (column), y (row), view")
    with atomic_path(files["json"]) as tmp:
        tmp.write_text(json.dumps(geo, indent=1) + "\n")
    return entry, True


def main(
    data: str,
    angles: str | list = "[[0, 90]]",
    source: str = "isolated",
    physics: str = "poly",
    spectrum: str = "60kV",
    photon_count: float | None = 1e6,
    samples_per_voxel: int = 1,
    detector_size: int | None = None,
    sdd: float = 1020.0,
    sod: float = 700.0,
    seed: int = 0,
    png_max: float = 10.0,
    out_subdir: str = "drr",
    datalist: str = "datalist.json",
    overwrite: bool = False,
    device: str = "cpu",
) -> dict:
    """Simulate the DRR pairs of a prepared dataset (see the module docstring).

    Args:
        data: prepared dataset folder (with ``datalist.json``).
        angles: JSON list of view sets, e.g. ``[[0, 90]]``.
        source: "isolated" (project the ground truth ``gt``, as the paper) or "in_context" (the CT ``ct``).
        physics: "poly" or "mono".
        spectrum: "60kV", "90kV" or "120kV".
        photon_count: photons per pixel (None: no noise).
        samples_per_voxel: ray sampling density.
        detector_size: detector pixels (default the crop size).
        sdd: source-to-detector distance (mm).
        sod: source-to-isocentre distance (mm).
        seed: base seed of the noise.
        png_max: DRR value mapped to 65535 in the PNGs.
        out_subdir: output folder inside ``data``.
        datalist: datalist file name inside ``data``.
        overwrite: recompute pairs that exist.
        device: "cpu" or "cuda".

    Returns:
        summary dict (also printed as JSON).
    """
    root = Path(data)
    dl_path = root / datalist
    if not dl_path.exists():
        raise FileNotFoundError(f"{dl_path} not found: run `python -m scripts.prepare` first or pass --data.")
    if source not in SOURCES:
        raise ValueError(f"--source must be one of {sorted(SOURCES)}, got {source!r}.")
    if not png_max > 0:
        raise ValueError(f"--png_max must be positive, got {png_max}.")
    sets = parse_view_sets(angles)
    dl = json.loads(dl_path.read_text())
    items = [it for split in SPLITS for it in dl.get(split, []) if isinstance(it, dict)]
    if not items:
        raise ValueError(f"{dl_path} has no items in {SPLITS}.")
    first = LoadImage(image_only=True, ensure_channel_first=True)(str(root / items[0][SOURCES[source]]))
    spacing = float(np.linalg.norm(np.asarray(first.affine)[:3, :3], axis=0).mean())
    geometry = ConeBeamGeometry.for_crop(max(first.shape[1:]), spacing, sdd, sod, detector_size)
    drr = DRR(sets[0], geometry, physics, spectrum, photon_count, None, samples_per_voxel, device=device)
    out_dir = root / out_subdir
    computed = 0
    with tqdm(total=len(items) * len(sets), desc="DRR pairs", unit="pair") as bar:
        for item in items:
            entries = []
            for views in sets:
                entry, new = simulate_item(item, root, out_dir, views, drr, source, seed, png_max, overwrite)
                entries.append(entry)
                computed += int(new)
                bar.update(1)
            item.update(entries[0])
            item["drrs"] = entries
    with atomic_path(dl_path) as tmp:
        tmp.write_text(json.dumps(dl, indent=1) + "\n")
    summary = {
        "datalist": str(dl_path),
        "items": len(items),
        "computed": computed,
        "skipped": len(items) * len(sets) - computed,
        "view_sets": [s.tolist() for s in sets],
        "source": source,
        "out_dir": str(out_dir),
        "geometry": geometry.to_dict(),
    }
    print(json.dumps(summary))
    return summary


def simulate_radiographs(
    ct: str,
    out: str,
    labels: str | None = None,
    label_convention: str = "auto",
    class_map: str | None = None,
    spacing: float = 2.0,
    sdd: float = 1200.0,
    sod: float = 800.0,
    detector_mm: float = 430.0,
    pixel_mm: float = 2.0,
    physics: str = "poly",
    spectrum: str = "60kV",
    photon_count: float | None = 1e6,
    seed: int = 0,
    isocentre: Any = None,
    fmt: str = "dcm",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Simulate an AP and a lateral full radiograph of a whole scan (see the module's docstring).

    Args:
        ct: the scan.
        out: the output folder (refused if it holds files, unless ``overwrite``).
        labels: its vertebra label map (VerSe or TotalSegmentator values), or a folder of TotalSegmentator's
            per-vertebra masks (``segmentations/vertebrae_*``), for ``centres.json`` and the isocentre.
        label_convention: ``"auto"``, ``"verse"`` or ``"totalseg"``.
        class_map: a TotalSegmentator class map (value -> structure name, e.g. ``structures.csv``); default one
            found beside the label map (``scripts.data.sources.CLASS_MAP_NAMES``), if any.
        spacing: the isotropic grid (mm) the scan is projected from.
        sdd: source-detector distance (mm).
        sod: source-isocentre distance (mm).
        detector_mm: the square detector's side (mm).
        pixel_mm: its pixel size (mm).
        physics: ``"poly"`` or ``"mono"`` (:class:`scripts.drr.projector.DRRProjector`).
        spectrum: the tube's spectrum.
        photon_count: photons per pixel (``None``: no noise).
        seed: the noise seed.
        isocentre: the world point (mm) both views turn about (default: see the module's docstring).
        fmt: ``"dcm"``, ``"png"`` or ``"tif"``.
        overwrite: replace the files of an earlier run in ``out``.

    Returns:
        the contents of ``simulation.json`` plus ``centres`` (the vertebrae, empty without labels).
    """
    from scripts.data.crop import to_ras_isotropic
    from scripts.data.errors import DataError
    from scripts.data.io import check_same_grid, load_volume, structure_masks
    from scripts.data.labels import read_class_map, vertebra_centres
    from scripts.data.sources import CLASS_MAP_NAMES
    from scripts.data.structures import combine_structure_masks
    from scripts.drr.body import complete_body, outside_fov
    from scripts.drr.projector import DRRProjector
    from scripts.errors import BundleInputError
    from scripts.functional import DEFAULT_ANGLES
    from scripts.io.radiograph import write_projected_radiographs

    if not (spacing > 0 and sdd > sod > 0 and detector_mm > 0 and pixel_mm > 0):
        raise BundleInputError(
            f"need spacing > 0, sdd > sod > 0, detector_mm > 0 and pixel_mm > 0; got spacing={spacing}, sdd={sdd}, "
            f"sod={sod}, detector_mm={detector_mm}, pixel_mm={pixel_mm}."
        )
    if fmt not in ("dcm", "png", "tif"):
        raise BundleInputError(f"--fmt must be dcm, png or tif, got {fmt!r}.")
    dest = Path(out)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise BundleInputError(f"{dest} already holds files; choose another --out or pass --overwrite True.")
    img = load_volume(ct, "CT")
    if float(img.min()) >= 0.0:
        raise BundleInputError(
            f"{ct}: no value below 0, so not a CT in HU (air is about -1000 HU; a 0-255 window?); fix: prepare it with "
            "python -m scripts.prepare --intensity windowed (or its scale and offset to HU in a source list), then "
            "simulate from its <patient>_body.nii.gz, its labels put on that grid with python -m "
            "scripts.tools.finder_data labels_on_grid."
        )
    outside_raw = outside_fov(np.asarray(img[0], dtype=np.float32), None).astype(np.float32)
    vol = to_ras_isotropic(img, spacing)
    # the field of view on the new grid: the mask of the original one, resampled alongside the CT
    mask = img.clone()
    mask[0] = torch.as_tensor(outside_raw)
    outside = np.asarray(to_ras_isotropic(mask, spacing, is_label=True)[0]) > 0.5
    hu, affine, completed = complete_body(np.asarray(vol[0], dtype=np.float32), outside, np.asarray(vol.affine))
    centres: list[dict[str, Any]] = []
    if labels is not None and structure_masks(labels):  # TotalSegmentator's segmentations/vertebrae_* masks
        lab_img, levels = combine_structure_masks(structure_masks(labels), labels)
        check_same_grid(img, lab_img, labels, ct)
        lab = to_ras_isotropic(lab_img, spacing, is_label=True)
        cmap, label_convention = {v: f"vertebrae_{level}" for v, level in levels.items()}, "totalseg"
    elif labels is not None:
        try:
            lab_img = load_volume(labels, "labels")
        except DataError as e:
            if not Path(labels).is_dir():
                raise
            raise DataError(
                labels,
                "neither a DICOM series nor vertebrae_* masks",
                "give a label map, a folder holding one DICOM "
                "series, or TotalSegmentator's segmentations folder (vertebrae_<level> masks)",
            ) from e
        check_same_grid(img, lab_img, labels, ct)
        lab = to_ras_isotropic(lab_img, spacing, is_label=True)
        if class_map is None:
            near = [Path(labels).parent / n for n in CLASS_MAP_NAMES]
            class_map = next((str(p) for p in near if p.is_file()), None)
        cmap = read_class_map(class_map) if class_map else None
    if labels is not None:
        centres = vertebra_centres(np.asarray(lab[0]).astype(np.int64), np.asarray(lab.affine), label_convention, cmap)
    if isocentre is not None:
        iso = np.asarray(json.loads(isocentre) if isinstance(isocentre, str) else isocentre, dtype=np.float64)
        if iso.shape != (3,) or not np.all(np.isfinite(iso)):
            raise BundleInputError(f"--isocentre must be three numbers (world mm), got {isocentre!r}.")
    elif centres:
        iso = np.mean([c["centre_mm_world"] for c in centres], axis=0)
    else:
        iso = affine[:3, :3] @ ((np.asarray(hu.shape) - 1) / 2.0) + affine[:3, 3]
    n = int(round(detector_mm / pixel_mm))
    geo = ConeBeamGeometry(float(sdd), float(sod), (n, n), (float(pixel_mm), float(pixel_mm)))
    projector = DRRProjector(geo, physics=physics, spectrum=spectrum, photon_count=photon_count)
    gen = torch.Generator().manual_seed(int(seed))

    def project(v: torch.Tensor, aff: torch.Tensor, angles: Any, isocentre: Any) -> torch.Tensor:
        iso_t = torch.as_tensor(np.asarray(isocentre, dtype=np.float64))
        return projector(v[None], aff, torch.as_tensor(np.asarray(angles)), isocentre=iso_t, generator=gen)[0]

    angles = np.asarray(DEFAULT_ANGLES, dtype=np.float64)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        written = write_projected_radiographs(
            hu, affine, staging, iso, geo, angles, names=("ap", "lateral"), projector=project, fmt=fmt
        )
        if centres:
            pix = geo.project_points([c["centre_mm_world"] for c in centres], angles, iso).numpy()  # (col, row)
            for i, c in enumerate(centres):
                c["centre_mm_system"] = [round(float(v), 3) for v in (np.asarray(c["centre_mm_world"]) - iso)]
                for v, name in enumerate(("ap", "lateral")):
                    c[f"{name}_rc"] = [round(float(pix[v, i, 1]), 2), round(float(pix[v, i, 0]), 2)]
                c["inside_both"] = all(0 <= p <= n - 1 for name in ("ap", "lateral") for p in c[f"{name}_rc"])
            (staging / "centres.json").write_text(json.dumps({"vertebrae": centres}, indent=1) + "\n")
        summary = {
            "ct": str(ct),
            "labels": None if labels is None else str(labels),
            "files": [Path(f).name for f in written["files"]],
            "geometry": geo.to_dict(),
            "angles": angles.tolist(),
            "isocentre_mm_world": [round(float(v), 3) for v in iso],
            "world_to_system": np.asarray(written["world_to_system"], dtype=np.float64).tolist(),
            "spacing_mm": float(spacing),
            "physics": physics,
            "spectrum": spectrum,
            "photon_count": photon_count,
            "seed": int(seed),
            "field_of_view_completed": bool(completed),
        }
        (staging / "simulation.json").write_text(json.dumps(summary, indent=1) + "\n")
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted(staging.iterdir(), key=lambda p: p.suffix == ".json"):  # the reports last
            os.replace(f, dest / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(json.dumps({"out": str(dest), "files": summary["files"], "vertebrae": len(centres)}))
    return {**summary, "centres": centres}


if __name__ == "__main__":
    import sys

    import fire

    try:
        from scripts.errors import check_cli_flags

        if sys.argv[1:2] == ["radiographs"]:  # full radiographs of a whole scan (simulate_radiographs)
            check_cli_flags(simulate_radiographs, sys.argv[2:], "python -m scripts.simulate radiographs")
            fire.Fire(simulate_radiographs, command=sys.argv[2:], serialize=lambda result: None)
        else:
            check_cli_flags(main, sys.argv[1:], "python -m scripts.simulate")
            fire.Fire(main, serialize=lambda result: None)  # main prints its JSON summary itself
    except (ValueError, FileNotFoundError, KeyError) as e:  # bad input (BundleInputError is one): one line
        sys.exit(f"error: {e}")
