# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Orientation sanity checks (vertebral bodies anterior, levels head to feet) and the split given per patient
(``--split`` and the ``split`` column of a source list) of ``python -m scripts.prepare``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scripts import prepare as prep
from scripts.data.crop import label_bone_fit
from scripts.data.errors import DataError
from scripts.data.labels import VERSE_LABELS, read_class_map, vertebrae_of_class_map
from scripts.data.orientation import check_orientation, vertebra_geometry
from scripts.data.split import parse_split
from tests.test_prepare import load, make_scan, spine

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "spine-ct"


def flip_ap(path, out):
    """Copy a volume mirrored along array axis 1, affine unchanged (the error of the shared scans' source)."""
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.asarray(img.dataobj)[:, ::-1]), img.affine), str(out))


def vertebra(value, y0, z0):
    """A phantom vertebra: a body (20 x 16 x 12 mm) anterior (+y) of a thin arch and spinous process."""
    return [
        (value, "box", (0.0, y0 + 8.0, z0), (10.0, 8.0, 6.0)),
        (value, "box", (0.0, y0 - 10.0, z0), (2.0, 10.0, 3.0)),
    ]


def phantom(folder, name, signs=(1, 1, 1), bone_shift_mm=0):
    """Two phantom vertebrae, T12 above L1 (bone at 500 HU in soft tissue at 40 HU, air on one side), in a scan
    whose array axes are flipped by ``signs`` (the affine says they are not: the data are written as if they were).
    The bone lies ``bone_shift_mm`` posterior of its labels."""
    objects = vertebra(19, 0.0, 8.0) + vertebra(20, 0.0, -12.0)
    ct_p, lab_p, aff = make_scan(folder, name, objects, shape=(40, 60, 40), spacing=(1.0, 1.0, 1.0))
    labels = np.asarray(nib.load(str(lab_p)).dataobj)
    bone = labels > 0
    if bone_shift_mm:  # 1 mm voxels, array axis 1 = anterior
        bone = np.concatenate([bone[:, bone_shift_mm:], np.zeros_like(bone[:, :bone_shift_mm])], axis=1)
    ct = np.where(bone, 500.0, 40.0).astype(np.float32)
    ct[:3] = -1000.0  # air beside the body
    for p, arr in ((ct_p, ct), (lab_p, labels)):
        arr = arr[tuple(slice(None, None, s) for s in signs)]
        nib.save(nib.Nifti1Image(np.ascontiguousarray(arr), aff), str(p))
    return ct_p, lab_p


def run(tmp_path, source, out="out", **kw):
    kw.setdefault("spacing", 1.5)
    kw.setdefault("roi", 24)
    kw.setdefault("min_voxels", 3)
    return prep.prepare(str(source), tmp_path / out, progress=False, log=lambda *a: None, **kw)


def test_phantom_orientation_checks(tmp_path):
    phantom(tmp_path / "good", "ok")
    s = run(tmp_path, tmp_path / "good")
    assert (s.written, s.failed, s.warnings) == (2, 0, [])
    ct_p, _ = phantom(tmp_path / "ap", "apflip", signs=(1, -1, 1))
    s = run(tmp_path, tmp_path / "ap", out="out_ap")
    assert (s.written, s.failed) == (0, 1)
    assert s.messages[0].startswith(f"{ct_p}: anterior-posterior axis mirrored: the vertebral bodies lie posterior")
    fix = "flip array axis 1 or fix the affine (or pass --orientation warn to prepare it as it is)"
    assert s.messages[0].endswith(fix)
    ct_p, _ = phantom(tmp_path / "si", "siflip", signs=(1, 1, -1))
    s = run(tmp_path, tmp_path / "si", out="out_si")
    assert s.failed == 1 and "superior-inferior axis mirrored: T12 lies below L1; flip array axis 2" in s.messages[0]
    # --orientation warn keeps the scan and says why
    s = run(tmp_path, tmp_path / "ap", out="out_warn", orientation="warn")
    assert (s.written, s.failed) == (2, 0) and "anterior-posterior axis mirrored" in s.warnings[0]
    with pytest.raises(DataError, match="unknown --orientation 'fix'"):
        run(tmp_path, tmp_path / "ap", out="out_bad", orientation="fix")


def test_label_bone_fit_of_cubes():
    """A cube label on a cube of bone holds only bone and has none around it; moved by half its width, half."""
    hu = np.full((30, 30, 30), 40.0)
    hu[10:20, 10:20, 10:20] = 500.0
    label = np.zeros(hu.shape, np.uint8)
    label[10:20, 10:20, 10:20] = 1
    assert label_bone_fit(hu, label, spacing=2.0) == {"label_bone_share": 1.0, "shell_bone_share": 0.0}
    fit = label_bone_fit(hu, np.roll(label, 5, axis=0), spacing=2.0, shell_mm=2.0)
    # a one-voxel shell (2 mm at 2 mm voxels) is the six faces' 6 x 100 voxels; only the face behind it is bone
    assert fit == pytest.approx({"label_bone_share": 0.5, "shell_bone_share": 1 / 6})


def test_labels_beside_their_bone_are_reported(tmp_path):
    """A label map 14 mm anterior of its bone is prepared and reported in one line per scan, also when a rerun finds
    its vertebrae finished (and measures those prepared before the shares were kept); the manifest holds the bone
    shares inside each label and around it."""
    _, lab_p = phantom(tmp_path / "shifted", "shifted", bone_shift_mm=14)
    s = run(tmp_path, tmp_path / "shifted", out="out_shifted")
    assert (s.written, s.failed, len(s.warnings)) == (2, 0, 1)
    text = s.warnings[0]
    assert text.startswith(f"{lab_p}: labels that may lie beside their vertebra (voxels above 150 HU inside the label")
    assert text.index(": T12 ") < text.index(", L1 ") and text.endswith("belongs to this CT (orientation, shift)")
    rows = {r["level"]: r for r in csv.DictReader(open(tmp_path / "out_shifted" / "manifest.csv"))}
    shares = {k: float(rows["T12"][k]) for k in ("label_bone_share", "shell_bone_share")}
    assert shares["label_bone_share"] < 0.5
    # a rerun: every vertebra finished, one of them written before the shares were kept
    sidecar = tmp_path / "out_shifted" / "shifted" / "shifted_T12.json"
    old = {k: v for k, v in json.loads(sidecar.read_text()).items() if k not in shares}
    sidecar.write_text(json.dumps(old))
    s = run(tmp_path, tmp_path / "shifted", out="out_shifted")
    assert (s.written, s.done, s.warnings) == (0, 2, [text])
    rows = {r["level"]: r for r in csv.DictReader(open(tmp_path / "out_shifted" / "manifest.csv"))}
    assert {k: float(rows["T12"][k]) for k in shares} == shares, "measured again on the saved crops and kept"
    phantom(tmp_path / "good", "ok")
    s = run(tmp_path, tmp_path / "good")
    rows = {r["level"]: r for r in csv.DictReader(open(tmp_path / "out" / "manifest.csv"))}
    assert s.warnings == [] and {float(r["label_bone_share"]) for r in rows.values()} == {1.0}
    assert all(float(r["shell_bone_share"]) < 0.5 for r in rows.values())


def test_example_and_flipped_example(example_case):
    case = example_case
    img = nib.load(case.mask)
    labels = np.asarray(img.dataobj).astype(np.int32)
    levels = vertebrae_of_class_map(read_class_map(case.class_map))
    complete = {v: lvl for v, lvl in levels.items() if lvl in {f"T{i}" for i in range(1, 13)} | {"L1"}}
    geometry = vertebra_geometry(labels, img.affine, complete)
    assert [g.level for g in geometry] == [f"T{i}" for i in range(1, 13)] + ["L1"]
    assert all(g.ap_offset > 0.03 for g in geometry)
    report = check_orientation(geometry, img.affine)
    assert report.problems == [] and report.n == 13 and 0.05 < report.ap_median < 0.1
    flipped = check_orientation(vertebra_geometry(labels[:, ::-1], img.affine, complete), img.affine)
    assert flipped.ap_median == pytest.approx(-report.ap_median, abs=0.01)
    assert flipped.problems[0][1] == "flip array axis 1 or fix the affine"


# slow: covered by test_example_and_flipped_example (the real example mirrored is caught by the orientation check)
# and test_phantom_orientation_checks (prepare refuses a mirrored scan, naming the file and the flip)
@pytest.mark.slow
def test_prepare_refuses_the_flipped_example(tmp_path, example_case):
    case = example_case
    flip_ap(case.ct, tmp_path / "ct.nii")
    flip_ap(case.mask, tmp_path / "mask.nii")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"patient,ct,mask,class_map\nflipped,ct.nii,mask.nii,{case.class_map}\n")
    kw = {"spacing": 2.0, "roi": 64, "levels": "T7", "progress": False, "log": lambda *a: None}
    s = prep.prepare(str(pairs), tmp_path / "out", **kw)
    assert (s.written, s.failed) == (0, 1)
    assert s.messages[0].startswith(f"{tmp_path / 'ct.nii'}: anterior-posterior axis mirrored")


def test_shared_scans_orientation():
    """All six shared scans (flipped back by hand) pass; mirrored front to back, all six are caught."""
    if not SHARED.is_dir():
        pytest.skip("shared/data/spine-ct is not on this machine")
    for seg in sorted(SHARED.glob("*_seg.nii.gz")):
        img = nib.load(str(seg))
        labels = np.asarray(img.dataobj).astype(np.int32)
        from scripts.data.crop import labels_touching_border

        touching = labels_touching_border(labels)
        levels = {v: lvl for v, lvl in VERSE_LABELS.items() if v in np.unique(labels) and v not in touching}
        good = check_orientation(vertebra_geometry(labels, img.affine, levels), img.affine)
        bad = check_orientation(vertebra_geometry(labels[:, ::-1], img.affine, levels), img.affine)
        assert good.problems == [] and good.ap_median > 0.03, (seg.name, good)
        assert bad.problems and bad.problems[0][0].startswith("anterior-posterior axis mirrored"), seg.name


def test_parse_split():
    assert parse_split("verse081=validation, colonog0532=test,a=train") == {
        "verse081": "validation",
        "colonog0532": "test",
        "a": "training",
    }
    assert parse_split(None) == {} and parse_split("") == {}
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        parse_split("a=holdout")
    with pytest.raises(DataError, match="lacks '='"):
        parse_split("a:test")


def test_split_given_per_patient(tmp_path):
    src = tmp_path / "src"
    rows = []
    for n in range(5):
        ct_p, lab_p, _ = make_scan(src, f"p{n}", spine(19, 20, 18), shape=(20, 25, 12), spacing=(3.0, 2.4, 5.0))
        rows.append([f"p{n}", ct_p.name, lab_p.name, "test" if n == 4 else ""])
    with open(src / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([["patient", "ct", "mask", "split"], *rows])
    s = run(tmp_path, src / "pairs.csv", spacing=3.0, roi=12, split="p1=validation,p2=val")
    assert s.split_by == "given" and s.split_sizes == {"training": 4, "validation": 4, "test": 2}
    dl = json.loads((tmp_path / "out" / "datalist.json").read_text())
    patients = {k: sorted({i["patient"] for i in dl[k]}) for k in ("training", "validation", "test")}
    assert patients == {"training": ["p0", "p3"], "validation": ["p1", "p2"], "test": ["p4"]}
    assert dl["split_by"] == "given" and dl["statistics"]["of"] == "training"
    train_gt = np.concatenate([load(tmp_path / "out" / i["gt"])[0].ravel() for i in dl["training"]])
    assert dl["statistics"]["gt_mean"] == pytest.approx(train_gt.astype(np.float64).mean(), rel=1e-6)
    manifest = list(csv.DictReader(open(tmp_path / "out" / "manifest.csv")))
    assert {(r["patient"], r["split"]) for r in manifest if r["status"] == "ok"} == {
        ("p0", "training"), ("p1", "validation"), ("p2", "validation"), ("p3", "training"), ("p4", "test"),
    }  # fmt: skip
    # --split wins over the list's column; an unknown patient is refused before anything is written
    s = run(tmp_path, src / "pairs.csv", out="out2", spacing=3.0, roi=12, split="p4=training")
    assert s.split_sizes == {"training": 10, "validation": 0, "test": 0}
    with pytest.raises(DataError, match="--split names unknown patient"):
        run(tmp_path, src / "pairs.csv", out="out3", spacing=3.0, roi=12, split="p9=test")
    assert not (tmp_path / "out3").exists()


def test_split_keeps_a_subject_together(tmp_path):
    src = tmp_path / "src"
    for n in range(2):
        make_scan(src, f"sub-01_ses-{n}", spine(19, 20, 18), shape=(20, 25, 12), spacing=(3.0, 2.4, 5.0))
    with pytest.raises(DataError, match="scans of subject 'sub-01' in validation and test"):
        run(tmp_path, src, spacing=3.0, roi=12, split="sub-01_ses-0=validation,sub-01_ses-1=test")
    assert not (tmp_path / "out").exists()
    s = run(tmp_path, src, out="out2", spacing=3.0, roi=12, split="sub-01_ses-0=test")
    assert s.split_sizes == {"training": 0, "validation": 0, "test": 4}  # the other scan follows its subject


def test_padding_and_fragments():
    from scripts.data.crop import labels_touching_padding
    from scripts.data.orientation import VertebraGeometry, fragments

    values = np.full((6, 6, 6), 50.0, np.float32)
    values[:, :, 0] = 0  # padding along one face
    values[3, 3, 3] = 0  # a padding-valued voxel inside the field of view (clipped air), not padding
    labels = np.zeros((6, 6, 6), np.int32)
    labels[1, 1, 1], labels[3, 3, 4], labels[4, 4, 4] = 5, 6, 7
    assert labels_touching_padding(labels, values) == {5}
    geometry = [VertebraGeometry(lvl, np.zeros(3), np.ones(3), 0.1, vol) for lvl, vol in
                (("C7", 1.0), ("T1", 20.0), ("T2", 24.0), ("T3", 5.0), ("T4", 26.0))]  # fmt: skip
    assert fragments(geometry) == {"C7", "T3"}
