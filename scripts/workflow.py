# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Helpers called from the bundle configs: datasets with clear errors, statistics, devices.

They keep expressions in ``configs/*.json`` short, and give a user who runs a workflow before preparing
the data a message with the command that fixes it.
"""

from __future__ import annotations

import ast
import difflib
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import DistributedSampler
from monai.handlers import IgniteMetricHandler, from_engine
from scripts.errors import BundleInputError, reports_input_errors
from scripts.io.xray import DEFAULT_ANGLES, LoadXRayPair, XRayInputError, xray_case_name
from scripts.metrics import METRIC_NAMES, VertebraMetric
from scripts.networks.model_info import load_state_dict_file, read_model_info
from scripts.transforms.expansion import DimensionExpansion, check_expansion_angles
from scripts.transforms.intensity import load_intensity_stats

__all__ = [
    "distributed_lr_scale",
    "sync_batchnorm",
    "no_input_message",
    "require_cases",
    "bundle_package",
    "check_xray_cases",
    "check_dataset",
    "load_split",
    "dataset_statistics",
    "distributed_backend",
    "zscore_of_hu",
    "metric_handlers",
    "model_statistics",
    "inference_cases",
    "check_model",
    "check_cli_overrides",
    "validation_sampler",
]

# datalist entries that hold file paths relative to the datalist (scripts.prepare, scripts.simulate, inference)
FILE_KEYS = ("ct", "gt", "mask", "drr", "drr_png", "drr_geometry", "xray")

_PREPARE_HINT = (
    "prepare it first, e.g. `python -m scripts.prepare --source example --out {d}` "
    "(for the CPU configs add `--spacing 2 --roi 64`), or set --dataset_dir to a prepared dataset"
)


def bundle_package(bundle_root: str | os.PathLike) -> ModuleType:
    """This bundle's ``scripts`` package with every module the configs use: the value of the ``scripts`` config item.

    The configs reach the package as ``@scripts`` rather than through ``$import scripts`` in their ``imports``:
    MONAI evaluates ``imports`` before any other item, when the bundle folder may not be on ``sys.path`` yet
    (``monai.bundle.load`` or ``ConfigWorkflow`` called from another folder). The ``bundle_on_path`` item first
    puts ``bundle_root`` on ``sys.path`` (``bundle_root`` is the folder above the config files, found from the
    ``ConfigWorkflow`` that reads them), then the ``scripts`` item calls this.

    Args:
        bundle_root: the bundle folder.

    Raises:
        BundleInputError: when the ``scripts`` package already imported in this process is another one (another
            bundle's, or a ``scripts`` folder of the working directory).
    """
    import scripts
    import scripts.handlers
    import scripts.io
    import scripts.io.plot_training
    import scripts.losses
    import scripts.metrics
    import scripts.networks
    import scripts.transforms

    root = Path(bundle_root).resolve()
    found = Path(scripts.__file__).resolve().parent
    if found != root / "scripts":
        raise BundleInputError(
            f"the Python package 'scripts' in this process comes from {found}, not from this bundle ({root}): "
            "another bundle or a 'scripts' folder of the working directory was imported first; fix: run the "
            "bundle in a fresh process, or from a folder without a 'scripts' package."
        )
    return scripts


@reports_input_errors
def check_dataset(dataset_dir: str | os.PathLike) -> Path:
    """Return the path of ``datalist.json`` in a prepared dataset, or raise an error saying how to make it."""
    d = Path(dataset_dir)
    datalist = d / "datalist.json"
    if not datalist.is_file():
        raise BundleInputError(f"no prepared dataset at {d} (missing {datalist}): " + _PREPARE_HINT.format(d=d))
    return datalist


@reports_input_errors
def load_split(dataset_dir: str | os.PathLike, split: str) -> list[dict]:
    """Load one split (``training``, ``validation`` or ``test``) of a prepared dataset's datalist.

    The file entries (:data:`FILE_KEYS`) are made absolute against the dataset folder; other entries
    (``id``, ``patient``, ``level``) stay as they are. MONAI's ``load_decathlon_datalist`` is not used
    because it turns any value that names an existing path, such as a patient whose folder exists, into a
    path. An empty split is an error (no silent fall-back to another split: validating on training data
    would select models on what they were fitted to).

    Args:
        dataset_dir: folder written by ``python -m scripts.prepare``.
        split: key of the datalist to load.
    """
    datalist = check_dataset(dataset_dir)
    base = datalist.parent
    content = json.loads(datalist.read_text())
    if not content.get(split):
        raise BundleInputError(
            f"{datalist} has no items in {split!r}: prepare the dataset with at least one patient in that split "
            "(python -m scripts.prepare --split ...), or give the items in the config "
            f"(e.g. --validate#dataset#data for validation)."
        )
    return [_absolute(item, base) for item in content[split]]


def _absolute(item: dict, base: Path) -> dict:
    def join(v):
        if isinstance(v, str):
            return v if os.path.isabs(v) else str(base / v)
        if isinstance(v, (list, tuple)):
            return [join(x) for x in v]
        return v

    return {k: (join(v) if k in FILE_KEYS else v) for k, v in item.items()}


@reports_input_errors
def dataset_statistics(dataset_dir: str | os.PathLike) -> dict[str, float]:
    """HU mean and standard deviation of the training ground truth, stored by the preparation."""
    datalist = check_dataset(dataset_dir)
    try:
        mean, std = load_intensity_stats(datalist, "statistics.gt_mean", "statistics.gt_std")
    except (KeyError, TypeError, ValueError) as e:
        raise BundleInputError(f"{datalist} has no 'statistics' (gt_mean, gt_std); re-run the preparation.") from e
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise BundleInputError(
            f"{datalist}: the HU statistics must be finite with a positive std, got mean {mean}, std {std}; "
            "a CT with NaN or infinite values was prepared: re-run the preparation."
        )
    return {"gt_mean": mean, "gt_std": std}


@reports_input_errors
def model_statistics(path: str | os.PathLike) -> dict[str, float]:
    """The z-score statistics stored inside a trained model (``model.pt`` or ``model.ts``).

    Evaluation and inference read them here, never from the dataset they run on: the model was trained
    with these numbers (:func:`scripts.networks.attach_model_info`).
    """
    info = read_model_info(path)
    return {"gt_mean": info["gt_mean"], "gt_std": info["gt_std"]}


@reports_input_errors
def check_model(
    path: str | os.PathLike,
    network: torch.nn.Module | None = None,
    spacing: float | None = None,
    roi_size: int | None = None,
) -> Path:
    """Check that a trained model exists and fits the config before any work; return its path.

    Args:
        path: the checkpoint (``model.pt``).
        network: the config's network: every tensor of the checkpoint must exist in it with the same shape
            (catches other widths, input channels or network classes).
        spacing: the config's voxel spacing in mm: must be the training spacing stored in the model.
        roi_size: the config's crop size: must be the training crop size stored in the model.

    Raises:
        BundleInputError: with one line naming what differs and the fix.
    """
    p = Path(path)
    if not p.is_file():
        raise BundleInputError(
            f"no trained model at {p}: train one with `python -m monai.bundle run --config_file "
            "\"['configs/train.json','configs/cpu.json']\"` (CPU) or configs/train.json alone (GPU), "
            "or set --ckpt_dir to a folder holding model.pt."
        )
    state = load_state_dict_file(p)
    fix = "use the config the model was trained with (e.g. add configs/cpu.json for models/cpu)"
    if network is not None:
        own = network.module.state_dict() if hasattr(network, "module") else network.state_dict()
        unknown = [k for k in state if k not in own]
        missing = [k for k in own if k not in state]
        if unknown or missing:
            raise BundleInputError(
                f"{p} does not fit the config's network_def: {len(unknown)} checkpoint tensors unknown to it "
                f"(e.g. {unknown[:2]}), {len(missing)} of its tensors missing (e.g. {missing[:2]}); {fix}."
            )
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise BundleInputError(
                    f"{p} does not fit the config's network_def: {k} has shape {tuple(v.shape)} in the checkpoint "
                    f"but {tuple(own[k].shape)} in the config (other input channels or widths); {fix}."
                )
    info = read_model_info(state)
    trained_spacing = info["spacing"]
    if spacing is not None and trained_spacing is not None and not math.isclose(float(spacing), trained_spacing):
        raise BundleInputError(
            f"{p} was trained at {info['spacing']:g} mm voxels but the config sets spacing {float(spacing):g}; "
            f"set --spacing {info['spacing']:g}, or {fix}."
        )
    if roi_size is not None and info["roi_size"] is not None and int(roi_size) != info["roi_size"]:
        raise BundleInputError(
            f"{p} was trained on {info['roi_size']}^3 crops but the config sets roi_size {int(roi_size)}; "
            f"set --roi_size {info['roi_size']}, or {fix}."
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
    dataset_dir: str | os.PathLike | None = None,
    split: str = "test",
    **loader_kwargs,
) -> list[dict]:
    """The cases of an inference run: a JSON datalist, two image paths, or by default a prepared dataset's split.

    A datalist is a JSON list (or ``{"testing": [...]}``) of ``{"xray": [view1, view2], "angles": [[a1, b1],
    [a2, b2]], "id": name}``; relative paths are resolved against the datalist's folder and ``angles``
    defaults to AP and lateral. A case's outputs go to a folder named after its ``id`` (``case_id`` for
    ``xrays``); without one, after its two files (:func:`scripts.io.xray.xray_case_name`:
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
        dataset_dir: without ``datalist`` and ``xrays``, the ``split`` of this prepared dataset is the input: its
            simulated X-ray pairs (``drr_png`` and ``drr_angles`` of ``python -m scripts.simulate``). Without
            them, or without the dataset, there are no cases (a warning now; :func:`require_cases` stops the run
            with the fix), so that a workflow initialises with no input.
        split: the split of ``dataset_dir``.
        loader_kwargs: arguments of :class:`scripts.io.xray.LoadXRayPair` used by the check.

    Raises:
        BundleInputError: with one line naming the cause and the fix.
    """
    from scripts.io.outputs import check_case_names

    if datalist:
        path = Path(datalist)
        if not path.is_file():
            raise BundleInputError(f"inference datalist {path} does not exist; give --datalist PATH.json.")
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
        cases = _dataset_cases(dataset_dir, split)
        if not cases:
            logging.getLogger(__name__).warning(no_input_message(dataset_dir, split))
            return []
    check_case_names([c["id"] for c in cases])
    if check:
        check_xray_cases(cases, expansion_mode=expansion_mode, **loader_kwargs)
    return cases


def _dataset_cases(dataset_dir: str | os.PathLike | None, split: str) -> list[dict]:
    """The simulated X-ray pairs of a prepared dataset's split as inference cases; ``[]`` when there are none."""
    if dataset_dir is None or not (Path(dataset_dir) / "datalist.json").is_file():
        return []
    items = load_split(dataset_dir, split)
    return [
        _inference_case({"xray": it["drr_png"], "angles": it.get("drr_angles"), "id": it["id"]})
        for it in items
        if it.get("drr_png")
    ]


def no_input_message(dataset_dir: str | os.PathLike | None, split: str = "test") -> str:
    """The one line that says what to give an inference run that has no input."""
    give = (
        "give --datalist cases.json, or --xrays \"['ap.png','lateral.png']\" (optionally --angles \"[[0,0],[90,0]]\")"
    )
    if dataset_dir is not None and (Path(dataset_dir) / "datalist.json").is_file():
        return (
            f"no input: the {split} split of {dataset_dir} has no simulated X-rays; run python -m scripts.simulate "
            f"--data {dataset_dir}, or {give}."
        )
    return f"no input: {give}, or set --dataset_dir to a prepared dataset with simulated X-rays."


@reports_input_errors
def require_cases(cases: Sequence[dict], dataset_dir: str | os.PathLike | None = None, split: str = "test") -> None:
    """Stop an inference run that has no cases, with :func:`no_input_message`."""
    if not cases:
        raise BundleInputError(no_input_message(dataset_dir, split))


def _inference_case(item: dict) -> dict:
    """One inference case: its ``id`` as a string (named after its files when it has none), no ``angles: None``."""

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


def distributed_lr_scale(rule: str = "linear") -> float:
    """Factor of the learning rate in a multi-process run: the global batch is ``world_size`` times the batch.

    ``"linear"`` (default) multiplies by the number of processes, so that an epoch (``1 / world_size`` as many
    steps, each averaging ``world_size`` times as many samples) moves the weights about as far as a
    single-process epoch (Goyal et al. 2017, with the warm-up the configs already have); ``"sqrt"`` by its
    square root, the rule often used with Adam at large batches; ``"none"`` keeps the single-process rate.
    """
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rules = {"linear": float(world), "sqrt": math.sqrt(world), "none": 1.0}
    if rule not in rules:
        raise BundleInputError(f"--lr_scaling {rule!r} is unknown; use one of {', '.join(rules)}.")
    return rules[rule]


def sync_batchnorm(network: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """``network`` with its batch norms synchronised across processes (``torch.nn.SyncBatchNorm``) when enabled.

    PyTorch's ``SyncBatchNorm`` runs on CUDA only, so the multi-process overlay enables it when CUDA is present
    (``--sync_batchnorm``); on CPU (gloo) each process normalises its own batch.
    """
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(network) if enabled else network


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


# the arguments of `python -m monai.bundle run` that are not config overrides
_RUN_ARGS = {
    "run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
    "workflow_type", "workflow_name",
}  # fmt: skip


def _cli_overrides(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """``(config files, override keys, their values)`` of a ``python -m monai.bundle run ...`` command line."""
    files: list[str] = []
    keys: list[str] = []
    values: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--"):
            name, has_value, value = token[2:].partition("=")
            if not has_value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            name = name.replace("-", "_") if name.replace("-", "_") in _RUN_ARGS else name
            if name == "config_file":
                try:
                    parsed = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    parsed = value
                files += [parsed] if isinstance(parsed, str) else [str(f) for f in parsed]
            elif name not in _RUN_ARGS:
                keys.append(name)
                values.append(value)
        i += 1
    return files, keys, values


@reports_input_errors
def check_cli_overrides(argv: Sequence[str] | None = None) -> None:
    """Refuse command-line overrides that no loaded config defines (e.g. ``--epoch`` for ``--epochs``).

    MONAI's runner accepts any ``--key value`` and adds it to the config, so a misspelt override is
    silently ignored and the run goes on with the default. This check reads the command line of
    ``python -m monai.bundle run`` (it does nothing in other programs, e.g. ``ConfigWorkflow`` in Python or
    MONAI Label) and requires the first part of every override id to be defined by one of the config files,
    and, for a nested id (``a#b#c``), its parent to exist. Keys that a config file adds stay legal.

    Args:
        argv: the command line (default ``sys.argv``).

    Raises:
        BundleInputError: naming the unknown keys and their close matches.
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or not argv[0].replace("\\", "/").endswith("monai/bundle/__main__.py"):
        return
    files, keys, values = _cli_overrides(argv[1:])
    lowercase = [f"--{k} {v}" for k, v in zip(keys, values) if v in ("true", "false")]
    if lowercase:  # fire keeps them as the strings 'true' / 'false', and any non-empty string counts as true
        raise BundleInputError(
            f"{', '.join(lowercase)}: the command line reads lowercase true/false as text, which counts as true; "
            "write True or False."
        )
    if not keys or not files:
        return
    parser = ConfigParser()
    parser.read_config(files)
    top = [k.lstrip("+") for k in parser.get().keys()]
    unknown = []
    for key in keys:
        parts = [p for p in key.replace("::", "#").split("#") if p]
        if not parts or parts[0] not in top or (len(parts) > 2 and "#".join(parts[:-1]) not in parser):
            unknown.append(key)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key.split("#")[0], top, n=3)
            hints.append(f"--{key}" + (f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""))
        raise BundleInputError(
            f"unknown command-line override {'; '.join(hints)}: no loaded config defines it, so it would be "
            "ignored; fix the spelling or add the key to a config file."
        )


def validation_sampler(dataset: Sequence) -> DistributedSampler | None:
    """The sampler of distributed validation: each vertebra on one process, none padded or repeated.

    MONAI's ``DistributedSampler(even_divisible=False)`` needs at least one item per process; with fewer
    validation items than processes every process validates all of them (``None``: no sampler), which
    leaves the metric means unchanged, as every item then counts once per process.
    """
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if len(dataset) < world:
        return None
    return DistributedSampler(dataset, even_divisible=False, shuffle=False)


def check_xray_cases(
    cases: Sequence[Mapping[str, Any]],
    key: str = "xray",
    angles_key: str = "angles",
    base_dir: str | os.PathLike | None = None,
    expansion_mode: str | None = None,
    spacing_key: str | None = "pixel_spacing",
    **kwargs: Any,
) -> None:
    """Validate every case of a datalist before anything is written, so a bad case stops the run early.

    Each case is read completely with :class:`LoadXRayPair` (reading is cheap next to reconstruction): files,
    sizes, blank images, view angles (:func:`parse_angles`), and, with ``expansion_mode``, whether the
    dimension expansion takes the case (:func:`check_expansion_angles`, then the expansion itself on a
    2-voxel grid, which also checks the pixel spacings of the two views).

    Args:
        cases: datalist items, each with ``key`` (two paths) and optional ``angles_key``.
        key: the key of the two image paths.
        angles_key: the key of the angles.
        base_dir: folder that relative paths are resolved against (the datalist's folder).
        expansion_mode: the run's ``DimensionExpansion`` mode (``"replicate"`` or ``"backproject"``); ``None``
            skips the expansion check.
        spacing_key: the key of a case's pixel spacing override (mm), as for :class:`LoadXRayPaird`.
        kwargs: the arguments of :class:`LoadXRayPair` (orientation, inversion, size).

    Raises:
        XRayInputError: one line listing every bad case.
    """
    if expansion_mode is not None:
        check_expansion_angles(DEFAULT_ANGLES, expansion_mode)  # an unknown mode stops here, once
    loader = LoadXRayPair(**kwargs)
    errors = []
    for i, case in enumerate(cases):
        label = case.get("id", f"case {i}")
        files = case.get(key)
        if files is None:
            errors.append(f"{label}: no '{key}' entry; fix: add the two X-ray image paths.")
            continue
        if base_dir is not None and isinstance(files, Sequence) and not isinstance(files, (str, bytes)):
            files = [f if os.path.isabs(f) else os.path.join(base_dir, f) for f in files]
        try:
            img = loader(
                files, angles=case.get(angles_key), pixel_spacing=case.get(spacing_key) if spacing_key else None
            )
            if expansion_mode is not None:
                check_expansion_angles(img.meta["angles"], expansion_mode)
                try:
                    DimensionExpansion(expansion_mode, spatial_size=2)(img)
                except ValueError as e:
                    raise XRayInputError(f"the dimension expansion refuses it: {e}") from e
        except XRayInputError as e:
            errors.append(f"{label}: {e}")
    if errors:
        raise XRayInputError(f"{len(errors)} bad case(s): " + " | ".join(errors))
