# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Simulate the X-ray (DRR) pairs of a prepared dataset and add them to its datalist.

Usage::

    python -m scripts.simulate --data data/example --angles "[[0, 90]]"
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
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import LoadImage
from scripts.drr.geometry import ConeBeamGeometry, as_angles
from scripts.io.xray import write_png16
from scripts.transforms.drr import DRR
from scripts.utils import atomic_path
from tqdm import tqdm

__all__ = ["main", "simulate_item", "parse_view_sets", "SOURCES", "write_png16"]

SOURCES = {"isolated": "gt", "in_context": "ct"}
SPLITS = ("training", "validation", "test")


def parse_view_sets(angles) -> list[torch.Tensor]:
    """``[[0, 90], [[0, 10], [90, 0]]]`` -> list of (V, 2) angle tensors (a single view set is accepted too)."""
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
    for s in sets:
        if s.shape[0] < 1:
            raise ValueError(f"empty view set in --angles {angles!r}.")
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


if __name__ == "__main__":
    import sys

    import fire

    try:
        fire.Fire(main, serialize=lambda result: None)  # main prints its JSON summary itself
    except (ValueError, FileNotFoundError, KeyError) as e:  # bad input: one line, no traceback
        sys.exit(f"error: {e}")
