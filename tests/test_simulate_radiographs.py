# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""python -m scripts.simulate radiographs: full radiographs of a whole scan, with the vertebrae's projected centres."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scripts.errors import BundleInputError
from scripts.io.radiograph import read_radiograph
from scripts.simulate import simulate_radiographs
from tests.conftest import BLOCK_CENTRES_VOX, ROOT, block_phantom

CENTRES_VOX = BLOCK_CENTRES_VOX


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    return folder, block_phantom(folder)


def test_radiographs_with_geometry_and_projected_centres(scan, tmp_path):
    folder, affine = scan
    out = tmp_path / "rad"
    res = simulate_radiographs(
        str(folder / "ct.nii.gz"), str(out), labels=str(folder / "labels.nii.gz"), label_convention="verse",
        detector_mm=200.0, pixel_mm=2.0, photon_count=None, physics="mono",
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["ap.dcm", "centres.json", "lateral.dcm", "simulation.json"]
    centres = json.loads((out / "centres.json").read_text())["vertebrae"]
    assert [c["level"] for c in centres] == ["T10", "T11", "T12"], "named, top to bottom"
    iso = np.asarray(res["isocentre_mm_world"])
    for c in centres:
        world = affine[:3, :3] @ np.asarray(CENTRES_VOX[c["label"]], dtype=float) + affine[:3, 3]
        assert np.allclose(c["centre_mm_world"], world, atol=1e-3)
        assert np.allclose(c["centre_mm_system"], world - iso, atol=1e-3)
        assert c["inside_both"]
    np.testing.assert_allclose(iso, np.mean([c["centre_mm_world"] for c in centres], axis=0), atol=1e-3)
    for name in ("ap", "lateral"):
        rad = read_radiograph(out / f"{name}.dcm")
        assert (rad.sdd, rad.sod, rad.pixel_spacing) == (1200.0, 800.0, (2.0, 2.0))
        assert rad.image.shape == (100, 100)
        np.testing.assert_allclose(rad.world_to_system[:3, 3], -iso, atol=1e-3)
        for c in centres:  # each block's projection is brightest around its projected centre
            r, col = (int(round(v)) for v in c[f"{name}_rc"])
            patch = rad.image[r - 1 : r + 2, col - 1 : col + 2]
            assert patch.min() >= 0.95 * rad.image.max(), "the centre lands on its block's bright plateau"
    assert rad.angles == (90.0, 0.0)


def test_totalsegmentator_masks_folder_gives_the_same_centres(scan, tmp_path):
    """``--labels`` may be TotalSegmentator's ``segmentations`` folder (one ``vertebrae_<level>`` mask each, as
    ``scripts.prepare`` reads it): the centres are those of the multilabel map; a folder without them is refused."""
    import nibabel as nib
    from scripts.data.labels import VERSE_LABELS

    folder, _ = scan
    img = nib.load(str(folder / "labels.nii.gz"))
    labels = np.asarray(img.dataobj)
    seg = tmp_path / "segmentations"
    seg.mkdir()
    for value in CENTRES_VOX:
        mask = (labels == value).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, img.affine), str(seg / f"vertebrae_{VERSE_LABELS[value]}.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros_like(labels, dtype=np.uint8), img.affine), str(seg / "liver.nii.gz"))
    kw = {"detector_mm": 200.0, "pixel_mm": 2.0, "photon_count": None, "physics": "mono"}
    res = simulate_radiographs(str(folder / "ct.nii.gz"), str(tmp_path / "ts"), labels=str(seg), **kw)
    ref = simulate_radiographs(
        str(folder / "ct.nii.gz"), str(tmp_path / "ref"), labels=str(folder / "labels.nii.gz"), **kw
    )
    assert [c["level"] for c in res["centres"]] == ["T10", "T11", "T12"]
    for a, b in zip(res["centres"], ref["centres"]):
        np.testing.assert_allclose(a["centre_mm_world"], b["centre_mm_world"], atol=1e-3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleInputError, match="empty: neither a DICOM series nor vertebrae_\\* masks"):
        simulate_radiographs(str(folder / "ct.nii.gz"), str(tmp_path / "none"), labels=str(tmp_path / "empty"))


def test_bad_inputs_stop_before_writing(scan, tmp_path):
    folder, _ = scan
    with pytest.raises(BundleInputError, match="sdd > sod"):
        simulate_radiographs(str(folder / "ct.nii.gz"), str(tmp_path / "a"), sdd=500.0, sod=800.0)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    with pytest.raises(BundleInputError, match="already holds files"):
        simulate_radiographs(str(folder / "ct.nii.gz"), str(tmp_path / "b"))
    import nibabel as nib

    img = nib.load(str(folder / "ct.nii.gz"))
    windowed = tmp_path / "windowed.nii.gz"  # the scan as a 0-255 window: no value below 0
    nib.save(nib.Nifti1Image(np.clip((np.asarray(img.dataobj) + 1000) / 8, 0, 255), img.affine), str(windowed))
    with pytest.raises(BundleInputError, match=r"windowed.nii.gz: no value below 0, so not a CT in HU"):
        simulate_radiographs(str(windowed), str(tmp_path / "c"))
    assert not (tmp_path / "a").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["b", "windowed.nii.gz"]


def test_the_subcommand_keeps_the_dataset_command(scan, tmp_path):
    folder, _ = scan
    cmd = [sys.executable, "-m", "scripts.simulate", "radiographs", "--ct", str(folder / "ct.nii.gz"),
           "--out", str(tmp_path / "c"), "--detector_mm", "120", "--fmt", "png"]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {"ap.png", "lateral.png", "simulation.json"} <= {p.name for p in (tmp_path / "c").iterdir()}
    bad = subprocess.run(cmd[:-2] + ["--fmt", "jpg"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: --fmt must be")
    old = subprocess.run([sys.executable, "-m", "scripts.simulate", "--data", str(tmp_path / "none")], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert old.returncode != 0 and "datalist.json" in old.stderr, "the dataset command still answers"
