# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Helpers the configs call: datalists, statistics and inference cases, with their error messages."""

from __future__ import annotations

import json

import pytest
import torch

from scripts import workflow


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
    assert workflow.load_split(tmp_path, "validation", fallback="training")[0]["id"] == "P1_T1"
    with pytest.raises(ValueError, match="no items in 'validation'"):
        workflow.load_split(tmp_path, "validation")


def test_missing_dataset_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m scripts.prepare --source example"):
        workflow.load_split(tmp_path / "absent", "training")


def test_statistics(tmp_path):
    _datalist(tmp_path)
    stats = workflow.dataset_statistics(tmp_path)
    assert stats == {"gt_mean": -900.0, "gt_std": 250.0}
    assert workflow.zscore_of_hu(-500.0, stats) == pytest.approx(1.6)
    workflow.save_model_statistics(stats, tmp_path / "models")
    assert workflow.model_statistics(tmp_path / "models") == stats
    with pytest.raises(FileNotFoundError, match="intensity_stats.json"):
        workflow.model_statistics(tmp_path / "nowhere")
    no_stats = tmp_path / "b"
    no_stats.mkdir()
    (no_stats / "datalist.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="re-run the preparation"):
        workflow.dataset_statistics(no_stats)


def test_inference_cases_errors(tmp_path):
    with pytest.raises(ValueError, match="--xrays"):
        workflow.inference_cases()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        workflow.inference_cases(datalist=str(tmp_path / "cases.json"))
    (tmp_path / "cases.json").write_text("[]")
    with pytest.raises(ValueError, match="non-empty JSON list"):
        workflow.inference_cases(datalist=str(tmp_path / "cases.json"))


def test_distributed_backend():
    assert workflow.distributed_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
