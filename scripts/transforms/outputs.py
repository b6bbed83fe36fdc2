# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Per-case outputs: naming by case, and publishing a case's files all at once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from monai.config import KeysCollection
from monai.data import FolderLayout, MetaTensor
from monai.transforms import MapTransform

__all__ = ["CaseNamed", "PublishCaseOutputsd"]


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


class PublishCaseOutputsd(MapTransform):
    """Move a case's output folder from a staging folder into the output folder in one rename.

    The writers of a case (``SaveImaged``, ``SaveMeshd``, ``SavePreviewd`` with ``separate_folder=True``)
    write into ``<staging_dir>/<name>/``; this transform, placed after them, renames that folder to
    ``<output_dir>/<name>/``. A case whose writing fails half-way therefore never appears in
    ``output_dir``; a finished case replaces an earlier result of the same name. Keep ``staging_dir`` inside
    ``output_dir`` (same file system, so the rename is atomic).

    Args:
        keys: the key whose ``filename_or_obj`` names the case (as for the writers), e.g. ``"pred"``.
        staging_dir: where the writers write.
        output_dir: where finished cases go.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        staging_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.staging_dir, self.output_dir = Path(staging_dir), Path(output_dir)
        self._layout = FolderLayout(self.staging_dir, extension="", parent=True, makedirs=False)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            name = d[key].meta.get("filename_or_obj", str(key)) if isinstance(d[key], MetaTensor) else str(key)
            src = Path(self._layout.filename(subject=str(name))).parent
            if not src.is_dir():
                raise FileNotFoundError(f"no outputs of case {name!r} in {self.staging_dir}; put the writers first.")
            dst = self.output_dir / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(src, dst)
        try:
            self.staging_dir.rmdir()  # only when empty
        except OSError:
            pass
        return d
