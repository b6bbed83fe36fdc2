# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""What a trained model needs to be used correctly, kept inside the model as buffers.

The network's target and output are CT volumes z-scored with the training set's HU mean and standard
deviation, on a grid of a given voxel spacing and crop size. Those four numbers belong to the weights: a
model evaluated or run with another dataset's statistics, or at another spacing, gives wrong HU without
any error. :func:`attach_model_info` registers them as buffers on the network (any ``nn.Module``), so they
are saved in its ``state_dict`` (``model.pt``), survive TorchScript export (``model.ts``) and
``monai.bundle.load``, and :func:`read_model_info` reads them back from a network, a state dict or a
checkpoint file. Training writes them; evaluation and inference only read them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from scripts.errors import BundleInputError
from scripts.utils import unwrap_module
from torch import nn

__all__ = ["MODEL_INFO_KEYS", "attach_model_info", "read_model_info", "load_state_dict_file"]

#: buffer names: HU mean and std of the z-scoring, voxel spacing (mm) and crop size (voxels) of training.
MODEL_INFO_KEYS = ("hu_mean", "hu_std", "spacing_mm", "roi_size")


def attach_model_info(
    network: nn.Module,
    stats: Mapping[str, float] | None = None,
    spacing: float | None = None,
    roi_size: int | None = None,
) -> nn.Module:
    """Register the model-info buffers on ``network`` (NaN until known) and set the values given.

    Call it with the values in training; call it without values before loading a checkpoint (the buffers
    then receive the checkpoint's values, and a checkpoint without them fails a strict load).

    Args:
        network: the network (a DDP wrapper is unwrapped).
        stats: ``{"gt_mean", "gt_std"}``, the HU statistics of the training ground truth.
        spacing: isotropic voxel spacing in mm of the training crops.
        roi_size: crop size in voxels of the training crops.

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
    for name, value in values.items():
        if name not in dict(net.named_buffers(recurse=False)):
            device = next((p.device for p in net.parameters()), torch.device("cpu"))
            net.register_buffer(name, torch.full((1,), math.nan, dtype=torch.float64, device=device))
        if value is not None:
            getattr(net, name).fill_(value)
    return network


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


def read_model_info(source: nn.Module | Mapping[str, Any] | str | os.PathLike) -> dict[str, float]:
    """The model info of a network, state dict or checkpoint file, as ``{"gt_mean", "gt_std", "spacing",
    "roi_size"}`` (``spacing`` and ``roi_size`` are ``None`` where the model does not record them).

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
    values = {k: float(torch.as_tensor(state[k]).reshape(-1)[0]) if k in state else math.nan for k in MODEL_INFO_KEYS}
    undefined = [k for k in ("hu_mean", "hu_std") if not math.isfinite(values[k])]
    if undefined:
        raise BundleInputError(
            f"{where} holds no intensity statistics ({' and '.join(undefined)} missing or undefined); use a model "
            "trained by this bundle's training workflow, which stores them in model.pt."
        )
    return {
        "gt_mean": values["hu_mean"],
        "gt_std": values["hu_std"],
        "spacing": values["spacing_mm"] if math.isfinite(values["spacing_mm"]) else None,
        "roi_size": int(round(values["roi_size"])) if math.isfinite(values["roi_size"]) else None,
    }
