# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Two full radiographs of the example's whole scan, written as DICOM files and reconstructed from the files,
agree with the in-memory body windows of the same vertebra (the real user path against the simulated one)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scripts.drr.body import load_body_scan
from scripts.drr.geometry import ConeBeamGeometry
from scripts.drr.projector import DRRProjector
from scripts.io.radiograph import write_projected_radiographs
from tests.conftest import bundle_workflow

ROOT = Path(__file__).resolve().parents[1]


def _bone_dice(a: np.ndarray, b: np.ndarray, level: float = -500.0) -> float:
    x, y = a > level, b > level
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))


@pytest.mark.slow
def test_reconstruction_from_dicom_radiographs_matches_the_in_memory_body_windows(example64, tmp_path):
    folder, _ = example64
    item = json.loads((folder / "datalist.json").read_text())["test"][0]
    gt = np.asarray(nib.load(str(folder / item["gt"])).dataobj, dtype=np.float32)
    common = dict(ckpt_dir=str(ROOT / "models" / "cpu"), physics="poly", photon_count=None)

    # in memory: the body windows of the prepared item, reconstructed by the simulated-inference config
    wf = bundle_workflow(
        ["inference.json", "inference_simulated.json", "cpu.json"],
        "infer",
        dataset_dir=str(folder),
        drr_source="body",
        output_dir=str(tmp_path / "memory"),
        **common,
    )
    wf.initialize()
    wf.run()
    memory = np.asarray(nib.load(str(tmp_path / "memory" / item["id"] / f"{item['id']}_hu.nii.gz")).dataobj)

    # from files: two full radiographs (300 x 300 pixels of 1 mm) of the whole scan, about the vertebra's centre
    hu, affine, _ = load_body_scan(folder / item["body"])
    geometry = ConeBeamGeometry(1020.0, 700.0, (300, 300), (1.0, 1.0))
    written = write_projected_radiographs(
        hu,
        affine,
        tmp_path / "radiographs",
        isocentre=item["centre_mm"],
        geometry=geometry,
        projector=DRRProjector(geometry, physics="poly", photon_count=None),
    )
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"radiographs": written["files"], "centre_mm": [0.0, 0.0, 0.0], "id": "files"}]))
    wf = bundle_workflow(
        ["inference.json", "cpu.json"], "infer", datalist=str(cases), output_dir=str(tmp_path / "files"), **common
    )
    wf.initialize()
    wf.run()
    img = nib.load(str(tmp_path / "files" / "files" / "files_hu.nii.gz"))
    files = np.asarray(img.dataobj)
    centre = img.affine @ np.r_[(np.asarray(files.shape) - 1) / 2, 1.0]
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-3, err_msg="the volume sits on the vertebra (system frame)")

    d_memory, d_files = _bone_dice(memory, gt), _bone_dice(files, gt)
    assert abs(d_memory - d_files) <= 0.02, f"Dice from memory {d_memory:.3f}, from files {d_files:.3f}"
    assert _bone_dice(files, memory) >= 0.9
    assert torch.isfinite(torch.as_tensor(files)).all()
