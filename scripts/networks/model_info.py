# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The model contract: what a trained model needs to be used correctly, kept inside the model as buffers.

The network's target and output are CT volumes z-scored with the training set's HU mean and standard
deviation, on a grid of a given voxel spacing and crop size, reconstructed from two views at given angles
through a given dimension expansion. Those values belong to the weights: a model run with another dataset's
statistics, at another spacing, from other views or through another expansion gives wrong volumes without
any error. :func:`attach_model_info` registers them as buffers on the network (any ``nn.Module``), so they
are saved in its ``state_dict`` (``model.pt``), survive TorchScript export (``model.ts``) and
``monai.bundle.load``, and :func:`read_model_info` reads them back from a network, a state dict or a
checkpoint file: the one place where the contract is read. Training writes it; evaluation and inference only
read it (``scripts.workflow.check_model`` enforces it).

The contract has two parts:

- enforced (a run that contradicts them stops): HU mean and std (``hu_mean``, ``hu_std``), voxel spacing
  (``spacing_mm``) and crop size (``roi_size``) as float buffers, the view angles (``views``: ``[[alpha,
  beta], [alpha, beta]]`` in degrees) and the expansion mode (``expansion_mode``) in the JSON buffer
  ``model_contract``;
- recorded (runs that differ are warned about, never stopped, because experiments compare across them on
  purpose): the X-ray source, physics and training recipe, the bundle version and the network's class and
  widths, in the same JSON buffer under ``record``.

The JSON buffer also holds the network's architecture fingerprint (tensor names and shapes): a load into a
network of another shape, which ``monai.bundle.load`` would otherwise do partially (it copies only the tensors
whose shapes match), fails with one line naming the way that works (:func:`check_loaded_architecture`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from scripts.errors import BundleInputError
from scripts.utils import unwrap_module
from torch import nn

__all__ = [
    "MODEL_INFO_KEYS",
    "CONTRACT_KEY",
    "CONTRACT_VERSION",
    "ENFORCED_KEYS",
    "attach_model_info",
    "read_model_info",
    "load_state_dict_file",
    "architecture_fingerprint",
    "check_loaded_architecture",
    "convert_command",
    "write_contract",
    "write_confidence_calibration",
]

#: name of the uint8 buffer holding the contract's JSON (zero-padded UTF-8).
CONTRACT_KEY = "model_contract"
#: size in bytes of the JSON buffer: fixed, so that every model of the bundle loads into every network.
CONTRACT_BYTES = 4096
#: version of the JSON layout.
CONTRACT_VERSION = 1
#: buffer names: HU mean and std of the z-scoring, voxel spacing (mm) and crop size (voxels) of training, and
#: the JSON buffer of the rest of the contract.
MODEL_INFO_KEYS = ("hu_mean", "hu_std", "spacing_mm", "roi_size", CONTRACT_KEY)
#: the values a run must not contradict (``scripts.workflow.check_model``), as :func:`read_model_info` names them.
ENFORCED_KEYS = ("gt_mean", "gt_std", "spacing", "roi_size", "views", "expansion_mode")


def architecture_fingerprint(network: nn.Module | Mapping[str, torch.Tensor], class_name: str | None = None) -> str:
    """A short hash of the network's class and of the names and shapes of its tensors (contract buffers excluded).

    Two networks with the same fingerprint take each other's weights; another width, input channel count,
    switch (e.g. ``use_fem``) or class changes it.

    Args:
        network: the network, or its state dict (then ``class_name`` is required).
        class_name: the network's class name (default: the class of ``network``).
    """
    if isinstance(network, nn.Module):
        net = unwrap_module(network)
        state, class_name = net.state_dict(), class_name or type(net).__name__
    else:
        state = network
        if class_name is None:
            raise ValueError("architecture_fingerprint of a state dict needs class_name.")
    items = sorted(f"{k}:{tuple(v.shape)}" for k, v in state.items() if k not in MODEL_INFO_KEYS)
    return hashlib.sha256((class_name + "|" + "|".join(items)).encode()).hexdigest()[:16]


def _decode(buffer: torch.Tensor | None) -> dict[str, Any]:
    """The contract JSON of a ``model_contract`` buffer; ``{}`` when it is empty or absent."""
    if buffer is None:
        return {}
    raw = bytes(torch.as_tensor(buffer).to(torch.uint8).cpu().reshape(-1).tolist()).rstrip(b"\0")
    if not raw:
        return {}
    try:
        value = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError is a ValueError
        raise BundleInputError(
            f"the model's contract buffer is not valid JSON ({e}); the model file is damaged."
        ) from e
    return value if isinstance(value, dict) else {}


def _encode(contract: Mapping[str, Any]) -> torch.Tensor:
    raw = json.dumps(contract, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(raw) > CONTRACT_BYTES:
        raise BundleInputError(
            f"the model contract takes {len(raw)} bytes, more than {CONTRACT_BYTES}; record fewer training settings."
        )
    out = torch.zeros(CONTRACT_BYTES, dtype=torch.uint8)
    out[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    return out


def _views(views: Sequence[Sequence[float]]) -> list[list[float]]:
    try:
        out = [[float(a), float(b)] for a, b in views]
    except (TypeError, ValueError) as e:
        raise BundleInputError(f"views must be two [alpha, beta] pairs in degrees, got {views!r}.") from e
    if len(out) != 2 or not all(math.isfinite(x) for pair in out for x in pair):
        raise BundleInputError(f"views must be two finite [alpha, beta] pairs in degrees, got {views!r}.")
    return out


def check_loaded_architecture(module: nn.Module, incompatible_keys: Any = None) -> None:
    """``load_state_dict`` post-hook: refuse weights whose contract names another architecture.

    ``monai.bundle.load`` copies only the tensors whose shapes fit (``monai.networks.copy_model_state``) and
    then loads the merged state: the contract buffer comes from the file, so a fingerprint that differs from
    the network's own shows that most of the weights were not loaded.

    Raises:
        BundleInputError: naming the file's network widths and the ways that load it whole.
    """
    contract = _decode(dict(module.named_buffers(recurse=False)).get(CONTRACT_KEY))
    expected = contract.get("architecture")
    if not expected:
        return
    own = architecture_fingerprint(module)
    if own == expected:
        return
    record = contract.get("record", {})
    channels = record.get("channels")
    how = f"net_override={{'channels': {channels}}}" if channels is not None else "the network_def it was trained with"
    error = BundleInputError(
        f"these weights were trained for another {record.get('network', 'network')} (fingerprint {expected}, channels "
        f"{channels}) than this {type(module).__name__} ({own}): most tensors would not load; load them with {how} "
        "(monai.bundle.load), or the model.ts beside them (load_ts_module=True), or use the config they were "
        "trained with (configs/cpu.json for models/cpu)."
    )
    logging.getLogger("scripts").error(f"{type(error).__name__}: {error}")  # before MONAI's traceback, as elsewhere
    raise error


def attach_model_info(
    network: nn.Module,
    stats: Mapping[str, float] | None = None,
    spacing: float | None = None,
    roi_size: int | None = None,
    views: Sequence[Sequence[float]] | None = None,
    expansion_mode: str | None = None,
    record: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Register the contract buffers on ``network`` (NaN and empty until known) and set the values given.

    Call it with the values in training; call it without values before loading a checkpoint (the buffers
    then receive the checkpoint's values, and a checkpoint without them fails a strict load). It also installs
    :func:`check_loaded_architecture` as a ``load_state_dict`` post-hook (once).

    Args:
        network: the network (a DDP wrapper is unwrapped).
        stats: ``{"gt_mean", "gt_std"}``, the HU statistics of the training ground truth.
        spacing: isotropic voxel spacing in mm of the training crops.
        roi_size: crop size in voxels of the training crops.
        views: the two views' ``[alpha, beta]`` angles in degrees that the model was trained on.
        expansion_mode: the dimension expansion mode of training (``"replicate"`` or ``"backproject"``).
        record: training settings that are recorded but not enforced (X-ray source, physics, recipe, bundle
            version, network widths). Giving ``views``, ``expansion_mode`` or ``record`` writes the JSON part
            of the contract, with the architecture fingerprint.

    Returns:
        ``network`` itself.
    """
    net = unwrap_module(network)
    values = {
        "hu_mean": None if stats is None else float(stats["gt_mean"]),
        "hu_std": None if stats is None else float(stats["gt_std"]),
        "spacing_mm": None if spacing is None else float(spacing),
        "roi_size": None if roi_size is None else float(roi_size),
    }
    if values["hu_std"] is not None and not (math.isfinite(values["hu_std"]) and values["hu_std"] > 0):
        raise BundleInputError(f"the HU standard deviation must be positive and finite, got {values['hu_std']}.")
    own = dict(net.named_buffers(recurse=False))
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    for name, value in values.items():
        if name not in own:
            net.register_buffer(name, torch.full((1,), math.nan, dtype=torch.float64, device=device))
        if value is not None:
            getattr(net, name).fill_(value)
    if CONTRACT_KEY not in own:
        net.register_buffer(CONTRACT_KEY, torch.zeros(CONTRACT_BYTES, dtype=torch.uint8, device=device))
    if not getattr(net, "_ear_contract_hook", False):
        net.register_load_state_dict_post_hook(check_loaded_architecture)
        net._ear_contract_hook = True
    if views is not None or expansion_mode is not None or record is not None:
        contract = _decode(getattr(net, CONTRACT_KEY))
        if views is not None:
            contract["views"] = _views(views)
        if expansion_mode is not None:
            contract["expansion_mode"] = str(expansion_mode)
        if record is not None:
            contract["record"] = {**contract.get("record", {}), "network": type(net).__name__, **dict(record)}
        getattr(net, CONTRACT_KEY).copy_(_encode(_complete(contract, architecture_fingerprint(net))))
    return network


def _complete(contract: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    return {**contract, "version": CONTRACT_VERSION, "architecture": fingerprint}


def write_contract(
    state: Mapping[str, torch.Tensor],
    class_name: str,
    views: Sequence[Sequence[float]],
    expansion_mode: str,
    record: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """A copy of a model's state dict with its contract's views, expansion mode and record set.

    Used by ``python -m scripts.convert_model`` on model files written before the contract held the view
    geometry; the statistics, spacing and crop size must already be in ``state``.
    """
    out = dict(state)
    contract = _decode(out.get(CONTRACT_KEY))
    contract["views"] = _views(views)
    contract["expansion_mode"] = str(expansion_mode)
    contract["record"] = {**contract.get("record", {}), "network": class_name, **dict(record or {})}
    out[CONTRACT_KEY] = _encode(_complete(contract, architecture_fingerprint(out, class_name)))
    return out


def write_confidence_calibration(state: Mapping[str, torch.Tensor], calibration: Mapping[str, Any] | None) -> dict:
    """A copy of a model's state dict whose contract records ``calibration`` (a dict of
    :class:`scripts.confidence.ConfidenceCalibration`) under ``confidence``; ``None`` removes it. Recorded, not
    enforced: it maps the model's TTA agreement to an estimate of the Dice (``docs/confidence.md``)."""
    out = dict(state)
    contract = _decode(out.get(CONTRACT_KEY))
    if not contract:
        raise BundleInputError("the model holds no contract to record a confidence calibration in; train it again.")
    if calibration is None:
        contract.pop("confidence", None)
    else:
        contract["confidence"] = dict(calibration)
    out[CONTRACT_KEY] = _encode(contract)
    return out


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file: a plain state dict, ``{"model": state_dict}`` or TorchScript."""
    p = Path(path)
    if not p.is_file():
        raise BundleInputError(f"no trained model at {p}; train one or set --ckpt_dir to the folder holding it.")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        try:  # a TorchScript archive
            obj = torch.jit.load(str(p), map_location="cpu").state_dict()
        except Exception:
            raise BundleInputError(f"cannot read the model file {p} ({type(e).__name__}: {e}).") from e
    if isinstance(obj, nn.Module) or hasattr(obj, "state_dict"):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise BundleInputError(f"{p} holds a {type(obj).__name__}, not a state dict of network weights.")
    return dict(obj)


def read_model_info(source: nn.Module | Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """The model contract of a network, state dict or checkpoint file: the one place that reads it.

    Returns:
        ``{"gt_mean", "gt_std", "spacing", "roi_size", "views", "expansion_mode", "record", "architecture",
        "confidence"}`` (``confidence``: the TTA confidence calibration, or ``None``);
        ``spacing``, ``roi_size``, ``views``, ``expansion_mode`` and ``architecture`` are ``None`` and ``record``
        is ``{}`` where the model does not hold them (a model file from bundle 0.3 or older:
        :func:`convert_command` says how to add them).

    Raises:
        BundleInputError: the model holds no (or undefined) statistics: it was not trained by this bundle's
            training workflow, or by a version before the statistics moved into the model.
    """
    if isinstance(source, (str, os.PathLike)):
        state, where = load_state_dict_file(source), str(source)
    elif isinstance(source, nn.Module) or hasattr(source, "state_dict"):
        state, where = unwrap_module(source).state_dict(), type(unwrap_module(source)).__name__
    else:
        state, where = dict(source), "the state dict"
    values = {
        k: float(torch.as_tensor(state[k]).reshape(-1)[0]) if k in state else math.nan
        for k in MODEL_INFO_KEYS
        if k != CONTRACT_KEY
    }
    undefined = [k for k in ("hu_mean", "hu_std") if not math.isfinite(values[k])]
    if undefined:
        raise BundleInputError(
            f"{where} holds no intensity statistics ({' and '.join(undefined)} missing or undefined); use a model "
            "trained by this bundle's training workflow, which stores them in model.pt."
        )
    contract = _decode(state.get(CONTRACT_KEY))
    return {
        "gt_mean": values["hu_mean"],
        "gt_std": values["hu_std"],
        "spacing": values["spacing_mm"] if math.isfinite(values["spacing_mm"]) else None,
        "roi_size": int(round(values["roi_size"])) if math.isfinite(values["roi_size"]) else None,
        "views": contract.get("views"),
        "expansion_mode": contract.get("expansion_mode"),
        "record": dict(contract.get("record", {})),
        "architecture": contract.get("architecture"),
        "confidence": contract.get("confidence"),
    }


def convert_command(path: str | os.PathLike) -> str:
    """The command that adds the view geometry to a model file that lacks it (``scripts.convert_model``)."""
    return (
        f'python -m scripts.convert_model {path} --views "[[0,0],[90,0]]" --expansion_mode replicate '
        "(give the views and expansion mode it was trained with)"
    )
