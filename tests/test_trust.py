# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Results a user can trust: the model owns its normalisation, resumed training keeps the best model, one
deterministic validation path, and bad configs stop before any work with one line naming the fix."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import CacheDataset, MetaTensor
from monai.networks.utils import copy_model_state
from monai.transforms import Randomizable
from scripts import workflow
from scripts.errors import BundleInputError
from scripts.handlers import BestModelSaver, ResumableCheckpoint
from scripts.networks import EAR, attach_model_info, read_model_info
from scripts.transforms import DRRd, SeededDRRd
from scripts.transforms.model import ModelZScoreToHUd
from tests.test_workflows import CONFIGS, ROI, ROOT, SMALL, _bundle_cmd, _chain, _overrides, _workflow


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _evaluate(dataset: Path, ckpt: Path, out: Path) -> list[dict]:
    wf = _workflow(
        ["train.json", "evaluate.json"],
        "eval",
        dataset_dir=str(dataset),
        ckpt_dir=str(ckpt),
        output_dir=str(out),
        **SMALL,
    )
    wf.initialize()
    wf.run()
    with open(out / "metrics_per_vertebra.csv") as f:
        return list(csv.DictReader(f))


def test_evaluation_uses_the_model_statistics_and_writes_nothing_under_models(dataset, trained, tmp_path):
    """Evaluating a dataset with other statistics leaves the model folder byte-identical and gives the same numbers."""
    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    content = json.loads((other / "datalist.json").read_text())
    content["statistics"] = {"gt_mean": -400.0, "gt_std": 700.0}
    (other / "datalist.json").write_text(json.dumps(content))
    before = _digest(trained)
    same = _evaluate(dataset, trained, tmp_path / "eval_same")
    assert _digest(trained) == before
    diff = _evaluate(other, trained, tmp_path / "eval_other")
    assert _digest(trained) == before, "evaluation writes nothing into the checkpoint folder"
    assert same == diff, "evaluation normalises with the model's statistics, not the dataset's"


def test_initialising_training_writes_nothing(dataset, tmp_path):
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    wf = _workflow(["train.json"], "train", dataset_dir=str(dataset), ckpt_dir=str(ckpt), **SMALL)
    wf.initialize()
    assert not list(ckpt.iterdir()), "only a running training writes into its checkpoint folder"


def test_model_info_buffers_round_trip():
    net = attach_model_info(EAR(channels=SMALL["channels"]), {"gt_mean": -990.0, "gt_std": 180.0}, 2.0, 64)
    fresh = attach_model_info(EAR(channels=SMALL["channels"]))
    with pytest.raises(BundleInputError, match="holds no intensity statistics"):
        read_model_info(fresh)  # NaN until loaded
    fresh.load_state_dict(net.state_dict())
    info = read_model_info(fresh)
    assert {k: info[k] for k in ("gt_mean", "gt_std", "spacing", "roi_size")} == {
        "gt_mean": -990.0,
        "gt_std": 180.0,
        "spacing": 2.0,
        "roi_size": 64,
    }
    scripted = torch.jit.script(fresh)
    assert read_model_info(scripted)["gt_std"] == 180.0
    with pytest.raises(RuntimeError, match="hu_mean"):
        torch.nn.Conv3d(2, 1, 1).load_state_dict(attach_model_info(torch.nn.Conv3d(2, 1, 1)).state_dict())
    plain = EAR(channels=SMALL["channels"])  # EAR carries the buffers itself (network_def, monai.bundle.load)
    copy_model_state(plain, net.state_dict())
    assert read_model_info(plain)["gt_mean"] == -990.0


def test_model_zscore_to_hu_reads_the_model_at_call_time():
    net = attach_model_info(torch.nn.Conv3d(2, 1, 1))
    to_hu = ModelZScoreToHUd("pred", model=net)
    with pytest.raises(BundleInputError, match="no intensity statistics"):
        to_hu({"pred": torch.zeros(1, 2, 2, 2)})
    attach_model_info(net, {"gt_mean": -1000.0, "gt_std": 200.0})  # e.g. a checkpoint loaded after construction
    out = to_hu({"pred": torch.ones(1, 2, 2, 2)})["pred"]
    torch.testing.assert_close(out, torch.full((1, 2, 2, 2), -800.0))


def test_checkpoint_that_does_not_fit_the_config(trained, tmp_path):
    path = trained / "model.pt"
    other_channels = attach_model_info(EAR(in_channels=3, channels=SMALL["channels"]))
    with pytest.raises(BundleInputError, match=r"enc1.0.conv.weight has shape .*other input channels"):
        workflow.check_model(path, other_channels)
    with pytest.raises(BundleInputError, match="unknown to it"):
        workflow.check_model(path, attach_model_info(EAR(channels=SMALL["channels"], use_fem=False)))
    net = attach_model_info(EAR(channels=SMALL["channels"]))
    with pytest.raises(BundleInputError, match="trained with 2 mm voxels but the run sets --spacing 1"):
        workflow.check_model(path, net, spacing=1.0, roi_size=ROI)
    with pytest.raises(BundleInputError, match=f"trained with {ROI}\\^3 crops but the run sets --roi_size 64"):
        workflow.check_model(path, net, spacing=2.0, roi_size=64)
    assert workflow.check_model(path, net, spacing=2.0, roi_size=ROI) == path


def test_inference_with_another_width_stops_before_writing(dataset, trained, tmp_path):
    out = tmp_path / "out"
    wf = _workflow(
        ["inference.json"],
        "infer",
        ckpt_dir=str(trained),
        output_dir=str(out),
        dataset_dir=str(tmp_path / "no-dataset"),
        **{**SMALL, "channels": [8, 8, 8, 16, 16]},
    )
    wf.initialize()  # the model is checked first thing in run, so that monai.bundle.load can pick another file
    with pytest.raises(Exception) as err:
        wf.run()
    assert "does not fit the config's network_def" in "".join(str(e) for e in _chain(err.value))
    assert not out.exists()


class _Engine:
    """The part of an ignite engine the handler reads."""

    def __init__(self):
        self.state = type("S", (), {"metrics": {}, "epoch": 0, "key_metric_name": "val_dice"})()


def test_best_model_saver_replaces_only_with_better(tmp_path):
    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path, net)
    engine = _Engine()
    for epoch, dice in enumerate([0.5, 0.7, 0.6, float("nan")], start=1):
        with torch.no_grad():
            net.weight.fill_(epoch)
        engine.state.epoch, engine.state.metrics = epoch, {"val_dice": dice}
        saver(engine)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert float(saved["weight"][0, 0]) == 2.0, "the model of epoch 2 (Dice 0.7) is kept"
    digest = hashlib.sha256((tmp_path / "model.pt").read_bytes()).hexdigest()
    assert saver.state_dict() == {"best": 0.7, "best_epoch": 2, "mode": "max", "sha256": digest}
    resumed = BestModelSaver(tmp_path, net)
    resumed.load_state_dict(saver.state_dict())
    engine.state.epoch, engine.state.metrics = 5, {"val_dice": 0.65}
    resumed(engine)
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["weight"][0, 0]) == 2.0
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left"


def test_resumed_training_keeps_the_best_model(dataset, tmp_path, monkeypatch):
    """A run resumed from its checkpoint goes on after the saved epoch, says where it resumed, knows the best metric
    so far and does not replace model.pt by a worse one."""
    ckpt = tmp_path / "models"
    common = dict(dataset_dir=str(dataset), ckpt_dir=str(ckpt), output_dir=str(tmp_path / "runs"), warmup_epochs=1)
    first = _workflow(["train.json"], "train", epochs=1, **common, **SMALL)
    first.initialize()
    first.run()
    state = torch.load(ckpt / "checkpoint_last.pt", weights_only=False)
    assert state["best_model"]["best_epoch"] == 1
    state["best_model"]["best"] = 0.999  # a best model the next epochs cannot beat
    torch.save(state, ckpt / "checkpoint_last.pt")
    record = json.loads((ckpt / "model.pt.best.json").read_text())
    (ckpt / "model.pt.best.json").write_text(json.dumps({**record, "best": 0.999}))  # its hash still fits model.pt
    model_bytes = (ckpt / "model.pt").read_bytes()
    second = _workflow(["train.json"], "train", epochs=3, **common, **SMALL)
    second.initialize()
    epochs: list[int] = []
    second.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch)
    )
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("scripts.handlers")
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(handler)
    try:
        second.run()
    finally:
        logger.removeHandler(handler)
    assert epochs == [2, 3], "the run goes on after the saved epoch, not from epoch 1"
    assert f"resumed from {ckpt / 'checkpoint_last.pt'} at epoch 1" in messages, "it says where it resumed"
    after = torch.load(ckpt / "checkpoint_last.pt", weights_only=False)
    assert after["trainer"]["iteration"] == 3 * after["trainer"]["epoch_length"], "training went on to epoch 3"
    digest = hashlib.sha256(model_bytes).hexdigest()
    assert after["best_model"] == {"best": 0.999, "best_epoch": 1, "mode": "max", "sha256": digest}
    assert (ckpt / "model.pt").read_bytes() == model_bytes, "model.pt is replaced only by a better model"
    assert second.parser.get_parsed_content("validate#evaluator").state.best_metric == 0.999


def _item(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vol = torch.full((1, 32, 32, 32), -1024.0)
    vol[:, 10:22, 8:24, 12:20] = torch.as_tensor(rng.normal(400, 50, size=(12, 16, 8)), dtype=torch.float32)
    return {"gt": MetaTensor(vol, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))), "id": "P0_T1"}


def test_seeded_drr_is_deterministic_per_item_and_cached():
    t = SeededDRRd("gt", output_keys="drr", photon_count=1e4)
    assert not isinstance(t, Randomizable), "CacheDataset caches what follows no random transform"
    a, b = t(_item())["drr"], t(_item())["drr"]
    torch.testing.assert_close(a, b)
    other = t({**_item(), "id": "P0_T2"})["drr"]
    assert not torch.equal(a, other), "the noise differs between vertebrae"
    noiseless = SeededDRRd("gt", output_keys="drr", photon_count=None)(_item())["drr"]
    assert 0 < (a - noiseless).abs().mean() < 0.1 * noiseless.abs().mean()
    ds = CacheDataset([_item()], transform=t, cache_rate=1.0, progress=False)
    torch.testing.assert_close(ds[0]["drr"], a)
    with pytest.raises(ValueError, match="deterministic"):
        SeededDRRd("gt", angle_jitter=2.0)
    assert isinstance(DRRd("gt"), Randomizable)


def _simulation(files: list[str], key: str) -> dict:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    items = parser.get(key)
    (drr,) = [t for t in items if "DRR" in t["_target_"]]
    parser.parse()
    return {k: parser.get_parsed_content(f"{key}#{items.index(drr)}#{k}") for k in drr if not k.startswith("_")} | {
        "_target_": drr["_target_"]
    }


def test_validation_evaluation_and_simulated_inference_simulate_alike():
    val = _simulation(["train.json"], "validate#simulate_transforms")
    ev = _simulation(["train.json", "evaluate.json"], "validate#simulate_transforms")
    inf = _simulation(["inference.json", "inference_simulated.json"], "preprocessing#transforms")
    for cfg in (val, ev, inf):
        assert cfg["_target_"] == "scripts.transforms.SeededDRRd"
        assert cfg["photon_count"] == 1e6 and cfg["seed"] == 0 and cfg["physics"] == "poly"
        assert cfg["spectrum"] == "60kV" and np.allclose(cfg["angles"], [[0, 0], [90, 0]])


def test_distributed_validation_counts_every_vertebra_once(monkeypatch):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    assert "validation_sampler" in parser.get("validate#sampler")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    sampler = workflow.validation_sampler(list(range(5)))
    assert list(sampler) == [1, 3], "rank 1 of 2 gets items 1 and 3 of 5, none padded"
    assert len(sampler) == 2
    assert workflow.validation_sampler([0]) is None, "fewer items than processes: every process validates all"


def test_misspelt_override_is_refused_with_close_matches(tmp_path):
    argv = [
        "/x/monai/bundle/__main__.py",
        "run",
        "--config_file",
        str([str(CONFIGS / "train.json"), str(CONFIGS / "cpu.json")]),
        "--epoch",
        "1",
        "--validate#dataset#cache_rate",
        "0",
    ]
    with pytest.raises(BundleInputError, match=r"--epoch \(did you mean --epochs"):
        workflow.check_cli_overrides(argv)
    ok = argv[:4] + ["--epochs", "1", "--validate#dataset#cache_rate=0", "--network_def#use_fem", "False"]
    workflow.check_cli_overrides(ok)
    infer = ["/x/monai/bundle/__main__.py", "run", "--config_file", str(CONFIGS / "inference.json"), "--caseid", "x"]
    with pytest.raises(BundleInputError, match="did you mean --case_id"):
        workflow.check_cli_overrides(infer)
    workflow.check_cli_overrides(["pytest", "--epoch", "1"])  # not a bundle run: nothing to check
    with pytest.raises(BundleInputError, match="write True or False"):
        workflow.check_cli_overrides(argv[:4] + ["--resume", "false"])


def test_misspelt_override_stops_a_bundle_run(dataset, tmp_path):
    ckpt = tmp_path / "models"
    cmd = _bundle_cmd("train.json") + _overrides(dataset_dir=str(dataset), ckpt_dir=str(ckpt)) + ["--epoch", "1"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    first_error = next(line for line in (res.stdout + res.stderr).splitlines() if "ERROR" in line)
    assert "did you mean --epochs" in first_error, "the cause comes first, before MONAI's traceback"
    assert not ckpt.exists()


def test_config_errors_are_logged_once_at_error(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="scripts"), pytest.raises(BundleInputError):
        workflow.load_split(tmp_path / "absent", "training")
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "python -m scripts.prepare" in caplog.records[0].getMessage()


def test_nan_statistics_are_refused(tmp_path):
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [], "statistics": {"gt_mean": None}}))
    with pytest.raises(BundleInputError):
        workflow.dataset_statistics(tmp_path)
    (tmp_path / "datalist.json").write_text('{"training": [], "statistics": {"gt_mean": NaN, "gt_std": 100}}')
    with pytest.raises(BundleInputError, match="NaN or infinite"):
        workflow.dataset_statistics(tmp_path)


def test_resumable_checkpoint_saves_the_best_model_state(tmp_path):
    saver = BestModelSaver(tmp_path, torch.nn.Linear(1, 1))
    evaluator = _Engine()
    evaluator.state.epoch, evaluator.state.metrics = 4, {"val_dice": 0.8}
    saver(evaluator)  # a best value is restored only with the model.pt it describes
    engine = type("E", (), {"state": type("S", (), {"epoch": 4, "max_epochs": None})()})()
    ResumableCheckpoint(tmp_path, {"best_model": saver}, include_engine=False).save(engine)
    other = BestModelSaver(tmp_path, torch.nn.Linear(1, 1))
    ResumableCheckpoint(tmp_path, {"best_model": other}, include_engine=False).load(engine)
    assert (other.best, other.best_epoch) == (0.8, 4)


def test_run_training_is_the_run_of_train_json(dataset, tmp_path):
    """`python -m monai.bundle run training ...`, the form many MONAI users type, trains."""
    ckpt = tmp_path / "models"
    common = dict(dataset_dir=str(dataset), ckpt_dir=str(ckpt), output_dir=str(tmp_path / "runs"), epochs=1)
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        run_id="training",
        workflow_type="train",
        **{"bundle_root": str(ROOT), "warmup_epochs": 1, **common, **SMALL},
    )
    wf.initialize()
    wf.run()
    assert (ckpt / "checkpoint_last.pt").is_file() and (ckpt / "model.pt").is_file()


def test_best_model_saver_knows_a_best_saved_after_the_last_checkpoint(tmp_path):
    """A run killed between writing model.pt and its epoch checkpoint resumes with the newer, better value."""
    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path, net)
    engine = _Engine()
    engine.state.epoch, engine.state.metrics = 1, {"val_dice": 0.6}
    saver(engine)
    checkpointed = saver.state_dict()  # the epoch-1 checkpoint
    engine.state.epoch, engine.state.metrics = 2, {"val_dice": 0.8}
    saver(engine)  # model.pt of epoch 2 written, then the process is killed before its checkpoint
    resumed = BestModelSaver(tmp_path, net)
    resumed.load_state_dict(checkpointed)
    assert (resumed.best, resumed.best_epoch) == (0.8, 2)
    assert json.loads((tmp_path / "model.pt.best.json").read_text())["epoch"] == 2
