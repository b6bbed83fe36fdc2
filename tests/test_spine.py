# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Whole-spine reassembly: synthetic crops with known affines land at the right world positions."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import trimesh
from scripts.data.errors import DataError
from scripts.spine import LEVEL_LABELS, spine

# crop 1 (T12): 10^3 voxels at 2 mm, origin (0, 0, 0); a bone block of voxels 3..5 -> centre (8, 8, 8) mm
# crop 2 (L1): 12^3 voxels at 1.5 mm, origin (5.5, -2.0, -12.5); block of voxels 4..7 -> centre + 8.25 mm
# The 0.5 mm output grid starts at the lowest corner (0, -2, -12.5): every crop voxel centre is a grid node,
# and the grid is symmetric about both block centres, so the labelled centroids are exact.
A1 = np.diag([2.0, 2.0, 2.0, 1.0])
A2 = np.diag([1.5, 1.5, 1.5, 1.0])
A2[:3, 3] = [5.5, -2.0, -12.5]
CENTRE1 = np.array([8.0, 8.0, 8.0])
CENTRE2 = A2[:3, 3] + 1.5 * 5.5


def _crop(n: int, lo: int, hi: int) -> np.ndarray:
    v = np.full((n, n, n), -1024.0, np.float32)
    v[lo:hi, lo:hi, lo:hi] = 1000.0
    return v


@pytest.fixture()
def dataset(tmp_path):
    """Prepared-dataset files (CT crops with the affines) and predictions named as SaveImaged names them."""
    data, pred = tmp_path / "data", tmp_path / "pred"
    items = []
    for pid, level, affine, vol in (("P1", "T12", A1, _crop(10, 3, 6)), ("P1", "L1", A2, _crop(12, 4, 8))):
        cid = f"{pid}_{level}"
        (data / "crops").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros(vol.shape, np.int16), affine), data / "crops" / f"{cid}_ct.nii.gz")
        (pred / f"{cid}_ct").mkdir(parents=True)
        # the prediction's own affine is wrong on purpose (as after X-ray-only inference): the crop's is used
        nib.save(nib.Nifti1Image(vol, np.eye(4)), pred / f"{cid}_ct" / f"{cid}_ct_pred.nii.gz")
        items.append({"id": cid, "patient": pid, "level": level, "ct": f"crops/{cid}_ct.nii.gz"})
    (data / "datalist.json").write_text(json.dumps({"training": [], "validation": [], "test": items}))
    return data, pred


def _centroid_mm(labels: nib.Nifti1Image, value: int) -> np.ndarray:
    idx = np.argwhere(np.asarray(labels.dataobj) == value)
    return idx.mean(axis=0) @ labels.affine[:3, :3].T + labels.affine[:3, 3]


def test_reassembly_puts_each_vertebra_at_its_world_position(dataset, tmp_path):
    data, pred = dataset
    out = tmp_path / "out"
    reports = spine(str(pred), datalist=str(data / "datalist.json"), out=str(out), spacing=0.5)
    folder = out / "P1"
    labels = nib.load(folder / "P1_labels.nii.gz")
    assert np.allclose(labels.affine[:3, :3], np.eye(3) * 0.5)
    values = set(np.unique(np.asarray(labels.dataobj)).tolist())
    assert values == {0, LEVEL_LABELS["T12"], LEVEL_LABELS["L1"]} == {0, 19, 20}
    assert np.allclose(_centroid_mm(labels, 19), CENTRE1, atol=1e-4)
    assert np.allclose(_centroid_mm(labels, 20), CENTRE2, atol=1e-4)
    # the grid covers both crops: its first voxel is the lowest crop corner
    assert np.allclose(labels.affine[:3, 3], np.minimum(A1[:3, 3], A2[:3, 3]))
    # every crop voxel's value is at its world position on the patient grid
    hu = nib.load(folder / "P1_hu.nii.gz")
    hu_arr = np.asarray(hu.dataobj)
    for affine, vol in ((A1, _crop(10, 3, 6)), (A2, _crop(12, 4, 8))):
        idx = np.indices(vol.shape).reshape(3, -1).T
        world = idx @ affine[:3, :3].T + affine[:3, 3]
        node = np.rint((world - hu.affine[:3, 3]) / 0.5).astype(int)
        assert np.allclose(node * 0.5 + hu.affine[:3, 3], world, atol=1e-4)
        assert np.array_equal(hu_arr[tuple(node.T)], vol.reshape(-1))
    # meshes in world mm, per vertebra and combined
    m = trimesh.load(folder / "P1_L1.stl")
    assert m.is_watertight and np.allclose(m.vertices.mean(axis=0), CENTRE2, atol=0.05)
    combined = trimesh.load(folder / "P1_spine.ply")
    assert len(combined.split(only_watertight=False)) == 2
    assert reports["P1"]["combined_mesh"]["components"] == 2
    report = json.loads((folder / "P1_spine.json").read_text())
    assert report["labels"] == {"T12": 19, "L1": 20}
    assert np.allclose(report["vertebrae"]["T12"]["centroid_mm"], CENTRE1, atol=0.05)
    assert (folder / "P1_spine.png").stat().st_size > 1000
    assert not list(out.rglob(".*tmp*"))


def test_manifest_origin_columns_and_prediction_on_a_coarser_grid(tmp_path):
    # the prediction covers the crop's field of view on a grid half as fine (2 mm instead of 1 mm)
    pred = tmp_path / "pred"
    pred.mkdir()
    vol = _crop(8, 2, 6)  # block centre at index 3.5 of the 2 mm grid
    nib.save(nib.Nifti1Image(vol, np.eye(4)), pred / "P2_C3.nii.gz")
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        # the columns written by scripts.prepare; a skipped (cut-off) vertebra has no crop
        cols = ["patient", "level", "id", "status", "spacing_mm", "roi", "origin_x_mm", "origin_y_mm", "origin_z_mm"]
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerow({"patient": "P2", "level": "C3", "id": "P2_C3", "status": "ok", "spacing_mm": 1.0, "roi": 16,
                    "origin_x_mm": 10, "origin_y_mm": 20, "origin_z_mm": 30})  # fmt: skip
        w.writerow({"patient": "P2", "level": "C4", "id": "P2_C4", "status": "cut_off", "spacing_mm": 1.0, "roi": 16})
    spine(str(pred), manifest=str(manifest), out=str(tmp_path / "out"))
    labels = nib.load(tmp_path / "out" / "P2" / "P2_labels.nii.gz")
    # crop index of prediction voxel i: 2 * i + 0.5 -> block centre at crop index 7.5 -> world 17.5, 27.5, 37.5
    assert np.allclose(_centroid_mm(labels, LEVEL_LABELS["C3"]), [17.5, 27.5, 37.5], atol=0.05)


def test_errors(dataset, tmp_path):
    data, pred = dataset
    dl = str(data / "datalist.json")
    with pytest.raises(DataError, match="prediction folder not found"):
        spine(str(tmp_path / "nowhere"), datalist=dl, out=str(tmp_path / "o"))
    with pytest.raises(DataError, match="no prediction matches"):
        spine(str(data), datalist=dl, out=str(tmp_path / "o"), postfix="pred")  # data/ holds only CT crops
    with pytest.raises(DataError, match="exactly one of --datalist and --manifest"):
        spine(str(pred), out=str(tmp_path / "o"))
    with pytest.raises(DataError, match="patient"):
        spine(str(pred), datalist=dl, out=str(tmp_path / "o"), patient="P9")
    (pred / "P1_T12_ct" / "P1_T12_ct_other.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="--postfix"):
        spine(str(pred), datalist=dl, out=str(tmp_path / "o"))
    # the same file name in two folders (a second run's output_dir inside the first's): the folders are named
    (pred / "P1_T12_ct" / "P1_T12_ct_other.nii.gz").unlink()
    twin = sorted(pred.rglob("P1_T12*.nii*"))[0]
    (pred / "body" / twin.parent.name).mkdir(parents=True)
    (pred / "body" / twin.parent.name / twin.name).write_bytes(b"")
    with pytest.raises(
        DataError, match=rf"2 predictions match P1_T12: .*body/.*{twin.name}.*give the folder of one run"
    ):
        spine(str(pred), datalist=dl, out=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_cli_reports_errors_in_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "scripts.spine", "--pred_dir", str(tmp_path), "--datalist", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "x.json: file not found" in r.stderr


def test_cli_names_a_misspelt_command_and_lists_the_commands_in_its_help(capsys, monkeypatch, tmp_path):
    """``scripts.spine radiograph --ap ...`` used to run ``assemble`` and complain about --ap."""
    from scripts.spine import main

    with pytest.raises(SystemExit, match=r"unknown command 'radiograph'; did you mean radiographs\? commands: "):
        main(["radiograph", "--ap", "ap.dcm"])
    # an existing folder first is assemble's prediction folder, given by position (fire reads it so)
    with pytest.raises(SystemExit, match="error: .*datalist"):
        main([str(tmp_path), "--out", str(tmp_path / "o")])
    monkeypatch.setenv("PAGER", "cat")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "[assemble | reconstruct | radiographs]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["assemble", "--help"])
    assert "[assemble | reconstruct | radiographs]" not in capsys.readouterr().out


# ---- whole-spine inference: python -m scripts.spine reconstruct -------------------------------------------


@pytest.fixture(scope="module")
def xray_spine(tmp_path_factory):
    """Three simulated X-ray pairs of vertebra-like phantoms (64^3 at 2 mm), stacked 26 mm apart."""
    from scripts.tools.everyday_speed import benchmark_crops, write_xray_pairs

    crops, source = benchmark_crops(3, 64, 2.0, data=[])
    assert source.startswith("synthetic")
    datalist = write_xray_pairs(crops, tmp_path_factory.mktemp("xrays"))
    return datalist, crops


CPU = ["configs/inference.json", "configs/cpu.json"]


def test_reconstruct_in_batches_places_and_assembles_every_vertebra(xray_spine, tmp_path, capsys):
    from scripts.spine import reconstruct

    datalist, crops = xray_spine
    timings: dict = {}
    reports = reconstruct(
        str(datalist), str(tmp_path / "b2"), config_file=CPU, batch_size=2, device="cpu", timings=timings
    )
    assert re.search(r"reconstruct\S* ?\[\d/2\]", capsys.readouterr().err)  # the progress bar: 3 vertebrae, 2 batches
    folder = tmp_path / "b2" / "bench"
    report = reports["bench"]
    assert set(report["labels"]) == {"T1", "T2", "T3"}
    for entry in report["vertebrae"].values():  # each vertebra's confidence (calibrated by the CPU model)
        assert 0.0 <= entry["confidence"] <= 1.0 and entry["confidence_calibrated"] is True
        assert entry["flag"] in ("", "low confidence")
    for name in ("bench_labels.nii.gz", "bench_hu.nii.gz", "bench_spine.png", "bench_spine.json"):
        assert (folder / name).is_file()
    model = report["models"]["reconstruction"]  # the model file that ran, in the report and its file
    assert model["file"] == "models/cpu/model.pt" and len(model["sha256"]) == 64
    assert json.loads((folder / "bench_spine.json").read_text())["models"] == report["models"]
    for crop in crops:  # each reconstruction is written where its crop lies in patient space
        img = nib.load(folder / "vertebrae" / f"{crop['id']}_hu.nii.gz")
        assert img.shape == (64, 64, 64)
        assert np.allclose(img.affine, crop["affine"], atol=1e-5)
    assert {"workflow", "load", "network", "hu", "assemble", "write", "render"} <= set(timings)
    # batching does not change the result
    reconstruct(str(datalist), str(tmp_path / "b1"), config_file=CPU, batch_size=1, device="cpu")
    for crop in crops:
        a = np.asarray(nib.load(folder / "vertebrae" / f"{crop['id']}_hu.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp_path / "b1" / "bench" / "vertebrae" / f"{crop['id']}_hu.nii.gz").dataobj)
        assert np.allclose(a, b, atol=0.05)


def test_reconstruct_reads_a_datalist_given_by_a_relative_path(xray_spine, tmp_path, monkeypatch):
    """The X-rays of a datalist named relative to the working folder are found (they were read from the folder of
    the inference's own temporary datalist)."""
    from scripts.spine import reconstruct
    from tests.conftest import ROOT

    datalist, _ = xray_spine
    monkeypatch.chdir(datalist.parent.parent)
    configs = [str(ROOT / c) for c in CPU]
    reports = reconstruct(f"{datalist.parent.name}/{datalist.name}", str(tmp_path / "o"), config_file=configs)
    assert set(reports["bench"]["labels"]) == {"T1", "T2", "T3"}


def test_reconstruct_places_by_centre_and_refuses_bad_lists(xray_spine, tmp_path):
    from scripts.spine import reconstruct

    datalist, _ = xray_spine
    items = json.loads(datalist.read_text())
    for i, item in enumerate(items):
        item.pop("affine")
        item.pop("shape")
        item["xray"] = [str(datalist.parent / f) for f in item["xray"]]
        item["centre_mm"] = [10.0, 20.0, 30.0 - 40.0 * i]
    placed = tmp_path / "centred.json"
    placed.write_text(json.dumps(items))
    reconstruct(str(placed), str(tmp_path / "out"), config_file=CPU, batch_size=3, device="cpu", save_vertebrae=True)
    img = nib.load(tmp_path / "out" / "bench" / "vertebrae" / f"{items[1]['id']}_hu.nii.gz")
    centre = img.affine[:3, :3] @ np.full(3, 31.5) + img.affine[:3, 3]
    assert np.allclose(centre, [10.0, 20.0, -10.0], atol=1e-5)
    unplaced = tmp_path / "unplaced.json"
    unplaced.write_text(json.dumps([{k: v for k, v in it.items() if k != "centre_mm"} for it in items]))
    with pytest.raises(DataError, match="no position in patient space"):
        reconstruct(str(unplaced), str(tmp_path / "o"), config_file=CPU)
    no_pairs = tmp_path / "no_pairs.json"
    no_pairs.write_text(json.dumps([{k: v for k, v in it.items() if k != "xray"} for it in items]))
    with pytest.raises(DataError, match="X-ray pair"):
        reconstruct(str(no_pairs), str(tmp_path / "o"), config_file=CPU)
    with pytest.raises(DataError, match="--ckpt_dri is neither an option of this command nor a key.*--ckpt_dir"):
        reconstruct(str(placed), str(tmp_path / "o"), config_file=CPU, ckpt_dri="models")
    assert not (tmp_path / "o").exists()


def test_reconstruct_cli_reports_errors_in_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "scripts.spine", "reconstruct", "--datalist", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "x.json: file not found" in r.stderr
