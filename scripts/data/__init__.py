# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Data preparation: reading scans and label maps, label conventions, sources, per-vertebra crops, splits.

The command-line tool is ``python -m scripts.prepare``.
"""

from __future__ import annotations

from scripts.data.crop import VertebraCrop, crop_vertebra, labels_touching_border, to_ras_isotropic
from scripts.data.errors import DataError
from scripts.data.io import check_same_grid, load_volume, save_nifti
from scripts.data.labels import LEVELS, parse_levels, vertebra_labels
from scripts.data.sources import Case, fetch_example, find_cases
from scripts.data.split import split_items

__all__ = [
    "Case",
    "DataError",
    "LEVELS",
    "VertebraCrop",
    "check_same_grid",
    "crop_vertebra",
    "fetch_example",
    "find_cases",
    "labels_touching_border",
    "load_volume",
    "parse_levels",
    "save_nifti",
    "split_items",
    "to_ras_isotropic",
    "vertebra_labels",
]
