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
from monai.handlers import IgniteMetricHandler, from_engine

from scripts.errors import BundleInputError, reports_input_errors
from scripts.metrics import METRIC_NAMES, VertebraMetric
from scripts.transforms.intensity import load_intensity_stats
from scripts.transforms.xray_io import check_xray_cases
from scripts.utils import atomic_path

__all__ = [
    "check_dataset",
    "load_split",
    "dataset_statistics",
    "distributed_backend",
    "zscore_of_hu",
    "metric_handlers",
    "save_model_statistics",
    "model_statistics",
    "inference_cases",
    "check_model",
]

STATS_FILENAME = "intensity_stats.json"
# datalist entries that hold file paths relative to the datalist (scripts.prepare, scripts.simulate, inference)
FILE_KEYS = ("ct", "gt", "mask", "drr", "drr_png", "drr_geometry", "xray")

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

    The file entries (:data:`FILE_KEYS`) are made absolute against the dataset folder; other entries
    (``id``, ``patient``, ``level``) stay as they are. MONAI's ``load_decathlon_datalist`` is not used
    because it turns any value that names an existing path, such as a patient whose folder exists, into a
    path.

    Args:
        dataset_dir: folder written by ``python -m scripts.prepare``.
        split: key of the datalist to load.
        fallback: split to use when ``split`` is empty (a tiny dataset may have an empty validation list).
    """
    datalist = check_dataset(dataset_dir)
    base = datalist.parent
    content = json.loads(datalist.read_text())
    keys = [split] + ([fallback] if fallback else [])
    for key in keys:
        if content.get(key):
            return [_absolute(item, base) for item in content[key]]
    raise ValueError(f"{datalist} has no items in {' or '.join(repr(k) for k in keys)}; re-run the preparation.")


def _absolute(item: dict, base: Path) -> dict:
    def join(v):
        if isinstance(v, str):
            return v if os.path.isabs(v) else str(base / v)
        if isinstance(v, (list, tuple)):
            return [join(x) for x in v]
        return v

    return {k: (join(v) if k in FILE_KEYS else v) for k, v in item.items()}


def dataset_statistics(dataset_dir: str | os.PathLike) -> dict[str, float]:
    """HU mean and standard deviation of the training ground truth, stored by the preparation."""
    datalist = check_dataset(dataset_dir)
    try:
        mean, std = load_intensity_stats(datalist, "statistics.gt_mean", "statistics.gt_std")
    except KeyError as e:
        raise ValueError(f"{datalist} has no 'statistics' with gt_mean and gt_std; re-run the preparation.") from e
    if not std > 0:
        raise ValueError(f"{datalist}: gt_std must be positive, got {std}.")
    return {"gt_mean": mean, "gt_std": std}


def save_model_statistics(stats: dict[str, float], ckpt_dir: str | os.PathLike) -> Path:
    """Store the z-score statistics beside the model (``intensity_stats.json``): inference needs them to
    turn the network's output into HU without the training data."""
    path = Path(ckpt_dir) / STATS_FILENAME
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"gt_mean": float(stats["gt_mean"]), "gt_std": float(stats["gt_std"])}, indent=2))
    return path


def model_statistics(ckpt_dir: str | os.PathLike) -> dict[str, float]:
    """The z-score statistics stored beside a trained model by :func:`save_model_statistics`."""
    path = Path(ckpt_dir) / STATS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"missing {path}: it is written by training (configs/train.json) beside model.pt; copy it with the "
            'model, or write {"gt_mean": ..., "gt_std": ...} from the training dataset\'s datalist.json statistics.'
        )
    mean, std = load_intensity_stats(path, "gt_mean", "gt_std")
    return {"gt_mean": mean, "gt_std": std}


def check_model(path: str | os.PathLike) -> Path:
    """Return ``path`` if the trained weights exist, else raise an error saying how to get them."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"no trained model at {p}: train one with `python -m monai.bundle run --config_file "
            "\"['configs/train.json','configs/cpu.json']\"` (CPU) or configs/train.json alone (GPU), "
            "or set --ckpt_dir to a folder holding model.pt and intensity_stats.json."
        )
    return p


@reports_input_errors
def inference_cases(
    datalist: str | os.PathLike | None = None,
    xrays: Sequence[str] | None = None,
    angles: Sequence | None = None,
    case_id: str | None = None,
    check: bool = True,
    expansion_mode: str | None = None,
    **loader_kwargs,
) -> list[dict]:
    """The cases of an inference run: from a JSON datalist or from two image paths given on the command line.

    A datalist is a JSON list (or ``{"testing": [...]}``) of ``{"xray": [view1, view2], "angles": [[a1, b1],
    [a2, b2]], "id": name}``; relative paths are resolved against the datalist's folder and ``angles``
    defaults to AP and lateral. A case's outputs go to a folder named after its ``id`` (``case_id`` for
    ``xrays``); without one, after its two files (:func:`scripts.transforms.xray_io.xray_case_name`:
    ``P1_ap.png`` and ``P1_lat.png`` give ``P1``). Names are checked first: a name that cannot be a folder
    name, or two cases with the same name, stop the run before anything is written. With ``check`` every
    case is also read and validated (files, blank images, angles, and the expansion ``expansion_mode``), so
    a bad case stops the run before anything is written.

    Args:
        datalist: path of the JSON datalist.
        xrays: two image paths (used when ``datalist`` is not given).
        angles: the angles of ``xrays``.
        case_id: the name of the ``xrays`` case (names its outputs); ``None``: named after the files.
        check: validate every case before returning.
        expansion_mode: the run's dimension expansion mode, checked against every case's angles.
        loader_kwargs: arguments of :class:`scripts.transforms.LoadXRayPair` used by the check.

    Raises:
        BundleInputError: with one line naming the cause and the fix.
    """
    from scripts.transforms.outputs import check_case_names

    if datalist:
        path = Path(datalist)
        if not path.is_file():
            raise FileNotFoundError(f"inference datalist {path} does not exist; give --datalist PATH.json.")
        try:
            content = json.loads(path.read_text())
        except ValueError as e:
            raise BundleInputError(f"{path} is not valid JSON ({e}); fix: write a JSON list of cases.") from e
        items = content.get("testing", content.get("test")) if isinstance(content, dict) else content
        if not isinstance(items, list) or not items or not all(isinstance(it, dict) for it in items):
            raise BundleInputError(
                f"{path} must be a non-empty JSON list of cases (or {{'testing': [...]}}), each an object "
                'like {"xray": ["ap.png", "lat.png"], "id": "P1"}.'
            )
        cases = [_inference_case(_absolute(item, path.parent)) for item in items]
    elif xrays:
        if isinstance(xrays, str):
            xrays = [xrays]
        case = {"xray": [str(x) for x in xrays], "angles": angles}
        cases = [_inference_case({**case, "id": case_id} if case_id is not None else case)]
    else:
        raise BundleInputError(
            "no input: give --datalist cases.json, or --xrays \"['ap.png','lateral.png']\" "
            '(optionally --angles "[[0,0],[90,0]]").'
        )
    check_case_names([c["id"] for c in cases])
    if check:
        check_xray_cases(cases, expansion_mode=expansion_mode, **loader_kwargs)
    return cases


def _inference_case(item: dict) -> dict:
    """One inference case: its ``id`` as a string (named after its files when it has none), no ``angles: None``."""
    from scripts.transforms.xray_io import xray_case_name

    case = {k: v for k, v in item.items() if not (k == "angles" and v is None)}
    files = case.get("xray")
    if case.get("id") is not None:
        case["id"] = str(case["id"])
    elif isinstance(files, (list, tuple)) and files:
        case["id"] = xray_case_name(files)
    else:
        case["id"] = "case"
    return case


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
    """Ignite handlers of the metrics of ``scripts.metrics`` (docs/README.md, Metrics), keyed ``<prefix><name>``.

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
