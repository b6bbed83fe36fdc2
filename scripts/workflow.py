# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Helpers called from the bundle configs: datasets with clear errors, statistics, devices.

They keep expressions in ``configs/*.json`` short, and give a user who runs a workflow before preparing
the data a message with the command that fixes it.
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import gc
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import DistributedSampler
from monai.handlers import IgniteMetricHandler, from_engine
from scripts.drr.geometry import DEFAULT_SDD, DEFAULT_SOD
from scripts.errors import (
    BundleInputError,
    XRayInputError,
    install_cli_excepthook,
    reports_input_errors,
    running_bundle_cli,
)
from scripts.functional import DEFAULT_ANGLES, SIMULATION_SOURCES, parse_angles
from scripts.io.xray import MIN_XRAY_SIZE, LoadXRayPair, xray_case_name
from scripts.metrics import METRIC_NAMES, ItemValueMetric, VertebraMetric
from scripts.networks.model_info import MODEL_INFO_KEYS, convert_command, load_state_dict_file, read_model_info
from scripts.transforms.expansion import DimensionExpansion, check_expansion_angles
from scripts.transforms.intensity import load_intensity_stats

if TYPE_CHECKING:
    from scripts.localise import WindowCentring

__all__ = [
    "window_centring",
    "confidence_columns",
    "expected_input",
    "distributed_lr_scale",
    "sync_batchnorm",
    "no_input_message",
    "require_cases",
    "bundle_package",
    "check_xray_cases",
    "check_xray_field",
    "calibration_configs",
    "FULL_RADIOGRAPH_RATIO",
    "check_dataset",
    "epoch_count",
    "confidence_calibration",
    "load_split",
    "dataset_statistics",
    "distributed_backend",
    "zscore_of_hu",
    "metric_handlers",
    "model_statistics",
    "inference_cases",
    "check_model",
    "model_setting",
    "with_model_views",
    "warn_input_source",
    "training_record",
    "check_cli_overrides",
    "validation_sampler",
    "end_of_command_line_run",
]

# datalist entries that hold file paths relative to the datalist (scripts.prepare, scripts.simulate, inference)
FILE_KEYS = ("ct", "gt", "mask", "body", "drr", "drr_png", "drr_geometry", "xray", "radiographs")

_PREPARE_HINT = (
    "prepare it first, e.g. `python -m scripts.prepare --source example --out {d}` "
    "(for the CPU configs add `--spacing 2 --roi 64`), or set --dataset_dir to a prepared dataset"
)


def bundle_package(bundle_root: str | os.PathLike) -> ModuleType:
    """This bundle's ``scripts`` package with every module the configs use: the value of the ``scripts`` config item.

    The configs reach the package as ``@scripts`` rather than through ``$import scripts`` in their ``imports``:
    MONAI evaluates ``imports`` before any other item, when the bundle folder may not be on ``sys.path`` yet
    (``monai.bundle.load`` or ``ConfigWorkflow`` called from another folder). The ``bundle_on_path`` item first
    puts ``bundle_root`` on ``sys.path`` (``bundle_root`` is the folder above the config files, found on the call
    stack from the ``ConfigWorkflow`` that reads them or the ``config_file`` argument of MONAI's bundle commands,
    because MONAI gives a config no way to know its own file), then the ``scripts`` item calls this.
    Under ``python -m monai.bundle`` it also installs the handler that ends an input error with its one line
    instead of a traceback (:func:`scripts.errors.install_cli_excepthook`).

    Args:
        bundle_root: the bundle folder.

    Raises:
        BundleInputError: when the ``scripts`` package already imported in this process is another one (another
            bundle's, or a ``scripts`` folder of the working directory).
    """
    install_cli_excepthook()
    import scripts
    import scripts.handlers
    import scripts.io
    import scripts.io.outputs
    import scripts.io.plot_training
    import scripts.losses
    import scripts.metrics
    import scripts.networks
    import scripts.transforms
    import scripts.transforms.model

    root = Path(bundle_root).resolve()
    found = Path(scripts.__file__).resolve().parent
    if found != root / "scripts":
        raise BundleInputError(
            f"the Python package 'scripts' in this process comes from {found}, not from this bundle ({root}): "
            "another bundle or a 'scripts' folder of the working directory was imported first; fix: run the "
            "bundle in a fresh process, or from a folder without a 'scripts' package."
        )
    return scripts


def _two_stage(model_file: str | os.PathLike) -> bool:
    """Whether a model file holds a :class:`~scripts.networks.TwoStageEAR` (a body model: its calibration also uses
    the finder's window centring, ``--centring True``, docs/confidence.md)."""
    return (model_setting(model_file, "record", {}) or {}).get("network") == "TwoStageEAR"


def calibration_configs(model_file: str | os.PathLike) -> str:
    """The ``--configs`` of ``scripts.tools.confidence_study`` for a model, from its contract: the training config,
    ``configs/cpu.json`` for a 64^3 model at 2 mm, ``configs/body.json`` for a model of body X-rays and
    ``configs/body_model.json`` for a two-stage one, then ``configs/evaluate.json``."""
    configs = ["configs/train.json"]
    if model_setting(model_file, "roi_size") == 64 and model_setting(model_file, "spacing") == 2.0:
        configs.append("configs/cpu.json")
    record = model_setting(model_file, "record", {}) or {}
    if record.get("drr_source") == "body":
        configs.append("configs/body.json")
    if _two_stage(model_file):
        configs.append("configs/body_model.json")
    return "[" + ",".join(f"'{c}'" for c in configs + ["configs/evaluate.json"]) + "]"


@reports_input_errors
def confidence_calibration(model_file: str | os.PathLike, confidence: bool = True) -> dict | None:
    """The configs' ``confidence_calibration``: the model contract's calibration (``None`` without one), with a
    warning when the confidence is on and the model holds none, since its confidence is then the raw TTA agreement
    (docs/confidence.md says how to calibrate a model)."""
    calibration = model_setting(model_file, "confidence", None)
    if calibration is None and confidence and _model_file_key(model_file) is not None:
        logging.getLogger(__name__).warning(
            f"{model_file} holds no confidence calibration: its confidence is the raw TTA agreement, not an estimate "
            f"of the Dice; calibrate it on a prepared dataset's validation patients with python -m "
            f"scripts.tools.confidence_study --ckpt_dir {Path(model_file).parent} --dataset_dir DATA --configs "
            f'"{calibration_configs(model_file)}" --out runs/confidence/mine '
            f"{'--centring True ' if _two_stage(model_file) else ''}--write_calibration True "
            "(docs/confidence.md, Calibrating and testing a model)."
        )
    return calibration


def epoch_count(value: Any, name: str = "epochs") -> int:
    """A number of epochs from the configs (``--epochs``), checked: a whole number, 1 or more.

    Raises:
        BundleInputError: anything else, in one line.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number >= 1 and number == int(number)):
        raise BundleInputError(f"--{name} {value!r}: give a whole number of epochs, 1 or more.")
    return int(number)


def check_dataset(dataset_dir: str | os.PathLike) -> Path:
    """Return the path of ``datalist.json`` in a prepared dataset, or raise an error saying how to make it."""
    d = Path(dataset_dir)
    datalist = d / "datalist.json"
    if not datalist.is_file():
        raise BundleInputError(f"no prepared dataset at {d} (missing {datalist}): " + _PREPARE_HINT.format(d=d))
    return datalist


def start_output_dir(
    output_dir: str | os.PathLike, ckpt_dir: str | os.PathLike, resume: bool, checked: Any = None
) -> list[Path]:
    """Before a training run that starts afresh (``--resume False``) in the folder of an earlier one: move the earlier
    run's TensorBoard event files into ``<output_dir>/earlier_runs/<time>/`` (``curves.png`` would join both runs'
    epochs) and warn that its checkpoint and best model in ``ckpt_dir`` are replaced. A resumed run, or a new
    folder, is left as it is.

    Args:
        output_dir: the run's ``output_dir``.
        ckpt_dir: the run's ``ckpt_dir``.
        resume: the run's ``resume``.
        checked: not used: the config passes the run's data lists here, so that they are read (and a bad dataset
            refused) before anything is moved.

    Returns:
        the files moved.
    """
    import time

    out, ckpt = Path(output_dir), Path(ckpt_dir)
    if resume or not out.is_dir():
        return []
    events = sorted(out.glob("events.out.tfevents*"))
    old = [p for p in (ckpt / "checkpoint_last.pt", ckpt / "model.pt") if p.is_file()]
    moved = []
    if events:
        earlier = out / "earlier_runs" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        earlier.mkdir(parents=True, exist_ok=True)
        for p in events:
            moved.append(p.replace(earlier / p.name))
    if events or old:
        logging.getLogger(__name__).warning(
            f"--resume False in {out}, the folder of an earlier run: "
            + (f"its curves' logs moved to {moved[0].parent}" if moved else "")
            + ("; " if moved and old else "")
            + (
                f"its {' and '.join(p.name for p in old)} in {ckpt} {'are' if len(old) > 1 else 'is'} replaced by this "
                "run's"
                if old
                else ""
            )
        )
    return moved


def check_dataset_grid(
    datalist: str | os.PathLike, content: Mapping[str, Any], spacing: float | None, roi: int | None
) -> None:
    """Refuse a dataset prepared on another grid than the run's (its ``spacing_mm`` and ``roi``, as
    ``scripts.prepare`` records them): a model would be trained on one grid and record another in its contract, or
    evaluated on crops of a size it never saw. Datasets that record neither are not checked."""
    have_s, have_r = content.get("spacing_mm"), content.get("roi")
    wrong_s = spacing is not None and have_s is not None and not math.isclose(float(have_s), float(spacing))
    wrong_r = roi is not None and have_r is not None and int(have_r) != int(roi)
    if wrong_s or wrong_r:

        def num(v: Any) -> str:
            try:
                return f"{float(v):g}"
            except (TypeError, ValueError):
                return "?" if v is None else str(v)

        raise BundleInputError(
            f"{datalist} holds crops of {num(have_r)}^3 voxels at {num(have_s)} mm, the run reads {num(roi)}^3 at "
            f"{num(spacing)} mm; fix: give the configs of that grid (configs/cpu.json, last, for 64^3 at 2 mm; the "
            f"default configs are 128^3 at 1 mm) or prepare the data with --spacing {num(spacing)} --roi {num(roi)}."
        )


@reports_input_errors
def load_split(
    dataset_dir: str | os.PathLike,
    split: str,
    source: str | None = None,
    spacing: float | None = None,
    roi: int | None = None,
) -> list[dict]:
    """Load one split (``training``, ``validation`` or ``test``) of a prepared dataset's datalist.

    The file entries (:data:`FILE_KEYS`) are made absolute against the dataset folder; other entries
    (``id``, ``patient``, ``level``) stay as they are. MONAI's ``load_decathlon_datalist`` is not used
    because it turns any value that names an existing path, such as a patient whose folder exists, into a
    path. An empty split is an error (no silent fall-back to another split: validating on training data
    would select models on what they were fitted to).

    Args:
        dataset_dir: folder written by ``python -m scripts.prepare``.
        split: key of the datalist to load.
        source: the X-ray source the run projects (``drr_source``: ``gt``, ``ct`` or ``body``); every item must hold
            it, else the run stops before any work (a dataset prepared before whole scans were kept has no ``body``).
        spacing, roi: the run's voxel size (mm) and crop size; a dataset prepared on another grid is refused
            (:func:`check_dataset_grid`).
    """
    datalist = check_dataset(dataset_dir)
    base = datalist.parent
    content = json.loads(datalist.read_text())
    check_dataset_grid(datalist, content, spacing, roi)
    if split not in content:
        splits = [k for k, v in content.items() if isinstance(v, list)]
        raise BundleInputError(
            f"{datalist} has no split {split!r}; it has {', '.join(repr(k) for k in splits) or 'none'}: training needs "
            "'training' and 'validation' lists (python -m scripts.prepare writes them), evaluation the --split given."
        )
    if not content.get(split):
        raise BundleInputError(
            f"{datalist} has no items in {split!r}: prepare the dataset with at least one patient in that split "
            "(python -m scripts.prepare --split ...), or give the items in the config "
            f"(e.g. --validate#dataset#data for validation)."
        )
    if source is not None:
        lacking = [str(it.get("id", i)) for i, it in enumerate(content[split]) if source not in it]
        if lacking:
            fix = (
                f"prepare it again with python -m scripts.prepare --out {datalist.parent} (it keeps each patient's "
                "whole scan for body X-rays)"
                if source == "body"
                else "check --drr_source (gt, ct or body)"
            )
            raise BundleInputError(
                f"{len(lacking)} item(s) of {datalist} ({split}) have no {source!r} entry to project (e.g. "
                f"{lacking[0]}); {fix}."
            )
    items = [_absolute(item, base) for item in content[split]]
    missing = [
        f for it in items for k in FILE_KEYS if k in it for f in (it[k] if isinstance(it[k], list) else [it[k]])
        if isinstance(f, str) and not os.path.exists(f)
    ]  # fmt: skip
    if missing:
        raise BundleInputError(
            f"{len(missing)} file(s) that {datalist} lists for {split!r} are missing (e.g. {missing[0]}); prepare the "
            f"dataset again (python -m scripts.prepare --out {base}) or restore the files."
        )
    return items


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


def _model_file_key(path: str | os.PathLike) -> tuple[str, int, int] | None:
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return (str(p.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _cached_contract(key: tuple[str, int, int]) -> dict[str, Any]:
    return read_model_info(key[0])


@reports_input_errors
def model_setting(path: str | os.PathLike, name: str, default: Any = None) -> Any:
    """A value of a trained model's contract, for the config items a run does not set itself.

    Evaluation and inference configs take ``roi_size``, ``spacing``, ``views`` and ``expansion_mode`` from the
    model they load (:func:`scripts.networks.read_model_info`); a value set in an overlay or on the command line
    replaces this and is then checked against the model by :func:`check_model`. Where the model file does not
    exist yet, or does not hold the value, ``default`` is used (:func:`check_model` then says what is missing).

    Args:
        path: the model file (``model.pt``).
        name: a key of the contract (``roi_size``, ``spacing``, ``views``, ``expansion_mode``).
        default: the value without a model.
    """
    key = _model_file_key(path)
    if key is None:
        return default
    try:
        value = _cached_contract(key).get(name)
    except BundleInputError:
        return default
    return default if value is None else copy.deepcopy(value)  # the cached contract stays as read


def training_record(bundle_root: str | os.PathLike, **settings: Any) -> dict[str, Any]:
    """The recorded (not enforced) part of a model's contract: training settings and the bundle version."""
    meta = Path(bundle_root) / "configs" / "metadata.json"
    version = json.loads(meta.read_text()).get("version") if meta.is_file() else None
    return {**{k: v for k, v in settings.items() if v is not None}, "bundle_version": version}


def presimulated_settings(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """What the pre-simulated X-ray pairs of a dataset's training split are (``python -m scripts.simulate``), for a
    model trained on them (``simulate_online: false``): ``drr_source`` (``gt`` for ``isolated``, ``ct`` for
    ``in_context``), ``physics``, ``spectrum`` and ``photon_count``, read from the first pair's geometry file. Empty
    when the split names no pair with a geometry file."""
    items = load_split(dataset_dir, "training")
    geometry = next((it["drr_geometry"] for it in items if isinstance(it.get("drr_geometry"), str)), None)
    if geometry is None or not Path(geometry).is_file():
        return {}
    g = json.loads(Path(geometry).read_text())
    out = {k: g[k] for k in ("physics", "spectrum", "photon_count") if k in g}
    if not out.get("photon_count"):  # 0 in the file: noise-free pairs (an online noise-free model records none)
        out.pop("photon_count", None)
    if "source" in g:
        out["drr_source"] = SIMULATION_SOURCES.get(g["source"], g["source"])
    return out


def _same_views(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> bool:
    try:
        return len(a) == len(b) and all(
            math.isclose(float(x), float(y), abs_tol=1e-3) for pa, pb in zip(a, b) for x, y in zip(pa, pb)
        )
    except (TypeError, ValueError):
        return False


def _replicate_takes(views: Sequence[Sequence[float]]) -> bool:
    """Whether the ``replicate`` expansion takes these two views (:func:`check_expansion_angles`)."""
    try:
        check_expansion_angles(np.asarray(views, dtype=np.float64), "replicate")
    except ValueError:
        return False
    return True


@reports_input_errors
def check_model(
    path: str | os.PathLike,
    network: torch.nn.Module | None = None,
    spacing: float | None = None,
    roi_size: int | None = None,
    views: Sequence[Sequence[float]] | None = None,
    expansion_mode: str | None = None,
    override: bool = False,
    record: Mapping[str, Any] | None = None,
) -> Path:
    """Check that a trained model exists and that the run keeps its contract, before any work; return its path.

    The enforced part of the contract (:data:`scripts.networks.model_info.ENFORCED_KEYS`) must match what the
    run sets: a difference stops the run with one line naming the model's value and the option
    (``--override_contract True``) that runs it anyway, with a warning. The recorded part (X-ray source,
    physics, recipe, bundle version) is compared with ``record`` and differences are logged as warnings.

    Args:
        path: the checkpoint (``model.pt``).
        network: the config's network: every tensor of the checkpoint must exist in it with the same shape
            (catches other widths, input channels or network classes).
        spacing: the run's voxel spacing in mm.
        roi_size: the run's crop size.
        views: the run's two ``[alpha, beta]`` view angles.
        expansion_mode: the run's dimension expansion mode.
        override: run even where the run contradicts the model (each difference logged as a warning).
        record: the run's settings to compare with the model's recorded ones (e.g. ``{"drr_source": "body"}``).

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
    fix = (
        "use the config the model was trained with (e.g. add configs/cpu.json for models/cpu, as the last config: "
        "configs/evaluate.json after it points back at models/)"
    )
    if network is not None:
        own = network.module.state_dict() if hasattr(network, "module") else network.state_dict()
        unknown = [k for k in state if k not in own]
        missing = [k for k in own if k not in state]
        if missing and all(k in MODEL_INFO_KEYS for k in missing) and not unknown:
            raise BundleInputError(
                f"{p} holds no model contract ({', '.join(missing)}); convert it once: {convert_command(p)}."
            )
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
    scale = int((info.get("record") or {}).get("view_scale", 1))
    net = getattr(network, "module", network)
    if net is not None and int(getattr(net, "view_scale", scale)) != scale:
        raise BundleInputError(  # a setting of the forward pass, not a weight: the tensor checks cannot see it
            f"{p} runs its view stage at view_scale {scale} but the config's network_def sets {net.view_scale}; "
            "rebuild the network from the model's record (configs/body_model.json)."
        )
    if info["views"] is None or info["expansion_mode"] is None:
        raise BundleInputError(
            f"{p} does not record the views and expansion mode it was trained with (a model file of bundle 0.3 or "
            f"older); convert it once: {convert_command(p)}."
        )
    log = logging.getLogger(__name__)
    differences = []
    if spacing is not None and info["spacing"] is not None and not math.isclose(float(spacing), info["spacing"]):
        differences.append((f"{info['spacing']:g} mm voxels", f"--spacing {float(spacing):g}"))
    if roi_size is not None and info["roi_size"] is not None and int(roi_size) != info["roi_size"]:
        differences.append((f"{info['roi_size']}^3 crops", f"--roi_size {int(roi_size)}"))
    if views is not None:
        views = parse_angles(views).tolist()  # a bad angle (identical views, out of range) is named as such first
    if views is not None and not _same_views(views, info["views"]):
        differences.append((f"views {json.dumps(info['views'])}", f"--views {json.dumps(views)}"))
    if expansion_mode is not None and expansion_mode != info["expansion_mode"]:
        differences.append((f"expansion_mode {info['expansion_mode']}", f"--expansion_mode {expansion_mode}"))
    for model_value, option in differences:
        text = f"{p} was trained with {model_value} but the run sets {option}"
        if not override and option.startswith("--views"):
            model_views = info["views"]
            if _same_views(views[::-1], model_views):
                raise BundleInputError(
                    f"{text}: the same views in the other order; give the X-rays in the model's order (view 1 "
                    f"{json.dumps(model_views[0])}, view 2 {json.dumps(model_views[1])}) and drop --views."
                )
            if info["expansion_mode"] == "replicate" and not _replicate_takes(views):
                raise BundleInputError(
                    f"{text}; this model reads only the views {json.dumps(model_views)} (its replicate expansion "
                    "needs an AP and a lateral view): drop --views and give X-rays of those views."
                )
        if not override:
            raise BundleInputError(
                f"{text} (on the command line, or in a config such as configs/cpu.json); drop it (the model's value "
                f"is the default), {fix}, or add --override_contract True to run anyway."
            )
        log.warning(f"{text}; running anyway (--override_contract True): the output may be wrong.")
    from scripts.confidence import INPUT_TYPES

    for k, v in (record or {}).items():
        trained = info["record"].get(k)
        if v is not None and trained is not None and trained != v:
            note = ""
            if k == "drr_source" and INPUT_TYPES.get(str(trained)) != INPUT_TYPES.get(str(v)):
                note = (
                    f": {INPUT_TYPES.get(str(v), v)} X-rays for a model of {INPUT_TYPES.get(str(trained), trained)} "
                    "ones, which it reconstructs badly; the input type check (--input_check) gives each such case "
                    "the confidence 0 and a flag"
                )
            log.warning(f"{p} was trained with {k} {trained!r}; this run uses {v!r} (recorded, not enforced){note}.")
    return p


def warn_input_source(cases: Sequence[Mapping[str, Any]], model_file: str | os.PathLike) -> bool:
    """Warn when full radiographs go to a model trained on X-rays of the isolated vertebra.

    A radiograph's rays cross the whole body; a model whose contract records another X-ray source than
    ``"body"`` (e.g. the paper's ``"gt"``) was never shown such images (docs/body-xrays.md).

    Returns:
        whether it warned.
    """
    if not any(case.get("radiographs") for case in cases):
        return False
    key = _model_file_key(model_file)
    if key is None:
        return False
    source = _cached_contract(key)["record"].get("drr_source")
    if source in (None, "body"):
        return False
    logging.getLogger(__name__).warning(
        f"{model_file} was trained on X-rays of drr_source {source!r}, not on X-rays through the whole body as full "
        "radiographs are: expect a poor reconstruction (docs/body-xrays.md); add configs/body_model.json to use the "
        "body model (models/body)"
    )
    return True


@reports_input_errors
def with_model_views(cases: Sequence[dict], views: Sequence[Sequence[float]], override: bool = False) -> list[dict]:
    """Inference cases with the model's view angles: given where a case has none, checked where it has some.

    Args:
        cases: the cases of :func:`inference_cases`.
        views: the run's view angles (by default the model's, :func:`model_setting`).
        override: let a case whose angles differ from ``views`` run, with a warning.

    Raises:
        BundleInputError: a case's angles differ from the views the model was trained on.
    """
    model_views = parse_angles(views).tolist()
    out = []
    for case in cases:
        if case.get("angles") is None:
            out.append({**case, "angles": model_views})
            continue
        given = parse_angles(case["angles"]).tolist()
        if not _same_views(given, model_views):
            text = (
                f"case {case.get('id')}: its angles {json.dumps(given)} differ from the model's views "
                f"{json.dumps(model_views)}"
            )
            if not override:
                raise BundleInputError(
                    f"{text}; the model reconstructs only from the views it was trained on: give X-rays at those "
                    "angles, a model trained at these, or --override_contract True to run anyway."
                )
            logging.getLogger(__name__).warning(f"{text}; running anyway (--override_contract True).")
        out.append(case)
    return out


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
    output_dir: str | os.PathLike | None = None,
    spatial_size: int | Sequence[int] | None = None,
    min_size: int | None = MIN_XRAY_SIZE,
    window_mm: float | None = None,
    **loader_kwargs,
) -> list[dict]:
    """The cases of an inference run: a JSON datalist, two image paths, or by default a prepared dataset's split.

    A datalist is a JSON list (or ``{"testing": [...]}``) of ``{"xray": [view1, view2], "angles": [[a1, b1],
    [a2, b2]], "id": name}``; relative paths are resolved against the datalist's folder and ``angles``
    defaults to AP and lateral. A case's outputs go to a folder named after its ``id`` (``case_id`` for
    ``xrays``); without one, after its two files (:func:`scripts.io.xray.xray_case_name`:
    ``P1_ap.png`` and ``P1_lat.png`` give ``P1``). Names are checked first: a name that cannot be a folder
    name, one too long for the file system (with the longest path the run writes under ``output_dir``), or two
    cases with the same name, stop the run before anything is written. With ``check`` every case is also read
    and validated with the run's options (files, image sizes, blank images, angles, the ``loader_kwargs`` such
    as ``invert`` and ``pixel_spacing``, and the expansion ``expansion_mode``), so a bad case or option stops
    the run before anything is written.

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
        output_dir: the run's output folder: it must be a folder (or not exist yet) that can be written, and case
            names must fit its file system's limits.
        spatial_size: the model's input size (pixels): smaller images are enlarged to it, with a warning.
        min_size: the fewest pixels per side of an image (:data:`scripts.io.xray.MIN_XRAY_SIZE`); smaller ones
            are refused. ``None`` takes any size.
        window_mm: the edge of the model's crop in mm (``roi_size * spacing``): images of known pixel spacing that
            span far more are refused as full radiographs (:func:`check_xray_cases`).
        loader_kwargs: arguments of :class:`scripts.io.xray.LoadXRayPair` used by the check (``invert``,
            ``pixel_spacing``, ...).

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
    if output_dir is not None:
        _check_output_dir(output_dir)
    check_case_names([c["id"] for c in cases], output_dir=output_dir)
    if check:
        check_xray_cases(
            cases,
            expansion_mode=expansion_mode,
            spatial_size=spatial_size,
            min_size=min_size,
            window_mm=window_mm,
            **loader_kwargs,
        )
    return cases


def _check_output_dir(output_dir: str | os.PathLike) -> None:
    """Refuse an output folder that is a file, or that this process cannot create or write into."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise BundleInputError(f"--output_dir {out} is a file, not a folder; fix: give a folder for the outputs.")
    probe = out.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BundleInputError(
            f"--output_dir {out}: {probe} cannot be written by this user; fix: give a folder you can write to."
        )


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
    give = "give --datalist cases.json, or --xrays \"['ap.png','lateral.png']\" (optionally --views \"[[0,0],[90,0]]\")"
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
    files = case.get("xray") or case.get("radiographs")
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


def window_centring(
    option: bool | None,
    confidence: bool,
    calibration: Mapping[str, Any] | None,
    spacing_mm: float,
    device: Any = "cpu",
    views: Sequence[Sequence[float]] = ((0.0, 0.0), (90.0, 0.0)),
    expansion_mode: str = "replicate",
) -> WindowCentring | None:
    """The configs' ``centring`` item: a :class:`scripts.localise.WindowCentring` for the confidence, or ``None``.

    Args:
        option: the configs' ``window_centring``: ``None`` (default) computes it when the model's confidence
            calibration uses it; ``True`` / ``False`` force it on (e.g. to record it while calibrating a model) or
            off.
        confidence: the configs' ``confidence`` (no TTA confidence: no centring).
        calibration: the model contract's confidence calibration (dict) or ``None``.
        spacing_mm: the model's voxel size.
        device: where the finder runs.
        views: the model's two views ``[[alpha, beta], ...]``; the centring reads an AP and a lateral view (each
            within 15 degrees of its beam line).
        expansion_mode: the model's dimension expansion; the centring reads the views back from a ``replicate``
            expansion.

    Returns:
        the window centring, or ``None`` when it is not computed.

    Raises:
        BundleInputError: ``option`` is not ``True``, ``False`` or ``None``; the centring is turned off while the
            model's calibration needs it; or it is wanted for a model whose views are not an AP and a lateral one of
            a ``replicate`` expansion.
    """
    from scripts.confidence import calibration_uses_centring

    if option is not None and not isinstance(option, bool):
        raise BundleInputError(
            f"--window_centring is True, False or null (as the model's calibration says), got {option!r}."
        )
    needed = calibration_uses_centring(calibration)
    if not confidence:
        return None
    if option is False and needed:
        raise BundleInputError(
            "--window_centring False: this model's confidence calibration uses the window centring; fix: leave "
            "--window_centring at its default, or turn the confidence off with --confidence False."
        )
    if not (needed if option is None else option):
        return None
    from scripts.drr.windows import beam_line_difference
    from scripts.localise import WindowCentring

    off = [beam_line_difference(tuple(float(a) for a in v), ref)[0] for v, ref in zip(views, ((0, 0), (90, 0)))]
    if expansion_mode != "replicate" or len(views) != 2 or max(off) > 15.0:
        raise BundleInputError(
            f"the window centring reads an AP and a lateral view of a 'replicate' expansion; this model has views "
            f"{[list(v) for v in views]} and expansion {expansion_mode!r}; fix: --window_centring False."
        )
    return WindowCentring(float(spacing_mm), device=device)


def confidence_columns(confidence: bool, centring: Any = None, expected_input: str | None = None) -> list[str]:
    """The per-item confidence entries an evaluation tabulates: ``confidence`` and ``tta_agreement`` with the TTA
    confidence on, ``window_centring`` when it is computed (the configs' ``centring`` item is not ``None``), and
    ``input_background_share`` when the input type is checked (the configs' ``expected_input`` is not ``None``)."""
    checked = ["input_background_share"] if expected_input is not None else []
    if not confidence:
        return checked
    return ["confidence", "tta_agreement"] + (["window_centring"] if centring is not None else []) + checked


def expected_input(option: bool, model_file: str | os.PathLike, expansion_mode: str = "replicate") -> str | None:
    """The configs' ``expected_input`` item: the type of X-rays the model was trained on (``"isolated"`` or
    ``"surrounded"``, :data:`scripts.confidence.INPUT_TYPES` of its contract's ``drr_source``), which
    :class:`scripts.confidence.TTAConfidenced` checks each case's views against; ``None`` (no check) when the
    configs' ``input_check`` is False, the model file records no X-ray source, or its expansion is not
    ``replicate`` (the check reads the views from the replicated input).

    Raises:
        BundleInputError: ``option`` is not ``True`` or ``False``.
    """
    from scripts.confidence import INPUT_TYPES

    if not isinstance(option, bool):
        raise BundleInputError(f"--input_check is True or False, got {option!r}.")
    if not option or expansion_mode != "replicate":
        return None
    source = model_setting(model_file, "record", {}).get("drr_source")
    return INPUT_TYPES.get(str(source)) if source is not None else None


def item_value_handlers(keys: Sequence[str] = ("confidence", "tta_agreement"), prefix: str = "val_") -> dict:
    """Ignite handlers that collect per-item numbers of the evaluator's output (e.g. the ``confidence`` written by
    :class:`scripts.confidence.TTAConfidenced`), keyed ``<prefix><key>``, with their per-item values kept for
    :class:`scripts.handlers.VertebraMetricsTable`."""

    def pick(key: str) -> Any:
        def transform(output: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            items = output if isinstance(output, list) else [output]
            values = [torch.tensor([float(item[key])]) for item in items]
            return values, values

        return transform

    return {
        f"{prefix}{k}": IgniteMetricHandler(metric_fn=ItemValueMetric(), output_transform=pick(k), save_details=True)
        for k in keys
    }


# command-line options of earlier versions and their names now
_RENAMED = {"angles": "views"}

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


def _switch_value(text: str) -> bool:
    """Whether a command-line value of a switch is ``True`` / ``False`` (or one per view, ``[True, False]``)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return False
    if isinstance(value, (list, tuple)) and value:
        return all(isinstance(v, bool) for v in value)
    return isinstance(value, bool)


@reports_input_errors
def check_cli_overrides(argv: Sequence[str] | None = None) -> None:
    """Refuse command-line overrides that no loaded config defines (e.g. ``--epoch`` for ``--epochs``).

    MONAI's runner accepts any ``--key value`` and adds it to the config, so a misspelt override is
    silently ignored and the run goes on with the default. This check reads the command line of
    ``python -m monai.bundle run`` (it does nothing in other programs, e.g. ``ConfigWorkflow`` in Python or
    MONAI Label) and requires the first part of every override id to be defined by one of the config files,
    and, for a nested id (``a#b#c``), its parent to exist. Keys that a config file adds stay legal. A key whose
    config value is ``true`` / ``false`` (a switch such as ``--invert``) takes only ``True`` or ``False`` (or
    a list of them, one per view): ``no``, ``off``, ``yes``, ``0`` or ``1`` would reach the config as text or
    a number. Called without ``argv`` in a bundle run, it also installs the handler that ends input errors with
    their one line (:func:`scripts.errors.install_cli_excepthook`).

    Args:
        argv: the command line (default ``sys.argv``).

    Raises:
        BundleInputError: naming the unknown keys and their close matches, or a switch's value.
    """
    if argv is None:
        install_cli_excepthook()
    argv = list(sys.argv if argv is None else argv)
    if not running_bundle_cli(argv):
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
            close = [_RENAMED[key]] if key in _RENAMED else difflib.get_close_matches(key.split("#")[0], top, n=3)
            hints.append(f"--{key}" + (f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""))
        raise BundleInputError(
            f"unknown command-line override {'; '.join(hints)}: no loaded config defines it, so it would be "
            "ignored; fix the spelling or add the key to a config file."
        )
    switches = []
    for key, value in zip(keys, values):
        ref = key.lstrip("+").replace("::", "#")
        if ref in parser and isinstance(parser[ref], bool) and not str(value).startswith(("$", "@", "%")):
            if not _switch_value(str(value)):
                switches.append(f"--{key} {value}")
    if switches:
        raise BundleInputError(
            f"{', '.join(switches)}: a switch takes True or False (--invert and the flips also take one per view, "
            "e.g. [True, False]), and any other text would count as true; write True or False."
        )


def end_of_command_line_run() -> None:
    """At the end of ``python -m monai.bundle run``, freeze the garbage collector so that the interpreter exits
    without a last full collection of torch's and MONAI's objects (about 1 s per run on a 2-core CPU).

    Programs that run the workflow themselves (``ConfigWorkflow``, MONAI Label) are left as they are.
    """
    from scripts.errors import running_bundle_cli

    if running_bundle_cli():
        gc.freeze()


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


#: X-rays spanning more than this multiple of the field the model's window covers at the isocentre are refused as
#: full radiographs (:func:`check_xray_field`): a 430 mm detector at 1,200 / 800 mm spans about 2.0 times a 128 mm
#: window's field (141 mm), a window cut with a margin about 1.2 times.
FULL_RADIOGRAPH_RATIO = 1.6


def check_xray_field(img: torch.Tensor, window_mm: float, sdd: float, sod: float) -> float | None:
    """Refuse two X-rays whose known pixel spacing makes them far larger than the window the model reads.

    The model reads the window its training DRRs show: a detector that just sees its crop of ``window_mm`` in the
    bundle's training system (source-to-isocentre :data:`~scripts.drr.geometry.DEFAULT_SOD`), i.e.
    ``window_mm * sod0 / (sod0 - window_mm / 2)`` at the isocentre. A view of ``rows x cols`` pixels of spacing
    ``(row, col)`` mm on the detector spans ``size * spacing * sod / sdd`` mm at the isocentre of the run's system.

    Args:
        img: the two X-rays as :class:`LoadXRayPair` reads them (``meta["pixel_spacing"]``, NaN where unknown;
            ``meta["xray_files"]`` names them).
        window_mm: the edge of the model's crop in mm.
        sdd: the run's source-to-detector distance in mm.
        sod: the run's source-to-isocentre distance in mm.

    Returns:
        the largest span at the isocentre over the views of known spacing, divided by the window's field; ``None``
        when no view's spacing is known (then nothing is checked).

    Raises:
        XRayInputError: the ratio is above :data:`FULL_RADIOGRAPH_RATIO`, naming the view and its spacing, with the
            ways to give full radiographs.
    """
    spacing = np.asarray(img.meta.get("pixel_spacing", np.full((2, 2), np.nan)), dtype=np.float64).reshape(-1, 2)
    known = np.all(np.isfinite(spacing), axis=1)
    if not known.any():
        return None
    size = np.asarray(img.shape[-2:], dtype=np.float64)
    span = np.where(known[:, None], size[None, :] * np.where(np.isfinite(spacing), spacing, 0.0), 0.0) * (sod / sdd)
    field = window_mm * DEFAULT_SOD / (DEFAULT_SOD - window_mm / 2.0)
    view = int(np.argmax(span.max(axis=1)))
    ratio = float(span[view].max() / field)
    if ratio > FULL_RADIOGRAPH_RATIO:
        files = img.meta.get("xray_files") or ["view 1", "view 2"]
        rows, cols = (int(n) for n in img.shape[-2:])
        raise XRayInputError(
            f"{files[view]} spans {span[view].max():.0f} mm at the isocentre ({rows}x{cols} pixels of "
            f"{spacing[view, 0]:.3g} x {spacing[view, 1]:.3g} mm, magnified as in the run's system: --sdd {sdd:g} / "
            f"--sod {sod:g} mm, not the file's), {ratio:.1f} times "
            f"the {field:.0f} mm the model's {window_mm:g} mm window covers, as a full radiograph does; fix: give the "
            'radiographs as a case with "radiographs" and the vertebra\'s "centre_px" (docs/reference.md, Inference '
            "from full radiographs), or find every vertebra with python -m scripts.spine radiographs --ap AP "
            "--lateral LAT --out DIR; or cut a window centred on the vertebra; if that pixel spacing is wrong, give "
            "the case's pixel_spacing"
        )
    return ratio


def check_xray_cases(
    cases: Sequence[Mapping[str, Any]],
    key: str = "xray",
    angles_key: str = "angles",
    base_dir: str | os.PathLike | None = None,
    expansion_mode: str | None = None,
    spacing_key: str | None = "pixel_spacing",
    spatial_size: int | Sequence[int] | None = None,
    sdd: float | None = None,
    sod: float | None = None,
    window_mm: float | None = None,
    **kwargs: Any,
) -> None:
    """Validate every case of a datalist before anything is written, so a bad case stops the run early.

    Each case is read completely with :class:`LoadXRayPair` (reading is cheap next to reconstruction): files,
    sizes (``min_size`` of ``kwargs``), blank images, view angles (:func:`parse_angles`), and, with
    ``expansion_mode``, whether the dimension expansion takes the case (:func:`check_expansion_angles`, then
    the expansion itself on a 2-voxel grid, which also checks the pixel spacings of the two views). Cases whose
    images are smaller than ``spatial_size`` are named in one warning: they are enlarged to it; cases with an image of
    unknown pixel spacing whose shape differs from it by more than 10 % in aspect are named in another: resizing
    stretches them (with a known spacing the expansion places every pixel at its true size). With ``window_mm``,
    a case whose images have a known pixel spacing and span more than :data:`FULL_RADIOGRAPH_RATIO` times the
    model's window at the isocentre is refused: full radiographs go to the ``radiographs`` input or to
    ``python -m scripts.spine radiographs``, which cut the window the model expects.

    Args:
        cases: datalist items, each with ``key`` (two paths) and optional ``angles_key``.
        key: the key of the two image paths.
        angles_key: the key of the angles.
        base_dir: folder that relative paths are resolved against (the datalist's folder).
        expansion_mode: the run's ``DimensionExpansion`` mode (``"replicate"`` or ``"backproject"``); ``None``
            skips the expansion check.
        spacing_key: the key of a case's pixel spacing override (mm), as for :class:`LoadXRayPaird`.
        spatial_size: the model's input size ``(H, W)`` (an int for square), ``None``: no size warning.
        sdd: the run's source-to-detector distance in mm (``None``: the expansion's default).
        sod: the run's source-to-isocentre distance in mm; with ``sdd``, ``sdd > sod > 0`` is required.
        window_mm: the edge of the model's crop in mm (``roi_size * spacing``); ``None``: no field check.
        kwargs: the arguments of :class:`LoadXRayPair` (orientation, inversion, pixel spacing, ``min_size``).

    Raises:
        XRayInputError: one line listing every bad case, or a bad argument of :class:`LoadXRayPair`.
    """
    if expansion_mode is not None:
        check_expansion_angles(DEFAULT_ANGLES, expansion_mode)  # an unknown mode stops here, once
    geometry = {k: v for k, v in (("sdd", sdd), ("sod", sod)) if v is not None}
    for k, v in geometry.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v <= 0:
            raise XRayInputError(f"{k}={v!r}: give the distance in mm as a positive number.")
    if len(geometry) == 2 and not geometry["sdd"] > geometry["sod"]:
        raise XRayInputError(
            f"sdd={sdd!r}, sod={sod!r}: the detector lies behind the patient, so the source-to-detector distance "
            "(sdd) must be larger than the source-to-isocentre distance (sod); fix: give both in mm, e.g. "
            "--sdd 1020 --sod 700."
        )
    loader = LoadXRayPair(**kwargs)  # bad options (invert, pixel_spacing, ...) stop here, once
    model_size = None
    if spatial_size is not None:
        model_size = (int(spatial_size),) * 2 if isinstance(spatial_size, int) else tuple(map(int, spatial_size))
    errors, small, stretched = [], [], []
    for i, case in enumerate(cases):
        label = case.get("id", f"case {i}")
        files = case.get(key)
        if files is None and case.get("radiographs") is not None:  # full radiographs: scripts.io.radiograph
            from scripts.io.radiograph import check_radiograph_case

            try:
                check_radiograph_case(case)
            except XRayInputError as e:
                errors.append(f"{label}: {e}")
            continue
        if files is None:
            errors.append(f"{label}: no '{key}' entry; fix: add the two X-ray image paths.")
            continue
        if base_dir is not None and isinstance(files, Sequence) and not isinstance(files, (str, bytes)):
            files = [f if os.path.isabs(f) else os.path.join(base_dir, f) for f in files]
        try:
            img = loader(
                files, angles=case.get(angles_key), pixel_spacing=case.get(spacing_key) if spacing_key else None
            )
            size = img.meta["original_size"]
            if model_size is not None and (size < np.asarray(model_size)).any():
                small.append(f"{label} ({'x'.join(str(int(n)) for n in size.min(axis=0))})")
            unknown = ~np.all(np.isfinite(np.asarray(img.meta["pixel_spacing"], dtype=np.float64)), axis=1)
            aspect = size[:, 1] / size[:, 0] / (model_size[1] / model_size[0]) if model_size is not None else None
            if aspect is not None and (unknown & (np.abs(np.log(aspect)) > math.log(1.1))).any():
                stretched.append(f"{label} ({int(size[0, 0])}x{int(size[0, 1])})")
            if window_mm is not None:
                check_xray_field(img, window_mm, sdd or DEFAULT_SDD, sod or DEFAULT_SOD)
            if expansion_mode is not None:
                check_expansion_angles(img.meta["angles"], expansion_mode)
                try:
                    DimensionExpansion(expansion_mode, spatial_size=2, **geometry)(img)
                except ValueError as e:
                    raise XRayInputError(f"the dimension expansion refuses it: {e}") from e
        except XRayInputError as e:
            errors.append(f"{label}: {e}")
    if errors:
        raise XRayInputError(f"{len(errors)} bad case(s): " + " | ".join(errors))
    if small:
        logging.getLogger(__name__).warning(
            f"{len(small)} case(s) have X-rays smaller than the model's input of {model_size[0]}x{model_size[1]} "
            f"pixels: {', '.join(small[:5])}{', ...' if len(small) > 5 else ''}; they are enlarged, which blurs "
            "them: give the full-resolution radiographs if you have them."
        )
    if stretched:
        logging.getLogger(__name__).warning(
            f"{len(stretched)} case(s) have X-rays of another shape than the model's input of "
            f"{model_size[0]}x{model_size[1]} pixels (rows x columns): {', '.join(stretched[:5])}"
            f"{', ...' if len(stretched) > 5 else ''}; each is resized to it, which stretches the vertebra: cut "
            "windows of the model's shape, centred on the vertebra."
        )
