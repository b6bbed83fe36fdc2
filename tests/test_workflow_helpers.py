# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Helpers the configs call: datalists, statistics and inference cases, with their error messages."""

from __future__ import annotations

import json

import pytest
import torch
from scripts import workflow
from scripts.errors import BundleInputError
from scripts.networks import attach_model_info


def _datalist(tmp_path, **extra):
    (tmp_path / "P1").mkdir(exist_ok=True)  # a folder named like a patient must not turn the patient id into a path
    content = {
        "training": [{"ct": "P1/a_ct.nii.gz", "gt": "P1/a_gt.nii.gz", "id": "P1_T1", "patient": "P1", "level": "T1"}],
        "validation": [],
        "statistics": {"gt_mean": -900.0, "gt_std": 250.0},
        **extra,
    }
    (tmp_path / "datalist.json").write_text(json.dumps(content))


def test_load_split_joins_only_file_entries(tmp_path):
    _datalist(tmp_path)
    for name in ("a_ct.nii.gz", "a_gt.nii.gz"):
        (tmp_path / "P1" / name).write_bytes(b"")
    (item,) = workflow.load_split(tmp_path, "training")
    assert item["ct"] == str(tmp_path / "P1" / "a_ct.nii.gz")
    assert item["patient"] == "P1" and item["id"] == "P1_T1"
    with pytest.raises(BundleInputError, match="no items in 'validation'"):
        workflow.load_split(tmp_path, "validation")  # no silent fall-back to the training split
    with pytest.raises(BundleInputError, match="no split 'tset'; it has 'training', 'validation': training needs"):
        workflow.load_split(tmp_path, "tset")
    # a dataset prepared on another grid than the run's is refused; one that records no grid is not checked
    assert workflow.load_split(tmp_path, "training", spacing=2.0, roi=64)
    _datalist(tmp_path, spacing_mm=2.0, roi=64)
    assert workflow.load_split(tmp_path, "training", spacing=2.0, roi=64)
    for spacing, roi in ((1.0, 64), (2.0, 128), (1.0, 128)):
        with pytest.raises(BundleInputError, match=r"holds crops of 64\^3 voxels at 2 mm, the run reads .* --spacing"):
            workflow.load_split(tmp_path, "training", spacing=spacing, roi=roi)
    # a datalist that records the crop only, and a run that gives the crop only, are told apart without a crash
    _datalist(tmp_path, roi=64)
    with pytest.raises(BundleInputError, match=r"crops of 64\^3 voxels at \? mm, the run reads 128\^3 at 2 mm"):
        workflow.load_split(tmp_path, "training", spacing=2.0, roi=128)
    (tmp_path / "P1" / "a_gt.nii.gz").unlink()
    with pytest.raises(BundleInputError, match=r"1 file\(s\) that .* lists for 'training' are missing \(e.g. .*a_gt"):
        workflow.load_split(tmp_path, "training")


def test_a_fresh_start_in_an_earlier_runs_folder_moves_its_curve_logs_and_warns(tmp_path, caplog):
    """``--resume False`` in a used folder: the earlier run's event files go aside (its epochs would join this run's
    curves) and the replacement of its checkpoint and model is announced; a resumed run keeps everything."""
    out, ckpt = tmp_path / "run", tmp_path / "run" / "models"
    ckpt.mkdir(parents=True)
    (out / "events.out.tfevents.1.host").write_bytes(b"old")
    (ckpt / "model.pt").write_bytes(b"best")
    assert workflow.start_output_dir(out, ckpt, True) == []  # resume: untouched
    assert workflow.start_output_dir(tmp_path / "new", tmp_path / "new" / "models", False) == []  # a new folder
    with caplog.at_level("WARNING"):
        (moved,) = workflow.start_output_dir(out, ckpt, False)
    assert moved.parent.parent == out / "earlier_runs" and moved.read_bytes() == b"old"
    assert not list(out.glob("events.out.tfevents*")) and (ckpt / "model.pt").is_file()
    assert "its curves' logs moved to" in caplog.text and f"its model.pt in {ckpt} is replaced" in caplog.text


def test_epoch_counts_and_the_warning_of_an_uncalibrated_confidence(tmp_path, caplog):
    assert workflow.epoch_count(3) == 3 and workflow.epoch_count("5") == 5
    for bad in (0, -1, 2.5, "many", None):
        with pytest.raises(BundleInputError, match="give a whole number of epochs, 1 or more"):
            workflow.epoch_count(bad)
    from scripts.networks import EAR

    net = attach_model_info(
        EAR(channels=(4, 8, 16, 32, 64)), {"gt_mean": 0.0, "gt_std": 1.0}, 2.0, 32, [[0, 0], [90, 0]], "replicate", {}
    )
    torch.save(net.state_dict(), tmp_path / "model.pt")
    with caplog.at_level("WARNING"):
        assert workflow.confidence_calibration(tmp_path / "model.pt", True) is None
        assert workflow.confidence_calibration(tmp_path / "model.pt", False) is None
    warned = [r.getMessage() for r in caplog.records if "holds no confidence calibration" in r.getMessage()]
    assert len(warned) == 1, "warned only with the confidence on"
    assert f"confidence_study --ckpt_dir {tmp_path} --dataset_dir DATA" in warned[0], "the whole command"
    assert "--configs \"['configs/train.json','configs/evaluate.json']\"" in warned[0], "a 32^3 model: no cpu.json"
    # the configs follow each model's contract
    expected = {
        "models/cpu/model.pt": "['configs/train.json','configs/cpu.json','configs/evaluate.json']",
        "models/model.pt": "['configs/train.json','configs/evaluate.json']",
        "models/body/model.pt": "['configs/train.json','configs/cpu.json','configs/body.json',"
        "'configs/body_model.json','configs/evaluate.json']",
    }
    from pathlib import Path

    root = Path(workflow.__file__).resolve().parents[1]
    assert {m: workflow.calibration_configs(root / m) for m in expected} == expected


def test_missing_dataset_names_the_command(tmp_path):
    with pytest.raises(BundleInputError, match="python -m scripts.prepare --source example"):
        workflow.load_split(tmp_path / "absent", "training")


def test_statistics(tmp_path):
    _datalist(tmp_path)
    stats = workflow.dataset_statistics(tmp_path)
    assert stats == {"gt_mean": -900.0, "gt_std": 250.0}
    assert workflow.zscore_of_hu(-500.0, stats) == pytest.approx(1.6)
    net = attach_model_info(torch.nn.Conv3d(2, 1, 1), stats, spacing=2.0, roi_size=64)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    assert workflow.model_statistics(tmp_path / "model.pt") == stats
    with pytest.raises(BundleInputError, match="no trained model"):
        workflow.model_statistics(tmp_path / "nowhere.pt")
    torch.save(torch.nn.Conv3d(2, 1, 1).state_dict(), tmp_path / "old.pt")
    with pytest.raises(BundleInputError, match="holds no intensity statistics"):
        workflow.model_statistics(tmp_path / "old.pt")
    no_stats = tmp_path / "b"
    no_stats.mkdir()
    (no_stats / "datalist.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="re-run the preparation"):
        workflow.dataset_statistics(no_stats)


def test_inference_cases_errors(tmp_path):
    assert workflow.inference_cases() == [], "no input: the workflow initialises; running it stops"
    with pytest.raises(ValueError, match="--xrays"):
        workflow.require_cases(workflow.inference_cases())
    with pytest.raises(BundleInputError, match="does not exist"):
        workflow.inference_cases(datalist=str(tmp_path / "cases.json"))
    (tmp_path / "cases.json").write_text("[]")
    with pytest.raises(ValueError, match="non-empty JSON list"):
        workflow.inference_cases(datalist=str(tmp_path / "cases.json"))


def test_distributed_backend():
    assert workflow.distributed_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
