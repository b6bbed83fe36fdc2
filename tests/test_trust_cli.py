# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Command-line options checked like datalist entries, before any work, and bad input ending in one line.

Switches take only True / False; pixel spacings are positive; case ids and patient names fit the file system
and stay inside the output folder; images have at least 32 pixels per side; and under
``python -m monai.bundle`` an input error prints its one line instead of MONAI's traceback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from PIL import Image
from scripts import workflow
from scripts.errors import BundleInputError
from scripts.io.outputs import check_case_names
from scripts.io.xray import LoadXRayPair, XRayInputError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CPU_CONFIGS = [str(CONFIGS / "inference.json"), str(CONFIGS / "cpu.json")]
BUNDLE_MAIN = "/env/lib/python3/site-packages/monai/bundle/__main__.py"  # argv[0] of python -m monai.bundle


def _image(path: Path, size: int = 64, transpose: bool = False) -> str:
    """A 16-bit image with structure (not blank), ``size`` pixels per side."""
    y, x = np.mgrid[:size, :size]
    a = ((np.sin(x / 5.0) + np.cos(y / 7.0) + 2.0) * 10000).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.T.copy() if transpose else a).save(path)
    return str(path)


def _pair(folder: Path, size: int = 64, stem: str = "P1") -> list[str]:
    return [_image(folder / f"{stem}_ap.png", size), _image(folder / f"{stem}_lat.png", size, transpose=True)]


def _chain(error: BaseException) -> list[BaseException]:
    out, e = [], error
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------ 2. switches: only True / False


@pytest.mark.parametrize("value", ["no", "off", "yes", "1", "true"])
def test_switch_overrides_take_only_true_or_false(value):
    argv = [BUNDLE_MAIN, "run", "--config_file", str(CPU_CONFIGS), "--invert", value]
    with pytest.raises(BundleInputError, match="True or False"):
        workflow.check_cli_overrides(argv)
    for ok in ("True", "False", "[True, False]"):
        workflow.check_cli_overrides(argv[:-1] + [ok])
    workflow.check_cli_overrides(argv[:-2] + ["--sdd", "1000"])  # not a switch: any value


@pytest.mark.parametrize("value", ["no", "off", 1, [True, "no"], None])
def test_loader_switches_refuse_anything_but_bools(tmp_path, value):
    files = _pair(tmp_path)
    with pytest.raises(XRayInputError, match="give True or False") as err:
        LoadXRayPair(invert=value)
    assert "\n" not in str(err.value)
    with pytest.raises(XRayInputError, match="True or False"):
        workflow.inference_cases(xrays=files, invert=value)
    assert LoadXRayPair(invert=[True, np.bool_(False)]).invert == (True, False)


# ------------------------------------------------------------------ 4. pixel spacing: checked before the run


def _inference_parser(tmp_path: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CPU_CONFIGS)
    parser["bundle_root"] = str(ROOT)
    parser["output_dir"] = str(tmp_path / "out")
    for key, value in overrides.items():
        parser[key] = value
    return parser


@pytest.mark.parametrize("spacing", [-1, 0, [0.5, -0.5], "abc", float("nan")])
def test_pixel_spacing_option_is_checked_with_the_cases(tmp_path, spacing):
    files = _pair(tmp_path)
    parser = _inference_parser(tmp_path, xrays=files, pixel_spacing=spacing)
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("cases")  # the run's cases: checked with the run's options, before the run
    assert any(isinstance(e, XRayInputError) and "pixel_spacing" in str(e) for e in _chain(err.value))
    with pytest.raises(XRayInputError, match="pixel_spacing"):
        LoadXRayPair(pixel_spacing=spacing)  # the transform of the run refuses it when it is made
    assert _inference_parser(tmp_path, xrays=files, pixel_spacing=0.5).get_parsed_content("cases")


@pytest.mark.parametrize(
    "option, message",
    [({"sdd": -5}, "sdd=-5: give the distance"), ({"sod": "far"}, "sod='far'"), ({"sdd": 600}, "must be larger")],
)
def test_geometry_options_are_checked_with_the_cases(tmp_path, option, message):
    parser = _inference_parser(tmp_path, xrays=_pair(tmp_path), **option)
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("cases")
    assert any(isinstance(e, XRayInputError) and message in str(e) for e in _chain(err.value)), str(err.value)


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(BundleInputError, match="is a file, not a folder"):
        workflow.inference_cases(xrays=_pair(tmp_path), output_dir=str(tmp_path / "taken"))
    assert workflow.inference_cases(xrays=_pair(tmp_path), output_dir=str(tmp_path / "new" / "out"))
    assert not (tmp_path / "new").exists(), "checking writes nothing"


# ------------------------------------------------------------------ 5. case ids of a length the file system takes


def test_case_ids_must_fit_the_file_system(tmp_path):
    with pytest.raises(BundleInputError, match="bytes per file name"):
        check_case_names(["P1", "a" * 300])
    from scripts.io.outputs import CASE_FILE_EXTRA_BYTES

    longest = 255 - CASE_FILE_EXTRA_BYTES
    assert check_case_names(["a" * longest], output_dir=tmp_path) == ["a" * longest]
    for name in ("a" * 300, "a" * (longest + 1), "\u00e9" * 120):  # 120 characters, 240 bytes
        with pytest.raises(BundleInputError, match="bytes per file name") as err:
            check_case_names(["P1", name], output_dir=tmp_path)
        assert "\n" not in str(err.value) and len(str(err.value)) < 400, "the long name is shortened"
    deep = tmp_path.joinpath(*["d" * 200] * 20)  # about 4000 bytes of folders
    with pytest.raises(BundleInputError, match="output paths"):
        check_case_names(["P1_T4" * 10], output_dir=deep)


def test_a_long_id_stops_a_two_case_run_before_anything_is_written(tmp_path):
    files = _pair(tmp_path / "x")
    cases = [{"xray": files, "id": "P1"}, {"xray": files, "id": "a" * 300}]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    before = _files(tmp_path)
    with pytest.raises(BundleInputError, match="bytes per file name"):
        workflow.inference_cases(xrays=files, case_id="a" * 300)
    with pytest.raises(BundleInputError, match=r"case 2\) is 300 bytes long"):
        workflow.inference_cases(datalist=str(tmp_path / "cases.json"), output_dir=str(tmp_path / "out"))
    assert _files(tmp_path) == before


# ------------------------------------------------------------------ 6. scripts.spine stays inside --out


def _spine_datalist(folder: Path, patient: str, case_id: str | None = None) -> Path:
    files = _pair(folder / "xrays")
    item = {"patient": patient, "level": "T4", "xray": files, "centre_mm": [0.0, 0.0, 0.0]}
    if case_id is not None:
        item["id"] = case_id
    path = folder / "cases.json"
    path.write_text(json.dumps([item]))
    return path


@pytest.mark.parametrize("patient, case_id", [("../escaped", None), ("P1", "../../escaped_T4"), (".hidden", None)])
def test_spine_reconstruct_refuses_names_that_leave_out(tmp_path, patient, case_id):
    from scripts.spine import reconstruct

    datalist = _spine_datalist(tmp_path / "in", patient, case_id)
    out = tmp_path / "sub" / "out"
    with pytest.raises(BundleInputError, match="cannot name an output folder"):
        # an absent config: the names are refused before the model is even looked for
        reconstruct(str(datalist), str(out), config_file=[str(tmp_path / "absent.json")])
    assert not (tmp_path / "sub").exists() and not (tmp_path / "escaped").exists()


def test_spine_assembly_refuses_names_that_leave_out(tmp_path):
    from scripts.spine import spine

    datalist = _spine_datalist(tmp_path / "in", "../escaped")
    with pytest.raises(BundleInputError, match="patient '../escaped'"):
        spine(str(tmp_path / "no_predictions"), datalist=str(datalist), out=str(tmp_path / "sub" / "out"))
    assert not (tmp_path / "sub").exists()


# ------------------------------------------------------------------ 7. tiny X-rays


def test_tiny_xrays_are_refused_and_small_ones_warned_about(tmp_path, caplog):
    tiny = _pair(tmp_path / "tiny", size=4)
    with pytest.raises(XRayInputError, match="4x4 pixels .* below the 32 pixels per side") as err:
        workflow.inference_cases(xrays=tiny, spatial_size=64)
    assert "\n" not in str(err.value)
    from scripts.io.xray import MIN_XRAY_SIZE

    assert MIN_XRAY_SIZE == 32
    with pytest.raises(XRayInputError, match="31x31 pixels"):
        LoadXRayPair(min_size=32)(_pair(tmp_path / "edge", size=31))
    small = _pair(tmp_path / "small", size=40)
    with caplog.at_level(logging.WARNING, logger="scripts"):
        assert workflow.inference_cases(xrays=small, spatial_size=64)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("smaller than the model's input of 64x64" in w and "P1 (40x40)" in w for w in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scripts"):
        workflow.inference_cases(xrays=_pair(tmp_path / "full", size=64), spatial_size=64)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_non_square_xrays_are_warned_about_and_a_missing_file_names_the_folder(tmp_path, caplog):
    """X-rays of another shape than the model's input are stretched by the resize: one warning names the cases; a
    missing file's message names the folder relative paths of --xrays are read from."""
    from PIL import Image

    folder = tmp_path / "wide"
    folder.mkdir()
    files = []
    for name in ("P2_ap.png", "P2_lat.png"):
        image = (np.random.default_rng(0).random((200, 300)) * 255).astype(np.uint8)
        Image.fromarray(image).save(folder / name)
        files.append(str(folder / name))
    with caplog.at_level(logging.WARNING, logger="scripts"):
        assert workflow.inference_cases(xrays=files, spatial_size=64)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("another shape than the model's input of 64x64" in w and "P2 (200x300)" in w for w in warnings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scripts"):  # a known spacing places each pixel at its size
        workflow.inference_cases(xrays=files, spatial_size=64, pixel_spacing=0.3)
    assert not [r for r in caplog.records if "another shape" in r.getMessage()]
    with pytest.raises(
        XRayInputError, match=r"X-ray image not found; fix: check the path \(relative paths are read from "
    ):
        workflow.inference_cases(xrays=["no_ap.png", "no_lat.png"], spatial_size=64)


# ------------------------------------------------------------------ 10. one line instead of a traceback


def test_only_python_m_monai_bundle_counts_as_the_command_line():
    from scripts.errors import running_bundle_cli

    assert running_bundle_cli([BUNDLE_MAIN, "run"])
    assert running_bundle_cli(["C:\\py\\Lib\\site-packages\\monai\\bundle\\__main__.py"])
    assert not running_bundle_cli(["/usr/bin/pytest", "-q"])
    assert not running_bundle_cli([])


def test_the_hook_prints_input_errors_in_one_line_and_keeps_other_tracebacks(monkeypatch, capsys):
    from scripts.errors import find_input_error, install_cli_excepthook

    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: seen.append(exc[1]))
    monkeypatch.delenv("EAR_DEBUG", raising=False)
    assert not install_cli_excepthook(["/usr/bin/pytest"]), "other programs keep their handler"
    assert install_cli_excepthook([BUNDLE_MAIN, "run"]) and install_cli_excepthook([BUNDLE_MAIN, "run"])
    cause = XRayInputError("a.png: the image is blank; fix: export it again.")
    try:  # as MONAI reports it: a RuntimeError raised from the input error
        try:
            raise cause
        except XRayInputError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as wrapped:
        error = wrapped
    assert find_input_error(error) is cause
    sys.excepthook(type(error), error, error.__traceback__)
    err = capsys.readouterr().err
    assert err.splitlines() == [f"ERROR: XRayInputError: {cause} (EAR_DEBUG=1 shows the traceback)"]
    assert seen == []
    bug = KeyError("a programming error")
    sys.excepthook(KeyError, bug, None)
    assert seen == [bug], "a programming error goes to the previous handler, with its traceback"
    stop = KeyboardInterrupt()
    sys.excepthook(KeyboardInterrupt, stop, None)
    assert capsys.readouterr().err.startswith("ERROR: interrupted (Ctrl-C); a training run resumes")
    assert seen == [bug], "Ctrl-C ends in one line"
    monkeypatch.setenv("EAR_DEBUG", "1")
    sys.excepthook(type(error), error, error.__traceback__)
    assert seen == [bug, error], "EAR_DEBUG=1 shows the traceback of input errors too"


def test_a_lab_tool_ends_a_bad_input_in_one_line(monkeypatch):
    """The bundle's own tools install the hook whatever the program (``always=True``): a bad ``--init`` of
    ``spine_stage train`` ends in one line and status 1, before any window is drawn."""
    from scripts.errors import install_cli_excepthook

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    assert not install_cli_excepthook(["/usr/bin/pytest"]) and install_cli_excepthook(["/usr/bin/pytest"], always=True)
    env = {k: v for k, v in os.environ.items() if k != "EAR_DEBUG"}
    run = subprocess.run(
        [sys.executable, "-m", "scripts.tools.spine_stage", "train", "--init", "missing.pt", "--out", "/nonexistent/x"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("ERROR: BundleInputError: init: no such file: missing.pt")
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "case",
    [
        "negative_pixel_spacing",  # an input error found checking the cases
        # slow: the same path as negative_pixel_spacing (an XRayInputError of the case check); the blank image is
        # refused in test_inference_outputs.py::test_bad_inputs_stop_before_anything_is_written[blank], its
        # message printed in one line in test_the_hook_prints_input_errors_in_one_line_and_keeps_other_tracebacks
        pytest.param("blank_image", marks=pytest.mark.slow),
        "invert_no",  # a command-line switch refused by the override check
    ],
)
def test_bad_input_on_the_command_line_ends_in_one_line(tmp_path, case):
    files = _pair(tmp_path)
    args = ["--pixel_spacing", "-1"] if case == "negative_pixel_spacing" else []
    if case == "blank_image":
        Image.fromarray(np.zeros((64, 64), np.uint16)).save(files[1])
    if case == "invert_no":
        args = ["--invert", "no"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CPU_CONFIGS), "--xrays", str(files)]
    env = {k: v for k, v in os.environ.items() if k != "EAR_DEBUG"}
    res = subprocess.run(
        cmd + ["--output_dir", str(out)] + args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    lines = (res.stdout + res.stderr).splitlines()
    assert res.returncode != 0
    assert len(lines) <= 5 and "Traceback" not in res.stdout + res.stderr, "\n".join(lines[-40:])
    last = res.stderr.strip().splitlines()[-1]
    expected = {"negative_pixel_spacing": "pixel_spacing=-1", "blank_image": "is blank", "invert_no": "--invert no"}
    assert last.startswith("ERROR: ") and expected[case] in last and "EAR_DEBUG=1" in last, last
    assert not out.exists() or not any(out.iterdir()), "nothing is written"
