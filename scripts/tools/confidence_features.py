# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Candidate confidence signals of a model, each measured against the true Dice (the choice in docs/confidence.md).

Usage::

    python -m scripts.tools.confidence_features --ckpt_dir models/body --dataset_dir data/body64 \\
        --out docs/results/confidence_features_body

``--configs`` defaults to the body model's evaluation configs (``train``, ``cpu``, ``body``, ``evaluate``
and ``body_model``).

Every vertebra of the validation and test splits is simulated under each condition of
:data:`scripts.tools.confidence_study.CONDITIONS` (clean, window off by 10 and 20 mm, lateral view 10 and 20 degrees
off, 100x fewer photons; seeded as in the evaluation config) and reconstructed once as given and through the TTA
copies. Per vertebra and condition:

- ``agreement``: the TTA agreement, the bundle's confidence before calibration (:mod:`scripts.confidence`);
- ``reprojection_ap`` / ``reprojection_lateral``: the normalised cross-correlation of the reconstruction's
  projections (the mean attenuation above air along each beam axis, :func:`volume_projections`) with the views the
  reconstruction was made from (for :class:`scripts.networks.TwoStageEAR`, its view stage's output; else the input
  views): does the volume explain the X-rays it was given?
- ``view_consistency``: the Pearson correlation of the two views' row profiles (:func:`row_profile_consistency`).
  Both views integrate the same slab of the patient at each height, so for the X-rays of one object in parallel
  beams the profiles are equal; two views that show different things disagree;
- ``bone_fraction``: the share of the grid above -500 HU in the reconstruction;
- ``centring``: how far the mass of the views read lies from the window's centre (:func:`view_centring`, pixels,
  negated): the views of a vertebra in a window centred on it are centred too.

Written: ``<out>_rows.csv`` (one row per split, condition and vertebra, with its Dice) and ``<out>_summary.csv``
(per split and signal: Spearman's correlation with Dice, the ROC AUC for Dice < 0.75 with low signal as the alarm, as
:mod:`scripts.tools.confidence_study` scores the confidence).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["SIGNALS", "volume_projections", "row_profile_consistency", "view_centring", "confidence_features"]

ROOT = Path(__file__).resolve().parents[2]
#: the signals measured, in the summary's order
SIGNALS = ("agreement", "reprojection_ap", "reprojection_lateral", "view_consistency", "bone_fraction", "centring")


def volume_projections(mu: torch.Tensor) -> torch.Tensor:
    """The AP and lateral parallel projections of a volume ``mu`` ``(B, 1, X, Y, Z)``, laid out as
    :func:`scripts.networks.stack_views` lays out an expanded pair: ``(B, 2, Z, X)`` (needs ``X == Y``; means
    along the beam axes, i.e. line integrals up to a constant)."""
    from scripts.networks import stack_views

    return stack_views(torch.cat([mu, mu], dim=1))


def row_profile_consistency(views: torch.Tensor) -> torch.Tensor:
    """Pearson's correlation of the row profiles (sums over columns) of the two views ``(B, 2, H, W)``; ``(B,)``.

    The AP and the lateral view share the rows (the long axis): in parallel beams both row sums are the integral of
    the object over the slab at that height, so one object's two views give a correlation of 1.
    """
    p = views.sum(-1)
    p = p - p.mean(-1, keepdim=True)
    den = p[:, 0].norm(dim=-1) * p[:, 1].norm(dim=-1)
    return torch.where(den > 0, (p[:, 0] * p[:, 1]).sum(-1) / den.clamp_min(1e-12), torch.zeros_like(den))


def view_centring(views: torch.Tensor) -> torch.Tensor:
    """Minus the largest distance (pixels) between a view's centre of mass (each view less its minimum) and the
    image centre, over the two views ``(B, 2, H, W)``; ``(B,)``. 0 for views centred on what they show."""
    w = views - views.amin(dim=(-2, -1), keepdim=True)
    h, wd = views.shape[-2:]
    rows = torch.arange(h, dtype=views.dtype, device=views.device).view(-1, 1) - (h - 1) / 2.0
    cols = torch.arange(wd, dtype=views.dtype, device=views.device).view(1, -1) - (wd - 1) / 2.0
    mass = w.sum((-2, -1)).clamp_min(1e-12)
    r = (w * rows).sum((-2, -1)) / mass
    c = (w * cols).sum((-2, -1)) / mass
    return -torch.sqrt(r**2 + c**2).amax(dim=1)


def confidence_features(
    ckpt_dir: str = "models/body",
    dataset_dir: str = "data/body64",
    out: str = "runs/confidence/features",
    configs: Sequence[str] = (
        "configs/train.json",
        "configs/cpu.json",
        "configs/body.json",
        "configs/evaluate.json",
        "configs/body_model.json",
    ),  # fmt: skip
    splits: Sequence[str] = ("validation", "test"),
    low_dice: float = 0.75,
) -> list[dict[str, Any]]:
    """Measure the signals (module docstring); returns the summary rows."""
    from monai.bundle import ConfigParser
    from monai.metrics import compute_dice
    from scripts.confidence import TTAInferer, mask_agreement
    from scripts.functional import normalised_cross_correlation, zscore_images
    from scripts.networks import stack_views
    from scripts.networks.model_info import load_state_dict_file
    from scripts.tools.confidence_study import CONDITIONS, _scores
    from scripts.utils import atomic_path

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows: list[dict[str, Any]] = []
    tta = TTAInferer()
    net = None
    for split in splits:
        for name, (kind, overrides) in CONDITIONS.items():
            parser = ConfigParser()
            parser.read_config([str(ROOT / c) for c in configs])
            parser.update({"dataset_dir": dataset_dir, "ckpt_dir": ckpt_dir, "split": split})
            parser.update({k: float(v) for k, v in overrides.items()})
            if net is None:  # the same network and weights under every condition
                net = parser.get_parsed_content("network")
                net.load_state_dict(load_state_dict_file(Path(ckpt_dir) / "model.pt"))
                net.eval()
                dev = next(net.parameters()).device  # the configs' device: CUDA where present
            stats = parser.get_parsed_content("stats")
            bone = (-500.0 - float(stats["gt_mean"])) / float(stats["gt_std"])  # -500 HU, as the Dice metric
            dataset = parser.get_parsed_content("validate#dataset")
            for i in range(len(dataset)):
                item = dataset[i]
                x = torch.as_tensor(item["image"][None]).float().to(dev)
                truth_key = "label" if "label" in item else "gt"  # the evaluation names the ground truth "label"
                gt = torch.as_tensor(item[truth_key][None]).float()
                with torch.no_grad():
                    preds = tta(x, net).cpu()
                    read = (net.spine_views(x) if hasattr(net, "spine_views") else zscore_images(stack_views(x))).cpu()
                pred = preds[:, :1]
                mask, truth = pred > bone, gt > bone
                dice = float(compute_dice(mask.float(), truth.float(), include_background=True, ignore_empty=False))
                hu = pred * float(stats["gt_std"]) + float(stats["gt_mean"])
                reproj = normalised_cross_correlation(volume_projections((hu + 1000.0).clamp_min(0.0)), read)[0]
                rows.append({
                    "split": split, "condition": name, "type": kind, "id": item.get("id", str(i)),
                    "dice": round(dice, 4),
                    "agreement": round(float(mask_agreement(preds > bone)[0]), 4),
                    "reprojection_ap": round(float(reproj[0]), 4),
                    "reprojection_lateral": round(float(reproj[1]), 4),
                    "view_consistency": round(float(row_profile_consistency(read)[0]), 4),
                    "bone_fraction": round(float(mask.float().mean()), 5),
                    "centring": round(float(view_centring(read)[0]), 3),
                })  # fmt: skip
            print(f"[confidence features] {split} / {name}: {len(dataset)} vertebrae", flush=True)
    summary = []
    for split in splits:
        sel = [r for r in rows if r["split"] == split]
        dice = np.array([r["dice"] for r in sel])
        for signal in SIGNALS:
            s = _scores(np.array([r[signal] for r in sel]), dice, low_dice)
            summary.append({"split": split, "signal": signal, "n": s["n"], "n_low": s["n_low"],
                            "spearman": round(s["spearman"], 3), "roc_auc": round(s["roc_auc"], 3)})  # fmt: skip
            print(f"{split:10s} {signal:22s} n={s['n']:3d} spearman={s['spearman']:.3f} auc={s['roc_auc']:.3f}")
    for suffix, table in (("rows", rows), ("summary", summary)):
        with atomic_path(f"{out}_{suffix}.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return summary


if __name__ == "__main__":
    import sys

    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)  # a bad input ends in its one line, not a traceback

    os.chdir(ROOT)
    # a misspelt option stops here, before the work
    check_cli_flags(confidence_features, sys.argv[1:], "python -m scripts.tools.confidence_features")
    fire.Fire(confidence_features, serialize=lambda result: None)
