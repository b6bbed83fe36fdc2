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

from scripts.metrics import METRIC_NAMES
from scripts.utils import atomic_path

__all__ = ["EXPERIMENTS", "run_experiment", "summarise"]

ROOT = Path(__file__).resolve().parents[2]

#: experiment name -> {variant name: overlay config files (relative to the bundle root)}
EXPERIMENTS: dict[str, dict[str, list[str]]] = {
    "recipes": {
        "pose": ["configs/recipes/pose.json"],
        "geometric": ["configs/recipes/geometric.json"],
        "full": ["configs/recipes/full.json"],
    },
    "methods": {
        "ear": [],
        "psr": ["configs/baselines/psr.json"],
        "sit": ["configs/baselines/sit.json"],
        "e2e": ["configs/baselines/e2e.json"],
        "bx2s": ["configs/baselines/bx2s.json"],
    },
    "modules": {
        "baseline": ["configs/ablations/baseline.json"],
        "abs": ["configs/ablations/abs.json"],
        "abs_fem": ["configs/ablations/abs_fem.json"],
        "ear": [],
        "no_fem": ["configs/ablations/no_fem.json"],
    },
    "losses": {
        "rec": ["configs/ablations/loss_rec.json"],
        "rec_edge": ["configs/ablations/loss_rec_edge.json"],
        "rec_edge_freq": ["configs/ablations/loss_rec_edge_freq.json"],
        "ear": [],
    },
}

SIZES = {"cpu": ["configs/cpu.json"], "paper": []}

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
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {sorted(EXPERIMENTS)}.")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}.")
    chosen = list(variants) if variants else list(EXPERIMENTS[name])
    unknown = [v for v in chosen if v not in EXPERIMENTS[name]]
    if unknown:
        raise ValueError(f"unknown variants {unknown} of {name!r}; choose from {list(EXPERIMENTS[name])}.")
    if not (Path(dataset_dir) / "datalist.json").is_file():
        raise FileNotFoundError(f"no prepared dataset at {dataset_dir}; run python -m scripts.prepare first.")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    for i, variant in enumerate(chosen, start=1):
        folder = root / variant
        folder.mkdir(exist_ok=True)
        done = folder / "done.json"
        if done.is_file():
            record = json.loads(done.read_text())
            if (record.get("epochs"), record.get("split")) != (epochs, split):
                raise ValueError(
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
            "validate#dataset#data": f"$scripts.workflow.load_split(@dataset_dir, '{split}')",
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
    summarise(root, chosen, split)
    return root


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else math.nan
    return mean, std


def summarise(
    root: str | os.PathLike, variants: Sequence[str] | Mapping[str, str | os.PathLike], split: str = "validation"
) -> Path:
    """Write ``per_vertebra.csv``, ``summary.csv``, ``summary.md`` and ``runs.csv`` from the variants' results.

    Args:
        root: output folder (and, for a sequence of variants, the folder holding ``<variant>/eval_<split>``).
        variants: variant names under ``root``, or ``{name: evaluation folder}`` of any evaluations (folders
            holding ``metrics_per_vertebra.csv``), e.g. two models evaluated on the same test vertebrae.
        split: the split the variants were evaluated on (for variant names).
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
    if name == "table":
        evals = overrides.pop("evals", "")
        pairs = dict(p.split("=", 1) for p in (evals.split(",") if isinstance(evals, str) else evals) if p)
        if not pairs or overrides:
            raise ValueError("table needs --evals name=folder,name=folder and --out FOLDER, nothing else.")
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

    fire.Fire(main)
