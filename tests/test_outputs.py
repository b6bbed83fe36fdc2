# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Per-case outputs: naming by case id, publishing file by file, reruns, stale and failed staging."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Lambdad, SaveImaged
from scripts.errors import BundleInputError
from scripts.io import outputs as outputs_module
from scripts.io.outputs import (
    MANIFEST_NAME,
    CaseNamed,
    PublishCaseOutputsd,
    case_folder_name,
    check_case_names,
    run_staging_dir,
)


def _item(case_id: str = "P1_T4") -> dict:
    pred = MetaTensor(torch.rand(1, 8, 8, 8), affine=torch.eye(4), meta={"filename_or_obj": "/data/x_gt.nii.gz"})
    return {"pred": pred, "id": case_id}


def _save(staging):
    return SaveImaged("pred", output_dir=str(staging), output_postfix="hu", separate_folder=True, print_log=False)


def _report(staging, text: str = "{}"):
    """A writer of a JSON report beside the volume, as SaveMeshd writes ``<name>_mesh.json``."""

    def write(pred):
        name = pred.meta["filename_or_obj"]
        folder = staging / case_folder_name(name.removesuffix(".nii.gz"))
        (folder / f"{folder.name}_mesh.json").write_text(text)
        return pred

    return Lambdad("pred", write)


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_case_named_and_published(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "out" / ".partial"
    Compose([CaseNamed("pred"), _save(staging), PublishCaseOutputsd("pred", staging, out)])(_item())
    assert _names(out / "P1_T4") == [MANIFEST_NAME, "P1_T4_hu.nii.gz"]
    assert json.loads((out / "P1_T4" / MANIFEST_NAME).read_text())["files"] == ["P1_T4_hu.nii.gz"]
    assert not staging.exists(), "the empty staging folder is removed"


def test_rerun_replaces_only_the_case_files(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "out" / ".partial"
    first = Compose([CaseNamed("pred"), _save(staging), _report(staging), PublishCaseOutputsd("pred", staging, out)])
    first(_item())
    (out / "P1_T4" / "notes.txt").write_text("the user's own file")
    old = (out / "P1_T4" / "P1_T4_hu.nii.gz").read_bytes()
    # the rerun writes no report: the report of the first run is the case's own file, so it goes
    Compose([CaseNamed("pred"), _save(staging), PublishCaseOutputsd("pred", staging, out)])(_item())
    assert _names(out / "P1_T4") == [MANIFEST_NAME, "P1_T4_hu.nii.gz", "notes.txt"]
    assert (out / "P1_T4" / "notes.txt").read_text() == "the user's own file"
    assert (out / "P1_T4" / "P1_T4_hu.nii.gz").read_bytes() != old, "the volume is the new one"


def test_publishing_keeps_each_old_file_until_its_new_one_is_in_place(tmp_path, monkeypatch):
    out, staging = tmp_path / "out", tmp_path / "out" / ".partial"
    steps = [CaseNamed("pred"), _save(staging), _report(staging, '{"run": 1}')]
    Compose([*steps, PublishCaseOutputsd("pred", staging, out)])(_item())
    moved = []
    real_replace = os.replace

    def replace(src, dst):
        moved.append(os.path.basename(dst))
        if len(moved) == 2:
            raise KeyboardInterrupt("killed between two renames")
        real_replace(src, dst)

    monkeypatch.setattr(outputs_module.os, "replace", replace)
    steps = [CaseNamed("pred"), _save(staging), _report(staging, '{"run": 2}')]
    with pytest.raises(KeyboardInterrupt):
        Compose([*steps, PublishCaseOutputsd("pred", staging, out)])(_item())
    assert moved == ["P1_T4_hu.nii.gz", "P1_T4_mesh.json"], "the volume first, the report last"
    assert json.loads((out / "P1_T4" / "P1_T4_mesh.json").read_text()) == {"run": 1}, "the old report stays"
    assert (out / "P1_T4" / "P1_T4_hu.nii.gz").is_file()


def test_stale_staging_of_a_killed_run_is_not_published(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "out" / ".partial"
    (staging / "P1_T4").mkdir(parents=True)
    (staging / "P1_T4" / "P1_T4_preview.png").write_bytes(b"from a killed run")
    (staging / "other").mkdir()  # another run's case: not this run's to clear
    publish = PublishCaseOutputsd("pred", staging, out, case_names=["P1_T4"])
    assert not (staging / "P1_T4").exists(), "cleared before anything is written"
    Compose([CaseNamed("pred"), _save(staging), publish])(_item())
    assert _names(out / "P1_T4") == [MANIFEST_NAME, "P1_T4_hu.nii.gz"]
    assert _names(staging) == ["other"]


def _ended_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_each_run_stages_in_its_own_folder_and_ended_runs_are_cleared(tmp_path):
    out = tmp_path / "out"
    staging = Path(run_staging_dir(out))
    assert staging.parent == out / ".partial" and staging.name.endswith(f"-{os.getpid()}")
    host = staging.name.rsplit("-", 1)[0]
    ended, running = out / ".partial" / f"{host}-{_ended_pid()}", out / ".partial" / f"{host}-{os.getppid()}"
    for run in (ended, running):
        (run / "P1_T4").mkdir(parents=True)
        (run / "P1_T4" / "P1_T4_mesh.stl").write_bytes(b"staged")
    publish = PublishCaseOutputsd("pred", staging, out)
    assert not ended.exists(), "the folder of an ended run is removed"
    Compose([CaseNamed("pred"), _save(staging), publish])(_item())
    assert _names(out / "P1_T4") == [MANIFEST_NAME, "P1_T4_hu.nii.gz"]
    assert _names(out / ".partial") == [running.name], "a running process's folder stays"
    shutil.rmtree(running)
    Compose([CaseNamed("pred"), _save(staging), PublishCaseOutputsd("pred", staging, out)])(_item())
    assert _names(out) == ["P1_T4"], "no staging folder is left"


def test_failed_case_leaves_no_staging(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "out" / ".partial"
    Compose([CaseNamed("pred"), _save(staging), PublishCaseOutputsd("pred", staging, out)])(_item())

    def fail(x):
        raise RuntimeError("writer failed")

    publish = PublishCaseOutputsd("pred", staging, out, case_names=["P1_T4"])
    t = Compose([CaseNamed("pred"), _save(staging), Lambdad("pred", fail), publish])
    try:
        t(_item())
    except RuntimeError:
        pass
    assert (staging / "P1_T4" / "P1_T4_hu.nii.gz").is_file(), "the failed case's files are staged"
    del t, publish
    gc.collect()  # the transform is released (as at the end of the process)
    assert not staging.exists(), "no staging folder is left"
    assert _names(out / "P1_T4") == [MANIFEST_NAME, "P1_T4_hu.nii.gz"], "the earlier result stays"


def test_failure_before_publishing_leaves_no_case(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "out" / ".partial"

    def fail(x):
        raise RuntimeError("writer failed")

    t = Compose([CaseNamed("pred"), _save(staging), Lambdad("pred", fail), PublishCaseOutputsd("pred", staging, out)])
    with pytest.raises(RuntimeError):
        t(_item())
    assert not (out / "P1_T4").exists()


def test_names_with_dots_keep_their_text(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "out" / ".partial"
    for case_id in ("1.3.6_T4", "1.3.6_T5"):
        Compose([CaseNamed("pred"), _save(staging), PublishCaseOutputsd("pred", staging, out)])(_item(case_id))
    assert _names(out) == ["1.3.6_T4", "1.3.6_T5"]
    assert (out / "1.3.6_T4" / "1.3.6_T4_hu.nii.gz").is_file()


@pytest.mark.parametrize(
    "names, message",
    [
        (["P1_T4", "P2_T4", "P1_T4"], "cases 1 and 3 have the same"),
        (["P1_T4", "p1_t4"], "cases 1 and 2 have the same"),
        (["P1/T4"], "cannot name an output folder"),
        ([".partial"], "cannot name an output folder"),
        ([""], "cannot name an output folder"),
    ],
)
def test_case_names_that_would_share_or_escape_a_folder_are_refused(tmp_path, names, message):
    with pytest.raises(BundleInputError, match=message):
        check_case_names(names)
    staging = tmp_path / "out" / ".partial"
    (staging / "P1_T4").mkdir(parents=True)
    with pytest.raises(BundleInputError, match=message):
        PublishCaseOutputsd("pred", staging, tmp_path / "out", case_names=names)
    assert (staging / "P1_T4").is_dir(), "nothing is cleared for refused names"


def test_staging_dir_must_be_inside_the_output_folder(tmp_path):
    (tmp_path / "out" / "P1_T4").mkdir(parents=True)
    for staging in (tmp_path / "out", tmp_path, tmp_path / "elsewhere"):
        with pytest.raises(BundleInputError, match="not inside the output folder"):
            PublishCaseOutputsd("pred", staging, tmp_path / "out")
    assert (tmp_path / "out" / "P1_T4").is_dir()


def test_without_case_names_the_whole_staging_folder_is_the_runs(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "out" / ".partial"
    (staging / "P1_T4").mkdir(parents=True)
    (staging / "P1_T4" / "P1_T4_mesh.stl").write_bytes(b"from a killed run")
    publish = PublishCaseOutputsd("pred", staging, out)
    assert not staging.exists()
    Compose([CaseNamed("pred"), _save(staging), publish])(_item())
    assert _names(out / "P1_T4") == [MANIFEST_NAME, "P1_T4_hu.nii.gz"]


def test_missing_staged_outputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="put the writers first"):
        PublishCaseOutputsd("pred", tmp_path / "o" / "s", tmp_path / "o")(_item())


def test_case_named_needs_the_id():
    with pytest.raises(KeyError, match="'id'"):
        CaseNamed("pred")({"pred": _item()["pred"]})


def test_the_case_report_logs_a_flag_with_its_confidence_only_when_there_is_one(tmp_path, caplog):
    import logging

    from scripts.io.outputs import SaveCaseReportd

    save = SaveCaseReportd("pred", output_dir=str(tmp_path))
    pred = MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": "P1_T7"})
    with caplog.at_level(logging.WARNING, logger="scripts"):
        save({"pred": pred, "confidence": 0.0, "flag": "input unlike the model's X-rays: ...", "input_type": "blank"})
        save({"pred": pred, "flag": "input unlike the model's X-rays: ..."})
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert logged[0].startswith("P1_T7 (confidence 0.00): input unlike") and logged[1].startswith("P1_T7: input unlike")
    report = json.loads((tmp_path / "P1_T7" / "P1_T7_report.json").read_text())
    assert report["flag"].startswith("input unlike") and report["confidence"] is None and report["input_type"] is None
