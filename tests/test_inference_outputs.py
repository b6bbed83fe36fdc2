# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Inference outputs a user can trust: case naming, duplicate ids, reruns, publishing, inputs refused up front.

Unit tests of ``scripts.workflow.inference_cases`` and the ``DRR`` constructor, then end-to-end runs of
``configs/inference.json`` on the synthetic dataset and model of ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scripts import workflow
from scripts.errors import BundleInputError
from scripts.io.outputs import MANIFEST_NAME, run_staging_dir
from scripts.io.xray import XRayInputError
from scripts.transforms import DRR, DRRd
from tests.test_workflows import ROOT, SMALL, _bundle_cmd, _chain, _workflow, _write_xrays


def _pair(folder: Path, ap: str = "P1_ap.png", lat: str = "P1_lat.png") -> list[str]:
    """Two small distinct 16-bit images of the smallest size inference takes (32 x 32 pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    img = (np.arange(1024, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    paths = [folder / ap, folder / lat]
    for p, a in zip(paths, (img, img.T.copy())):
        Image.fromarray(a).save(p)
    return [str(p) for p in paths]


def test_xrays_case_is_named_after_the_files(tmp_path):
    files = _pair(tmp_path)
    assert workflow.inference_cases(xrays=files)[0]["id"] == "P1"
    assert workflow.inference_cases(xrays=files, case_id="T4")[0]["id"] == "T4"


def test_datalist_case_without_id_is_named_after_its_files(tmp_path):
    _pair(tmp_path)
    (tmp_path / "cases.json").write_text(json.dumps([{"xray": ["P1_ap.png", "P1_lat.png"]}]))
    assert workflow.inference_cases(datalist=str(tmp_path / "cases.json"))[0]["id"] == "P1"


@pytest.mark.parametrize(
    "ids, message",
    [(["L1", "L2", "L1"], "cases 1 and 3 have the same case id 'L1'"), (["L1", "../L2"], "cannot name an output")],
)
def test_datalist_ids_that_share_a_folder_are_refused(tmp_path, caplog, ids, message):
    _pair(tmp_path)
    cases = [{"xray": ["P1_ap.png", "P1_lat.png"], "id": i} for i in ids]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    before = sorted(tmp_path.iterdir())
    with caplog.at_level(logging.ERROR, logger="scripts"), pytest.raises(BundleInputError, match=message):
        workflow.inference_cases(datalist=str(tmp_path / "cases.json"))
    assert any(r.levelno == logging.ERROR and message in r.getMessage() for r in caplog.records), "logged first"
    assert sorted(tmp_path.iterdir()) == before


def test_every_case_is_checked_against_the_expansion_mode(tmp_path):
    _pair(tmp_path)
    cases = [
        {"xray": ["P1_ap.png", "P1_lat.png"], "id": "first"},
        {"xray": ["P1_ap.png", "P1_lat.png"], "id": "oblique", "angles": [[0, 0], [60, 0]]},
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    with pytest.raises(XRayInputError, match="oblique: expansion_mode 'replicate' needs AP and lateral"):
        workflow.inference_cases(datalist=str(tmp_path / "cases.json"), expansion_mode="replicate")
    assert [c["id"] for c in workflow.inference_cases(str(tmp_path / "cases.json"), expansion_mode="backproject")] == [
        "first",
        "oblique",
    ]


@pytest.mark.parametrize("angles", [[[0, 0], [0, 0]], [[0, 0], [4, 3]]])
def test_drr_refuses_views_along_one_line(angles):
    with pytest.raises(XRayInputError, match="nearly the same line"):
        DRR(angles=angles)
    with pytest.raises(XRayInputError, match="nearly the same line"):
        DRRd(keys="ct", angles=angles)
    DRR(angles=[0, 90])


# ---------------------------------------------------------------- end to end: configs/inference.json


def _infer(ckpt_dir: Path, out: Path, **override) -> None:
    wf = _workflow(["inference.json"], "infer", ckpt_dir=str(ckpt_dir), output_dir=str(out), **{**SMALL, **override})
    wf.initialize()
    wf.run()


def _named_xrays(tmp_path: Path, prepared: Path, stem: str = "P7") -> list[str]:
    """The test vertebra's AP and lateral DRRs as ``<stem>_ap.png`` and ``<stem>_lat.png``."""
    paths = []
    for p, view in zip(_write_xrays(tmp_path, prepared), ("ap", "lat")):
        paths.append(str(Path(p).rename(tmp_path / f"{stem}_{view}.png")))
    return paths


def test_infer_names_the_case_after_the_files_and_a_rerun_keeps_other_files(dataset, trained, tmp_path):
    xrays = _named_xrays(tmp_path, dataset)
    out = tmp_path / "out"
    (out / "P7").mkdir(parents=True)
    (out / "P7" / "notes.txt").write_text("the user's own file")
    killed = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = Path(run_staging_dir(out)).name.rsplit("-", 1)[0]
    stale = out / ".partial" / f"{host}-{int(killed.stdout)}" / "P7"  # what a killed run left
    stale.mkdir(parents=True)
    (stale / "P7_extra.nii.gz").write_bytes(b"left by a killed run")
    _infer(trained, out, xrays=xrays)
    assert sorted(p.name for p in out.iterdir()) == ["P7"], "named after the files, no staging folder left"
    case = out / "P7"
    assert (case / "P7_hu.nii.gz").is_file() and (case / "P7_preview.png").is_file()
    assert (case / "notes.txt").read_text() == "the user's own file"
    assert not (case / "P7_extra.nii.gz").exists(), "stale staging files are not published"
    published = set(json.loads((case / MANIFEST_NAME).read_text())["files"])
    assert "P7_hu.nii.gz" in published and "notes.txt" not in published


def test_failed_bundle_run_keeps_the_earlier_result_and_leaves_no_staging(dataset, trained, tmp_path):
    xrays = _named_xrays(tmp_path, dataset)
    out = tmp_path / "out"
    _infer(trained, out, xrays=xrays, case_id="T4")
    earlier = {p.name: p.read_bytes() for p in (out / "T4").iterdir()}
    # the mesh writer fails after the volume is written into the staging folder
    override = {k: v for k, v in SMALL.items() if k != "num_workers"}  # inference.json has no num_workers
    override.update(ckpt_dir=str(trained), output_dir=str(out), xrays=xrays, case_id="T4")
    args = _bundle_cmd("inference.json") + [a for k, v in override.items() for a in (f"--{k}", json.dumps(v))]
    args += ["--save_transforms#1#keys", "nothing"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0 and "nothing" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["T4"], "no staging folder is left"
    assert {p.name: p.read_bytes() for p in (out / "T4").iterdir()} == earlier, "the earlier result is untouched"


@pytest.mark.parametrize(
    "case, message",
    [
        ("oblique_second_case", "needs ap and lateral"),
        ("duplicate_ids", "same case id"),
        ("same_view", "nearly the same line"),
        ("blank", "blank"),
    ],
)
def test_bad_inputs_stop_before_anything_is_written(dataset, trained, tmp_path, case, message):
    ap, lat = _named_xrays(tmp_path, dataset)
    override: dict = {"xrays": [ap, lat]}
    if case in ("oblique_second_case", "duplicate_ids"):
        second = {"xray": [ap, lat], "id": "second"}
        if case == "oblique_second_case":
            second["angles"] = [[0, 0], [45, 0]]
        else:
            second["id"] = "first"
        (tmp_path / "cases.json").write_text(json.dumps([{"xray": [ap, lat], "id": "first"}, second]))
        override = {"datalist": str(tmp_path / "cases.json")}
    elif case == "same_view":
        override["views"] = [[0, 0], [0, 0]]
    else:
        Image.fromarray(np.zeros((32, 32), np.uint16)).save(lat)
    out = tmp_path / "out"
    with pytest.raises(Exception) as err:
        _infer(trained, out, **override)
    text = " ".join(str(e) for e in _chain(err.value)).lower()
    assert message in text, text[-2000:]
    assert not out.exists() or not any(out.iterdir()), "nothing is written for a bad input"
    shutil.rmtree(out, ignore_errors=True)
