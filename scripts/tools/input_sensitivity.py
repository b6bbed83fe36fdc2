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

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["bone_dice", "best_shift_bone_dice", "input_sensitivity"]

ROOT = Path(__file__).resolve().parents[2]


def bone_dice(a: torch.Tensor, b: torch.Tensor, threshold: float) -> float:
    """MONAI's Dice of the two volumes' bone masks, ``> threshold`` (both empty: 1)."""
    from monai.metrics import compute_dice

    ma, mb = ((v > threshold).float()[None, None] for v in (a, b))
    return float(compute_dice(ma, mb, include_background=True, ignore_empty=False))


def best_shift_bone_dice(
    pred: torch.Tensor, gt: torch.Tensor, threshold: float, max_shift: int = 3
) -> tuple[float, tuple[int, int, int]]:
    """The best bone Dice of ``pred`` moved by whole voxels against ``gt``, and that move: an oracle of placement.

    ``pred``'s bone mask (``> threshold``) is moved by every integer shift of at most ``max_shift`` voxels along each
    axis (what leaves the grid is lost, nothing wraps) and scored against ``gt``'s. The gain over the unmoved Dice is
    what a perfect correction of the reconstruction's position could add; the rest of the error is its shape.

    Args:
        pred: reconstructed volume ``(X, Y, Z)``.
        gt: ground-truth volume on the same grid.
        threshold: bone threshold in the volumes' units.
        max_shift: largest move along each axis, in voxels.

    Returns:
        the best Dice and its shift ``(dx, dy, dz)`` in voxels (the unmoved one first among ties).
    """
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(
            f"pred and gt must be two volumes (X, Y, Z) of one shape, got {tuple(pred.shape)} and {tuple(gt.shape)}."
        )
    if max_shift < 0:
        raise ValueError(f"max_shift must be 0 or more voxels, got {max_shift}.")
    m, g = (pred > threshold).float(), (gt > threshold).float()
    total_g = float(g.sum())
    r, n = int(max_shift), m.shape
    padded = torch.nn.functional.pad(m, (r,) * 6)
    steps = range(-r, r + 1)
    shifts = [(0, 0, 0)] + [s for s in itertools.product(steps, steps, steps) if s != (0, 0, 0)]
    best, best_shift = -1.0, (0, 0, 0)
    for dx, dy, dz in shifts:  # the mask moved by +d: moved[i] = m[i - d]
        moved = padded[r - dx : r - dx + n[0], r - dy : r - dy + n[1], r - dz : r - dz + n[2]]
        denom = float(moved.sum()) + total_g
        dice = 1.0 if denom == 0 else 2.0 * float((moved * g).sum()) / denom
        if dice > best:
            best, best_shift = dice, (dx, dy, dz)
    return best, best_shift


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
