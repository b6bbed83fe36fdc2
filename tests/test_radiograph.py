# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Full radiographs with their geometry: reading, writing, locating the vertebra and cutting the model's windows.

A phantom (a soft-tissue cylinder with bone spheres, 80^3 voxels of 2 mm) is projected onto a full detector
(256 x 256 pixels of 1 mm, sdd 1200, sod 800 mm) and written as DICOM files; the windows cut from the files for a
sphere's centre are compared with the phantom projected directly in the model's window geometry (sdd 1020, sod
700 mm, 32 pixels for a 32^3 grid of 2 mm) centred on that sphere, by normalised cross-correlation (NCC).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from scripts.drr.geometry import ConeBeamGeometry, grid_affine
from scripts.drr.projector import DRRProjector
from scripts.drr.windows import RadiographView, closest_point_of_rays, locate_centre, pair_views
from scripts.errors import BundleInputError
from scripts.io.radiograph import (
    LoadRadiographsd,
    check_radiograph_case,
    cut_radiograph_windows,
    read_radiograph,
    system_to_world_affine,
    write_projected_radiographs,
    write_radiograph_dicom,
    write_radiograph_image,
)
from scripts.io.xray import XRayInputError

N, VOXEL = 80, 2.0
ROI, SPACING = 32, 2.0
REAL = ConeBeamGeometry(1200.0, 800.0, (256, 256), (1.0, 1.0))
#: the default test projector: monochromatic, no noise, on the real detector
MONO = DRRProjector(REAL, physics="mono", photon_count=None)
SPHERES = [((10.0, -15.0, 20.0), 12.0, 900.0), ((-25.0, 10.0, -10.0), 9.0, 700.0), ((20.0, 20.0, -30.0), 7.0, 1200.0)]
TARGET = np.asarray(SPHERES[0][0])
#: where the system's isocentre is in the phantom's world frame (so world and system frames differ)
ISO_WORLD = np.asarray([3.0, -2.0, 5.0])
APLAT = [[0.0, 0.0], [90.0, 0.0]]


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    aff = grid_affine((N, N, N), VOXEL, ISO_WORLD).numpy()
    idx = np.stack(np.meshgrid(*[np.arange(N)] * 3, indexing="ij"), -1)
    xyz = idx * VOXEL + aff[:3, 3]
    hu = np.full((N, N, N), -1000.0, np.float32)
    rel = xyz - ISO_WORLD
    hu[(rel[..., 0] / 70) ** 2 + (rel[..., 1] / 55) ** 2 <= 1] = 40.0
    for centre, radius, value in SPHERES:
        hu[((rel - np.asarray(centre)) ** 2).sum(-1) <= radius**2] = value
    return hu, aff


def ncc(a, b) -> float:
    a, b = (torch.as_tensor(np.asarray(x, dtype=np.float64)).flatten() for x in (a, b))
    a, b = (a - a.mean()) / a.std(correction=0), (b - b.mean()) / b.std(correction=0)
    return float((a * b).mean())


@pytest.fixture(scope="module")
def phantom():
    return _phantom()


@pytest.fixture(scope="module")
def direct(phantom):
    """The phantom projected in the model's window geometry, isocentre on the target sphere (AP, lateral)."""
    hu, aff = phantom
    geo = ConeBeamGeometry.for_crop(ROI, SPACING)
    return DRRProjector(geo, physics="mono", photon_count=None)(
        torch.as_tensor(hu[None]), aff, APLAT, TARGET + ISO_WORLD
    )


@pytest.fixture(scope="module")
def files(phantom, tmp_path_factory) -> dict:
    """AP and lateral DICOM radiographs of the phantom (isocentre ISO_WORLD, system frame = world - ISO_WORLD)."""
    hu, aff = phantom
    return write_projected_radiographs(
        hu, aff, tmp_path_factory.mktemp("dicom"), ISO_WORLD, REAL.to_dict(), projector=MONO
    )


def _centres_px(angles=APLAT, point=TARGET) -> list[list[float]]:
    view_px = REAL.project_points(np.asarray(point)[None], angles)[:, 0]  # (col, row)
    return view_px.flip(-1).tolist()


def _edit(src: Path, dst: Path, **changes) -> Path:
    """A copy of a DICOM file with tags changed (value) or removed (None)."""
    ds = pydicom.dcmread(str(src))
    for key, value in changes.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(str(dst))
    return dst


def _windows(paths, **kw):
    kw.setdefault("centre_mm", TARGET)
    return cut_radiograph_windows(paths, roi_size=ROI, spacing=SPACING, **kw)


# -- the windows match the model's own projection ---------------------------------------------------------------
def test_windows_from_dicom_match_direct_projection(files, direct):
    win, geo = _windows(files["files"])
    assert win.shape == (2, ROI, ROI)
    assert [ncc(win[k], direct[k]) for k in range(2)] >= [0.99, 0.99], "NCC of each view >= 0.99"
    np.testing.assert_allclose(win.meta["angles"], APLAT)
    np.testing.assert_allclose(win.meta["pixel_spacing"][0], ConeBeamGeometry.for_crop(ROI, SPACING).pixel_spacing)
    np.testing.assert_allclose(geo["isocentre"], TARGET)
    # the reconstruction grid is centred on the vertebra in the system frame, and on it in the CT's world frame
    centre_voxel = np.asarray([(ROI - 1) / 2] * 3 + [1.0])
    np.testing.assert_allclose((geo["affine"] @ centre_voxel)[:3], TARGET, atol=1e-9)
    world = system_to_world_affine(geo["affine"], win.meta["world_to_system"])
    np.testing.assert_allclose((world @ centre_voxel)[:3], TARGET + ISO_WORLD, atol=1e-9)


def test_two_image_centres_give_the_point(files):
    by_point, _ = _windows(files["files"])
    win, geo = _windows(files["files"], centre_mm=None, centre_px=_centres_px())
    np.testing.assert_allclose(geo["isocentre"], TARGET, atol=1e-6)
    assert win.meta["radiograph_ray_gap_mm"] < 1e-6
    torch.testing.assert_close(win, by_point, atol=1e-4, rtol=0)


def test_opposite_and_swapped_views(phantom, direct, tmp_path):
    """PA and a left lateral (source on the right), listed lateral first, serve the model's AP and lateral."""
    hu, aff = phantom
    out = write_projected_radiographs(
        hu,
        aff,
        tmp_path,
        ISO_WORLD,
        REAL.to_dict(),
        angles=[[-90.0, 0.0], [180.0, 0.0]],
        names=("ll", "pa"),
        projector=MONO,
    )
    win, _ = _windows(out["files"])
    assert [Path(f).name for f in win.meta["xray_files"]] == ["pa.dcm", "ll.dcm"]
    # the depth magnification runs the other way (module docstring of scripts.drr.windows): a little lower NCC
    assert [ncc(win[k], direct[k]) for k in range(2)] >= [0.985, 0.985]


def test_sidecar_png_and_tiff_read_as_the_dicom(phantom, files, tmp_path):
    ref, _ = _windows(files["files"])
    for fmt in ("tif", "png"):
        out = write_radiograph_pair(phantom, tmp_path / fmt, fmt)
        win, _ = _windows(out)
        assert min(ncc(win[k], ref[k]) for k in range(2)) > 0.9999, fmt
    side = json.loads((tmp_path / "png" / "ap.json").read_text())
    assert {"sdd_mm", "sod_mm", "pixel_spacing_mm", "angle_deg", "patient_orientation"} <= set(side)


def write_radiograph_pair(phantom, folder: Path, fmt: str) -> list[str]:
    hu, aff = phantom
    return write_projected_radiographs(hu, aff, folder, ISO_WORLD, REAL.to_dict(), projector=MONO, fmt=fmt)["files"]


# -- DICOM files in other conventions ---------------------------------------------------------------------------
def test_monochrome1_is_inverted(files, tmp_path):
    ds = pydicom.dcmread(files["files"][0])
    src = read_radiograph(files["files"][0])
    path = write_radiograph_dicom(
        src.image, tmp_path / "m1.dcm", 1200.0, 800.0, 1.0, view="AP", photometric="MONOCHROME1"
    )
    assert pydicom.dcmread(str(path)).PhotometricInterpretation == "MONOCHROME1"
    back = read_radiograph(path)
    np.testing.assert_allclose(back.image, src.image, atol=2e-4 * float(np.ptp(src.image)))
    assert ds.PhotometricInterpretation == "MONOCHROME2"


def test_pixel_spacing_only_and_calibrated_spacing(files, tmp_path):
    ref, _ = _windows(files["files"])
    ap, lat = (Path(f) for f in files["files"])
    plain = _edit(ap, tmp_path / "plain.dcm", ImagerPixelSpacing=None, PixelSpacing=["1", "1"])
    assert read_radiograph(plain).sources["pixel_spacing"] == "PixelSpacing"
    win, _ = _windows([plain, lat])
    torch.testing.assert_close(win, ref, atol=1e-5, rtol=0)
    # PixelSpacing calibrated in the patient: taken in the isocentre plane (1 mm on the detector = 2/3 mm there)
    calibrated = _edit(
        ap,
        tmp_path / "cal.dcm",
        ImagerPixelSpacing=None,
        PixelSpacing=["0.6666666667"] * 2,
        PixelSpacingCalibrationType="GEOMETRY",
    )
    np.testing.assert_allclose(read_radiograph(calibrated).pixel_spacing, (1.0, 1.0), rtol=1e-8)


def test_no_isocentre_tag(files, tmp_path):
    ref, _ = _windows(files["files"])
    ap, lat = (Path(f) for f in files["files"])
    no_sod = {"DistanceSourceToIsocenter": None, "DistanceSourceToPatient": None}
    ap_mag = _edit(ap, tmp_path / "ap_mag.dcm", **no_sod)  # sdd / EstimatedRadiographicMagnificationFactor
    assert read_radiograph(ap_mag).sod == pytest.approx(800.0, rel=1e-5)
    bare = {**no_sod, "EstimatedRadiographicMagnificationFactor": None}
    ap_bare = _edit(ap, tmp_path / "ap_bare.dcm", **bare)
    lat_bare = _edit(lat, tmp_path / "lat_bare.dcm", **bare)
    assert read_radiograph(ap_bare).sod is None
    # one view without the distance takes the other's (shared isocentre and source distance)
    win, _ = _windows([ap_bare, lat])
    torch.testing.assert_close(win, ref, atol=1e-5, rtol=0)
    # neither: refused naming the tags; the case's sod_mm fixes it
    with pytest.raises(XRayInputError, match=r"DistanceSourceToIsocenter \(0018,9402\)") as err:
        _windows([ap_bare, lat_bare])
    assert "\n" not in str(err.value) and "sod_mm" in str(err.value)
    win, _ = _windows([ap_bare, lat_bare], source_sod=800.0)
    torch.testing.assert_close(win, ref, atol=1e-5, rtol=0)


def test_view_from_positioner_angle_and_patient_orientation(files, tmp_path):
    ref = read_radiograph(files["files"][1])  # lateral, source on the left (alpha 90)
    no_view = _edit(Path(files["files"][1]), tmp_path / "angle.dcm", ViewPosition="")
    got = read_radiograph(no_view)
    assert got.angles == pytest.approx((90.0, 0.0)) and got.sources["angles"] == "PositionerPrimaryAngle"
    # stored mirrored (anterior on the right) and transposed; PatientOrientation says so
    ds = pydicom.dcmread(files["files"][1])
    assert list(ds.PatientOrientation) == ["P", "F"]
    for name, pixels, letters, centre in (
        ("mirror", ds.pixel_array[:, ::-1], ["A", "F"], lambda r, c: (r, 255 - c)),
        ("transposed", ds.pixel_array.T, ["F", "P"], lambda r, c: (c, r)),
    ):
        ds2 = pydicom.dcmread(files["files"][1])
        ds2.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds2.PatientOrientation = letters
        ds2.save_as(str(tmp_path / f"{name}.dcm"))
        got = read_radiograph(tmp_path / f"{name}.dcm")
        np.testing.assert_allclose(got.image, ref.image)
        assert got.to_image_px(centre(10.0, 20.0)) == pytest.approx((10.0, 20.0))
    ds2.PatientOrientation = ["H", "F"]
    ds2.save_as(str(tmp_path / "bad.dcm"))
    with pytest.raises(XRayInputError, match="PatientOrientation"):
        read_radiograph(tmp_path / "bad.dcm")


def test_world_to_system_recorded(files):
    for f in files["files"]:
        expected = np.eye(4)
        expected[:3, 3] = -ISO_WORLD
        np.testing.assert_allclose(read_radiograph(f).world_to_system, expected)


# -- refusals ---------------------------------------------------------------------------------------------------
def test_missing_tags_name_them(files, tmp_path):
    bad = _edit(Path(files["files"][0]), tmp_path / "bad.dcm", DistanceSourceToDetector=None, ImagerPixelSpacing=None)
    with pytest.raises(XRayInputError) as err:
        read_radiograph(bad)
    text = str(err.value)
    assert "\n" not in text and "bad.dcm" in text
    assert "DistanceSourceToDetector (0018,1110)" in text and "ImagerPixelSpacing (0018,1164)" in text
    assert "ViewPosition" not in text, "only the missing ones"
    # a sidecar completes the file
    (tmp_path / "bad.json").write_text(json.dumps({"sdd_mm": 1200, "pixel_spacing_mm": 1.0}))
    assert read_radiograph(bad).sdd == 1200.0


def test_missing_sidecar_keys_name_them(tmp_path):
    img = np.random.default_rng(0).random((64, 64))
    png, side = write_radiograph_image(img, tmp_path / "x.png", 1200, 800, 1.0, view="AP")
    side.write_text(json.dumps({"sod_mm": 800, "view": "AP"}))
    with pytest.raises(XRayInputError, match=r"sdd_mm; pixel_spacing_mm") as err:
        read_radiograph(png)
    assert "\n" not in str(err.value)
    side.unlink()
    with pytest.raises(XRayInputError, match="sidecar JSON x.json"):
        read_radiograph(png)
    side.write_text(json.dumps({"sdd_mm": 1200, "pixel_spacing_mm": 1.0, "view": "OBLIQUE"}))
    with pytest.raises(XRayInputError, match="view='OBLIQUE'"):
        read_radiograph(png)


def test_rays_that_miss_are_refused_with_the_distance(files):
    centres = _centres_px()
    centres[0][0] += 10.0  # the AP centre 10 pixels lower: the rays pass about 6.7 mm apart
    views = [RadiographView(1200.0, 800.0, (256, 256), (1.0, 1.0), tuple(a)) for a in APLAT]
    (s1, d1), (s2, d2) = (v.rays([c]) for v, c in zip(views, centres))
    _, gap = closest_point_of_rays(s1, d1[0], s2, d2[0])
    assert 5.0 < gap < 8.0
    with pytest.raises(XRayInputError, match=r"miss each other by (\d+\.\d) mm \(tolerance 5 mm\)") as err:
        _windows(files["files"], centre_mm=None, centre_px=centres)
    assert float(re.search(r"by (\d+\.\d) mm", str(err.value)).group(1)) == pytest.approx(gap, abs=0.06)
    # within a wider tolerance the midpoint is taken
    _, geo = _windows(files["files"], centre_mm=None, centre_px=centres, tolerance_mm=10.0)
    assert np.linalg.norm(geo["isocentre"] - TARGET) < gap


def test_centre_outside_the_image_is_refused(files):
    centres = _centres_px()
    centres[1] = [300.0, 100.0]
    with pytest.raises(XRayInputError, match=r"lat.dcm: the vertebra's centre \(row 300, col 100\) lies outside"):
        _windows(files["files"], centre_mm=None, centre_px=centres)
    with pytest.raises(XRayInputError, match="outside its 256 x 256 image"):
        _windows(files["files"], centre_mm=[0.0, 0.0, 400.0])
    with pytest.raises(XRayInputError, match="not both and not neither"):
        _windows(files["files"], centre_mm=None)


def test_views_that_are_not_the_models_are_refused(phantom, tmp_path):
    hu, aff = phantom
    out = write_projected_radiographs(
        hu, aff, tmp_path, ISO_WORLD, REAL.to_dict(), angles=[[0, 0], [45, 0]], projector=MONO
    )
    with pytest.raises(XRayInputError, match=r"not the model's views \(\[0, 0\], \[90, 0\]\) within 5 degrees"):
        _windows(out["files"])
    assert pair_views([[0, 0], [-90, 0]], APLAT) == [0, 1]
    assert pair_views([[90, 2], [180, 0]], APLAT) == [1, 0]


def test_locate_centre_is_pure_geometry():
    views = [RadiographView(1000.0, 600.0, (100, 120), (0.5, 0.5), tuple(a)) for a in APLAT]
    point = torch.tensor([4.0, -3.0, 7.0], dtype=torch.float64)
    px = torch.stack([v.project(point[None])[0][0] for v in views])
    centre, gap, _ = locate_centre(views, px)
    torch.testing.assert_close(centre, point)
    assert gap < 1e-9
    with pytest.raises(BundleInputError):
        locate_centre(views, px, centre_mm=point)


# -- in the inference pipeline ----------------------------------------------------------------------------------
def test_load_radiographs_then_expansion(files, direct):
    from monai.transforms import Compose
    from scripts.io.xray import LoadXRayPaird
    from scripts.transforms import DimensionExpansiond

    chain = Compose(
        [
            LoadXRayPaird(keys="xray", spatial_size=[ROI, ROI], allow_missing_keys=True),
            LoadRadiographsd(keys="radiographs", roi_size=ROI, spacing=SPACING, allow_missing_keys=True),
            DimensionExpansiond(keys="xray", output_keys="image", spatial_size=ROI, spacing=SPACING),
        ]
    )
    case = {"radiographs": files["files"], "centre_px": _centres_px(), "id": "P1_L1", "angles": APLAT}
    check_radiograph_case(case)
    out = chain(case)
    assert out["image"].shape == (2, ROI, ROI, ROI)
    np.testing.assert_allclose(out["image"].affine.numpy(), out["xray_geometry"]["affine"], atol=1e-6)
    centre_voxel = np.asarray([(ROI - 1) / 2] * 3 + [1.0])
    np.testing.assert_allclose((out["image"].affine.numpy() @ centre_voxel)[:3], TARGET, atol=1e-4)
    assert out["xray"].meta["filename_or_obj"] == "P1_L1"
    assert min(ncc(out["xray"][k], direct[k]) for k in range(2)) >= 0.99
    with pytest.raises(XRayInputError, match="miss each other"):
        check_radiograph_case({**case, "centre_px": [[10, 10], [200, 200]]})


def test_inference_config_reconstructs_from_radiograph_files(files, tmp_path):
    """configs/inference.json with a datalist case of two DICOM radiographs and the vertebra's image centres."""
    import nibabel as nib
    from monai.bundle import ConfigWorkflow
    from scripts.networks import EAR, attach_model_info

    root = Path(__file__).resolve().parents[1]
    channels = [4, 8, 8, 16, 16]
    net = EAR(in_channels=2, out_channels=1, channels=channels, use_abs=True, use_fem=True, use_eam=True)
    attach_model_info(net, {"gt_mean": -500.0, "gt_std": 500.0}, SPACING, ROI, APLAT, "replicate", {})
    (tmp_path / "models").mkdir()
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    names = [Path(f).name for f in files["files"]]
    for name, f in zip(names, files["files"]):
        (tmp_path / name).write_bytes(Path(f).read_bytes())
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps([{"radiographs": names, "centre_px": _centres_px(), "id": "P1_L1"}]))
    wf = ConfigWorkflow(
        config_file=str(root / "configs" / "inference.json"),
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(root),
        datalist=str(datalist),
        output_dir=str(tmp_path / "out"),
        ckpt_dir=str(tmp_path / "models"),
        channels=channels,
        roi_size=ROI,
        spacing=SPACING,
    )
    wf.initialize()
    wf.run()
    img = nib.load(str(tmp_path / "out" / "P1_L1" / "P1_L1_hu.nii.gz"))
    assert img.shape == (ROI, ROI, ROI)
    centre = img.affine @ np.asarray([(ROI - 1) / 2] * 3 + [1.0])
    np.testing.assert_allclose(centre[:3], TARGET, atol=1e-3, err_msg="the volume sits on the vertebra (system frame)")
    assert (tmp_path / "out" / "P1_L1" / "P1_L1_preview.png").is_file()


def test_a_clipped_radiograph_is_refused(tmp_path):
    """A 16-bit radiograph cast to 8 bits without scaling: nearly every pixel at 255."""
    img = np.full((64, 64), 255.0)
    img[30:34, 30:34] = np.random.default_rng(0).random((4, 4)) * 200
    png, _ = write_radiograph_image(img, tmp_path / "clipped.png", 1200, 800, 1.0, view="AP")
    with pytest.raises(XRayInputError, match=r"clipped.png: 99.\d\d% of the pixels are at the image's highest value"):
        read_radiograph(png)
    ok = np.random.default_rng(1).random((64, 64))
    ok[:, :24] = 0.0  # an unexposed border over a third of the image is kept
    png, _ = write_radiograph_image(ok, tmp_path / "border.png", 1200, 800, 1.0, view="AP")
    assert read_radiograph(png).image.shape == (64, 64)
