# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Measure the whole chain of ``python -m scripts.spine radiographs`` on simulated radiographs: found centres against
true ones (the end-to-end numbers of docs/spine-radiographs.md).

Usage::

    python -m scripts.tools.spine_eval --split test --out docs/results/spine_end_to_end_test.json

For every patient of the split, the default simulated radiograph pair of
:func:`scripts.tools.finder_data.simulate_patient` (reused from ``--work``) goes through
:func:`scripts.spine.radiographs` twice, with the same inference config (``--config_file``, default the shipped body
model's as ``scripts.spine radiographs`` uses it, and ``--overrides``, e.g. ``"{'ckpt_dir': 'runs/two_stage'}"``):

- ``found``: the finder finds and names the vertebrae, one level pinned as ``finder_eval`` pins it (the lowest
  complete vertebra at its true centre in the AP file);
- ``true``: the true centres are given (those of the simulation's ``centres.json`` that lie inside both images).

Scored: every vertebra the prepared split holds complete (``data/body64``: the test set's vertebrae) whose centre
lies inside both images. Each is matched one to one with the reported vertebrae by their 3-D centres in the scan's
world frame (within ``--hit_mm``, 10 mm). A matched vertebra's reconstruction (its value in
``<patient>_labels.nii.gz``) is scored with MONAI's ``compute_dice`` and ``compute_hausdorff_distance`` (95th
percentile, mm) against the bundle's ground truth on the output grid (:func:`reference_mask`): the raw label map
resampled nearest through the files' ``world_to_system``, the vertebra's own mask dilated by one voxel, where the
prepared scan (resampled linearly) is above -500 HU, as ``scripts.data.crop`` makes the ground truth that the models
learn and that every evaluation of the bundle scores. ``dice_label`` scores against the own mask alone, undilated.
A missed vertebra counts as Dice 0 and has no HD95; a ``found`` run that stops with an input error (e.g. a pin far
from the spine found) reconstructs nothing, as the user's run would, so all its vertebrae count as missed, their rows
holding the error (``finder_eval`` instead scores such a finder's unpinned detections). Written: the JSON report with
per-vertebra rows and per-mode means.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["score_reconstruction", "reference_mask", "spine_eval"]

ROOT = Path(__file__).resolve().parents[2]
MODES = ("found", "true")


def score_reconstruction(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[float, float | None]:
    """Dice and HD95 (mm) of two boolean masks on one grid (MONAI's metrics); HD95 is ``None`` when one is empty."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    p = torch.as_tensor(np.asarray(prediction, bool))[None, None]
    t = torch.as_tensor(np.asarray(truth, bool))[None, None]
    dice = float(compute_dice(p.float(), t.float(), include_background=True, ignore_empty=False)[0, 0])
    if not p.any() or not t.any():
        return dice, None
    hd = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=[list(map(float, spacing))])
    return dice, float(hd[0, 0])


def reference_mask(own: np.ndarray, hu: np.ndarray, bone_hu: float = -500.0) -> np.ndarray:
    """The bundle's ground truth of one vertebra on a grid, as a mask: its own label mask grown by one voxel
    (:func:`scripts.data.crop.grow_mask`, as :func:`scripts.data.crop.crop_vertebra` makes the ground truth) where the
    scan is above ``bone_hu`` (the threshold of the Dice metric)."""
    from scripts.data.crop import grow_mask

    return grow_mask(own) & (np.asarray(hu) > bone_hu)


def _match(reported: list[dict], truth: list[dict], hit_mm: float) -> dict[str, dict]:
    """True level -> the reported vertebra within ``hit_mm`` of it, one to one
    (:func:`scripts.tools.finder_data.match_centres` on the world centres)."""
    from scripts.tools.finder_data import match_centres

    true_mm = [v["centre_mm_world"] for v in truth]
    match = match_centres(true_mm, [v["centre_world_mm"] for v in reported], hit_mm)
    return {truth[i]["level"]: reported[j] for i, (j, _) in match.items()}


def _bundle_relative(path: str) -> str:
    """``path`` relative to the bundle root when it lies inside it (reports name bundle files portably)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(ROOT)) if p.is_absolute() else str(path)
    except ValueError:
        return str(path)


def spine_eval(
    split: str = "test",
    data: str = "data/body64",
    labels_dir: str = "../shared/data/spine-ct",
    config_file: str | Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    work: str = "runs/spine_eval",
    out: str | None = None,
    hit_mm: float = 10.0,
) -> dict[str, Any]:
    """Run the end-to-end measurement (module docstring); returns the report."""
    import nibabel as nib
    import torch
    from monai.metrics import compute_dice
    from scripts.errors import BundleInputError
    from scripts.io.radiograph import read_radiograph
    from scripts.spine import file_px, radiograph_configs, radiographs
    from scripts.tools.finder_data import body_file, label_source, resample_hu, resample_labels, simulate_patient

    if config_file is None:
        configs = radiograph_configs()
    else:
        configs = [config_file] if isinstance(config_file, str) else list(config_file)
    dl = json.loads((Path(data) / "datalist.json").read_text())
    patients: dict[str, dict] = {}
    for item in dl[split]:
        p = patients.setdefault(item["patient"], {"body": body_file(data, item), "levels": []})
        p["levels"].append(item["level"])
    rows: list[dict] = []
    for patient, info in patients.items():
        label_path, convention, class_map, levels = label_source(patient, labels_dir, data)
        rad = simulate_patient(info["body"], label_path, Path(work) / patient, convention, class_map, levels)
        centres = json.loads((rad / "centres.json").read_text())["vertebrae"]
        truth = [v for v in centres if v["level"] in info["levels"] and v["inside_both"]]
        lowest = truth[-1]
        r, c = file_px(read_radiograph(rad / "ap.dcm"), lowest["ap_rc"])
        pin = f"{lowest['level']}=ap:{r:.1f},{c:.1f}"
        inside = [{"level": v["level"], "centre_mm": v["centre_mm_system"]} for v in centres if v["inside_both"]]
        given_centres = Path(work) / patient / "centres_inside_both.json"
        given_centres.write_text(json.dumps(inside, indent=1) + "\n")
        for mode in MODES:
            dest = Path(work) / patient / f"spine_{mode}"
            given = {"centres": str(given_centres)} if mode == "true" else {"level": pin}
            files = {"ap": str(rad / "ap.dcm"), "lateral": str(rad / "lateral.dcm")}
            try:
                radiographs(**files, out=str(dest), patient=patient, config_file=configs, formats=(),
                            save_vertebrae=False, **given, **(overrides or {}))  # fmt: skip
            except BundleInputError as e:  # the user's run stops: nothing reconstructed (true centres must not fail)
                if mode == "true":
                    raise
                rows += [{"patient": patient, "level": v["level"], "mode": mode, "found": False, "dice": 0.0,
                          "dice_label": 0.0, "hd95_mm": None, "named": None, "centre_error_mm": None,
                          "confidence": None, "error": str(e)} for v in truth]  # fmt: skip
                print(json.dumps({"patient": patient, "mode": mode, "reported": 0, "found": 0, "error": str(e)}))
                continue
            report = json.loads((dest / patient / f"{patient}_spine.json").read_text())
            reported = [{"level": k, **v} for k, v in report["vertebrae"].items()]
            matched = _match(reported, truth, hit_mm)
            img = nib.load(str(dest / patient / f"{patient}_labels.nii.gz"))
            pred = np.asarray(img.dataobj).astype(np.int64)
            to_world = np.linalg.inv(np.asarray(report["radiographs"]["world_to_system"], np.float64)) @ img.affine
            gt = resample_labels(label_path, to_world, pred.shape)
            hu = resample_hu(info["body"], to_world, pred.shape)
            spacing = np.sqrt((np.asarray(img.affine)[:3, :3] ** 2).sum(0))
            for v in truth:
                row = {"patient": patient, "level": v["level"], "mode": mode, "found": v["level"] in matched}
                if row["found"]:
                    got = matched[v["level"]]
                    mine = pred == got["label"]
                    dice, hd95 = score_reconstruction(mine, reference_mask(gt == v["label"], hu), spacing)
                    bare = torch.as_tensor(gt == v["label"], dtype=torch.float32)[None, None]
                    dice_label = float(compute_dice(torch.as_tensor(mine, dtype=torch.float32)[None, None], bare,
                                                    include_background=True, ignore_empty=False))  # fmt: skip
                    named = got["level"]
                    error = float(np.linalg.norm(np.subtract(got["centre_world_mm"], v["centre_mm_world"])))
                    row.update(dice=dice, dice_label=dice_label, hd95_mm=hd95, named=named,
                               centre_error_mm=round(error, 2))  # fmt: skip
                    row["confidence"] = got.get("confidence")
                else:
                    row.update(dice=0.0, dice_label=0.0, hd95_mm=None, named=None, centre_error_mm=None)
                    row["confidence"] = None
                rows.append(row)
            print(json.dumps({"patient": patient, "mode": mode, "reported": len(reported), "found": len(matched)}))
    summary = {}
    for mode in MODES:
        sel = [r for r in rows if r["mode"] == mode]
        hds = [r["hd95_mm"] for r in sel if r["hd95_mm"] is not None]
        found = [r["dice"] for r in sel if r["found"]]
        summary[mode] = {
            "vertebrae": len(sel),
            "found": sum(r["found"] for r in sel),
            "dice_mean": round(float(np.mean([r["dice"] for r in sel])), 4) if sel else None,
            "dice_label_mean": round(float(np.mean([r["dice_label"] for r in sel])), 4) if sel else None,
            "dice_mean_found": round(float(np.mean(found)), 4) if found else None,
            "hd95_mm_mean_found": round(float(np.mean(hds)), 2) if hds else None,
        }
    true_by = {(r["patient"], r["level"]): r["dice"] for r in rows if r["mode"] == "true"}
    gaps = [true_by[(r["patient"], r["level"])] - r["dice"] for r in rows if r["mode"] == "found"]
    command = "python -m scripts.tools.spine_eval " + " ".join(sys.argv[1:])
    report = {
        "summary": summary,
        "dice_gap_true_minus_found": round(float(np.mean(gaps)), 4) if gaps else None,
        "rows": rows,
        "settings": {
            "split": split,
            "data": data,
            "config_file": [_bundle_relative(c) for c in configs],
            "overrides": overrides or {},
            "hit_mm": hit_mm,
            "command": command,
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        },  # fmt: skip
    }
    if out:
        from scripts.utils import atomic_path

        with atomic_path(out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"summary": summary, "dice_gap_true_minus_found": report["dice_gap_true_minus_found"]}))
    return report


if __name__ == "__main__":
    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)  # a bad input ends in its one line, not a traceback

    # a misspelt option stops here, before the work
    check_cli_flags(spine_eval, sys.argv[1:], "python -m scripts.tools.spine_eval")
    fire.Fire(spine_eval, serialize=lambda result: None)
