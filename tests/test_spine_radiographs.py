# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""python -m scripts.spine radiographs: every vertebra of two full radiographs reconstructed and assembled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scripts.data.errors import DataError
from scripts.errors import BundleInputError
from scripts.simulate import simulate_radiographs
from scripts.spine import LEVEL_LABELS, radiographs
from tests.conftest import ROOT, block_phantom

CPU = [str(ROOT / "configs" / "inference.json"), str(ROOT / "configs" / "cpu.json")]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The phantom's AP and lateral radiographs and its true centres (``python -m scripts.simulate radiographs``)."""
    folder = tmp_path_factory.mktemp("phantom")
    block_phantom(folder)
    rad = folder / "rad"
    simulate_radiographs(
        str(folder / "ct.nii.gz"), str(rad), labels=str(folder / "labels.nii.gz"), label_convention="verse",
        detector_mm=200.0, pixel_mm=2.0, photon_count=None, physics="mono",
    )  # fmt: skip
    return rad


def test_given_centres_give_every_output_placed_in_the_system_and_world_frames(pair, tmp_path):
    import hashlib
    import shutil

    out = tmp_path / "spine"
    mine = tmp_path / "my_model"  # a model of one's own (--ckpt_dir): the report names the file that ran
    mine.mkdir()
    shutil.copyfile(ROOT / "models" / "cpu" / "model.pt", mine / "model.pt")
    report = radiographs(
        str(pair / "ap.dcm"), str(pair / "lateral.dcm"), out=str(out), patient="P1",
        centres=str(pair / "centres.json"), config_file=CPU, batch_size=3, confidence=False, ckpt_dir=str(mine),
    )  # fmt: skip
    sha = hashlib.sha256((mine / "model.pt").read_bytes()).hexdigest()
    assert report["models"] == {
        "finder": None,
        "reconstruction": {"file": str((mine / "model.pt").resolve()), "sha256": sha},
    }
    folder = out / "P1"
    for name in ("labels.nii.gz", "hu.nii.gz", "spine.json", "spine.png", "radiographs.png", "spine.stl"):
        assert (folder / f"P1_{name}").is_file(), name
    truth = {c["level"]: c for c in json.loads((pair / "centres.json").read_text())["vertebrae"]}
    assert set(report["vertebrae"]) == {"T10", "T11", "T12"}
    for level, entry in report["vertebrae"].items():
        assert entry["named_by"] == "given"
        np.testing.assert_allclose(entry["centre_system_mm"], truth[level]["centre_mm_system"], atol=1e-3)
        np.testing.assert_allclose(entry["centre_world_mm"], truth[level]["centre_mm_world"], atol=1e-3)
        assert (folder / "vertebrae" / f"P1_{level}_hu.nii.gz").is_file()
        assert entry["prediction"] == str(out / "P1" / "vertebrae" / f"P1_{level}_hu.nii.gz")  # the file it names
    assert report["radiographs"]["found_by"] == "given centres"
    # the confidence is off, the input type check is not: the CPU model (isolated vertebrae) reads radiographs
    assert all(
        e["input_type"] == "surrounded" and e["flag"].startswith("input unlike") for e in report["vertebrae"].values()
    )
    assert all("confidence" not in e for e in report["vertebrae"].values())
    assert json.loads((folder / "P1_spine.json").read_text())["radiographs"]["world_to_system"] is not None
    # each reconstruction lies in the window around its centre: the label map holds the three levels
    labels = nib.load(str(folder / "P1_labels.nii.gz"))
    assert set(np.unique(np.asarray(labels.dataobj))) - {0} <= {LEVEL_LABELS[v] for v in ("T10", "T11", "T12")}


def test_bad_inputs_stop_before_anything_is_written(pair, tmp_path):
    out = tmp_path / "spine"
    with pytest.raises(DataError, match="two radiographs are needed.*only the AP"):
        radiographs(str(pair / "ap.dcm"), None, out=str(out), centres=str(pair / "centres.json"), config_file=CPU)
    bad = tmp_path / "centres.json"
    bad.write_text(json.dumps([{"centre_mm": [0, 0, 0]}]))
    with pytest.raises(DataError, match="entry 0 has no level"):
        radiographs(str(pair / "ap.dcm"), str(pair / "lateral.dcm"), out=str(out), centres=str(bad), config_file=CPU)
    # a misspelt option of the command (it lands among the config overrides) is named before the files are read
    for typo, meant in [("lat", "lateral"), ("reconstruction_modle", "reconstruction_model"), ("levle", "level")]:
        with pytest.raises(DataError, match=rf"--{typo} is neither an option of this command.*did you mean --{meant}"):
            radiographs(str(tmp_path / "missing.dcm"), None, out=str(out), config_file=CPU, **{typo: "x"})
    with pytest.raises(DataError, match="given as both --ap and --lateral"):
        radiographs(str(pair / "ap.dcm"), str(pair / "ap.dcm"), out=str(out), config_file=CPU)
    unknown = tmp_path / "unknown_levels.json"
    unknown.write_text(json.dumps([{"level": "S2", "centre_mm": [0, 0, 0]}]))
    with pytest.raises(DataError, match=r"no entry names a level of the label map .*; its levels: S2"):
        radiographs(
            str(pair / "ap.dcm"), str(pair / "lateral.dcm"), out=str(out), centres=str(unknown), config_file=CPU
        )
    # the files the other way round, by their view tags
    with pytest.raises(DataError, match="--ap lateral.dcm is a lateral view.*--ap ap.dcm --lateral lateral.dcm"):
        radiographs(str(pair / "lateral.dcm"), str(pair / "ap.dcm"), out=str(out), config_file=CPU)
    # a pin outside the file's pixels
    with pytest.raises(
        BundleInputError, match=r"level pin T11 at ap \(row -3, col 40\) lies outside ap.dcm \(100 rows"
    ):
        radiographs(
            str(pair / "ap.dcm"), str(pair / "lateral.dcm"), out=str(out), level="T11=ap:-3,40", config_file=CPU
        )
    assert not out.exists()


def test_the_command_line_ends_a_bad_input_in_one_line(pair, tmp_path):
    cmd = [sys.executable, "-m", "scripts.spine", "radiographs", "--ap", str(pair / "ap.dcm"), "--out", str(tmp_path)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith("error: "), res.stderr[-500:]
    assert "Traceback" not in res.stderr


def test_the_bundle_config_runs_the_same_job(pair, tmp_path):
    """configs/spine_radiographs.json, run by python -m monai.bundle run, writes the patient's files with the default
    reconstruction model, the body model."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / "spine_radiographs.json"),
        "--ap", str(pair / "ap.dcm"), "--lateral", str(pair / "lateral.dcm"), "--centres", str(pair / "centres.json"),
        "--output_dir", str(tmp_path / "out"), "--patient", "P2", "--confidence", "False",
        "--device", "cpu",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "P2" / "P2_spine.json").read_text())
    assert set(report["vertebrae"]) == {"T10", "T11", "T12"}
    assert "models/body/model.pt" in res.stderr + res.stdout, "the body model reconstructs full radiographs"


def test_reconstruction_models_of_full_radiographs():
    """--reconstruction_model names the inference configs; the spine config resolves them; a wrong name is refused."""
    from monai.bundle import ConfigParser
    from scripts.spine import radiograph_configs

    assert [Path(c).name for c in radiograph_configs()] == ["inference.json", "cpu.json", "body_model.json"]
    assert [Path(c).name for c in radiograph_configs("paper")] == ["inference.json"]
    assert all(Path(c).is_file() for m in ("body", "cpu", "paper") for c in radiograph_configs(m))
    with pytest.raises(DataError, match="unknown reconstruction model 'iso'"):
        radiograph_configs("iso")
    with pytest.raises(DataError, match="both --reconstruction_model and --config_file"):
        radiographs("ap.dcm", "lateral.dcm", reconstruction_model="cpu", config_file=CPU)
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "spine_radiographs.json"))
    parser["bundle_root"] = str(ROOT)
    parser["reconstruction_model"] = "cpu"
    assert parser.get_parsed_content("inference_configs") == radiograph_configs("cpu", ROOT)


def test_a_found_vertebra_outside_one_image_is_left_out(caplog):
    """A detection at an image's edge can triangulate just outside the other image: it is dropped with a warning."""
    from scripts.drr.windows import RadiographView
    from scripts.spine import _inside_both

    views = [RadiographView(1200.0, 800.0, (100, 100), (1.0, 1.0), a) for a in ((0.0, 0.0), (90.0, 0.0))]
    inside = {"level": "L1", "centre_mm": [0.0, 0.0, 0.0]}
    above = {"level": "T12", "centre_mm": [0.0, 0.0, 40.0]}  # magnified 1.5x: 60 px from the centre of 100
    with caplog.at_level("WARNING"):
        assert _inside_both([above, inside], views) == [inside]
    assert "T12 at (0, 0, 40) mm found at the edge of an image" in caplog.text


def test_a_rerun_removes_the_files_it_does_not_write_again_and_flagged_vertebrae_are_logged(pair, tmp_path):
    """A second run into the same folder that finds fewer vertebrae leaves none of the first run's files behind; the
    CPU model (isolated vertebrae) on full radiographs: every vertebra flagged in the log and the report."""
    out = tmp_path / "spine"
    common = dict(out=str(out), patient="P1", config_file=CPU, batch_size=3)
    radiographs(str(pair / "ap.dcm"), str(pair / "lateral.dcm"), centres=str(pair / "centres.json"), **common)
    assert (out / "P1" / "P1_T10.stl").is_file() and (out / "P1" / "vertebrae" / "P1_T10_hu.nii.gz").is_file()
    fewer = tmp_path / "fewer.json"
    entries = json.loads((pair / "centres.json").read_text())["vertebrae"]
    fewer.write_text(json.dumps([e for e in entries if e["level"] != "T10"]))
    # the bundle's logging config replaces the root logger's handlers (pytest's too): listen on the bundle's logger
    import logging

    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("scripts").addHandler(handler)
    try:
        report = radiographs(str(pair / "ap.dcm"), str(pair / "lateral.dcm"), centres=str(fewer), **common)
    finally:
        logging.getLogger("scripts").removeHandler(handler)
    logged = "\n".join(records)
    assert set(report["vertebrae"]) == {"T11", "T12"}
    assert not list((out / "P1").rglob("P1_T10*")), "the first run's T10 files are gone"
    assert (out / "P1" / "P1_T11.stl").is_file() and (out / "P1" / "P1_spine.json").is_file()
    assert "removed" in logged and "earlier run" in logged
    assert "2 of 2 vertebrae (T11, T12): input unlike the model's X-rays" in logged
    assert all(v["input_type"] == "surrounded" and v["confidence"] == 0.0 for v in report["vertebrae"].values())
    assert report["reconstruction_configs"] == ["configs/inference.json", "configs/cpu.json"]
    assert report["radiographs"]["finder_settings"] is None, "given centres: no finder"
