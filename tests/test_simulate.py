# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""python -m scripts.simulate on a small prepared dataset built here."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image
from scripts.drr.geometry import grid_affine
from scripts.simulate import main, parse_view_sets
from scripts.transforms import DRR

N = 24


def make_dataset(root):
    items = {"training": [], "validation": [], "test": []}
    for i, split in enumerate(["training", "training", "test"]):
        pid, level = f"P{i}", "L1"
        ct = np.full((N, N, N), -1024.0, dtype=np.float32)
        ct[6 + i : 16, 8:18, 4:20] = 800.0
        ct[2:5, 2:20, :] = 30.0
        gt = np.where(ct > 500, ct, -1024.0).astype(np.float32)
        aff = grid_affine((N, N, N), 1.0, centre=(i * 10.0, 0, -5.0)).numpy()
        (root / pid).mkdir(parents=True, exist_ok=True)
        entry = {"id": f"{pid}_{level}", "patient": pid, "level": level}
        for key, arr in (("ct", ct), ("gt", gt), ("mask", (gt > -1024).astype(np.uint8))):
            path = f"{pid}/{pid}_{level}_{key}.nii.gz"
            nib.save(nib.Nifti1Image(arr, aff), root / path)
            entry[key] = path
        items[split].append(entry)
    (root / "datalist.json").write_text(json.dumps(items))


def test_simulate_writes_pairs_updates_datalist_and_resumes(tmp_path):
    make_dataset(tmp_path)
    summary = main(str(tmp_path), angles="[[0, 90], [[30, 0], [90, 5]]]", source="isolated", photon_count=1e5)
    assert summary["items"] == 3 and summary["computed"] == 6
    dl = json.loads((tmp_path / "datalist.json").read_text())
    item = dl["training"][0]
    assert item["drr_angles"] == [[0.0, 0.0], [90.0, 0.0]] and len(item["drrs"]) == 2
    assert item["drrs"][1]["drr_angles"] == [[30.0, 0.0], [90.0, 5.0]]
    nii = nib.load(tmp_path / item["drr"])
    arr = np.asarray(nii.dataobj)
    assert arr.shape == (N, N, 2) and arr.dtype == np.float32  # (x = column, y = row, view)
    png = np.asarray(Image.open(tmp_path / item["drr_png"][0]))
    assert png.dtype == np.uint16 and png.shape == (N, N) and png.max() > 1000
    geo = json.loads((tmp_path / item["drr_geometry"]).read_text())
    assert geo["png_max"] == 10.0 and geo["angles"] == [[0.0, 0.0], [90.0, 0.0]]
    np.testing.assert_allclose(png / 65535 * 10, np.clip(arr[:, :, 0].T, 0, 10), atol=10 / 65535)
    # the NIfTI holds exactly what the DRR transform gives for the item (same seed -> same noise)
    vol = nib.load(tmp_path / item["gt"])
    ref = DRR((0, 90), photon_count=None)(MetaTensor(torch.as_tensor(vol.get_fdata()[None]), affine=vol.affine))
    noise = arr.transpose(2, 1, 0) - ref.numpy()
    assert np.abs(noise).max() < 0.1 and np.abs(noise).std() > 1e-5
    # resumption: a second run skips everything and leaves the files untouched
    before = (tmp_path / item["drr"]).stat().st_mtime_ns
    again = main(str(tmp_path), angles="[[0, 90], [[30, 0], [90, 5]]]", source="isolated", photon_count=1e5)
    assert again["computed"] == 0 and again["skipped"] == 6
    assert (tmp_path / item["drr"]).stat().st_mtime_ns == before
    # an interrupted pair (JSON marker missing) is recomputed, identically
    (tmp_path / item["drr_geometry"]).unlink()
    third = main(str(tmp_path), angles="[[0, 90], [[30, 0], [90, 5]]]", source="isolated", photon_count=1e5)
    assert third["computed"] == 1
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / item["drr"]).dataobj), arr)


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        main(str(tmp_path))
    make_dataset(tmp_path)
    with pytest.raises(ValueError, match="source"):
        main(str(tmp_path), source="everything")
    with pytest.raises(ValueError, match="-360, 360"):
        main(str(tmp_path), angles="[[0, 900]]")
    with pytest.raises(ValueError, match="JSON"):
        parse_view_sets("[0, 90")
    assert [s.tolist() for s in parse_view_sets([0, 90])] == [[[0.0, 0.0], [90.0, 0.0]]]
    with pytest.raises(ValueError, match=r"view set \[0, 45, 90\] of --angles holds 3 view\(s\).*take two"):
        parse_view_sets("[[0, 45, 90]]")


def test_cli_bad_input_is_one_line(tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "scripts.simulate", "--data", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in res.stderr
    assert "python -m scripts.prepare" in res.stderr
