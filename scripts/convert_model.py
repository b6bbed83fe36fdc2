# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Add the view geometry to a model file written before the model contract held it.

Model files of bundle 0.3 and older store the HU statistics, spacing and crop size, but not the view angles
and dimension expansion mode the model was trained with; evaluation and inference refuse them with this
command. Give the values the model was trained with (the training config's ``views`` and
``expansion_mode``)::

    python -m scripts.convert_model models/cpu/model.pt --views "[[0,0],[90,0]]" --expansion_mode replicate \\
        --drr_source gt --physics poly --spectrum 60kV --recipe geometric --channels "[8,16,32,64,128]"

The file is replaced atomically; ``model.ts`` beside it is then exported again with ``ckpt_export``
(docs/README.md, MONAI Bundle Commands), which copies the contract with the weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from scripts.errors import BundleInputError
from scripts.networks.model_info import load_state_dict_file, read_model_info, write_contract
from scripts.utils import atomic_path

__all__ = ["convert_model"]


def convert_model(
    path: str | os.PathLike,
    views: Any,
    expansion_mode: str,
    network: str = "EAR",
    out: str | os.PathLike | None = None,
    **record: Any,
) -> dict[str, Any]:
    """Write ``views``, ``expansion_mode`` and the recorded training settings into a model file's contract.

    Args:
        path: the model file (a plain state dict, as ``model.pt``).
        views: the two views' ``[alpha, beta]`` angles in degrees the model was trained on.
        expansion_mode: the dimension expansion mode of training (``replicate`` or ``backproject``).
        network: the network's class name (part of the architecture fingerprint).
        out: where to write the converted file (default: replace ``path``).
        record: recorded, not enforced, training settings (e.g. ``drr_source``, ``physics``, ``spectrum``,
            ``recipe``, ``channels``, ``bundle_version``).

    Returns:
        the model's contract after conversion (:func:`scripts.networks.read_model_info`).
    """
    from scripts.transforms.expansion import EXPANSION_MODES

    if expansion_mode not in EXPANSION_MODES:
        raise BundleInputError(
            f"--expansion_mode {expansion_mode!r} is unknown; use one of {', '.join(EXPANSION_MODES)}."
        )
    if isinstance(views, str):
        try:
            views = json.loads(views)
        except ValueError as e:
            raise BundleInputError(f"--views {views!r} is not a list like [[0,0],[90,0]].") from e
    src = Path(path)
    state = load_state_dict_file(src)
    read_model_info(state)  # the statistics must be there already
    converted = write_contract(state, network, views, expansion_mode, record)
    dst = Path(out) if out is not None else src
    with atomic_path(dst) as tmp:
        torch.save(converted, tmp)
    info = read_model_info(dst)
    print(json.dumps({"model": str(dst), **info}))
    return info


if __name__ == "__main__":
    import fire

    try:
        fire.Fire(convert_model, serialize=lambda result: None)
    except BundleInputError as e:
        sys.exit(f"error: {e}")
