# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Helpers called from the bundle configs: datasets with clear errors, statistics, devices.

They keep expressions in ``configs/*.json`` short, and give a user who runs a workflow before preparing
the data a message with the command that fixes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.data import load_decathlon_datalist
from monai.handlers import IgniteMetricHandler, from_engine

from scripts.metrics import METRIC_NAMES, VertebraMetric

__all__ = [
    "check_dataset",
    "load_split",
    "dataset_statistics",
    "distributed_backend",
    "zscore_of_hu",
    "metric_handlers",
]

_PREPARE_HINT = (
    "prepare it first, e.g. `python -m scripts.prepare --source example --out {d}` "
    "(for the CPU configs add `--spacing 2 --roi 64`), or set --dataset_dir to a prepared dataset"
)


def check_dataset(dataset_dir: str | os.PathLike) -> Path:
    """Return the path of ``datalist.json`` in a prepared dataset, or raise an error saying how to make it."""
    d = Path(dataset_dir)
    datalist = d / "datalist.json"
    if not datalist.is_file():
        raise FileNotFoundError(f"no prepared dataset at {d} (missing {datalist}): " + _PREPARE_HINT.format(d=d))
    return datalist


def load_split(dataset_dir: str | os.PathLike, split: str, fallback: str | None = None) -> list[dict]:
    """Load one split (``training``, ``validation`` or ``test``) of a prepared dataset's datalist.

    Paths in the datalist are relative to the dataset folder and are made absolute.

    Args:
        dataset_dir: folder written by ``python -m scripts.prepare``.
        split: key of the datalist to load.
        fallback: split to use when ``split`` is empty (a tiny dataset may have an empty validation list).
    """
    datalist = check_dataset(dataset_dir)
    content = json.loads(datalist.read_text())
    keys = [split] + ([fallback] if fallback else [])
    for key in keys:
        if content.get(key):
            return load_decathlon_datalist(str(datalist), is_segmentation=False, data_list_key=key)
    raise ValueError(f"{datalist} has no items in {' or '.join(repr(k) for k in keys)}; re-run the preparation.")


def dataset_statistics(dataset_dir: str | os.PathLike) -> dict[str, float]:
    """HU mean and standard deviation of the training ground truth, stored by the preparation."""
    datalist = check_dataset(dataset_dir)
    stats = json.loads(datalist.read_text()).get("statistics")
    if not stats or "gt_mean" not in stats or "gt_std" not in stats:
        raise ValueError(f"{datalist} has no 'statistics' with gt_mean and gt_std; re-run the preparation.")
    if not stats["gt_std"] > 0:
        raise ValueError(f"{datalist}: gt_std must be positive, got {stats['gt_std']}.")
    return {"gt_mean": float(stats["gt_mean"]), "gt_std": float(stats["gt_std"])}


def zscore_of_hu(hu: float, stats: dict[str, float]) -> float:
    """The z-score of an HU value under the dataset statistics (e.g. the -500 HU bone threshold)."""
    return (hu - stats["gt_mean"]) / stats["gt_std"]


def distributed_backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo`` (so the multi-GPU overlay also runs on CPU)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def metric_handlers(
    stats: dict[str, float],
    names: Sequence[str] = METRIC_NAMES,
    exclude: Sequence[str] = (),
    prefix: str = "val_",
    inputs: str = "zscore",
) -> dict[str, IgniteMetricHandler]:
    """Ignite handlers of the metrics of ``scripts.metrics`` (method.md section 7), keyed ``<prefix><name>``.

    Every handler keeps its per-item values (``save_details=True``) for ``MetricsSaver`` and
    :class:`scripts.handlers.VertebraMetricsTable`.

    Args:
        stats: ``{"gt_mean", "gt_std"}`` of the dataset (z-score statistics).
        names: metrics to build, from :data:`scripts.metrics.METRIC_NAMES`.
        exclude: names to leave out (e.g. the one already used as the key metric).
        prefix: prefix of the handler names.
        inputs: ``"zscore"`` (network output and label as z-scores) or ``"hu"``.
    """
    return {
        f"{prefix}{n}": IgniteMetricHandler(
            metric_fn=VertebraMetric(n, mean=stats["gt_mean"], std=stats["gt_std"], inputs=inputs),
            output_transform=from_engine(["pred", "label"]),
            save_details=True,
        )
        for n in names
        if n not in exclude
    }
