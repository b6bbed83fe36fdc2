# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Marching-cubes meshes against analytic spheres, in world millimetres."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh
from monai.data import MetaTensor
from scripts.io.mesh import EmptyMeshError, SaveMeshd, mesh_report, volume_to_mesh

R = 12.0  # mm


def _sphere(
    affine: np.ndarray, n: int = 24, centre_idx=(11.5, 12.3, 11.8), r: float = R
) -> tuple[np.ndarray, np.ndarray]:
    """HU volume whose -500 HU iso-surface is the sphere of radius ``r`` mm (a linear ramp across it)."""
    idx = np.indices((n, n, n)).reshape(3, -1).T
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    centre = np.asarray(centre_idx) @ affine[:3, :3].T + affine[:3, 3]
    dist = np.linalg.norm(world - centre, axis=1).reshape(n, n, n)
    spacing = float(np.abs(np.linalg.det(affine[:3, :3])) ** (1 / 3))
    return np.clip(-500.0 + 200.0 * (r - dist) / spacing, -1024.0, 1500.0).astype(np.float32), centre


AFFINES = {
    "ras_shifted": np.array([[1.5, 0, 0, 10.0], [0, 1.5, 0, -5.0], [0, 0, 1.5, 100.0], [0, 0, 0, 1]]),
    "reflected": np.array([[-1.5, 0, 0, 10.0], [0, 1.5, 0, -5.0], [0, 0, 1.5, 100.0], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_sphere_mesh_is_closed_with_analytic_area_volume_in_world_mm(name):
    affine = AFFINES[name]
    vol, centre = _sphere(affine)
    mesh = volume_to_mesh(vol, affine)
    rep = mesh_report(mesh)
    assert rep.watertight and rep.components == 1
    assert rep.area_mm2 == pytest.approx(4 * math.pi * R**2, rel=0.02)
    assert rep.volume_mm3 == pytest.approx(4 / 3 * math.pi * R**3, rel=0.02)  # positive: outward normals
    radii = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert np.abs(radii - R).max() < 0.05 * 1.5  # vertices on the sphere, in world mm


def test_metatensor_affine_and_channel_first():
    affine = AFFINES["ras_shifted"]
    vol, centre = _sphere(affine)
    mesh = volume_to_mesh(MetaTensor(torch.from_numpy(vol)[None], affine=torch.from_numpy(affine)))
    assert np.allclose(mesh.vertices.mean(axis=0), centre, atol=0.1)


def test_structure_cut_by_border_is_closed_and_two_spheres_are_two_components():
    affine = np.eye(4)
    vol, _ = _sphere(affine, n=20, centre_idx=(2.0, 10.0, 10.0), r=6.0)  # cut by the x = 0 face
    assert vol[0].max() > -500
    assert mesh_report(volume_to_mesh(vol, affine)).watertight
    a, _ = _sphere(affine, n=30, centre_idx=(7, 7, 7), r=4.0)
    b, _ = _sphere(affine, n=30, centre_idx=(21, 21, 21), r=4.0)
    rep = mesh_report(volume_to_mesh(np.maximum(a, b), affine))
    assert rep.watertight and rep.components == 2


def test_empty_volume_raises():
    with pytest.raises(EmptyMeshError, match="no voxel above -500"):
        volume_to_mesh(np.full((8, 8, 8), -1024.0), np.eye(4))


def test_save_meshd_writes_stl_ply_and_report(tmp_path):
    affine = AFFINES["reflected"]
    vol, centre = _sphere(affine)
    img = MetaTensor(
        torch.from_numpy(vol)[None], affine=torch.from_numpy(affine), meta={"filename_or_obj": "/x/P1_T12.nii.gz"}
    )
    empty = MetaTensor(torch.full((1, 6, 6, 6), -1024.0), meta={"filename_or_obj": "P1_L1"})
    t = SaveMeshd(["pred", "empty"], output_dir=tmp_path)
    out = t({"pred": img, "empty": empty})
    folder = tmp_path / "P1_T12"
    assert sorted(p.name for p in folder.iterdir()) == ["P1_T12_mesh.json", "P1_T12_mesh.ply", "P1_T12_mesh.stl"]
    for suffix in ("stl", "ply"):
        m = trimesh.load(folder / f"P1_T12_mesh.{suffix}")
        assert m.is_watertight
        assert m.volume == pytest.approx(4 / 3 * math.pi * R**3, rel=0.02)
        assert np.allclose(m.vertices.mean(axis=0), centre, atol=0.1)
    rep = json.loads((folder / "P1_T12_mesh.json").read_text())
    assert rep["watertight"] and rep["components"] == 1 and len(rep["files"]) == 2
    assert out["pred_mesh"]["watertight"]
    # nothing above -500 HU: only the report, saying so
    assert sorted(p.name for p in (tmp_path / "P1_L1").iterdir()) == ["P1_L1_mesh.json"]
    assert out["empty_mesh"]["vertices"] == 0 and not out["empty_mesh"]["watertight"]
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temporary files
