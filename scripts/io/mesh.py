# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Surface meshes of reconstructed volumes: marching cubes (scikit-image) in world millimetres, written
as STL and PLY (trimesh), with a report of whether the surface is closed.

MONAI has no marching cubes; scikit-image's is the well-kept implementation, and trimesh writes the
files and answers the watertightness and component questions.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.folder_layout import FolderLayout
from monai.transforms import MapTransform
from scripts.utils import atomic_path

if TYPE_CHECKING:  # trimesh and scikit-image are imported where used: importing the transforms stays light
    import trimesh

__all__ = ["EmptyMeshError", "MeshReport", "volume_to_mesh", "mesh_report", "write_mesh", "SaveMeshd"]

logger = logging.getLogger(__name__)

#: iso-level of the bone surface, HU (the Dice metric binarises at -500 HU too)
BONE_LEVEL_HU = -500.0


class EmptyMeshError(ValueError):
    """The volume has no voxel above the iso-level, so there is no surface."""


@dataclass
class MeshReport:
    """What was written for one volume.

    Attributes:
        vertices: number of vertices (0: the volume had no voxel above ``level``).
        faces: number of triangles.
        watertight: every edge shared by exactly two faces (a closed surface).
        components: number of connected pieces.
        area_mm2: surface area in mm^2.
        volume_mm3: enclosed volume in mm^3 (only meaningful, and only given, for a watertight mesh).
        level: the iso-level used, in the volume's units (HU).
        files: the written mesh files.
    """

    vertices: int = 0
    faces: int = 0
    watertight: bool = False
    components: int = 0
    area_mm2: float = 0.0
    volume_mm3: float | None = None
    level: float = BONE_LEVEL_HU
    files: list[str] = field(default_factory=list)


def _as_3d(volume: Any) -> np.ndarray:
    arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"expected a 3-D volume (X, Y, Z) or (1, X, Y, Z), got shape {arr.shape}.")
    return arr.astype(np.float32, copy=False)


def volume_to_mesh(
    volume: Any, affine: Any = None, level: float = BONE_LEVEL_HU, step_size: int = 1
) -> trimesh.Trimesh:
    """Iso-surface of ``volume`` at ``level`` with vertices in world coordinates (mm).

    The volume is padded by one voxel of background before marching cubes, so that a structure touching
    the crop border still gets a closed surface. Faces are wound so that normals point outwards (towards
    lower values), also for affines with a reflection.

    Args:
        volume: ``(X, Y, Z)`` or ``(1, X, Y, Z)`` array or tensor; a ``MetaTensor`` brings its affine.
        affine: 4x4 voxel-index -> world (mm) matrix; ``None`` takes ``volume.affine`` or the identity.
        level: iso-level (HU for the bundle's volumes).
        step_size: marching-cubes step in voxels (>1 gives a coarser, smaller mesh).

    Raises:
        EmptyMeshError: no voxel is above ``level``.
    """
    if affine is None:
        affine = volume.affine if isinstance(volume, MetaTensor) else np.eye(4)
    affine = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}.")
    vol = _as_3d(volume)
    vmax = float(vol.max()) if vol.size else -np.inf
    if not vmax > level:
        raise EmptyMeshError(f"no voxel above {level} (maximum {vmax:.1f}): the volume has no surface.")
    background = min(float(vol.min()), level - 1.0)
    padded = np.pad(vol, 1, mode="constant", constant_values=background)
    import trimesh
    from skimage.measure import marching_cubes

    verts, faces, _, _ = marching_cubes(padded, level=level, step_size=step_size, allow_degenerate=False)
    verts = verts.astype(np.float64) - 1.0  # undo the padding: voxel indices of the original volume
    world = verts @ affine[:3, :3].T + affine[:3, 3]
    if np.linalg.det(affine[:3, :3]) < 0:  # a reflection flips the winding
        faces = faces[:, ::-1]
    mesh = trimesh.Trimesh(vertices=world, faces=faces, process=True)
    if mesh.is_watertight and mesh.volume < 0:
        mesh.invert()
    return mesh


def mesh_report(mesh: trimesh.Trimesh, level: float = BONE_LEVEL_HU, files: Sequence[str] = ()) -> MeshReport:
    """Counts, closedness, components, area and (closed meshes only) volume of ``mesh``."""
    watertight = bool(mesh.is_watertight)
    import trimesh

    n_comp = len(trimesh.graph.connected_components(mesh.face_adjacency, nodes=np.arange(len(mesh.faces))))
    return MeshReport(
        vertices=len(mesh.vertices),
        faces=len(mesh.faces),
        watertight=watertight,
        components=int(n_comp),
        area_mm2=float(mesh.area),
        volume_mm3=float(mesh.volume) if watertight else None,
        level=float(level),
        files=list(files),
    )


def write_mesh(
    mesh: trimesh.Trimesh, path_stem: str | os.PathLike, formats: Sequence[str] = ("stl", "ply")
) -> list[str]:
    """Write ``mesh`` as ``<path_stem>.<format>`` for each format, each file atomically (binary STL / PLY)."""
    written = []
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        path = f"{os.fspath(path_stem)}.{fmt}"
        with atomic_path(path) as tmp:
            mesh.export(str(tmp), file_type=fmt)
        written.append(path)
    return written


class SaveMeshd(MapTransform):
    """Write the bone surface of each volume as mesh files and keep a :class:`MeshReport`.

    Files follow ``SaveImaged``'s layout, named after the volume's ``filename_or_obj`` meta data:
    ``<output_dir>/<name>/<name>_<postfix>.stl`` and ``.ply`` (``separate_folder=False`` drops the
    folder), vertices in world mm by the volume's affine, plus ``<name>_<postfix>.json`` with the report.
    A volume with nothing above ``level`` gets no mesh files; its report says so (``vertices = 0``) and a
    warning is logged. The report is stored in ``data[f"{key}_mesh"]`` as a dict.

    Args:
        keys: keys of the volumes (HU, channel-first ``MetaTensor`` with affine).
        output_dir: output folder.
        output_postfix: name postfix.
        formats: mesh formats trimesh writes (default STL and PLY).
        level: iso-level in HU.
        separate_folder: one sub-folder per case, as ``SaveImaged``.
        step_size: marching-cubes step in voxels.
        write_report: also write the JSON report.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike = "./eval",
        output_postfix: str = "mesh",
        formats: Sequence[str] = ("stl", "ply"),
        level: float = BONE_LEVEL_HU,
        separate_folder: bool = True,
        step_size: int = 1,
        write_report: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.layout = FolderLayout(output_dir, postfix=output_postfix, extension="", parent=separate_folder)
        self.formats = tuple(formats)
        self.level = float(level)
        self.step_size = int(step_size)
        self.write_report = write_report

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            vol = d[key]
            name = vol.meta.get("filename_or_obj", str(key)) if isinstance(vol, MetaTensor) else str(key)
            stem = os.fspath(self.layout.filename(subject=str(name)))
            try:
                mesh = volume_to_mesh(vol, level=self.level, step_size=self.step_size)
            except EmptyMeshError as e:
                logger.warning("%s: no mesh written, %s", stem, e)
                report = MeshReport(level=self.level)
            else:
                report = mesh_report(mesh, self.level, write_mesh(mesh, stem, self.formats))
                if not report.watertight:
                    logger.warning("%s: mesh is not watertight (%d components)", stem, report.components)
            if self.write_report:  # file names relative to the report, so the folder can be moved
                saved = {**asdict(report), "files": [Path(f).name for f in report.files]}
                with atomic_path(f"{stem}.json") as tmp:
                    tmp.write_text(json.dumps(saved, indent=2))
            d[f"{key}_mesh"] = asdict(report)
        return d
