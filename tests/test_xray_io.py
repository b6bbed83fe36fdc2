# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""X-ray image reading: format round trips, orientation, inversion, resizing and bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scripts.io.xray import LoadXRayPair, LoadXRayPaird, XRayInputError, parse_angles, read_xray, xray_case_name
from scripts.workflow import check_xray_cases, check_xray_field


def _pattern(dtype=np.uint16, scale: float = 1000.0) -> np.ndarray:
    """A (5, 7) image whose every pixel is distinct: value = scale * (row * 7 + column) / 34 scaled."""
    a = np.arange(35, dtype=np.float64).reshape(5, 7)
    return (a * scale / 34.0).astype(dtype)


def _write_dicom(
    path: Path,
    arr: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    spacing=(0.2, 0.3),
) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.ImagerPixelSpacing = list(spacing)
    ds.PixelData = arr.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.mark.parametrize(
    "dtype,scale,suffix",
    [(np.uint8, 255, ".png"), (np.uint16, 65000, ".png"), (np.uint16, 65000, ".tif"), (np.float32, 3.5, ".tiff")],
)
def test_pil_round_trip(tmp_path, dtype, scale, suffix):
    a = _pattern(dtype, scale)
    f = tmp_path / f"x{suffix}"
    Image.fromarray(a).save(f)
    img, spacing = read_xray(f)
    assert spacing is None
    np.testing.assert_array_equal(img, a.astype(np.float64))  # row 0 of the file is row 0 of the output
    assert img[0, 6] == a[0, 6] and img[4, 0] == a[4, 0]


def test_rgb_png_uses_luminance(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgb[0, 0] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    img, _ = read_xray(tmp_path / "c.png")
    assert img.shape == (4, 6)
    assert img[1, 1] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert img[0, 0] == pytest.approx(255.0)


def test_dicom_round_trip_rescale_and_spacing(tmp_path):
    a = _pattern(np.uint16, 4000)
    _write_dicom(tmp_path / "x.dcm", a, slope=2.0, intercept=-10.0, spacing=(0.2, 0.3))
    img, spacing = read_xray(tmp_path / "x.dcm")
    np.testing.assert_allclose(img, a * 2.0 - 10.0)
    assert spacing == (0.2, 0.3)
    # no suffix: recognised by the DICM magic
    (tmp_path / "noext").write_bytes((tmp_path / "x.dcm").read_bytes())
    np.testing.assert_allclose(read_xray(tmp_path / "noext")[0], a * 2.0 - 10.0)


def test_dicom_monochrome1_is_inverted_to_display_convention(tmp_path):
    a = _pattern(np.uint16, 4000)
    _write_dicom(tmp_path / "m1.dcm", a, photometric="MONOCHROME1")
    img, _ = read_xray(tmp_path / "m1.dcm")
    np.testing.assert_allclose(img, a.max() + a.min() - a.astype(np.float64))


def test_nifti_xy_and_rowcol(tmp_path):
    a = _pattern(np.float32, 100.0)
    # ITK / MONAI convention: first file axis = x (columns)
    nib.save(nib.Nifti1Image(a.T[:, :, None], np.diag([0.3, 0.2, 1.0, 1.0])), tmp_path / "xy.nii.gz")
    img, spacing = read_xray(tmp_path / "xy.nii.gz")
    np.testing.assert_allclose(img, a)
    assert spacing == pytest.approx((0.2, 0.3))
    nib.save(nib.Nifti1Image(a, np.diag([0.2, 0.3, 1.0, 1.0])), tmp_path / "rc.nii")
    img, spacing = read_xray(tmp_path / "rc.nii", nifti_axes="rowcol")
    np.testing.assert_allclose(img, a)
    assert spacing == pytest.approx((0.2, 0.3))


def test_itk_format(tmp_path):
    import itk

    a = _pattern(np.float32, 100.0)
    im = itk.image_from_array(a)  # array [row, column] = [y, x]
    im.SetSpacing((0.3, 0.2))
    itk.imwrite(im, str(tmp_path / "x.mha"))
    img, spacing = read_xray(tmp_path / "x.mha")
    np.testing.assert_allclose(img, a)
    assert spacing == pytest.approx((0.2, 0.3))


def test_pair_orientation_inversion_resize_and_meta(tmp_path):
    a = np.arange(64, dtype=np.uint16).reshape(8, 8) * 100
    Image.fromarray(a).save(tmp_path / "ap.png")
    _write_dicom(tmp_path / "lat.dcm", a, spacing=(0.5, 0.5))
    files = [tmp_path / "ap.png", tmp_path / "lat.dcm"]
    out = LoadXRayPair(flip_rows=(True, False), flip_cols=(False, True), invert=(False, True))(
        files, angles=[0, [90, 5]], pixel_spacing=None
    )
    assert out.shape == (2, 8, 8) and out.dtype == torch.float32
    np.testing.assert_array_equal(out[0].numpy(), a[::-1, :])
    np.testing.assert_array_equal(out[1].numpy(), (a.max() + a.min() - a)[:, ::-1])
    np.testing.assert_array_equal(out.meta["angles"], [[0, 0], [90, 5]])
    assert np.isnan(out.meta["pixel_spacing"][0]).all()
    np.testing.assert_allclose(out.meta["pixel_spacing"][1], [0.5, 0.5])

    t = LoadXRayPair(spatial_size=4, transpose=True, pixel_spacing=0.25)(files)
    assert t.shape == (2, 4, 4)
    np.testing.assert_allclose(t.meta["pixel_spacing"], [[0.5, 0.5], [1.0, 1.0]])  # spacing doubles
    np.testing.assert_array_equal(t.meta["original_size"], [[8, 8], [8, 8]])
    # transposed: values grow down the rows by 100 and across the columns by 800
    assert float(t[0, 0, 1] - t[0, 0, 0]) == pytest.approx(1600.0)
    assert float(t[0, 1, 0] - t[0, 0, 0]) == pytest.approx(200.0)


def test_dictionary_version(tmp_path):
    a = _pattern(np.uint8, 255)
    for n in ("a.png", "b.png"):
        Image.fromarray(a).save(tmp_path / n)
    d = LoadXRayPaird("xray", spatial_size=(10, 14))(
        {"xray": [str(tmp_path / "a.png"), str(tmp_path / "b.png")], "id": "P1_T12"}
    )
    assert d["xray"].shape == (2, 10, 14)
    assert d["xray"].meta["filename_or_obj"] == "P1_T12"
    assert torch.equal(d["angles"], torch.tensor([[0.0, 0.0], [90.0, 0.0]]))


def test_parse_angles():
    np.testing.assert_array_equal(
        parse_angles({"a": 1} and [{"alpha": 30}, {"alpha": 90, "beta": -10}]), [[30, 0], [90, -10]]
    )
    np.testing.assert_array_equal(parse_angles(torch.tensor([[0.0, 1.0], [90.0, 2.0]])), [[0, 1], [90, 2]])


def _files(tmp_path: Path) -> set[str]:
    return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}


@pytest.mark.parametrize(
    "case,message",
    [
        ("one", "exactly two X-ray images"),
        ("one", """list both files, e.g. --xrays "['ap.png','lat.png']" on the command line, or "xray": """),
        ("sizes", "differ in size"),
        ("unreadable", "cannot read it"),
        ("missing", "not found"),
        ("range", "within [-360, 360]"),
        ("nan", "within [-360, 360]"),
        ("three_d", "2-D"),
    ],
)
def test_bad_inputs_give_clear_errors_and_write_nothing(tmp_path, case, message):
    a = _pattern(np.uint8, 255)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    good = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    files, angles = good, None
    if case == "one":
        files = good[:1]
    elif case == "sizes":
        files = [good[0], str(tmp_path / "small.png")]
    elif case == "unreadable":
        files = [good[0], str(tmp_path / "bad.png")]
    elif case == "missing":
        files = [good[0], str(tmp_path / "nope.png")]
    elif case == "range":
        angles = [0, 400]
    elif case == "nan":
        angles = [[0, math.nan], [90, 0]]
    elif case == "three_d":
        files = [good[0], str(tmp_path / "vol.nii.gz")]
    before = _files(tmp_path)
    with pytest.raises(XRayInputError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        LoadXRayPaird("xray")({"xray": files, "angles": angles})
    assert "\n" not in str(err.value)  # one line
    if case in ("sizes", "unreadable", "missing", "three_d"):
        assert Path(files[1]).name in str(err.value)  # names the file
    assert _files(tmp_path) == before


def test_check_xray_cases_lists_every_bad_case(tmp_path):
    a = _pattern(np.uint8, 255)
    Image.fromarray(a).save(tmp_path / "a.png")
    cases = [
        {"id": "ok", "xray": ["a.png", "a.png"]},
        {"id": "lonely", "xray": ["a.png"]},
        {"id": "tilted", "xray": ["a.png", "a.png"], "angles": [0, -361]},
    ]
    with pytest.raises(XRayInputError) as err:
        check_xray_cases(cases, base_dir=tmp_path)
    msg = str(err.value)
    assert "2 bad case(s)" in msg and "lonely" in msg and "tilted" in msg and "ok:" not in msg
    check_xray_cases(cases[:1], base_dir=tmp_path)


@pytest.mark.parametrize("angles", [[[0, 0], [0, 0]], [0, 5], [[90, 0], [90, 8]], [0, 180], [[-90, 0], [270, 0]]])
def test_views_along_the_same_line_are_refused(tmp_path, angles):
    a = _pattern(np.uint8, 255)
    Image.fromarray(a).save(tmp_path / "a.png")
    with pytest.raises(XRayInputError, match="nearly the same line") as err:
        parse_angles(angles)
    assert "\n" not in str(err.value) and "fix:" in str(err.value)
    with pytest.raises(XRayInputError, match="nearly the same line"):
        check_xray_cases([{"id": "twice", "xray": ["a.png", "a.png"], "angles": angles}], base_dir=tmp_path)
    # views 12 degrees apart, and AP with a view from above, are different views
    np.testing.assert_array_equal(parse_angles([0, 12]), [[0, 0], [12, 0]])
    np.testing.assert_array_equal(parse_angles([[0, 0], [0, 90]]), [[0, 0], [0, 90]])


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((5, 7), np.uint8),  # all black
        np.full((5, 7), 1000, np.uint16),  # one value
        (np.full((5, 7), 30000) + np.arange(35).reshape(5, 7) % 2).astype(np.uint16),  # std ~ 0 next to the value
    ],
)
def test_blank_images_are_refused(tmp_path, image):
    Image.fromarray(_pattern(np.uint16, 4000)).save(tmp_path / "a.png")
    Image.fromarray(image).save(tmp_path / "blank.png")
    with pytest.raises(XRayInputError, match="blank.png: the image is blank") as err:
        LoadXRayPaird("xray")({"xray": [str(tmp_path / "a.png"), str(tmp_path / "blank.png")]})
    assert "\n" not in str(err.value) and "fix:" in str(err.value)
    with pytest.raises(XRayInputError, match="dark: .*blank.png: the image is blank"):
        check_xray_cases([{"id": "dark", "xray": ["blank.png", "a.png"]}], base_dir=tmp_path)
    # a small bright object on black (a DRR of an isolated vertebra) is not blank
    sparse = np.zeros((5, 7), np.uint16)
    sparse[2, 3] = 900
    Image.fromarray(sparse).save(tmp_path / "sparse.png")
    assert LoadXRayPair()([tmp_path / "a.png", tmp_path / "sparse.png"]).shape == (2, 5, 7)


def test_check_xray_cases_checks_the_expansion_mode(tmp_path):
    a = _pattern(np.uint8, 255)
    Image.fromarray(a).save(tmp_path / "a.png")
    cases = [
        {"id": "ap_lat", "xray": ["a.png", "a.png"]},
        {"id": "oblique", "xray": ["a.png", "a.png"], "angles": [0, 45]},
        {"id": "tilted", "xray": ["a.png", "a.png"], "angles": [[0, 10], [90, 0]]},
        {"id": "top", "xray": ["a.png", "a.png"], "angles": [[0, 0], [0, 90]]},
        {"id": "lat_ap", "xray": ["a.png", "a.png"], "angles": [[-90, 0], [180, 0]]},
    ]
    with pytest.raises(XRayInputError) as err:
        check_xray_cases(cases, base_dir=tmp_path, expansion_mode="replicate")
    msg = str(err.value)
    assert "3 bad case(s)" in msg and "oblique:" in msg and "tilted:" in msg and "top:" in msg
    assert "ap_lat:" not in msg and "lat_ap:" not in msg and "backproject" in msg
    check_xray_cases(cases, base_dir=tmp_path, expansion_mode="backproject")
    with pytest.raises(XRayInputError, match="unknown"):
        check_xray_cases(cases[:1], base_dir=tmp_path, expansion_mode="replicat")


def test_check_xray_cases_runs_the_expansion_checks(tmp_path):
    a = _pattern(np.uint16, 4000)
    _write_dicom(tmp_path / "ap.dcm", a, spacing=(0.2, 0.2))
    _write_dicom(tmp_path / "lat.dcm", a, spacing=(0.3, 0.3))
    cases = [{"id": "spacings", "xray": ["ap.dcm", "lat.dcm"]}]
    with pytest.raises(XRayInputError, match="spacings: the dimension expansion refuses it.*pixel spacings"):
        check_xray_cases(cases, base_dir=tmp_path, expansion_mode="replicate")
    # a per-case spacing override is what the run uses: the check uses it too
    check_xray_cases([{**cases[0], "pixel_spacing": 0.25}], base_dir=tmp_path, expansion_mode="replicate")


@pytest.mark.parametrize(
    "files, name",
    [
        (["P1_ap.png", "P1_lat.png"], "P1"),
        (["/data/P1-AP.dcm", "/data/P1-LAT.dcm"], "P1"),
        (["ap/L1.nii.gz", "lat/L1.nii.gz"], "L1"),
        (["scan.v2_ap.png", "scan.v2_lat.png"], "scan_v2"),
        (["ap.png", "lat.png"], "ap"),
        (["img001.png", "img002.png"], "img001"),
    ],
)
def test_case_name_from_files(files, name):
    assert xray_case_name(files) == name


def test_png_takes_the_pixel_spacing_of_its_sidecar(tmp_path):
    """A PNG has no pixel spacing; the sidecar JSON of a full radiograph (``pixel_spacing_mm``) gives it, a DICOM
    file's own spacing wins over a sidecar, a JSON file of another kind is no sidecar, and a bad sidecar spacing is
    refused naming the file."""
    a = _pattern(np.uint8, 255)
    for name in ("ap", "lat"):
        Image.fromarray(a).save(tmp_path / f"{name}.png")
    (tmp_path / "ap.json").write_text(json.dumps({"sdd_mm": 1200, "pixel_spacing_mm": [0.5, 0.25]}))
    img = LoadXRayPair()([tmp_path / "ap.png", tmp_path / "lat.png"])
    np.testing.assert_allclose(img.meta["pixel_spacing"][0], [0.5, 0.25])
    assert np.isnan(img.meta["pixel_spacing"][1]).all()
    (tmp_path / "lat.json").write_text(json.dumps({"pixel_spacing_mm": 0.5}))
    np.testing.assert_allclose(LoadXRayPair()([tmp_path / "lat.png"] * 2).meta["pixel_spacing"], 0.5)
    _write_dicom(tmp_path / "d.dcm", _pattern(np.uint16, 4000), spacing=(0.2, 0.2))
    (tmp_path / "d.json").write_text(json.dumps({"pixel_spacing_mm": 0.9}))
    np.testing.assert_allclose(LoadXRayPair()([tmp_path / "d.dcm"] * 2).meta["pixel_spacing"], 0.2)
    (tmp_path / "ap.json").write_text(json.dumps([{"label": "L1", "box": [1, 2, 3, 4]}]))  # not a sidecar: ignored
    assert np.isnan(LoadXRayPair()([tmp_path / "ap.png", tmp_path / "lat.png"]).meta["pixel_spacing"][0]).all()
    (tmp_path / "ap.json").write_text(json.dumps({"pixel_spacing_mm": -1}))
    with pytest.raises(XRayInputError, match=r"ap.json: pixel_spacing_mm=-1 is not a positive pixel size"):
        LoadXRayPair()([tmp_path / "ap.png", tmp_path / "lat.png"])


def test_full_radiographs_are_refused_as_windows(tmp_path):
    """X-rays of known spacing that span far more than the model's window at the isocentre (a full radiograph) are
    refused with the ways to give full radiographs; a window cut with a margin passes; unknown spacing is not checked.
    """
    from monai.data import MetaTensor

    img = torch.zeros(2, 200, 100)
    # 200 x 100 pixels of 1 mm on the detector at sdd 1000 / sod 500: 100 x 50 mm at the isocentre; a 64 mm window
    # covers 64 * 700 / (700 - 32) = 67.1 mm there (the training system's source-to-isocentre distance, 700 mm)
    x = MetaTensor(img, meta={"pixel_spacing": np.ones((2, 2)), "xray_files": ["a.dcm", "b.dcm"]})
    with pytest.raises(XRayInputError, match=r"a.dcm spans 100 mm at the isocentre .* 2\.0 times the 50 mm"):
        check_xray_field(x, window_mm=48.0, sdd=1000.0, sod=500.0)  # a 48 mm window covers 49.7 mm there
    assert check_xray_field(x, window_mm=64.0, sdd=1000.0, sod=500.0) == pytest.approx(100 / (64 * 700 / 668))
    x.meta["pixel_spacing"] = np.array([[np.nan, np.nan], [1.0, 1.0]])  # one view of known spacing is checked
    with pytest.raises(XRayInputError, match=r"b.dcm spans 100 mm"):
        check_xray_field(x, window_mm=48.0, sdd=1000.0, sod=500.0)
    x.meta["pixel_spacing"] = np.full((2, 2), np.nan)
    assert check_xray_field(x, window_mm=8.0, sdd=1000.0, sod=500.0) is None
    # through the inference check: a PNG pair of a 430 mm detector (sidecar spacing 2 mm)
    a = (np.random.default_rng(0).random((215, 215)) * 255).astype(np.uint8)
    for name in ("ap", "lat"):
        Image.fromarray(a).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.json").write_text(json.dumps({"pixel_spacing_mm": 2.0}))
    cases = [{"id": "full", "xray": ["ap.png", "lat.png"]}]
    with pytest.raises(
        XRayInputError, match=r'full: .*ap.png spans 295 mm .* "centre_px" .* scripts.spine radiographs'
    ):
        check_xray_cases(cases, base_dir=tmp_path, window_mm=128.0)
    check_xray_cases(cases, base_dir=tmp_path)  # no window given: not checked
