# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Experiments: train several variants of the bundle's training config with one budget, evaluate each on the
same vertebrae, and tabulate the results.

Usage::

    python -m scripts.tools.experiments recipes --dataset_dir data/spine64 --epochs 40 --out runs/experiments/recipes

Every variant is a bundle run (``python -m monai.bundle run``) of ``configs/train.json`` plus the size
overlay (``--size cpu``: ``configs/cpu.json``) plus the variant's overlays, with its own checkpoint and log
folders under ``<out>/<variant>/``, followed by the evaluation overlay on the chosen split. A rerun skips
finished variants and resumes a killed one from its last epoch. The results go into ``<out>``:
``per_vertebra.csv`` (every metric of every variant and vertebra), ``summary.csv`` and ``summary.md``
(mean ± std per variant, and per patient), and ``runs.csv`` (time taken per variant).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scripts.metrics import METRIC_NAMES
from scripts.utils import atomic_path

__all__ = [
    "EXPERIMENTS",
    "run_experiment",
    "summarise",
    "paired_differences",
    "predict_vertebra",
    "make_figures",
    "angle_table",
]

ROOT = Path(__file__).resolve().parents[2]

#: experiment name -> {variant name: overlay config files (relative to the bundle root)}
EXPERIMENTS: dict[str, dict[str, list[str]]] = {
    "recipes": {
        "pose": ["configs/lab/recipes/pose.json"],
        "geometric": ["configs/lab/recipes/geometric.json"],
        "full": ["configs/lab/recipes/full.json"],
    },
    "methods": {
        "ear": [],
        "psr": ["configs/lab/baselines/psr.json"],
        "sit": ["configs/lab/baselines/sit.json"],
        "e2e": ["configs/lab/baselines/e2e.json"],
        "bx2s": ["configs/lab/baselines/bx2s.json"],
    },
    "modules": {
        "baseline": ["configs/lab/ablations/baseline.json"],
        "abs": ["configs/lab/ablations/abs.json"],
        "abs_fem": ["configs/lab/ablations/abs_fem.json"],
        "ear": [],
        "no_fem": ["configs/lab/ablations/no_fem.json"],
    },
    "losses": {
        "rec": ["configs/lab/ablations/loss_rec.json"],
        "rec_edge": ["configs/lab/ablations/loss_rec_edge.json"],
        "rec_edge_freq": ["configs/lab/ablations/loss_rec_edge_freq.json"],
        "ear": [],
    },
    # the angle between the two views: view 2 lateral (alpha 90), view 1 at alpha = 90 - angle; every variant
    # back-projects (the replicating expansion takes orthogonal views only)
    "angles": {f"deg{t}": [f"configs/lab/angles/deg{t}.json"] for t in (60, 80, 90, 110, 120, 140)},
}

SIZES = {"cpu": ["configs/cpu.json"], "paper": []}

#: the variant each experiment's paired differences are taken to (default: ``ear``, else the first variant)
REFERENCES = {"angles": "deg90"}

#: metrics shown in the markdown table, with the direction that is better
TABLE_METRICS = (
    ("dice", "higher"),
    ("hd95", "lower"),
    ("assd", "lower"),
    ("nsd", "higher"),
    ("psnr", "higher"),
    ("ssim", "higher"),
    ("mae_hu", "lower"),
    ("fd", "lower"),
)

#: fewest patients for a confidence interval by resampling patients; with fewer the differences are descriptive
MIN_BOOTSTRAP_PATIENTS = 3


def _bundle(configs: Sequence[str], overrides: dict[str, str], log: Path) -> float:
    """Run one bundle command, its output appended to ``log``; return the wall time in seconds."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str([str(ROOT / c) for c in configs])]
    for key, value in overrides.items():
        cmd += [f"--{key}", value]
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        res = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"bundle run failed (exit {res.returncode}); see {log}")
    return time.perf_counter() - start


def _check_overrides(runs: Sequence[Sequence[str]], extra: Mapping[str, Any]) -> None:
    """Refuse an override that the config files of no run (``runs``: one list of files each) define: every bundle
    run would add it and go on, so a misspelt ``--epoch 3`` (for ``--epochs``) would train every variant at the
    default budget."""
    from monai.bundle import ConfigParser
    from scripts.errors import BundleInputError, command_options, unknown_override

    if not extra:
        return
    keys = list(
        dict.fromkeys(k for files in runs for k in ConfigParser.load_config_files([str(ROOT / c) for c in files]))
    )
    unknown = unknown_override(list(extra), keys, [n for n in command_options(main) if n != "name"])
    if unknown is not None:
        raise BundleInputError(
            f"python -m scripts.tools.experiments: --{unknown[0]} is neither an option nor a key of the training and "
            f"evaluation configs; {unknown[1] or 'check the keys of the configs'}"
        )


def run_experiment(
    name: str,
    dataset_dir: str,
    out: str,
    epochs: int = 40,
    size: str = "cpu",
    split: str = "validation",
    variants: Sequence[str] | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Train and evaluate every variant of experiment ``name``; return the output folder.

    Args:
        name: a key of :data:`EXPERIMENTS`.
        dataset_dir: prepared dataset (``python -m scripts.prepare``).
        out: output folder (one sub-folder per variant, tables at the top).
        epochs: training epochs of every variant (one budget for all).
        size: ``"cpu"`` (64^3 at 2 mm) or ``"paper"`` (128^3 at 1 mm).
        split: the datalist split the variants are evaluated on (``validation`` to choose, ``test`` to report).
        variants: a subset of the experiment's variants (default all).
        extra: more command-line overrides for every training and evaluation run.
    """
    from scripts.errors import BundleInputError

    if name not in EXPERIMENTS:
        raise BundleInputError(f"unknown experiment {name!r}; choose from {sorted(EXPERIMENTS)}.")
    if size not in SIZES:
        raise BundleInputError(f"size must be one of {sorted(SIZES)}, got {size!r}.")
    chosen = list(variants) if variants else list(EXPERIMENTS[name])
    unknown = [v for v in chosen if v not in EXPERIMENTS[name]]
    if unknown:
        raise BundleInputError(f"unknown variants {unknown} of {name!r}; choose from {list(EXPERIMENTS[name])}.")
    extra = dict(extra or {})
    files = ["configs/train.json", "configs/evaluate.json", *SIZES[size]]
    _check_overrides([[*files, *EXPERIMENTS[name][v]] for v in chosen], extra)  # before any run
    datalist = Path(dataset_dir) / "datalist.json"
    if not datalist.is_file():
        raise BundleInputError(f"no prepared dataset at {dataset_dir}; run python -m scripts.prepare first.")
    lists = json.loads(datalist.read_text())
    empty = [k for k in dict.fromkeys(("training", "validation", split)) if not lists.get(k)]
    if empty:  # before the first variant trains (its evaluation would fail after the training)
        raise BundleInputError(
            f"{datalist} has no items in {', '.join(repr(k) for k in empty)}; the variants train on 'training', "
            "choose on 'validation' and are evaluated on --split: prepare the dataset with those splits."
        )
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for i, variant in enumerate(chosen, start=1):
        folder = root / variant
        folder.mkdir(exist_ok=True)
        done = folder / "done.json"
        if done.is_file():
            record = json.loads(done.read_text())
            if (record.get("epochs"), record.get("split")) != (epochs, split):
                raise BundleInputError(
                    f"{folder} holds a finished run of {record.get('epochs')} epochs evaluated on "
                    f"{record.get('split')!r}, not {epochs} on {split!r}: use another --out or delete the folder."
                )
            print(f"[{i}/{len(chosen)}] {variant}: done before, skipped", flush=True)
            continue
        configs = ["configs/train.json"] + SIZES[size] + EXPERIMENTS[name][variant]
        common = {"dataset_dir": str(Path(dataset_dir).resolve()), "ckpt_dir": str((folder / "models").resolve())}
        print(f"[{i}/{len(chosen)}] {variant}: training {epochs} epochs ...", flush=True)
        train_s = _bundle(
            configs,
            {**common, "output_dir": str((folder / "runs").resolve()), "epochs": str(epochs), **extra},
            folder / "train.log",
        )
        eval_overrides = {
            **common,
            "output_dir": str((folder / f"eval_{split}").resolve()),
            "validate#dataset#data": f"$@scripts.workflow.load_split(@dataset_dir, '{split}')",
            **extra,
        }
        eval_configs = ["configs/train.json", "configs/evaluate.json"] + SIZES[size] + EXPERIMENTS[name][variant]
        eval_s = _bundle(eval_configs, eval_overrides, folder / "eval.log")
        record = {"variant": variant, "epochs": epochs, "train_s": train_s, "eval_s": eval_s, "split": split}
        with atomic_path(done) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        print(
            f"[{i}/{len(chosen)}] {variant}: trained in {train_s / 60:.1f} min, evaluated in {eval_s:.0f} s", flush=True
        )
    reference = REFERENCES.get(name)
    summarise(root, chosen, split, reference=reference if reference in chosen else None)
    if name == "angles":
        print(f"figure: {angle_table(root)}", flush=True)
    for path in make_figures(root, name, dataset_dir, size, split, chosen, extra):
        print(f"figure: {path}", flush=True)
    return root


def predict_vertebra(
    configs: Sequence[str], overrides: Mapping[str, str], index: int = 0
) -> tuple[str, Any, Any, Any, Any]:
    """Reconstruct one vertebra of a variant's validation data the way its evaluation sees it.

    Args:
        configs: the variant's training configs (relative to the bundle root).
        overrides: config overrides (``dataset_dir``, ``ckpt_dir``, sizes; ``validate#dataset#data`` picks the split).
        index: which item of the split.

    Returns:
        ``(id, prediction HU, ground truth HU, network input, network)``: volumes as ``(X, Y, Z)`` MetaTensors on
        the crop's grid, the network with the variant's ``model.pt`` loaded, in eval mode.
    """
    import torch
    from monai.bundle import ConfigWorkflow
    from scripts.functional import zscore_to_hu
    from scripts.networks.model_info import load_state_dict_file, read_model_info

    wf = ConfigWorkflow(
        config_file=[str(ROOT / c) for c in configs],
        workflow_type="train",
        bundle_root=str(ROOT),
        **{k: _override_value(v) for k, v in overrides.items()},
        resume=True,  # it only reads: a --resume False of the runs must not move an output folder's logs
    )
    wf.initialize()
    item = wf.parser.get_parsed_content("validate#dataset")[index]
    network = wf.parser.get_parsed_content("network_def")
    network.load_state_dict(load_state_dict_file(Path(overrides["ckpt_dir"]) / "model.pt"))
    info = read_model_info(network)
    with torch.no_grad():
        pred = network.eval()(item["image"][None])[0, 0]
    label = item["label"][0]
    pred_hu = label.clone()
    pred_hu.array = zscore_to_hu(pred, info["gt_mean"], info["gt_std"])
    label_hu = zscore_to_hu(label, info["gt_mean"], info["gt_std"])
    return str(item["id"]), pred_hu, label_hu, item["image"], network


def _override_value(text: str) -> Any:
    """A command-line override (text) as the value fire would pass (JSON where it parses)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def make_figures(
    root: str | os.PathLike,
    name: str,
    dataset_dir: str,
    size: str = "cpu",
    split: str = "validation",
    variants: Sequence[str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> list[Path]:
    """Figures of the first vertebra of ``split`` for the finished variants of an experiment, under ``<root>/figures``.

    Surface-distance heat maps of every variant's reconstruction (Figs. 6-7); with an ``ear`` variant its edge
    attention in three planes (Fig. 9); with ``ear`` and ``no_fem`` the difference FEM makes (Fig. 10). The
    reconstructions are also written as NIfTI (HU, the crop's affine) beside the figures.
    """
    import nibabel as nib
    from scripts.tools import figures as fig

    root = Path(root)
    out = root / "figures"
    out.mkdir(parents=True, exist_ok=True)
    chosen = [v for v in (variants or EXPERIMENTS[name]) if (root / v / "done.json").is_file()]
    preds, written = {}, []
    gt_path = None
    for variant in chosen:
        overrides = {
            "dataset_dir": str(Path(dataset_dir).resolve()),
            "ckpt_dir": str((root / variant / "models").resolve()),
            "validate#dataset#data": f"$@scripts.workflow.load_split(@dataset_dir, '{split}')",
            **dict(extra or {}),
        }
        configs = ["configs/train.json"] + SIZES[size] + EXPERIMENTS[name][variant]
        vid, pred_hu, gt_hu, image, network = predict_vertebra(configs, overrides)
        affine = pred_hu.affine.numpy()
        path = out / f"{variant}_{vid}_hu.nii.gz"
        with atomic_path(path) as tmp:
            nib.save(nib.Nifti1Image(pred_hu.numpy().astype(np.float32), affine), str(tmp))
        preds[variant] = (path, pred_hu)
        if gt_path is None:
            gt_path = out / f"{vid}_gt_hu.nii.gz"
            with atomic_path(gt_path) as tmp:
                nib.save(nib.Nifti1Image(gt_hu.numpy().astype(np.float32), affine), str(tmp))
            gt = gt_hu
        if variant == "ear":
            written.append(
                fig.edge_attention_figure(
                    fig.edge_attention(network, image), gt, out / f"edge_attention_{vid}.png", title=f"EAR, {vid}"
                )
            )
    if not preds:
        return written
    vid = gt_path.name.split("_gt_hu")[0]
    written.append(fig.surface_figure({v: p for v, (p, _) in preds.items()}, gt_path, out / f"surface_{vid}.png"))
    if "ear" in preds and "no_fem" in preds:
        written.append(
            fig.fem_difference_figure(
                preds["ear"][1], preds["no_fem"][1], gt, out / f"fem_difference_{vid}.png", title=f"FEM, {vid}"
            )
        )
    return written


def angle_table(root: str | os.PathLike, metrics: Sequence[str] = ("dice", "psnr", "assd")) -> Path:
    """``angles.csv`` (mean and std per angle between the views) and ``angles.png`` (metric against angle)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    root = Path(root)
    with open(root / "summary.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["group"] == "all" and r["variant"].startswith("deg")]
    columns = [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    table = [{"angle_deg": int(r["variant"][3:])} | {c: float(r[c]) for c in columns} for r in rows]
    table.sort(key=lambda r: r["angle_deg"])
    with atomic_path(root / "angles.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["angle_deg", *columns])
        writer.writeheader()
        writer.writerows(table)
    fig = Figure(figsize=(3.2 * len(metrics), 2.8), dpi=100)
    FigureCanvasAgg(fig)
    x = [r["angle_deg"] for r in table]
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        ax.errorbar(x, [r[f"{m}_mean"] for r in table], yerr=[r[f"{m}_std"] for r in table], marker="o", capsize=3)
        ax.set_xlabel("angle between the views (degrees)")
        ax.set_title(m)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(root / "angles.png") as tmp:
        fig.savefig(tmp, format="png")
    return root / "angles.png"


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else math.nan
    return mean, std


def paired_differences(
    rows: Sequence[Mapping[str, str]],
    reference: str,
    metrics: Sequence[str] = tuple(n for n, _ in TABLE_METRICS),
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """Per variant and metric, the paired per-vertebra difference to ``reference`` (variant minus reference).

    Only vertebrae that both variants evaluated with finite values count. With at least
    :data:`MIN_BOOTSTRAP_PATIENTS` patients the 95% interval comes from a bootstrap over patients (whole patients
    drawn with replacement, all their vertebrae with them, since vertebrae of one patient are not independent);
    with fewer the difference is descriptive only: its mean and the mean per patient, no interval and no p-value.

    Args:
        rows: ``per_vertebra.csv`` rows (``variant``, ``id``, ``patient`` and metric columns).
        reference: the variant the others are compared with.
        metrics: metric columns to compare.
        n_boot: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        one dict per variant and metric: ``variant``, ``metric``, ``n`` vertebrae, ``patients``, ``mean_diff``,
        ``ci_low``, ``ci_high`` (NaN when descriptive), ``per_patient`` (``"P1: +0.012; P2: -0.004"``), ``method``.
    """
    import numpy as np

    by_key = {(r["variant"], r["id"]): r for r in rows}
    out = []
    rng = np.random.default_rng(seed)
    for variant in dict.fromkeys(r["variant"] for r in rows):
        if variant == reference:
            continue
        for metric in metrics:
            pairs = []  # (patient, difference)
            for (v, vid), r in by_key.items():
                ref = by_key.get((reference, vid))
                if v != variant or ref is None:
                    continue
                a, b = float(r[metric]), float(ref[metric])
                if math.isfinite(a) and math.isfinite(b):
                    pairs.append((r["patient"], a - b))
            if not pairs:  # e.g. HD95 of a reconstruction without bone: the row stays, with nothing to compare
                nan = math.nan
                out.append(
                    {
                        "variant": variant,
                        "reference": reference,
                        "metric": metric,
                        "n": 0,
                        "patients": 0,
                        "mean_diff": nan,
                        "ci_low": nan,
                        "ci_high": nan,
                        "per_patient": "",
                        "method": "no vertebra with finite values in both",
                    }
                )
                continue
            patients = sorted({p for p, _ in pairs})
            diffs = {p: np.array([d for q, d in pairs if q == p]) for p in patients}
            mean = float(np.mean([d for _, d in pairs]))
            lo = hi = math.nan
            method = f"descriptive only (fewer than {MIN_BOOTSTRAP_PATIENTS} patients)"
            if len(patients) >= MIN_BOOTSTRAP_PATIENTS:
                boots = []
                for _ in range(n_boot):
                    drawn = rng.choice(len(patients), size=len(patients), replace=True)
                    boots.append(float(np.mean(np.concatenate([diffs[patients[i]] for i in drawn]))))
                lo, hi = (float(x) for x in np.percentile(boots, [2.5, 97.5]))
                method = f"95% bootstrap over {len(patients)} patients ({n_boot} resamples)"
            out.append(
                {
                    "variant": variant,
                    "reference": reference,
                    "metric": metric,
                    "n": len(pairs),
                    "patients": len(patients),
                    "mean_diff": mean,
                    "ci_low": lo,
                    "ci_high": hi,
                    "per_patient": "; ".join(f"{p}: {float(np.mean(diffs[p])):+.4f}" for p in patients),
                    "method": method,
                }
            )
    return out


def summarise(
    root: str | os.PathLike,
    variants: Sequence[str] | Mapping[str, str | os.PathLike],
    split: str = "validation",
    reference: str | None = None,
) -> Path:
    """Write ``per_vertebra.csv``, ``summary.csv``, ``summary.md`` and ``runs.csv`` from the variants' results.

    Args:
        root: output folder (and, for a sequence of variants, the folder holding ``<variant>/eval_<split>``).
        variants: variant names under ``root``, or ``{name: evaluation folder}`` of any evaluations (folders
            holding ``metrics_per_vertebra.csv``), e.g. two models evaluated on the same test vertebrae.
        split: the split the variants were evaluated on (for variant names).
        reference: the variant of the paired differences (``paired.csv`` and a second table in ``summary.md``);
            default ``"ear"`` when present, else the first variant.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folders = (
        {v: Path(f) for v, f in variants.items()}
        if isinstance(variants, Mapping)
        else {v: root / v / f"eval_{split}" for v in variants}
    )
    variants = list(folders)
    rows = []
    for variant, folder in folders.items():
        with open(folder / "metrics_per_vertebra.csv") as f:
            found = list(csv.DictReader(f))
        for r in found:
            patient = r["id"].rsplit("_", 1)[0]
            rows.append(
                {"variant": variant, "id": r["id"], "patient": patient} | {n: r[f"val_{n}"] for n in METRIC_NAMES}
            )
    with atomic_path(root / "per_vertebra.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["variant", "id", "patient", *METRIC_NAMES])
        writer.writeheader()
        writer.writerows(rows)
    summary = []
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        groups = {"all": mine} | {
            p: [r for r in mine if r["patient"] == p] for p in sorted({r["patient"] for r in mine})
        }
        for group, items in groups.items():
            entry = {"variant": variant, "group": group, "n": len(items)}
            for n in METRIC_NAMES:
                mean, std = _mean_std([float(r[n]) for r in items])
                entry[f"{n}_mean"], entry[f"{n}_std"] = mean, std
                entry[f"{n}_n"] = sum(math.isfinite(float(r[n])) for r in items)  # the values the mean is over
            summary.append(entry)
    with atomic_path(root / "summary.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    runs = [json.loads((root / v / "done.json").read_text()) for v in variants if (root / v / "done.json").is_file()]
    if runs:
        with atomic_path(root / "runs.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(runs[0]))
            writer.writeheader()
            writer.writerows(runs)

    def cell(entry: dict, n: str) -> str:
        m, s, k = entry[f"{n}_mean"], entry[f"{n}_std"], entry[f"{n}_n"]
        text = f"{m:.3f}" + (f" ± {s:.3f}" if math.isfinite(s) else "")
        return text + (f" (n={k})" if k < entry["n"] else "")  # non-finite values (e.g. an empty prediction) left out

    header = "| variant | group | n | " + " | ".join(f"{n} ({d})" for n, d in TABLE_METRICS) + " |"
    lines = [header, "|" + "---|" * (3 + len(TABLE_METRICS))]
    for e in summary:
        lines.append(
            f"| {e['variant']} | {e['group']} | {e['n']} | " + " | ".join(cell(e, n) for n, _ in TABLE_METRICS) + " |"
        )
    reference = reference or ("ear" if "ear" in variants else variants[0])
    paired = paired_differences(rows, reference)
    if paired:
        with atomic_path(root / "paired.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(paired[0]))
            writer.writeheader()
            writer.writerows(paired)
        methods = "; ".join(dict.fromkeys(d["method"] for d in paired if d["n"]))
        title = f"Paired per-vertebra difference to {reference} (variant minus {reference}): {methods}."
        lines += ["", title, ""]
        lines += ["| variant | metric | n | mean difference | 95% interval | per patient |", "|---" * 6 + "|"]
        for d in paired:
            ci = f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if math.isfinite(d["ci_low"]) else "-"
            lines.append(
                f"| {d['variant']} | {d['metric']} | {d['n']} | {d['mean_diff']:+.3f} | {ci} | {d['per_patient']} |"
            )
    with atomic_path(root / "summary.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return root / "summary.md"


def main(
    name: str,
    dataset_dir: str = "data/spine64",
    out: str | None = None,
    epochs: int = 40,
    size: str = "cpu",
    split: str = "validation",
    variants: str | Sequence[str] | None = None,
    **overrides: str,
) -> None:
    """Command line: ``python -m scripts.tools.experiments NAME [--dataset_dir D] [--epochs E] [--split S] ...``.

    Other ``--key value`` pairs are passed to every bundle run as config overrides. ``NAME`` ``table``
    tabulates finished evaluations instead: ``python -m scripts.tools.experiments table --evals
    "old=runs/eval_old,new=runs/eval_new" --out runs/compare``.
    """
    from scripts.errors import BundleInputError

    if name == "table":
        evals = overrides.pop("evals", "")
        pairs = dict(p.split("=", 1) for p in (evals.split(",") if isinstance(evals, str) else evals) if p)
        if not pairs or overrides:
            raise BundleInputError("table needs --evals name=folder,name=folder and --out FOLDER, nothing else.")
        summarise(out or "runs/compare", pairs)
        return
    if isinstance(variants, str):
        variants = [v for v in variants.split(",") if v]
    run_experiment(
        name,
        dataset_dir,
        out or f"runs/experiments/{name}",
        epochs=epochs,
        size=size,
        split=split,
        variants=variants,
        extra={k: str(v) for k, v in overrides.items()},
    )


if __name__ == "__main__":
    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)
    # a misspelt option stops before the work
    check_cli_flags(main, sys.argv[1:], "python -m scripts.tools.experiments")

    fire.Fire(main)
