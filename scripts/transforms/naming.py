# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Naming of outputs by case."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["CaseNamed"]


class CaseNamed(MapTransform):
    """Set ``meta["filename_or_obj"]`` of ``keys`` to the item's case name (default its ``id``).

    MONAI's writers (``SaveImaged``) and the bundle's ``SaveMeshd`` / ``SavePreviewd`` name their files after
    ``filename_or_obj``; a prediction made from a simulated X-ray would otherwise be named after the CT crop it
    was simulated from (e.g. ``..._gt``).

    Args:
        keys: MetaTensor entries to rename.
        name_key: item entry holding the case name.
        allow_missing_keys: skip missing keys.
    """

    def __init__(self, keys: KeysCollection, name_key: str = "id", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.name_key = name_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.name_key not in d:
            raise KeyError(f"CaseNamed: the item has no '{self.name_key}' entry to name its outputs by.")
        for key in self.key_iterator(d):
            if isinstance(d[key], MetaTensor):
                d[key].meta["filename_or_obj"] = str(d[self.name_key])
        return d
