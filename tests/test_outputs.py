# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Per-case outputs: naming by case id and all-or-nothing publishing."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Lambdad, SaveImaged

from scripts.transforms import CaseNamed, PublishCaseOutputsd


def _item() -> dict:
    pred = MetaTensor(torch.rand(1, 8, 8, 8), affine=torch.eye(4), meta={"filename_or_obj": "/data/x_gt.nii.gz"})
    return {"pred": pred, "id": "P1_T4"}


def _save(staging):
    return SaveImaged("pred", output_dir=str(staging), output_postfix="hu", separate_folder=True, print_log=False)


def test_case_named_and_published(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "out" / ".partial"
    (out / "P1_T4").mkdir(parents=True)
    (out / "P1_T4" / "stale.txt").write_text("an earlier result")
    Compose([CaseNamed("pred"), _save(staging), PublishCaseOutputsd("pred", staging, out)])(_item())
    assert sorted(p.name for p in (out / "P1_T4").iterdir()) == ["P1_T4_hu.nii.gz"], "replaces the earlier result"
    assert not staging.exists(), "the empty staging folder is removed"


def test_failure_before_publishing_leaves_no_case(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "out" / ".partial"

    def fail(x):
        raise RuntimeError("writer failed")

    t = Compose([CaseNamed("pred"), _save(staging), Lambdad("pred", fail), PublishCaseOutputsd("pred", staging, out)])
    with pytest.raises(RuntimeError):
        t(_item())
    assert not (out / "P1_T4").exists()


def test_missing_staged_outputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="put the writers first"):
        PublishCaseOutputsd("pred", tmp_path / "s", tmp_path / "o")(_item())


def test_case_named_needs_the_id():
    with pytest.raises(KeyError, match="'id'"):
        CaseNamed("pred")({"pred": _item()["pred"]})
