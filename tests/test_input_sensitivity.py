# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The swap test tells a model that reads its X-rays from one that ignores them."""

from __future__ import annotations

import json

import pytest
import torch
from scripts.tools.input_sensitivity import input_sensitivity
from tests.conftest import SMALL


def _run(model, dataset, tmp_path):
    return input_sensitivity(
        model=str(model), dataset_dir=str(dataset), configs=["configs/train.json"], split="training", offset=1,
        out=str(tmp_path / "swap.json"), overrides=dict(SMALL),
    )  # fmt: skip


def test_swap_test_reports_every_vertebra(trained, dataset, tmp_path):
    report = _run(trained / "model.pt", dataset, tmp_path)
    assert report["n"] == 2 and [r["id"] for r in report["vertebrae"]] == ["P0_T1", "P1_T2"]
    for row in report["vertebrae"]:
        assert all(0.0 <= row[k] <= 1.0 for k in ("own", "ap_swapped", "lateral_swapped", "both_swapped"))
    assert json.loads((tmp_path / "swap.json").read_text())["mean_dice"] == report["mean_dice"]


def test_a_model_blind_to_its_inputs_scores_the_same_with_swapped_views(trained, dataset, tmp_path):
    state = torch.load(trained / "model.pt", map_location="cpu", weights_only=True)
    first = next(k for k, v in state.items() if k.startswith("enc1") and k.endswith("weight") and v.ndim == 5)
    state[first] = torch.zeros_like(state[first])  # the first convolution sees nothing of the input
    blind = tmp_path / "blind.pt"
    torch.save(state, blind)
    means = _run(blind, dataset, tmp_path)["mean_dice"]
    assert means["own"] == pytest.approx(means["both_swapped"]) == pytest.approx(means["ap_swapped"])


def test_an_offset_that_swaps_a_vertebra_with_itself_is_refused(trained, dataset, tmp_path):
    with pytest.raises(ValueError, match="--offset 2 swaps each of the 2 vertebrae .* with itself"):
        input_sensitivity(
            model=str(trained / "model.pt"), dataset_dir=str(dataset), configs=["configs/train.json"],
            split="training", offset=2, overrides=dict(SMALL),
        )  # fmt: skip
