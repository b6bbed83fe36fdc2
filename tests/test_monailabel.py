# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The MONAI Label adapter without MONAI Label: pair resolution, errors, outputs outside the bundle, and a
real reconstruction of the embedded example through the adapter's request function.

The server itself is checked by ``python -m scripts.tools.monailabel_check`` (docs/monailabel.md), which needs the
separate MONAI Label environment.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scripts.errors import BundleInputError
from scripts.monailabel import (
    PairError,
    XRayPair,
    check_outside_bundle,
    image_stem,
    infer_request,
    resolve_pair,
    spine_request,
    write_app_dir,
)
from scripts.tools.monailabel_check import matching_torchvision, parse_multipart, requirements_for_monailabel

ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIGS = "configs/inference.json,configs/cpu.json"


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16)).save(path)
    return path


# --- pair resolution -------------------------------------------------------------------------------------


@pytest.mark.parametrize("asked", ["P1_ap.png", "P1_lat.png"])
def test_naming_convention_pairs_either_view_ap_first(tmp_path, asked):
    ap, lat = _png(tmp_path / "P1_ap.png"), _png(tmp_path / "P1_lat.png", 1)
    _png(tmp_path / "P2_lat.png")  # another case's view is not a candidate
    pair = resolve_pair(tmp_path / asked)
    assert pair == XRayPair("P1", (str(ap), str(lat)), ((0.0, 0.0), (90.0, 0.0)))
    assert pair.source == "naming convention"
    assert pair.datalist_entry() == {"id": "P1", "xray": [str(ap), str(lat)], "angles": [[0.0, 0.0], [90.0, 0.0]]}


def test_naming_convention_ignores_letter_case_separators_and_formats(tmp_path):
    ap = _png(tmp_path / "L1-AP.png")
    lat = tmp_path / "L1.Lateral.nii.gz"
    lat.write_bytes(b"not read here")
    pair = resolve_pair(lat)
    assert pair.case_id == "L1" and pair.xray == (str(ap), str(lat))
    assert image_stem(lat) == "L1.Lateral" and image_stem("a_ap.dcm") == "a_ap"


def test_missing_partner_names_the_expected_files(tmp_path):
    _png(tmp_path / "P1_ap.png")
    with pytest.raises(PairError, match=r"P1_ap\.png: the lateral view is missing: expected P1_lat\.<ext> or "):
        resolve_pair(tmp_path / "P1_ap.png")
    _png(tmp_path / "P3_lateral.png")
    with pytest.raises(PairError, match=r"the AP view is missing: expected P3_ap\.<ext>.*write P3\.json"):
        resolve_pair(tmp_path / "P3_lateral.png")


def test_two_partners_are_refused(tmp_path):
    _png(tmp_path / "P1_ap.png")
    _png(tmp_path / "P1_lat.png")
    _png(tmp_path / "P1_lateral.tif")
    with pytest.raises(PairError, match=r"2 lateral views match \(\['P1_lat.png', 'P1_lateral.tif'\]\); keep one"):
        resolve_pair(tmp_path / "P1_ap.png")


def test_a_name_outside_the_convention_needs_a_sidecar(tmp_path):
    _png(tmp_path / "front.png")
    with pytest.raises(PairError, match=r"no sidecar front\.json and the name does not follow the naming convention"):
        resolve_pair(tmp_path / "front.png")
    with pytest.raises(PairError, match="does not exist"):
        resolve_pair(tmp_path / "absent_ap.png")


def test_sidecar_gives_the_pair_angles_spacing_and_id(tmp_path):
    front, side = _png(tmp_path / "front.png"), _png(tmp_path / "views" / "side.png", 1)
    sidecar = {"xray": ["front.png", "views/side.png"], "angles": [[0, 0], [-90, 0]], "pixel_spacing": 0.4, "id": "L2"}
    (tmp_path / "front.json").write_text(json.dumps(sidecar))
    pair = resolve_pair(front)
    assert pair.xray == (str(front), str(side)) and pair.angles == ((0.0, 0.0), (-90.0, 0.0))
    assert pair.case_id == "L2" and pair.pixel_spacing == 0.4 and pair.source == "sidecar front.json"
    assert pair.datalist_entry()["pixel_spacing"] == 0.4


def test_case_sidecar_overrides_the_naming_convention(tmp_path):
    ap, lat = _png(tmp_path / "P1_ap.png"), _png(tmp_path / "P1_lat.png", 1)
    (tmp_path / "P1.json").write_text(json.dumps({"xray": ["P1_lat.png", "P1_ap.png"], "angles": [90, 0]}))
    pair = resolve_pair(ap)
    assert pair.xray == (str(lat), str(ap)) and pair.angles == ((90.0, 0.0), (0.0, 0.0))
    assert pair.case_id == "P1" and pair.source == "sidecar P1.json"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not readable JSON"),
        ('["a.png", "b.png"]', "must hold one JSON object"),
        ('{"xray": ["front.png", "side.png"], "view": 1}', r"unknown keys \['view'\]"),
        ('{"xray": ["front.png"]}', "exactly two image paths"),
        ('{"xray": ["front.png", "gone.png"]}', "which do not exist"),
        ('{"xray": ["front.png", "front.png"]}', "lists front.png twice"),
        ('{"xray": ["side.png", "other.png"]}', "but not the requested image front.png"),
        ('{"xray": ["front.png", "side.png"], "angles": [[0, 0]]}', "must be two finite"),
        ('{"xray": ["front.png", "side.png"], "pixel_spacing": -1}', "must be one or two positive numbers"),
    ],
)
def test_bad_sidecars_say_what_to_fix(tmp_path, content, message):
    for name in ("front.png", "side.png", "other.png"):
        _png(tmp_path / name)
    (tmp_path / "front.json").write_text(content)
    with pytest.raises(PairError, match=message):
        resolve_pair(tmp_path / "front.png")


def test_case_ids_cannot_escape_the_output_folder(tmp_path):
    front = _png(tmp_path / "front.png")
    _png(tmp_path / "side.png")
    (tmp_path / "front.json").write_text(json.dumps({"xray": ["front.png", "side.png"], "id": "../up/x"}))
    case_id = resolve_pair(front).case_id
    assert "/" not in case_id and not case_id.startswith(".")


# --- nothing into the bundle -----------------------------------------------------------------------------


def test_work_folders_inside_the_bundle_are_refused(tmp_path):
    assert check_outside_bundle(tmp_path) == tmp_path.resolve()
    for inside in (ROOT, ROOT / "outputs", ROOT / "scripts" / "monailabel"):
        with pytest.raises(BundleInputError, match="inside the bundle folder"):
            check_outside_bundle(inside)
    with pytest.raises(BundleInputError, match="inside the bundle folder"):
        write_app_dir(ROOT / "app")
    _png(tmp_path / "P1_ap.png")
    _png(tmp_path / "P1_lat.png")
    with pytest.raises(BundleInputError, match="inside the bundle folder"):
        infer_request({"image": str(tmp_path / "P1_ap.png")}, work_root=ROOT / "outputs")
    assert not (ROOT / "app").exists()


def test_app_folder_loads_the_app_from_this_bundle(tmp_path):
    main = write_app_dir(tmp_path / "app")
    text = main.read_text()
    assert main == (tmp_path / "app" / "main.py").resolve()
    assert f"BUNDLE_ROOT = {str(ROOT)!r}" in text and "from scripts.monailabel.app import EARApp" in text
    compile(text, str(main), "exec")


@pytest.mark.parametrize(
    "request_, message",
    [({"image": None}, "must be a datastore image id or a file path"), ({"image": "x", "result": "stl"}, "unknown")],
)
def test_bad_requests_are_refused_before_any_work(tmp_path, request_, message):
    with pytest.raises(BundleInputError, match=message):
        infer_request(request_, work_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_importing_the_adapter_needs_no_monai_label():
    probe = "import sys, scripts.monailabel; print(sorted({'monailabel', 'fastapi', 'torch'} & set(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


def test_the_monai_label_classes_say_how_to_get_monai_label():
    try:
        import monailabel  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs MONAI Label .*scripts.tools.monailabel_check --setup_only"):
            import scripts.monailabel.task  # noqa: F401
    else:
        pytest.skip("monailabel is installed in this environment")


def test_the_guide_names_what_exists():
    text = (ROOT / "docs" / "monailabel.md").read_text()
    modules = set(re.findall(r"python -m (scripts(?:\.\w+)*)", text))
    assert {"scripts.monailabel", "scripts.tools.monailabel_check"} <= modules
    for name in sorted(modules):
        assert importlib.util.find_spec(name) is not None, f"docs/monailabel.md names {name}, which does not exist"
    for path in sorted(set(re.findall(r"(?:configs|scripts/monailabel)/[\w/.-]+\.(?:json|py)", text))):
        assert (ROOT / path).is_file(), f"docs/monailabel.md names {path}, which does not exist"
    links = re.findall(r"\]\(([\w./-]+)\)", text)
    assert "monailabel/transcript.md" in links
    for link in links:
        assert (ROOT / "docs" / link).is_file(), f"docs/monailabel.md links {link}, which does not exist"


# --- the server check's helpers --------------------------------------------------------------------------


def test_monai_label_requirements_keep_the_bundle_pins_but_numpy_pydicom_and_jsonschema():
    lines, torch_version = requirements_for_monailabel((ROOT / "requirements.txt").read_text())
    assert torch_version == "2.13.0" and "torch==2.13.0" in lines
    assert "numpy<2" in lines and "pydicom<3" in lines and not any(x.startswith("numpy==") for x in lines)
    assert "jsonschema<4" in lines and not any(x.startswith("jsonschema==") for x in lines)  # pydicom-seg 0.4.1
    assert lines[-2:] == ["torchvision==0.28.0", "monailabel==0.8.5"]
    assert "monai==1.6.1" in lines
    assert matching_torchvision("2.9.1") == "0.24.1" and matching_torchvision("2.13.0+cpu") == "0.28.0"
    with pytest.raises(ValueError, match="pins no torch"):
        requirements_for_monailabel("numpy==2.0\n")


def test_multipart_answers_are_split_byte_exact():
    payload = gzip.compress(bytes(range(256)) * 50) + b"\r\n--not-a-boundary\r\n"
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\nContent-Type: application/json\r\n\r\n'
            '{"shape": [64, 64, 64]}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x_hu.nii.gz"\r\n'
            "Content-Type: application/gzip\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    parts = parse_multipart(body, f"multipart/form-data; boundary={boundary}")
    assert json.loads(parts["params"][1]) == {"shape": [64, 64, 64]}
    assert parts["image"][1] == payload and 'filename="x_hu.nii.gz"' in parts["image"][0]["Content-Disposition"]


# --- a real reconstruction of the embedded example -------------------------------------------------------


def _vertebra_pair(case, level: str, folder: Path, roi: int = 64, spacing: float = 2.0) -> tuple[Path, np.ndarray]:
    """AP and lateral X-rays (parallel line integrals) of one vertebra of the example, and its HU crop."""
    import nibabel as nib
    from scipy import ndimage

    with open(case.class_map) as f:
        label = next(int(r["id"]) for r in csv.DictReader(f) if r["structure"] == f"vertebrae_{level}")
    mask_img = nib.load(case.mask)
    mask = np.asarray(mask_img.dataobj) == label
    centre = (mask_img.affine @ np.r_[np.argwhere(mask).mean(0), 1.0])[:3]
    ct_img = nib.load(case.ct)
    grid = (np.indices((roi,) * 3).reshape(3, -1).T - (roi - 1) / 2.0) * spacing + centre  # RAS world mm
    ijk = (np.linalg.inv(ct_img.affine) @ np.c_[grid, np.ones(len(grid))].T)[:3]
    lo = np.clip(np.floor(ijk.min(1)).astype(int) - 1, 0, None)
    hi = np.minimum(np.ceil(ijk.max(1)).astype(int) + 2, ct_img.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    ijk = ijk - lo[:, None]
    ct = ndimage.map_coordinates(np.asarray(ct_img.dataobj[box], np.float32), ijk, order=1, cval=-1024.0)
    inside = ndimage.map_coordinates(mask[box].astype(np.float32), ijk, order=0, cval=0.0) > 0.5
    gt = np.where(inside, np.maximum(ct, -1024.0), -1024.0).reshape((roi,) * 3)
    mu = np.maximum(gt + 1000.0, 0.0) / 1000.0
    # displayed as the bundle expects: superior up; AP with the patient's right on the left, lateral anterior left
    views = {"ap": mu.sum(axis=1).T[::-1, ::-1], "lat": mu.sum(axis=0).T[::-1, ::-1]}
    peak = max(v.max() for v in views.values())
    paths = []
    for name, view in views.items():
        paths.append(folder / f"{level}_{name}.png")
        Image.fromarray(np.round(view / peak * 65535).astype(np.uint16)).save(paths[-1])
    return paths[0], gt


@pytest.fixture(scope="module")
def example_pair(example_case, tmp_path_factory):
    folder = tmp_path_factory.mktemp("datastore")
    ap, gt = _vertebra_pair(example_case, "T7", folder)
    return ap, gt


def test_the_adapter_reconstructs_the_example_outside_the_bundle(example_pair, tmp_path):
    import nibabel as nib

    ap, gt = example_pair
    outputs = sorted((ROOT / "outputs").rglob("*")) if (ROOT / "outputs").exists() else []
    returned, report = infer_request(
        {"image": str(ap.with_name("T7_lat.png"))}, configs=CPU_CONFIGS, work_root=tmp_path, keep_outputs=True
    )
    returned = Path(returned)
    assert returned.parent == tmp_path.resolve() and returned.name.endswith("_hu.nii.gz")
    img = nib.load(str(returned))
    vol = np.asarray(img.dataobj, dtype=np.float32)
    assert vol.shape == (64, 64, 64) and np.allclose(img.header.get_zooms()[:3], 2.0)
    assert np.isfinite(vol).all() and -1100 < vol.min() < -900 and vol.max() > 200
    dice = 2 * ((vol > -500) & (gt > -500)).sum() / ((vol > -500).sum() + (gt > -500).sum())
    assert dice > 0.5, f"Dice {dice:.3f} against the vertebra's own crop"
    assert report["shape"] == [64, 64, 64] and report["pair"]["xray"] == ["T7_ap.png", "T7_lat.png"]
    assert report["mesh_report"]["vertices"] > 0 and report["result"] == "volume"
    assert 0.0 <= report["confidence"] <= 1.0 and report["uncertainty"] == "T7_uncertainty.nii.gz"
    work = Path(report["work_dir"])
    assert work.parent == tmp_path.resolve()
    names = sorted(p.name for p in (work / "outputs" / "T7").iterdir())
    assert {"T7_hu.nii.gz", "T7_mesh.stl", "T7_mesh.ply", "T7_mesh.json", "T7_preview.png"} <= set(names)

    # without keep_outputs only the returned file is left, here the mesh
    mesh, report = infer_request({"image": str(ap), "result": "mesh"}, configs=CPU_CONFIGS, work_root=tmp_path)
    data = Path(mesh).read_bytes()
    assert mesh.endswith("_mesh.stl") and len(data) == 84 + 50 * int.from_bytes(data[80:84], "little") > 84
    assert report["work_dir"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([returned.name, work.name, Path(mesh).name])
    after = sorted((ROOT / "outputs").rglob("*")) if (ROOT / "outputs").exists() else []
    assert after == outputs, "the adapter wrote into the bundle's outputs/"


# --- the spine task ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_radiographs(tmp_path_factory):
    """A datastore with the block phantom's two full radiographs (P1_ap.dcm, P1_lat.dcm) and its centres."""
    import shutil

    from scripts.simulate import simulate_radiographs
    from tests.conftest import block_phantom

    folder = tmp_path_factory.mktemp("spine_phantom")
    block_phantom(folder)
    simulate_radiographs(
        str(folder / "ct.nii.gz"), str(folder / "rad"), labels=str(folder / "labels.nii.gz"),
        label_convention="verse", detector_mm=200.0, pixel_mm=2.0, photon_count=None, physics="mono",
    )  # fmt: skip
    store = folder / "store"
    store.mkdir()
    shutil.copyfile(folder / "rad" / "ap.dcm", store / "P1_ap.dcm")
    shutil.copyfile(folder / "rad" / "lateral.dcm", store / "P1_lat.dcm")
    return store, folder / "rad" / "centres.json"


def test_the_spine_task_returns_the_label_map_of_every_vertebra(phantom_radiographs, tmp_path):
    import nibabel as nib
    from scripts.spine import LEVEL_LABELS

    store, centres = phantom_radiographs
    request = {"image": str(store / "P1_lat.dcm"), "centres": str(centres)}  # the lateral: its AP is found
    returned, report = spine_request(request, configs=CPU_CONFIGS, work_root=tmp_path)
    assert Path(returned).parent == tmp_path.resolve() and returned.endswith("_labels.nii.gz")
    labels = np.asarray(nib.load(returned).dataobj)
    assert set(np.unique(labels)) - {0} == {LEVEL_LABELS[v] for v in ("T10", "T11", "T12")}
    assert set(report["vertebrae"]) == {"T10", "T11", "T12"} and report["result"] == "labels"
    assert all(0.0 <= v["confidence"] <= 1.0 for v in report["vertebrae"].values())
    assert report["radiographs"]["files"]["ap"].endswith("P1_ap.dcm") and report["work_dir"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(returned).name], "the work folder is removed"
    mesh, _ = spine_request({**request, "result": "mesh"}, configs=CPU_CONFIGS, work_root=tmp_path / "m")
    assert mesh.endswith("_spine.stl") and Path(mesh).stat().st_size > 84


@pytest.mark.parametrize(
    "request_, message",
    [({"image": None}, "must be a datastore image id"), ({"image": "x.dcm", "result": "stl"}, "unknown")],
)
def test_bad_spine_requests_are_refused_before_any_work(tmp_path, request_, message):
    with pytest.raises(BundleInputError, match=message):
        spine_request(request_, work_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_adapter_returns_every_confidence_entry_of_the_case_report():
    from scripts.io.outputs import REPORT_KEYS
    from scripts.monailabel.core import CONFIDENCE_KEYS

    assert CONFIDENCE_KEYS == REPORT_KEYS
