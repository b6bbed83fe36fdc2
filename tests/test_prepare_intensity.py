# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""HU recovery of windowed scans (``--intensity windowed``), the checks of stored values and the coarse-spacing
refusal of ``python -m scripts.prepare``.

The example (LIDC-IDRI-0001, true HU) is windowed the way the shared spine CTs are stored (a linear window,
rounded to 0-255, 0 outside the field of view) and recovered; synthetic phantoms test the refusals and the
source list's own ``scale`` / ``offset``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scripts import prepare as prep
from scripts.data.errors import DataError
from scripts.data.intensity import apply_fit, fit_hu
from tests.test_prepare import hu, load, make_scan, spine, world_grid

#: Bound of the mean absolute HU error inside the body (true HU -500..1000) after recovery.
BODY_MAE_HU = 15.0


@pytest.fixture(scope="module")
def example(example_case):
    """The example's CT (HU), vertebra mask, voxel size and affine."""
    case = example_case
    img = nib.load(case.ct)
    labels = np.asarray(nib.load(case.mask).dataobj)
    vertebrae = (labels >= 26) & (labels <= 50)  # the example's vertebrae_* ids (structures.csv)
    return np.asarray(img.dataobj, dtype=np.float32), vertebrae, img.header.get_zooms()[:3], img.affine, case


def window(ct_hu, lo, hi):
    """Store HU as the shared scans are: linear window [lo, hi] -> 0..255, rounded; below lo reads 0."""
    return np.clip(np.round((ct_hu - lo) / (hi - lo) * 255.0), 0, 255).astype(np.float32)


@pytest.mark.network_access
@pytest.mark.parametrize("lo,hi", [(-2048, 3071), (-1024, 3071), (-1200, 1500), (-1000, 1000)])
def test_windowed_example_recovered(example, lo, hi):
    ct_hu, vertebrae, zooms, _, _ = example
    stored = window(ct_hu, lo, hi)
    fit = fit_hu(stored, vertebrae, zooms)
    true_scale = (hi - lo) / 255.0
    assert fit.scale == pytest.approx(true_scale, rel=0.05)
    assert set(fit.landmarks) == {"air", "fat", "soft", "bone"}
    assert all(abs(r) < 30 for r in fit.residuals.values()), fit.residuals
    body = (ct_hu > -500) & (ct_hu < 1000)
    err = apply_fit(stored, fit)[body] - ct_hu[body]
    assert np.abs(err).mean() < BODY_MAE_HU
    # air at the bottom of the stored range shares the padding value: the fit says so
    assert any("padding" in w for w in fit.warnings) == (lo > -1050)


@pytest.mark.network_access
def test_no_air_in_view_warns(example):
    ct_hu, vertebrae, zooms, _, _ = example
    stored = window(ct_hu, -1024, 3071)
    stored[ct_hu < -400] = 0  # a field of view holding the body only (no air, no lung)
    fit = fit_hu(stored, vertebrae, zooms)
    assert "air" not in fit.landmarks and "no air in the field of view" in fit.warnings
    assert fit.scale == pytest.approx(16.06, rel=0.25)  # fat, soft tissue and bone alone: rough


@pytest.mark.network_access
def test_windowed_example_prepared(tmp_path, example, example64):
    ct_hu, _, _, affine, case = example
    # uncompressed: the stored values are what matters, and gzip of the whole scan takes seconds
    nib.save(nib.Nifti1Image(window(ct_hu, -1100, 2000).astype(np.uint8), affine), str(tmp_path / "win_ct.nii"))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        f"patient,ct,mask,class_map,labels,intensity\nwin,win_ct.nii,{case.mask},{case.class_map},totalseg,windowed\n"
    )
    kw = {"spacing": 2.0, "roi": 64, "levels": "T7", "progress": False}
    lines: list[str] = []
    s = prep.prepare(str(pairs), tmp_path / "out", log=lines.append, **kw)
    ref_dir, ref = example64  # the example in HU, prepared with the same spacing and crop size (every level)
    assert (s.written, ref.failed) == (1, 0)
    row = next(csv.DictReader(open(tmp_path / "out" / "manifest.csv")))
    ref_row = next(r for r in csv.DictReader(open(ref_dir / "manifest.csv")) if r["level"] == "T7")
    assert row["intensity"] == "windowed" and row["hu_fit"] == "fit" and ref_row["intensity"] == "hu"
    assert float(row["hu_scale"]) == pytest.approx(3100 / 255, rel=0.05)
    assert "air=" in row["hu_landmarks"] and "bone=" in row["hu_residuals"]
    assert float(row["hu_mean"]) == pytest.approx(float(ref_row["hu_mean"]), abs=BODY_MAE_HU)
    assert any(line.startswith("  intensity win: HU = ") for line in lines)
    ct = load(tmp_path / "out" / "win" / "win_T7_ct.nii.gz")[0]
    ref_ct = load(ref_dir / "LIDC-IDRI-0001" / "LIDC-IDRI-0001_T7_ct.nii.gz")[0]
    body = (ref_ct > -500) & (ref_ct < 1000)
    assert np.abs(ct[body] - ref_ct[body]).mean() < BODY_MAE_HU


def windowed_phantom(folder, name, scale=4.0, offset=-500.0, **kw):
    """A phantom stored as ``(hu - offset) / scale`` (all values in 60..190, nothing negative)."""
    ct_p, lab_p, aff = make_scan(folder, name, spine(19, 20, 18), **kw)
    ct = np.asarray(nib.load(str(ct_p)).dataobj)
    stored = ((ct - offset) / scale).astype(np.float32)
    assert 50 < stored.min() and stored.max() < 255
    nib.save(nib.Nifti1Image(stored, aff), str(ct_p))
    return ct_p, lab_p, aff


def write_pairs(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_windowed_scan_refused_as_hu(tmp_path, capsys):
    ct_p, _, _ = windowed_phantom(tmp_path / "src", "case1")
    small = ["--spacing", "2", "--roi", "16", "--min_voxels", "3"]
    assert prep.main(["--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"), *small]) == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(ct_p) in errors[0] and "--intensity windowed" in errors[0], errors


def test_source_list_scale_offset_override(tmp_path):
    ct_p, lab_p, src_aff = windowed_phantom(tmp_path / "src", "case1", scale=4.0, offset=-500.0)
    pairs = write_pairs(tmp_path / "pairs.csv", ["patient", "ct", "mask", "scale", "offset"],
                        [["case1", ct_p, lab_p, 4.0, -500.0]])  # fmt: skip
    # the given map wins over a fit (a phantom has no air or fat to fit) and over the stored-in-HU check
    s = prep.prepare(str(pairs), tmp_path / "out", spacing=2.0, roi=16, min_voxels=3, progress=False,
                     log=lambda *a: None, intensity="windowed")  # fmt: skip
    assert (s.written, s.failed) == (2, 0), s.messages
    ct, aff, _ = load(tmp_path / "out" / "case1" / "case1_T12_ct.nii.gz")
    w = world_grid(ct.shape, aff)
    np.testing.assert_allclose(ct[4:12, 4:12, 4:12], hu(*np.moveaxis(w[4:12, 4:12, 4:12], -1, 0)), atol=0.05)
    row = next(csv.DictReader(open(tmp_path / "out" / "manifest.csv")))
    assert (row["hu_fit"], float(row["hu_scale"]), float(row["hu_offset"])) == ("given", 4.0, -500.0)
    # a half-given map is refused in one line naming the list
    bad = write_pairs(tmp_path / "bad.csv", ["ct", "mask", "scale"], [[ct_p, lab_p, 4.0]])
    with pytest.raises(DataError, match="bad.csv: entry 1 gives only one of scale and offset"):
        prep.prepare(str(bad), tmp_path / "out2", progress=False, log=lambda *a: None)


def test_nan_ct_refused(tmp_path):
    ct_p, _, aff = make_scan(tmp_path / "src", "nan1", spine(19, 20, 18))
    ct = np.asarray(nib.load(str(ct_p)).dataobj).copy()
    ct[3, 4, 5], ct[6, 7, 8] = np.nan, np.inf
    nib.save(nib.Nifti1Image(ct, aff), str(ct_p))
    s = prep.prepare(str(tmp_path / "src"), tmp_path / "out", spacing=2.0, roi=16, min_voxels=3, progress=False,
                     log=lambda *a: None)  # fmt: skip
    assert (s.written, s.failed) == (0, 1)
    assert s.messages == [f"{ct_p}: CT holds 1 NaN and 1 infinite value(s); replace them (e.g. with -1024 HU) "
                          "or export the scan again"]  # fmt: skip


def test_coarse_spacing_refused_before_writing(tmp_path, capsys):
    make_scan(tmp_path / "src", "case1", spine(19, 20, 18))
    out = tmp_path / "out"
    assert prep.main(["--source", str(tmp_path / "src"), "--out", str(out), "--spacing", "2", "--roi", "16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # the smallest complete vertebra is the T12 ellipsoid: voxel centres 7.5 mm apart along z plus one 2.5 mm
    # voxel = 10 mm, 5 voxels at 2 mm (T11 is cut off and not counted)
    assert err == [
        "error: --spacing 2 mm leaves case1 T12 5.0 voxels across (its smallest extent is 10.0 mm; at least 8 "
        "voxels are needed); use --spacing 1.25 or finer, or --levels without T12"
    ]
    assert not out.exists()
    assert prep.main(["--source", str(tmp_path / "src"), "--out", str(out), "--spacing", "1.25", "--roi", "16"]) == 0
    assert json.loads((out / "datalist.json").read_text())["spacing_mm"] == 1.25


def test_shared_scans_need_windowed(tmp_path):
    """The six shared scans are stored windowed: refused as HU, and their fits are well conditioned or say why."""
    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "spine-ct"
    if not folder.is_dir():
        pytest.skip("shared/data/spine-ct is not on this machine")
    ct = nib.load(str(folder / "ts_s0308_ct.nii.gz"))
    labels = np.asarray(nib.load(str(folder / "ts_s0308_seg.nii.gz")).dataobj)
    fit = fit_hu(np.asarray(ct.dataobj, np.float32), labels > 0, ct.header.get_zooms()[:3])
    assert fit.warnings == [] and set(fit.landmarks) == {"air", "fat", "soft", "bone"}
    assert 15 < fit.scale < 22 and abs(fit.residuals["air"]) < 20
