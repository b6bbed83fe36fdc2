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
    (tmp_path / "P1").mkdir()  # a folder named like a patient must not turn the patient id into a path
    content = {
        "training": [{"ct": "P1/a_ct.nii.gz", "gt": "P1/a_gt.nii.gz", "id": "P1_T1", "patient": "P1", "level": "T1"}],
        "validation": [],
        "statistics": {"gt_mean": -900.0, "gt_std": 250.0},
        **extra,
    }
    (tmp_path / "datalist.json").write_text(json.dumps(content))


def test_load_split_joins_only_file_entries(tmp_path):
    _datalist(tmp_path)
    (item,) = workflow.load_split(tmp_path, "training")
    assert item["ct"] == str(tmp_path / "P1" / "a_ct.nii.gz")
    assert item["patient"] == "P1" and item["id"] == "P1_T1"
    with pytest.raises(BundleInputError, match="no items in 'validation'"):
        workflow.load_split(tmp_path, "validation")  # no silent fall-back to the training split


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
