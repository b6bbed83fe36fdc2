# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The model contract: what a model was trained with travels in its files, and a run that contradicts it stops."""

from __future__ import annotations

import logging
from pathlib import Path

import monai
import pytest
import torch
from monai.bundle import ConfigParser
from scripts import workflow
from scripts.convert_model import convert_model
from scripts.errors import BundleInputError
from scripts.networks import EAR, attach_model_info, read_model_info

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SMALL_CHANNELS = [4, 8, 8, 16, 16]
STATS = {"gt_mean": -990.0, "gt_std": 180.0}
DEG60 = [[30.0, 0.0], [90.0, 0.0]]
SHIPPED = {"models/cpu/model.pt": [8, 16, 32, 64, 128], "models/model.pt": [16, 32, 64, 128, 256]}


def _model(tmp_path: Path, views=DEG60, mode="backproject", record=None, channels=SMALL_CHANNELS) -> Path:
    net = attach_model_info(EAR(channels=channels), STATS, 2.0, 32, views, mode, record or {"drr_source": "gt"})
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.parametrize("name", [*SHIPPED, "models/cpu/model.ts", "models/model.ts"])
def test_shipped_models_carry_the_whole_contract(name):
    info = read_model_info(torch.jit.load(str(ROOT / name)) if name.endswith(".ts") else ROOT / name)
    assert info["views"] == [[0.0, 0.0], [90.0, 0.0]] and info["expansion_mode"] == "replicate"
    assert info["record"]["drr_source"] == "gt" and info["record"]["physics"] == "poly"
    assert info["record"]["channels"] == SHIPPED[name.replace(".ts", ".pt")]
    assert info["architecture"] and info["spacing"] in (1.0, 2.0)


def test_inference_takes_views_and_expansion_from_the_model(tmp_path):
    """A model trained at other views with the back-projecting expansion, run through inference.json alone."""
    _model(tmp_path)
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json")])
    parser["ckpt_dir"] = str(tmp_path)
    assert parser.get_parsed_content("views") == DEG60
    assert parser.get_parsed_content("expansion_mode") == "backproject"
    assert (parser.get_parsed_content("roi_size"), parser.get_parsed_content("spacing")) == (32, 2.0)


def test_a_run_that_contradicts_the_model_stops_with_one_line(caplog):
    path = ROOT / "models" / "cpu" / "model.pt"
    net = attach_model_info(EAR(channels=SHIPPED["models/cpu/model.pt"]))
    with pytest.raises(BundleInputError) as err:
        workflow.check_model(path, net, 2.0, 64, [[0, 0], [90, 0]], "backproject")
    text = str(err.value)
    assert "\n" not in text and "expansion_mode replicate" in text and "--expansion_mode backproject" in text
    assert "--override_contract True" in text
    with pytest.raises(BundleInputError, match=r"views \[\[0.0, 0.0\], \[90.0, 0.0\]\] but the run sets --views"):
        workflow.check_model(path, net, 2.0, 64, DEG60, "replicate")
    # views the replicate model cannot read, and its own views in the other order, each with their own fix
    with pytest.raises(BundleInputError, match=r"reads only the views \[\[0.0, 0.0\], \[90.0, 0.0\]\].*drop --views"):
        workflow.check_model(path, net, 2.0, 64, [[0, 0], [45, 0]], "replicate")
    with pytest.raises(BundleInputError, match=r"other order; give the X-rays in the model's order \(view 1 \[0.0"):
        workflow.check_model(path, net, 2.0, 64, [[90, 0], [0, 0]], "replicate")
    with pytest.raises(
        BundleInputError,
        match=r"--views \[\[180.0, 0.0\], \[90.0, 0.0\]\] \(on the command line.*drop it .*--override_contract",
    ):
        workflow.check_model(path, net, 2.0, 64, [[180, 0], [90, 0]], "replicate")  # AP and lateral, from behind
    with caplog.at_level(logging.WARNING):  # knowingly: runs, with a warning
        assert workflow.check_model(path, net, 2.0, 64, DEG60, "backproject", override=True) == path
        workflow.check_model(path, net, 2.0, 64, record={"drr_source": "body", "physics": "poly"})
    assert "running anyway" in caplog.text
    assert "trained with drr_source 'gt'; this run uses 'body' (recorded, not enforced)" in caplog.text
    assert "physics" not in caplog.text


def test_case_angles_are_the_model_views(tmp_path):
    cases = workflow.with_model_views([{"id": "a", "xray": ["x", "y"]}], DEG60)
    assert cases[0]["angles"] == DEG60
    with pytest.raises(BundleInputError, match=r"case b: its angles .* differ from the model's views"):
        workflow.with_model_views([{"id": "b", "xray": ["x", "y"], "angles": [[0, 0], [90, 0]]}], DEG60)
    assert workflow.with_model_views([{"id": "c", "angles": [0, 90]}], [[0, 0], [90, 0]], override=False)


def test_old_model_files_are_refused_with_the_command_that_converts_them(tmp_path):
    net = EAR(channels=SMALL_CHANNELS)
    old = {k: v for k, v in attach_model_info(net, STATS, 2.0, 32).state_dict().items() if k != "model_contract"}
    path = tmp_path / "model.pt"
    torch.save(old, path)
    with pytest.raises(BundleInputError, match=r"holds no model contract .*python -m scripts.convert_model"):
        workflow.check_model(path, attach_model_info(EAR(channels=SMALL_CHANNELS)))
    info = convert_model(path, "[[30, 0], [90, 0]]", "backproject", drr_source="gt")
    assert info["views"] == DEG60 and info["record"] == {"drr_source": "gt", "network": "EAR"}
    assert workflow.check_model(path, attach_model_info(EAR(channels=SMALL_CHANNELS)), 2.0, 32, DEG60) == path
    with pytest.raises(BundleInputError, match="expansion_mode 'sideways' is unknown"):
        convert_model(path, DEG60, "sideways")
    with pytest.raises(BundleInputError, match="already records views .* --force True"):
        convert_model(path, DEG60, "backproject")
    with pytest.raises(BundleInputError, match="unknown record key"):
        convert_model(path, DEG60, "backproject", force=True, chanels=[4, 8])
    with pytest.raises(BundleInputError, match="nearly the same line"):
        convert_model(path, [[0, 0], [0, 0]], "backproject", force=True)
    with pytest.raises(ValueError, match="replicate"):
        convert_model(path, [[0, 0], [45, 0]], "replicate", force=True)
    with pytest.raises(BundleInputError, match="give the views"):
        convert_model(path)
    assert convert_model(path, [[0, 0], [90, 0]], "replicate", force=True)["expansion_mode"] == "replicate"


def test_loading_into_another_architecture_fails_loudly(tmp_path):
    """``monai.networks.copy_model_state`` (used by ``monai.bundle.load``) copies only tensors that fit."""
    from monai.networks.utils import copy_model_state

    src = torch.load(_model(tmp_path), weights_only=True)
    with pytest.raises(BundleInputError, match=r"net_override=\{'channels': None\}|another EAR"):
        copy_model_state(attach_model_info(EAR(channels=[8, 8, 8, 16, 16])), src)
    same = attach_model_info(EAR(channels=SMALL_CHANNELS))
    copy_model_state(same, src)
    assert read_model_info(same)["views"] == DEG60


@pytest.mark.parametrize("model_file", list(SHIPPED))
def test_bundle_load_of_the_shipped_models_gives_the_trained_network_or_an_error(model_file):
    state = torch.load(ROOT / model_file, weights_only=True)
    kwargs = dict(name=ROOT.name, bundle_dir=str(ROOT.parent), model_file=model_file, workflow_type="inference")
    if model_file == "models/cpu/model.pt":  # inference.json builds the paper-sized network
        with pytest.raises(
            BundleInputError, match=r"load them with net_override=\{'channels': \[8, 16, 32, 64, 128\]\}"
        ):
            monai.bundle.load(**kwargs, device="cpu")
        kwargs["net_override"] = {"channels": SHIPPED[model_file]}
    net = monai.bundle.load(**kwargs, device="cpu")
    own = net.state_dict()
    assert set(own) == set(state) and all(torch.equal(own[k], v) for k, v in state.items())


def test_the_command_line_stops_a_contradicting_run_in_one_line(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    cmd += [str([str(CONFIGS / "inference.json"), str(CONFIGS / "cpu.json")]), "--expansion_mode", "backproject"]
    cmd += ["--dataset_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "out")]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = (res.stdout + res.stderr).strip().splitlines()
    assert res.returncode != 0 and len(out) <= 5, out
    assert "trained with expansion_mode replicate but the run sets --expansion_mode backproject" in out[-1]
    assert not (tmp_path / "out").exists()


def test_full_radiographs_on_an_isolated_vertebra_model_are_warned_about(tmp_path, caplog):
    cases = [{"id": "P1", "radiographs": ["ap.dcm", "lat.dcm"], "centre_mm": [0, 0, 0]}]
    with caplog.at_level(logging.WARNING):
        assert workflow.warn_input_source(cases, ROOT / "models" / "cpu" / "model.pt")
    assert "not on X-rays through the whole body" in caplog.text
    assert not workflow.warn_input_source(cases, _model(tmp_path, record={"drr_source": "body"}))
    assert not workflow.warn_input_source(
        [{"id": "P2", "xray": ["a.png", "b.png"]}], ROOT / "models" / "cpu" / "model.pt"
    )
