# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Calibrate a model's confidence on the validation patient and test it against reality on the test patients.

Usage::

    python -m scripts.tools.confidence_study --ckpt_dir models/cpu --dataset_dir data/body64 \\
        --out docs/results/confidence_cpu --write_calibration True

For each split (``validation``, ``test``) and each condition (:data:`CONDITIONS`: clean inputs, the window
centre off by 10 and 20 mm, the lateral view's projection angle off by 10 and 20 degrees from what the model is
told, 100 times fewer photons) the evaluation config (``configs/evaluate.json``, with TTA confidence) runs once
as its own ``python -m monai.bundle run``, seeded, so each vertebra gets the same degraded X-rays every time.
A rerun skips the evaluations already done. Then:

- the isotonic calibration (:class:`scripts.confidence.ConfidenceCalibration`) is fitted on the validation
  vertebrae under every condition except the held-out type (``--held_out``, default the view-angle errors); with
  ``--centring True`` every evaluation also records the finder's window centring
  (:class:`scripts.localise.WindowCentring`) and the calibration's score is the agreement plus the centring
  weighted by the least-squares ratio of their coefficients on the same validation rows;
- on the test vertebrae, per condition type, for clean inputs alone, for the held-out type and for all pooled:
  Spearman's correlation between confidence and Dice (scipy), the ROC AUC of ``1 - confidence`` for detecting
  Dice below ``--low_dice`` (MONAI's ``compute_roc_auc``), and the number of vertebrae;
- a reliability diagram: predicted against observed Dice in bins of the confidence, with counts.

Written: ``<out>_rows.csv`` (one row per split, condition and vertebra), ``<out>_summary.csv``,
``<out>_reliability.csv``, ``<out>_reliability.png`` and ``<out>_calibration.json``; with
``--write_calibration True`` the calibration also goes into the model's contract (``model.pt``; export
``model.ts`` again afterwards).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scripts.utils import atomic_path

__all__ = ["CONDITIONS", "run_conditions", "fit_and_score", "confidence_study"]

ROOT = Path(__file__).resolve().parents[2]

#: condition name -> (type, command-line overrides of the evaluation config)
CONDITIONS: dict[str, tuple[str, dict[str, str]]] = {
    "clean": ("clean", {}),
    "window10": ("window", {"window_error_mm": "10.0"}),
    "window20": ("window", {"window_error_mm": "20.0"}),
    "view10": ("view", {"view_error_deg": "10.0"}),
    "view20": ("view", {"view_error_deg": "20.0"}),
    "photons1e4": ("photons", {"photon_count": "10000.0"}),
}


def run_conditions(
    ckpt_dir: str,
    dataset_dir: str,
    work_dir: Path,
    configs: Sequence[str],
    splits: Sequence[str] = ("validation", "test"),
    conditions: Sequence[str] = tuple(CONDITIONS),
    centring: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate every split under every condition (skipping finished ones); one row per vertebra. With
    ``centring``, every evaluation records the finder's window centring (``--window_centring True``) too."""
    rows: list[dict[str, Any]] = []
    for split in splits:
        for name in conditions:
            kind, overrides = CONDITIONS[name]
            out = work_dir / f"{split}_{name}"
            table = out / "metrics_per_vertebra.csv"
            if not table.is_file():
                cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(list(configs))]
                cmd += ["--dataset_dir", dataset_dir, "--ckpt_dir", ckpt_dir, "--output_dir", str(out)]
                cmd += ["--split", split]
                if centring:
                    cmd += ["--window_centring", "True"]
                for k, v in overrides.items():
                    cmd += [f"--{k}", v]
                print(f"[confidence study] {split} / {name} ...", flush=True)
                res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                if res.returncode != 0 or not table.is_file():
                    tail = "\n".join((res.stdout + res.stderr).splitlines()[-15:])
                    raise RuntimeError(f"evaluation {split}/{name} failed (exit {res.returncode}):\n{tail}")
            with open(table, newline="") as f:
                for r in csv.DictReader(f):
                    row = {
                        "split": split,
                        "condition": name,
                        "type": kind,
                        "id": r["id"],
                        "dice": float(r["val_dice"]),
                        "hd95": float(r["val_hd95"]),
                        "agreement": float(r["val_tta_agreement"]),
                    }
                    if centring:
                        if "val_window_centring" not in r:
                            raise RuntimeError(f"{table} has no window centring: delete {out} and run again.")
                        row["centring"] = float(r["val_window_centring"])
                    rows.append(row)
    return rows


def _scores(conf: np.ndarray, dice: np.ndarray, low_dice: float) -> dict[str, Any]:
    import torch
    from monai.metrics import compute_roc_auc
    from scipy.stats import spearmanr

    low = dice < low_dice
    rho = float(spearmanr(conf, dice).statistic) if len(dice) > 2 and np.ptp(conf) > 0 else float("nan")
    auc = float("nan")
    if 0 < low.sum() < len(low):
        auc = float(compute_roc_auc(torch.as_tensor(1.0 - conf), torch.as_tensor(low.astype(np.float32))))
    return {
        "n": len(dice),
        "n_low": int(low.sum()),
        "spearman": rho,
        "roc_auc": auc,
        "mean_dice": float(dice.mean()),
        "mean_confidence": float(conf.mean()),
    }


def fit_and_score(
    rows: list[dict[str, Any]], held_out: str = "view", low_dice: float = 0.75, bins: int = 5
) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """Fit the calibration on validation rows (held-out type excluded); score the test rows.

    Returns ``(calibration, summary rows, reliability rows)``; every row of ``rows`` gains ``confidence``.
    """
    from scripts.confidence import ConfidenceCalibration

    fit_rows = [r for r in rows if r["split"] == "validation" and r["type"] != held_out]
    kinds = sorted({r["condition"] for r in fit_rows})
    centring = all("centring" in r for r in rows)
    cal = ConfidenceCalibration.fit(
        [r["agreement"] for r in fit_rows],
        [r["dice"] for r in fit_rows],
        fitted_on=f"validation split, conditions {', '.join(kinds)} ({len(fit_rows)} vertebra-conditions)"
        + (", with the window centring" if centring else ""),
        centring=[r["centring"] for r in fit_rows] if centring else None,
    )
    for r in rows:
        r["confidence"] = float(cal(r["agreement"], r.get("centring")))
    test = [r for r in rows if r["split"] == "test"]
    groups: dict[str, list[dict[str, Any]]] = {"all (pooled)": test, "clean": [r for r in test if r["type"] == "clean"]}
    groups[f"held out: {held_out}"] = [r for r in test if r["type"] == held_out]
    for kind in sorted({r["type"] for r in test} - {"clean"}):
        groups[f"type: {kind}"] = [r for r in test if r["type"] == kind]
    for cond in CONDITIONS:
        groups[f"condition: {cond}"] = [r for r in test if r["condition"] == cond]
    summary = []
    for name, g in groups.items():
        if not g:
            continue
        conf = np.array([r["confidence"] for r in g])
        dice = np.array([r["dice"] for r in g])
        summary.append({"group": name, **_scores(conf, dice, low_dice)})
    edges = np.linspace(0.0, 1.0, bins + 1)
    conf = np.array([r["confidence"] for r in test])
    dice = np.array([r["dice"] for r in test])
    reliability = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf >= lo) & ((conf < hi) if hi < 1.0 else (conf <= hi))
        reliability.append(
            {
                "bin": f"{lo:.1f}-{hi:.1f}",
                "n": int(inside.sum()),
                "mean_confidence": float(conf[inside].mean()) if inside.any() else float("nan"),
                "mean_dice": float(dice[inside].mean()) if inside.any() else float("nan"),
            }
        )
    return cal, summary, reliability


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def _plot(path: Path, rows: list[dict[str, Any]], reliability: list[dict[str, Any]], low_dice: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = [r for r in rows if r["split"] == "test"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    for kind, marker in zip(sorted({r["condition"] for r in test}), "osD^v<>p"):
        g = [r for r in test if r["condition"] == kind]
        a.scatter([r["confidence"] for r in g], [r["dice"] for r in g], marker=marker, label=kind, alpha=0.7, s=22)
    a.plot([0, 1], [0, 1], "k--", lw=0.8)
    a.axhline(low_dice, color="grey", lw=0.8, ls=":")
    a.set(xlabel="confidence (predicted Dice)", ylabel="true Dice", title="test vertebrae", xlim=(0, 1), ylim=(0, 1))
    a.legend(fontsize=7)
    ok = [r for r in reliability if r["n"] > 0]
    b.plot([0, 1], [0, 1], "k--", lw=0.8)
    b.plot([r["mean_confidence"] for r in ok], [r["mean_dice"] for r in ok], "o-")
    for r in ok:
        b.annotate(
            f"n={r['n']}",
            (r["mean_confidence"], r["mean_dice"]),
            fontsize=7,
            xytext=(3, -10),
            textcoords="offset points",
        )
    b.set(
        xlabel="mean confidence in bin", ylabel="mean true Dice", title="reliability (test)", xlim=(0, 1), ylim=(0, 1)
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def confidence_study(
    ckpt_dir: str = "models/cpu",
    dataset_dir: str = "data/body64",
    out: str = "runs/confidence/study",
    configs: Sequence[str] = ("configs/train.json", "configs/cpu.json", "configs/body.json", "configs/evaluate.json"),
    held_out: str = "view",
    low_dice: float = 0.75,
    write_calibration: bool = False,
    centring: bool = False,
) -> dict[str, Any]:
    """Run the study (see the module's docstring); returns the summary rows and the calibration."""
    import torch
    from scripts.networks.model_info import load_state_dict_file, write_confidence_calibration

    if held_out not in {kind for kind, _ in CONDITIONS.values()} - {"clean"}:
        raise ValueError(f"--held_out must be a degradation type among {sorted({k for k, _ in CONDITIONS.values()})}.")
    # the calibration is fitted on the validation split and scored on the test split: both, before any evaluation
    # (read here: scripts.workflow.load_split would add its import floors to this tool's)
    datalist = Path(dataset_dir) / "datalist.json"
    if not datalist.is_file():
        raise ValueError(f"{datalist} not found: prepare the dataset (python -m scripts.prepare) or fix --dataset_dir.")
    held = json.loads(datalist.read_text())
    for split in ("validation", "test"):
        if not held.get(split):
            raise ValueError(
                f"{datalist} has no split {split!r} with vertebrae: the study fits the calibration on the validation "
                "split and scores it on the test split; prepare the dataset with both (a split column or --split)."
            )
    out_path = Path(out)
    work = out_path.parent / f"{out_path.name}_runs"
    work.mkdir(parents=True, exist_ok=True)
    rows = run_conditions(ckpt_dir, dataset_dir, work, configs, centring=centring)
    cal, summary, reliability = fit_and_score(rows, held_out, low_dice)
    _write_csv(Path(f"{out}_rows.csv"), rows)
    _write_csv(Path(f"{out}_summary.csv"), summary)
    _write_csv(Path(f"{out}_reliability.csv"), reliability)
    _plot(Path(f"{out}_reliability.png"), rows, reliability, low_dice)
    with atomic_path(f"{out}_calibration.json") as tmp:
        Path(tmp).write_text(json.dumps(cal.to_dict(), indent=1) + "\n")
    for s in summary:
        print(
            f"{s['group']:24s} n={s['n']:3d} low={s['n_low']:3d} spearman={s['spearman']:.3f} "
            f"auc={s['roc_auc']:.3f} dice={s['mean_dice']:.3f} conf={s['mean_confidence']:.3f}"
        )
    if write_calibration:
        model = Path(ckpt_dir) / "model.pt"
        state = write_confidence_calibration(load_state_dict_file(model), cal.to_dict())
        with atomic_path(model) as tmp:
            torch.save(state, tmp)
        print(f"calibration written into {model}; export model.ts again (docs/reference.md)")
    return {"summary": summary, "calibration": cal.to_dict()}


if __name__ == "__main__":
    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)  # a bad input ends in its one line, not a traceback

    os.chdir(ROOT)
    # a misspelt option stops here, before the work
    check_cli_flags(confidence_study, sys.argv[1:], "python -m scripts.tools.confidence_study")
    fire.Fire(confidence_study, serialize=lambda result: None)
