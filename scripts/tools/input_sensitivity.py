# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Does a model read its X-rays? Dice with each vertebra's own views against Dice with another vertebra's views.

Usage::

    python -m scripts.tools.input_sensitivity --model models/cpu/model.pt --dataset_dir data/body64 \\
        --configs "['configs/train.json','configs/cpu.json','configs/body.json']" --split test

Each vertebra of the split is simulated as in validation (seeded, no perturbation). The model then reconstructs
it four times, and each reconstruction is scored (Dice at -500 HU) against the vertebra's own ground truth:

- from its own two views;
- with the AP view swapped for that of the vertebra ``--offset`` places further in the split (another level or
  patient);
- with the lateral view swapped;
- with both views swapped.

A model that reconstructs from its inputs loses Dice when its views are swapped. A model whose Dice does not move
has learnt an average vertebra at the window's centre and ignores its X-rays, whatever its Dice. Writes a JSON
report (``--out``) and prints the means.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["bone_dice", "input_sensitivity"]

ROOT = Path(__file__).resolve().parents[2]


def bone_dice(a: torch.Tensor, b: torch.Tensor, threshold: float) -> float:
    """MONAI's Dice of the two volumes' bone masks, ``> threshold`` (both empty: 1)."""
    from monai.metrics import compute_dice

    ma, mb = ((v > threshold).float()[None, None] for v in (a, b))
    return float(compute_dice(ma, mb, include_background=True, ignore_empty=False))


def input_sensitivity(
    model: str = "models/cpu/model.pt",
    dataset_dir: str = "data/body64",
    configs: Sequence[str] = ("configs/train.json", "configs/cpu.json", "configs/body.json"),
    split: str = "test",
    offset: int = 7,
    out: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the swap test (see the module's docstring); returns the per-vertebra Dice and their means."""
    from monai.bundle import ConfigParser
    from scripts.networks.model_info import load_state_dict_file

    parser = ConfigParser()
    parser.read_config([str(ROOT / c) for c in configs])
    parser["dataset_dir"] = dataset_dir
    parser["validate_perturbed"] = False
    parser["model_file"] = model  # what a config that rebuilds its network from the file (body_model.json) reads
    parser["stats"] = "$@scripts.workflow.model_statistics(@model_file)"  # the ground truth on the model's scale
    for key, value in (overrides or {}).items():
        parser[key] = value
    # the config's own split reader (scripts.workflow.load_split), for the chosen split
    parser["validate#dataset#data"] = f"$@scripts.workflow.load_split(@dataset_dir, {split!r}, @drr_source)"
    net = parser.get_parsed_content("network")
    net.load_state_dict(load_state_dict_file(model))
    net.eval()
    stats = parser.get_parsed_content("stats")
    threshold = (-500.0 - stats["gt_mean"]) / stats["gt_std"]  # the Dice metric's -500 HU as a z-score
    transform = parser.get_parsed_content("validate#preprocessing")
    items = [transform(item) for item in parser.get_parsed_content("validate#dataset#data")]
    if len(items) < 2:
        raise ValueError(f"the swap test needs at least 2 vertebrae in the {split!r} split, found {len(items)}.")
    if offset % len(items) == 0:
        raise ValueError(
            f"--offset {offset} swaps each of the {len(items)} vertebrae of the {split!r} split with itself; give an "
            f"offset that is not a multiple of {len(items)}, e.g. --offset {max(1, len(items) // 2)}."
        )
    rows = []
    dev = next(net.parameters()).device  # the configs' device: CUDA where present
    with torch.no_grad():
        for i, item in enumerate(items):
            own, other = item["image"], items[(i + offset) % len(items)]["image"]
            gt = item["label"][0]
            inputs = {
                "own": own,
                "ap_swapped": torch.stack([other[0], own[1]]),
                "lateral_swapped": torch.stack([own[0], other[1]]),
                "both_swapped": other,
            }
            preds = net(torch.stack(list(inputs.values())).to(dev))[:, 0].cpu()
            rows.append({"id": item["id"], **{k: bone_dice(p, gt, threshold) for k, p in zip(inputs, preds)}})
    keys = ("own", "ap_swapped", "lateral_swapped", "both_swapped")
    means = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    report = {"model": model, "dataset_dir": dataset_dir, "split": split, "n": len(rows), "mean_dice": means}
    report["vertebrae"] = rows
    if out:
        from scripts.utils import atomic_path

        with atomic_path(out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"model": model, "n": len(rows), "mean_dice": means}))
    return report


if __name__ == "__main__":
    import sys

    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)  # a bad input ends in its one line, not a traceback

    os.chdir(ROOT)
    # a misspelt option stops here, before the work
    check_cli_flags(input_sensitivity, sys.argv[1:], "python -m scripts.tools.input_sensitivity")
    fire.Fire(input_sensitivity, serialize=lambda result: None)
