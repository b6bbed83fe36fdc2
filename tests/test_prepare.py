# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Tests of ``python -m scripts.prepare`` on synthetic scans built in code.

The CT of every phantom is a known linear function of the world position, ``hu(x, y, z)``; linear
resampling reproduces a linear function exactly, so every crop voxel can be checked against the value at
its world point. Vertebrae are boxes and ellipsoids at known world positions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scripts import prepare as prep
from scripts.data.labels import TOTALSEG_V2_LABELS, VERSE_LABELS, parse_levels
from scripts.data.split import split_counts, split_items

VERSE = {lvl: v for v, lvl in VERSE_LABELS.items()}
TOTALSEG = {lvl: v for v, lvl in TOTALSEG_V2_LABELS.items()}


def hu(x, y, z):
    """The phantom's CT: linear in the world position (mm), well above -1024 HU inside the scan."""
    return 200.0 + 2.0 * x - 3.0 * y + 4.0 * z


def scan_affine(shape, spacing, perm=(0, 1, 2), signs=(1, 1, 1)):
    """Affine whose array axis i runs along world axis perm[i] with sign signs[i]; world 0 at the centre."""
    m = np.zeros((3, 3))
    for i, (p, s) in enumerate(zip(perm, signs)):
        m[p, i] = s * spacing[i]
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = -m @ ((np.array(shape) - 1) / 2.0)
    return aff


def world_grid(shape, aff):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    return idx @ aff[:3, :3].T + aff[:3, 3]


def make_scan(folder, name, objects, shape=(40, 50, 24), spacing=(1.5, 1.2, 2.5), perm=(0, 1, 2), signs=(1, 1, 1)):
    """Write ``<name>_ct.nii.gz`` and ``<name>_seg-vert_msk.nii.gz``; objects: (value, kind, centre, half)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    aff = scan_affine(shape, spacing, perm, signs)
    w = world_grid(shape, aff)
    ct = hu(w[..., 0], w[..., 1], w[..., 2]).astype(np.float32)
    lab = np.zeros(shape, np.int16)
    for value, kind, centre, half in objects:
        d = (w - np.array(centre)) / np.array(half)
        inside = (np.abs(d) <= 1).all(-1) if kind == "box" else (d**2).sum(-1) <= 1
        lab[inside] = value
    ct_p, lab_p = folder / f"{name}_ct.nii.gz", folder / f"{name}_seg-vert_msk.nii.gz"
    nib.save(nib.Nifti1Image(ct, aff), str(ct_p))
    nib.save(nib.Nifti1Image(lab, aff), str(lab_p))
    return ct_p, lab_p, aff


# two complete vertebrae (a box and an ellipsoid, close enough to be in each other's cube) and one whose
# box runs out of the top of the scan (z extent of the default scan: +-28.75 mm)
def spine(t12, l1, t11):
    return [
        (l1, "box", (2.0, -3.0, -12.0), (8.0, 6.0, 5.0)),
        (t12, "ellipsoid", (-1.0, 2.0, 3.0), (9.0, 7.0, 5.5)),
        (t11, "box", (0.0, 0.0, 24.0), (6.0, 6.0, 8.0)),
    ]


def load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine, img


def run(tmp_path, source, out="out", **kw):
    kw.setdefault("spacing", 2.0)
    kw.setdefault("roi", 16)
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda *a: None)
    kw.setdefault("min_voxels", 3)  # the phantoms' vertebrae are 10 mm across, smaller than real ones
    return prep.prepare(str(source), tmp_path / out, **kw)


@pytest.mark.parametrize(
    "perm,signs,spacing",
    [((0, 1, 2), (1, 1, 1), (1.5, 1.2, 2.5)), ((2, 0, 1), (-1, -1, 1), (2.5, 1.5, 1.2))],
    ids=["RAS-anisotropic", "permuted-flipped-anisotropic"],
)
def test_crop_geometry_and_values(tmp_path, perm, signs, spacing):
    shape = tuple(int(round(60 / s)) for s in spacing)
    ct_p, lab_p, src_aff = make_scan(tmp_path / "src", "case1", spine(19, 20, 18), shape, spacing, perm, signs)
    s = run(tmp_path, tmp_path / "src", spacing=2.0, roi=16)
    assert (s.written, s.done, s.failed) == (2, 0, 0)
    assert s.skipped == ["case1 T11: cut off by the scan border"]
    out = tmp_path / "out" / "case1"
    assert not list(out.glob("case1_T11*"))
    for level, (_, kind, centre, half) in zip(("L1", "T12"), spine(19, 20, 18)[:2]):
        ct, aff, img = load(out / f"case1_{level}_ct.nii.gz")
        gt, gaff, gimg = load(out / f"case1_{level}_gt.nii.gz")
        mask, maff, mimg = load(out / f"case1_{level}_mask.nii.gz")
        # shape, dtype, isotropic RAS grid, one affine for all three
        assert ct.shape == gt.shape == mask.shape == (16, 16, 16)
        assert img.get_data_dtype() == np.float32 and gimg.get_data_dtype() == np.float32
        assert mimg.get_data_dtype() == np.uint8
        np.testing.assert_allclose(aff[:3, :3], np.eye(3) * 2.0, atol=1e-6)
        assert nib.aff2axcodes(aff) == ("R", "A", "S")
        np.testing.assert_allclose(gaff, aff, atol=1e-6)
        np.testing.assert_allclose(maff, aff, atol=1e-6)
        # centring: the cube's centre is the vertebra's centre (within half a voxel plus resampling)
        cube_centre = aff[:3, :3] @ np.full(3, 7.5) + aff[:3, 3]
        np.testing.assert_allclose(cube_centre, centre, atol=2.0)
        idx = np.argwhere(mask > 0)
        np.testing.assert_allclose((idx.min(0) + idx.max(0)) / 2.0, 7.5, atol=0.5)
        # each crop voxel holds the CT at its world point in the source scan
        w = world_grid(ct.shape, aff)
        src_idx = (w - src_aff[:3, 3]) @ np.linalg.inv(src_aff[:3, :3]).T
        inside = ((src_idx >= 0.5) & (src_idx <= np.array(shape) - 1.5)).all(-1)
        assert inside.sum() > 1000
        np.testing.assert_allclose(ct[inside], hu(*np.moveaxis(w[inside], -1, 0)), atol=0.05)
        # outside the scan the crop is padded with air
        assert (ct[~((src_idx >= -0.5) & (src_idx <= np.array(shape) - 0.5)).all(-1)] == -1024).all()
        # mask voxels lie in the object (up to one output voxel)
        d = (w[mask > 0] - np.array(centre)) / (np.array(half) + 2.0)
        assert ((np.abs(d) <= 1).all(-1) if kind == "box" else (d**2).sum(-1) <= 1).all()
        # gt = CT inside the dilated own mask, -1024 elsewhere; the neighbour is not in it
        from scipy import ndimage

        grown = ndimage.binary_dilation(mask > 0, np.ones((3, 3, 3), bool))
        np.testing.assert_array_equal(gt[grown], ct[grown])
        assert (gt[~grown] == -1024).all()
        other_centre = spine(19, 20, 18)[1 if level == "L1" else 0][2]
        near_other = np.linalg.norm(w - np.array(other_centre), axis=-1) < 3.0
        if near_other.any():
            assert (gt[near_other] == -1024).all()


def test_manifest_datalist_and_statistics(tmp_path):
    make_scan(tmp_path / "src", "case1", spine(19, 20, 18))
    s = run(tmp_path, tmp_path / "src")
    out = tmp_path / "out"
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [(r["level"], r["status"]) for r in rows] == [("T12", "ok"), ("L1", "ok"), ("T11", "cut_off")]
    assert rows[0]["id"] == "case1_T12" and rows[0]["label"] == "19" and rows[0]["roi"] == "16"
    assert rows[0]["source_ct"].endswith("case1_ct.nii.gz")
    gt, aff, _ = load(out / "case1" / "case1_T12_gt.nii.gz")
    mask = load(out / "case1" / "case1_T12_mask.nii.gz")[0] > 0
    assert float(rows[0]["hu_mean"]) == pytest.approx(gt[mask].mean(), abs=1e-3)
    assert float(rows[0]["hu_max"]) == pytest.approx(gt[mask].max(), abs=1e-3)
    assert [float(rows[0][f"origin_{a}_mm"]) for a in "xyz"] == pytest.approx(aff[:3, 3], abs=1e-3)
    dl = json.loads((out / "datalist.json").read_text())
    items = [i for k in ("training", "validation", "test") for i in dl[k]]
    assert sorted(i["id"] for i in items) == ["case1_L1", "case1_T12"]
    assert s.split_by == "vertebra" and len(dl["training"]) == 1 and len(dl["validation"]) == 1
    for item in items:
        assert set(item) == {"ct", "gt", "mask", "body", "centre_mm", "id", "patient", "level"}
        assert all((out / item[k]).is_file() for k in ("ct", "gt", "mask", "body"))
        crop = nib.load(out / item["gt"])
        centre = crop.affine @ np.r_[(np.asarray(crop.shape) - 1) / 2, 1.0]
        assert item["centre_mm"] == pytest.approx(centre[:3], abs=1e-3), "the vertebra's window centre in world mm"
    body = nib.load(out / "case1" / "case1_body.nii.gz")  # the whole scan, int16 HU on the crops' grid spacing
    assert body.get_data_dtype() == np.int16 and np.allclose(np.abs(np.diag(body.affine))[:3], aff[0, 0])
    assert {"body_cut_ap", "body_cut_lateral", "centre_x_mm"} <= set(rows[0])
    train_gt = np.concatenate([load(out / i["gt"])[0].ravel() for i in dl["training"]]).astype(np.float64)
    assert dl["statistics"]["gt_mean"] == pytest.approx(train_gt.mean(), rel=1e-6)
    assert dl["statistics"]["gt_std"] == pytest.approx(train_gt.std(), rel=1e-6)


def test_totalsegmentator_conventions_and_layouts(tmp_path):
    # multilabel map with v2 ids, auto-detected (values above 28), plus an organ label (5, liver)
    src = tmp_path / "ts"
    ct_p, lab_p, aff = make_scan(src, "tmp", spine(TOTALSEG["T12"], TOTALSEG["L1"], TOTALSEG["T11"]))
    lab = np.asarray(nib.load(str(lab_p)).dataobj)
    lab[:3, :3, :3] = 5
    (src / "s0001").mkdir()
    ct_p.rename(src / "s0001" / "ct.nii.gz")
    nib.save(nib.Nifti1Image(lab, aff), str(src / "s0001" / "segmentations.nii.gz"))
    lab_p.unlink()
    # per-structure masks of TotalSegmentator's own layout
    (src / "s0002" / "segmentations").mkdir(parents=True)
    (src / "s0002" / "ct.nii.gz").write_bytes((src / "s0001" / "ct.nii.gz").read_bytes())
    for level in ("T12", "L1"):
        nib.save(nib.Nifti1Image((lab == TOTALSEG[level]).astype(np.uint8), aff),
                 str(src / "s0002" / "segmentations" / f"vertebrae_{level}.nii.gz"))  # fmt: skip
    nib.save(nib.Nifti1Image((lab == 5).astype(np.uint8), aff), str(src / "s0002" / "segmentations" / "liver.nii.gz"))
    s = run(tmp_path, src)
    assert (s.written, s.failed) == (4, 0), s.messages
    for p in ("s0001", "s0002"):
        for level in ("T12", "L1"):
            assert (tmp_path / "out" / p / f"{p}_{level}_gt.nii.gz").is_file()
    # a class map beside the label map overrides the default ids: 7 is T12 here, 8 is L1
    cm = tmp_path / "cm"
    make_scan(cm, "c", spine(7, 8, 9))
    (cm / "c").mkdir()
    (cm / "c_ct.nii.gz").rename(cm / "c" / "ct.nii.gz")
    (cm / "c_seg-vert_msk.nii.gz").rename(cm / "c" / "mask.nii.gz")
    (cm / "c" / "structures.csv").write_text(
        "structure,id\nliver,5\nvertebrae_T12,7\nvertebrae_L1,8\nvertebrae_T11,9\n"
    )
    s = run(tmp_path, cm, out="out_cm")
    assert s.written == 2 and s.skipped == ["c T11: cut off by the scan border"]
    rows = {r["level"]: r["label"] for r in csv.DictReader(open(tmp_path / "out_cm" / "manifest.csv"))}
    assert rows == {"T12": "7", "L1": "8", "T11": "9"}
    # the same values read as VerSe would be C7 / T1 / T2: --labels decides
    s = run(tmp_path, cm, out="out_cm_verse", labels="verse")
    assert sorted(r["level"] for r in csv.DictReader(open(tmp_path / "out_cm_verse" / "manifest.csv"))) == [
        "C7",
        "T1",
        "T2",
    ]


def test_ctspine1k_layout_nrrd_and_levels(tmp_path):
    import itk

    src = tmp_path / "ctspine"
    ct_p, lab_p, aff = make_scan(src / "tmp", "x", spine(19, 20, 18))
    for p, name in ((ct_p, "volumes/HN_P001.nrrd"), (lab_p, "labels/HN_P001_seg.nrrd")):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        itk.imwrite(itk.imread(str(p)), str(src / name))
        p.unlink()
    s = run(tmp_path, src, levels="T12")
    assert s.written == 1 and s.skipped == []
    ct, aff_out, _ = load(tmp_path / "out" / "HN_P001" / "HN_P001_T12_ct.nii.gz")
    w = world_grid(ct.shape, aff_out)
    np.testing.assert_allclose(ct[6:10, 6:10, 6:10], hu(*np.moveaxis(w[6:10, 6:10, 6:10], -1, 0)), atol=0.05)
    assert parse_levels("T11-L1") == {"T11", "T12", "T13", "L1"} and parse_levels("all") is None


def test_split_by_patient():
    items = [{"patient": f"p{p:02d}", "level": lvl} for p in range(20) for lvl in ("T11", "T12", "L1")]
    splits, by = split_items(items, group=lambda i: i["patient"], seed=3)
    assert by == "patient"
    patients = {k: {i["patient"] for i in v} for k, v in splits.items()}
    assert [len(patients[k]) for k in ("training", "validation", "test")] == [16, 2, 2]
    assert not (patients["training"] & patients["validation"]) and not (patients["training"] & patients["test"])
    assert not (patients["validation"] & patients["test"])
    assert sum(len(v) for v in splits.values()) == 60
    assert split_items(items[::-1], group=lambda i: i["patient"], seed=3)[0]["test"][0]["patient"] in patients["test"]
    other = {i["patient"] for i in split_items(items, group=lambda i: i["patient"], seed=4)[0]["test"]}
    assert other != patients["test"] or len(other) == 0
    assert split_counts(10) == (8, 1, 1) and split_counts(3) == (1, 1, 1) and split_counts(2) == (1, 1, 0)
    few, by = split_items(items[:6], group=lambda i: i["patient"], seed=0)
    assert by == "vertebra" and [len(few[k]) for k in ("training", "validation", "test")] == [4, 1, 1]


def test_patient_split_in_datalist(tmp_path):
    for n in range(4):
        make_scan(tmp_path / "src", f"sub-{n:02d}", spine(19, 20, 18), shape=(20, 25, 12), spacing=(3.0, 2.4, 5.0))
    s = run(tmp_path, tmp_path / "src", spacing=3.0, roi=12)
    assert s.split_by == "patient" and s.written == 8
    dl = json.loads((tmp_path / "out" / "datalist.json").read_text())
    patients = {k: {i["patient"] for i in dl[k]} for k in ("training", "validation", "test")}
    assert [len(patients[k]) for k in patients] == [2, 1, 1]
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [4, 2, 2]


def test_resume_after_interrupt(tmp_path, monkeypatch):
    make_scan(tmp_path / "src", "a", spine(19, 20, 18))
    make_scan(tmp_path / "src", "b", spine(19, 20, 18))
    real_save, calls = prep.save_nifti, []

    def interrupted_save(*args, **kw):
        calls.append(args[2])
        if len(calls) == 10:  # after a's whole scan and two vertebrae, b's whole scan and first CT crop: mid-vertebra
            raise KeyboardInterrupt
        real_save(*args, **kw)

    monkeypatch.setattr(prep, "save_nifti", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tmp_path / "src")
    out = tmp_path / "out"
    assert not (out / "manifest.csv").exists() and not (out / "datalist.json").exists()
    assert (out / "b" / "b_T12_ct.nii.gz").is_file() and not (out / "b" / "b_T12.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "a").iterdir()}
    monkeypatch.setattr(prep, "save_nifti", real_save)
    s = run(tmp_path, tmp_path / "src")
    assert (s.written, s.done) == (2, 2)
    assert {p: p.stat().st_mtime_ns for p in (out / "a").iterdir()} == mtimes
    dl = json.loads((out / "datalist.json").read_text())
    assert sorted(i["id"] for k in ("training", "validation", "test") for i in dl[k]) == [
        "a_L1",
        "a_T12",
        "b_L1",
        "b_T12",
    ]
    # settings of a prepared folder cannot be mixed
    with pytest.raises(prep.DataError, match="--spacing 2.0 --roi 16"):
        run(tmp_path, tmp_path / "src", roi=24)


def write_pairs(tmp_path, rows):
    p = tmp_path / "pairs.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient", "ct", "mask"])
        w.writerows(rows)
    return p


def test_bad_inputs_messages(tmp_path, capsys):
    src = tmp_path / "src"
    good_ct, good_lab, aff = make_scan(src, "good", spine(19, 20, 18))
    (src / "garbage.nii.gz").write_bytes(b"this is not a NIfTI file")
    nib.save(nib.Nifti1Image(np.zeros((10, 12), np.float32), np.eye(4)), str(src / "flat.nii.gz"))
    lab = np.asarray(nib.load(str(good_lab)).dataobj)
    nib.save(nib.Nifti1Image(lab[:-2], aff), str(src / "shape.nii.gz"))
    shifted = aff.copy()
    shifted[0, 3] += 5
    nib.save(nib.Nifti1Image(lab, shifted), str(src / "affine.nii.gz"))
    nib.save(nib.Nifti1Image(((lab > 0) * 300).astype(np.int16), aff), str(src / "unknown.nii.gz"))
    nib.save(nib.Nifti1Image((lab > 0).astype(np.int16) * 60, aff), str(src / "organs.nii.gz"))  # TS: aorta
    pairs = write_pairs(
        tmp_path,
        [
            ["good", good_ct, good_lab],
            ["garbage", good_ct, src / "garbage.nii.gz"],
            ["flat", src / "flat.nii.gz", good_lab],
            ["shape", good_ct, src / "shape.nii.gz"],
            ["affine", good_ct, src / "affine.nii.gz"],
            ["unknown", good_ct, src / "unknown.nii.gz"],
            ["organs", good_ct, src / "organs.nii.gz"],
            ["missing", src / "nothere.nii.gz", good_lab],
        ],
    )
    small = ["--spacing", "2", "--roi", "16", "--min_voxels", "3"]
    code = prep.main(["--source", str(pairs), "--out", str(tmp_path / "out"), *small])
    err = capsys.readouterr()
    assert code == 0  # the good scan was prepared
    lines = [ln for ln in err.err.splitlines() if ln.startswith("error:")]
    expected = {
        "garbage.nii.gz": "cannot be read",
        "flat.nii.gz": "is 2-D",
        "shape.nii.gz": "shape (38, 50, 24) differs",
        "affine.nii.gz": "affine differs",
        "unknown.nii.gz": "unknown label convention",
        "good_seg-vert_msk.nii.gz": "no vertebra labels",  # the organs case reports its own file below
        "nothere.nii.gz": "not found",
    }
    assert len(lines) == 7, err.err
    for name, text in expected.items():
        if name == "good_seg-vert_msk.nii.gz":
            assert any("organs.nii.gz" in ln and "no vertebra labels" in ln for ln in lines)
            continue
        assert any(name in ln and text in ln and ";" in ln for ln in lines), (name, lines)
    assert "written now 2" in err.out and "failed scans 7" in err.out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["datalist.json", "good", "manifest.csv"]
    # nothing usable: non-zero exit, no manifest or datalist
    bad = write_pairs(tmp_path, [["shape", good_ct, src / "shape.nii.gz"]])
    code = prep.main(["--source", str(bad), "--out", str(tmp_path / "out2"), *small])
    assert code == 1 and not (tmp_path / "out2" / "datalist.json").exists()
    assert "nothing could be prepared" in capsys.readouterr().out
    # a folder without pairs, and bad arguments
    (tmp_path / "empty").mkdir()
    for args, text in (
        (["--source", str(tmp_path / "empty")], "no CT + label map pairs found"),
        (["--source", str(pairs), "--labels", "nnunet"], "unknown label convention --labels"),
        (["--source", str(pairs), "--levels", "X9"], "unknown level"),
    ):
        assert prep.main([*args, "--out", str(tmp_path / "out3")]) == 1
        msg = capsys.readouterr().err.strip().splitlines()
        assert len(msg) == 1 and text in msg[0], msg
    assert not (tmp_path / "out3").exists()


def test_workers_pool(tmp_path):
    for n in range(2):
        make_scan(tmp_path / "src", f"w{n}", spine(19, 20, 18), shape=(20, 25, 12), spacing=(3.0, 2.4, 5.0))
    s = run(tmp_path, tmp_path / "src", spacing=3.0, roi=12, workers=2)
    assert (s.written, s.failed) == (4, 0), s.messages


def write_dicom_series(folder, vol, spacing, origin_lps):
    """Write a (x, y, z) int16 volume as an axial CT DICOM series (LPS patient axes, rescale -1024)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "P1", k + 1
        ds.ImagePositionPatient = [origin_lps[0], origin_lps[1], origin_lps[2] + k * spacing[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.ascontiguousarray(vol[:, :, k].T).astype(np.int16).tobytes()
        ds.save_as(str(folder / f"slice{k:03d}.dcm"), enforce_file_format=True)


def test_dicom_series_ct(tmp_path):
    shape, spacing, origin_lps = (40, 50, 24), (1.5, 1.2, 2.5), (-29.25, -29.4, -28.75)
    # DICOM LPS -> RAS: x and y flip; this is the affine ITK reports for the series, in RAS
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = [-origin_lps[0], -origin_lps[1], origin_lps[2]]
    w = world_grid(shape, aff)
    write_dicom_series(tmp_path / "dicom", np.round(hu(*np.moveaxis(w, -1, 0)) + 1024), spacing, origin_lps)
    lab = np.zeros(shape, np.int16)
    for value, kind, centre, half in spine(19, 20, 18):
        d = (w - np.array(centre)) / np.array(half)
        lab[(np.abs(d) <= 1).all(-1) if kind == "box" else (d**2).sum(-1) <= 1] = value
    nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "labels.nii.gz"))
    pairs = write_pairs(tmp_path, [["dcm", "dicom", "labels.nii.gz"]])  # relative to the list's folder
    s = run(tmp_path, pairs)
    assert (s.written, s.failed) == (2, 0), s.messages
    ct, caff, _ = load(tmp_path / "out" / "dcm" / "dcm_T12_ct.nii.gz")
    cw = world_grid(ct.shape, caff)
    np.testing.assert_allclose(ct[4:12, 4:12, 4:12], hu(*np.moveaxis(cw[4:12, 4:12, 4:12], -1, 0)), atol=1.0)
