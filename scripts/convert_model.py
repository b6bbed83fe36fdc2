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


#: the recorded (not enforced) training settings a conversion may write.
RECORD_KEYS = ("drr_source", "physics", "spectrum", "photon_count", "recipe", "channels", "bundle_version")


def convert_model(
    path: str | os.PathLike,
    views: Any = None,
    expansion_mode: str | None = None,
    network: str = "EAR",
    out: str | os.PathLike | None = None,
    force: bool = False,
    **record: Any,
) -> dict[str, Any]:
    """Write ``views``, ``expansion_mode`` and the recorded training settings into a model file's contract.

    Args:
        path: the model file (a plain state dict, as ``model.pt``).
        views: the two views' ``[alpha, beta]`` angles in degrees the model was trained on.
        expansion_mode: the dimension expansion mode of training (``replicate`` or ``backproject``); the views must
            suit it (``replicate`` needs AP and lateral).
        network: the network's class name (part of the architecture fingerprint).
        out: where to write the converted file (default: replace ``path``).
        force: replace the view geometry of a file that already records one.
        record: recorded, not enforced, training settings, among :data:`RECORD_KEYS`.

    Returns:
        the model's contract after conversion (:func:`scripts.networks.read_model_info`).

    Raises:
        BundleInputError: missing or unusable views or mode, an unknown record key, or a file that already records
            its views (without ``force``).
    """
    from scripts.functional import parse_angles
    from scripts.transforms.expansion import EXPANSION_MODES, check_expansion_angles

    if views is None or expansion_mode is None:
        raise BundleInputError(
            "give the views and the expansion mode the model was trained with, e.g. "
            '--views "[[0,0],[90,0]]" --expansion_mode replicate.'
        )
    if expansion_mode not in EXPANSION_MODES:
        raise BundleInputError(
            f"--expansion_mode {expansion_mode!r} is unknown; use one of {', '.join(EXPANSION_MODES)}."
        )
    if isinstance(views, str):
        try:
            views = json.loads(views)
        except ValueError as e:
            raise BundleInputError(f"--views {views!r} is not a list like [[0,0],[90,0]].") from e
    views = parse_angles(views).tolist()  # two distinct views in range
    check_expansion_angles(views, expansion_mode)
    unknown = sorted(set(record) - set(RECORD_KEYS))
    if unknown:
        raise BundleInputError(
            f"unknown record key(s) {', '.join('--' + k for k in unknown)}; the record holds {', '.join(RECORD_KEYS)}."
        )
    src = Path(path)
    state = load_state_dict_file(src)
    before = read_model_info(state)  # the statistics must be there already
    if before["views"] is not None and not force:
        raise BundleInputError(
            f"{src} already records views {before['views']} and expansion mode {before['expansion_mode']}; add "
            "--force True to replace them."
        )
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
        from scripts.errors import check_cli_flags

        check_cli_flags(convert_model, sys.argv[1:], "python -m scripts.convert_model")
        fire.Fire(convert_model, serialize=lambda result: None)
    except (BundleInputError, ValueError) as e:  # bad input: one line, no traceback
        sys.exit(f"error: {e}")
