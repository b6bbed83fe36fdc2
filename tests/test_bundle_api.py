# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The bundle as MONAI's own tools meet it: ``ConfigWorkflow`` and ``monai.bundle.load`` from another folder,
the default inference input (the test split of the prepared dataset), and a run with no input at all."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigWorkflow
from scripts.errors import BundleInputError
from scripts.networks import EAR, attach_model_info
from scripts.networks.model_info import read_model_info
from tests.test_workflows import ROOT, SMALL, _chain

CONFIGS = ROOT / "configs"


def _input_error(e: BaseException) -> BundleInputError:
    """The bundle's one-line error inside MONAI's chain of config-evaluation errors."""
    return next(x for x in _chain(e) if isinstance(x, BundleInputError))


def _from_elsewhere(files: list[str], workflow_type: str, **override) -> ConfigWorkflow:
    """A workflow as a user in another folder makes it: absolute config paths, no ``bundle_root`` given."""
    wf = ConfigWorkflow(config_file=[str(CONFIGS / f) for f in files], workflow_type=workflow_type, **override)
    wf.initialize()
    return wf


def test_workflows_initialise_and_pass_properties_from_another_folder(dataset, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    infer = _from_elsewhere(["inference.json"], "infer")  # no input at all: initialises, runs would say what to give
    assert infer.check_properties() == []
    assert infer.parser.get_parsed_content("bundle_root") == str(ROOT)
    assert infer.parser.get_parsed_content("ckpt_dir") == f"{ROOT}/models"
    assert infer.parser.get_parsed_content("cases") == []
    assert str(ROOT) in sys.path

    train = _from_elsewhere(["train.json"], "train", dataset_dir=str(dataset), ckpt_dir=str(tmp_path), **SMALL)
    assert not train.check_properties()
    evaluate = _from_elsewhere(
        ["train.json", "evaluate.json"], "eval", dataset_dir=str(dataset), ckpt_dir=str(trained), **SMALL
    )
    assert not evaluate.check_properties()
    assert evaluate.parser.get_parsed_content("output_dir").startswith(str(ROOT))
    assert not list(tmp_path.iterdir()), "nothing is written into the working folder"


def test_monai_bundle_load_from_another_folder(tmp_path):
    """A fresh process in another folder, where ``scripts`` is not importable until the config puts it there."""
    code = (
        "import monai\n"
        f"where = dict(name={ROOT.name!r}, bundle_dir={str(ROOT.parent)!r})\n"
        "for t in ('inference', 'train'):\n"
        "    net = monai.bundle.load(**where, workflow_type=t, device='cpu')\n"
        "    print(t, type(net).__name__, float(net.hu_mean), float(net.spacing_mm), int(net.roi_size))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = read_model_info(ROOT / "models" / "model.pt")
    for t in ("inference", "train"):
        assert f"{t} EAR {info['gt_mean']} {info['spacing']} {info['roi_size']}" in res.stdout
    assert not list(tmp_path.iterdir()), "nothing is written into the working folder"


def test_monai_bundle_commands_from_another_folder(dataset, trained, tmp_path):
    """``verify_net_in_out``, ``ckpt_export``, ``verify_metadata`` and ``run`` as MONAI's command line calls them,
    from a fresh process in another folder, without ``--bundle_root``; the exported TorchScript computes what the
    checkpoint computes and keeps its statistics."""
    from tests.test_workflows import _write_xrays

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    xrays = _write_xrays(tmp_path, dataset)
    meta, schema = str(CONFIGS / "metadata.json"), str(CONFIGS / "schema" / "meta_schema_20240725_subset.json")
    cpu = [str(CONFIGS / "inference.json"), str(CONFIGS / "cpu.json")]
    code = (
        "from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out\n"
        f"verify_metadata(meta_file={meta!r}, filepath={schema!r})\n"
        f"verify_net_in_out('network_def', meta_file={meta!r}, config_file={cpu!r})\n"
        f"ckpt_export('network_def', filepath={str(tmp_path / 'model.ts')!r}, "
        f"ckpt_file={str(ROOT / 'models' / 'cpu' / 'model.pt')!r}, meta_file={meta!r}, config_file={cpu!r})\n"
        # the model trained at the test size, its widths given as overrides (--channels ... on the command line)
        f"ckpt_export('network_def', filepath={str(tmp_path / 'trained.ts')!r}, "
        f"ckpt_file={str(trained / 'model.pt')!r}, meta_file={meta!r}, "
        f"config_file={str(CONFIGS / 'inference.json')!r}, ckpt_dir={str(trained)!r}, "
        f"channels={SMALL['channels']!r}, roi_size={SMALL['roi_size']!r}, spacing={SMALL['spacing']!r})\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "model.ts").is_file()  # the verify_* commands raise on failure
    net = attach_model_info(EAR(channels=SMALL["channels"]))
    net.load_state_dict(torch.load(trained / "model.pt", weights_only=True))
    scripted = torch.jit.load(str(tmp_path / "trained.ts"))
    assert read_model_info(scripted) == read_model_info(trained / "model.pt"), "the statistics survive the export"
    x = torch.randn(1, 2, SMALL["roi_size"], SMALL["roi_size"], SMALL["roi_size"])
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net.eval()(x), rtol=1e-4, atol=1e-4)
    overrides = [f"--{k}={v}" for k, v in SMALL.items() if k != "num_workers"]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.json")]
    cmd += ["--ckpt_dir", str(trained), "--output_dir", str(out), "--xrays", repr(xrays), *overrides]
    res = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "ap" / "ap_hu.nii.gz").is_file() or any(out.rglob("*_hu.nii.gz"))
    assert not list(work.iterdir()), "nothing is written into the working folder"


def test_inference_defaults_to_the_test_split_of_the_dataset(dataset, trained, tmp_path):
    from scripts.simulate import main as simulate

    data = tmp_path / "prepared"
    shutil.copytree(dataset, data)
    out = tmp_path / "out"
    common = {"ckpt_dir": str(trained), "output_dir": str(out), **SMALL}

    # a prepared dataset without simulated X-rays: the run stops with the command that makes them
    wf = _from_elsewhere(["inference.json"], "infer", dataset_dir=str(data), **common)
    with pytest.raises(Exception) as e:
        wf.run()
    msg = str(_input_error(e.value))
    assert "has no simulated X-rays" in msg and f"python -m scripts.simulate --data {data}" in msg
    assert not out.exists() or not any(p.is_dir() for p in out.iterdir())

    simulate(str(data), angles="[[0, 90]]")
    wf = _from_elsewhere(["inference.json"], "infer", dataset_dir=str(data), **common)
    assert [c["id"] for c in wf.parser.get_parsed_content("cases")] == ["P3_T4"]  # the test split
    wf.run()
    assert (out / "P3_T4" / "P3_T4_hu.nii.gz").is_file()


def test_no_input_and_no_dataset_names_what_to_give(tmp_path, trained):
    absent = str(tmp_path / "absent")
    wf = _from_elsewhere(["inference.json"], "infer", dataset_dir=absent, ckpt_dir=str(trained), **SMALL)
    with pytest.raises(Exception) as e:
        wf.run()
    assert str(_input_error(e.value)).startswith("no input: give --datalist cases.json, or --xrays")
