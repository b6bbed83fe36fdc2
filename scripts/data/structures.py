# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""TotalSegmentator's per-structure masks (``segmentations/vertebrae_<level>``) as one vertebra label map.

``python -m scripts.prepare`` and ``python -m scripts.simulate radiographs`` read such folders. (A module of its own:
it joins the reading of :mod:`scripts.data.io` and the levels of :mod:`scripts.data.labels`, which the scan finder
:mod:`scripts.data.sources` imports separately.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from monai.data import MetaTensor
from scripts.data.errors import DataError
from scripts.data.io import check_same_grid, load_volume
from scripts.data.labels import LEVELS, level_from_name

__all__ = ["combine_structure_masks"]


def combine_structure_masks(paths: list[str | os.PathLike], source: str | os.PathLike) -> tuple[MetaTensor, dict]:
    """One label map from per-structure binary masks (TotalSegmentator's ``segmentations/vertebrae_<level>``).

    Args:
        paths: the masks; names that are no vertebra level are left out.
        source: the folder they come from, named in errors.

    Returns:
        ``(label map, {value: level})``: the map on the masks' grid, each level's value its position in
        :data:`scripts.data.labels.LEVELS` plus one, and the levels whose masks are not empty.

    Raises:
        DataError: no ``vertebrae_*`` mask, all of them empty, or masks on different grids.
    """
    first = None
    combined = None
    table: dict[int, str] = {}
    for path in paths:
        level = level_from_name(Path(path).name.split(".")[0])
        if level is None:
            continue
        m = load_volume(path, "structure mask")
        if first is None:
            first, combined = (path, m), m * 0
        else:
            check_same_grid(first[1], m, path, first[0])
        value = LEVELS.index(level) + 1
        combined[m > 0.5] = value
        table[value] = level
    if combined is None:
        raise DataError(source, "no vertebrae_* masks", "give TotalSegmentator's segmentations folder")
    present = set(np.unique(np.asarray(combined[0]).astype(np.int32)).tolist()) - {0}
    found = {v: lvl for v, lvl in table.items() if v in present}
    if not found:
        raise DataError(source, "all vertebrae_* masks are empty", "check the segmentation")
    return combined, found
