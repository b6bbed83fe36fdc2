# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""What training and inference must agree on is the same in configs/train.json and configs/inference.json,
and every documented config combination loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from scripts.networks import read_model_info
from tests.test_workflows import SMALL

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

#: ids that must be identical in the two stand-alone configs (model-zoo keeps both loadable alone)
SHARED = ("network_def", "channels", "device")
#: ids that inference takes from the model's contract: without a model, its defaults are training's values
FROM_MODEL = ("roi_size", "spacing", "views", "expansion_mode")


def _parser(*files: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    return parser


@pytest.mark.parametrize("size", [[], ["cpu.json"]])
def test_train_and_inference_agree(size):
    train, infer = _parser("train.json", *size), _parser("inference.json", *size)
    for key in SHARED:
        assert train.get(key) == infer.get(key), f"{key} differs between train.json and inference.json"
    infer["ckpt_dir"] = str(ROOT / "no-model-here")
    for key in FROM_MODEL:
        assert train.get_parsed_content(key) == infer.get_parsed_content(key), f"{key}: inference's default differs"
    assert "attach_model_info(@network_def" in train.get("network") and "attach_model_info(@network_def" in infer.get(
        "network"
    ), "both wrap network_def with the model-info buffers"


@pytest.mark.parametrize(
    "files",
    [
        ["train.json"],
        ["train.json", "cpu.json"],
        ["train.json", "evaluate.json"],
        ["train.json", "evaluate.json", "cpu.json"],
        ["train.json", "multi_gpu_train.json"],
        ["inference.json"],
        ["inference.json", "cpu.json"],
        ["inference.json", "inference_simulated.json"],
        ["inference.json", "inference_simulated.json", "cpu.json"],
        *[["train.json", f"lab/recipes/{r}.json", "cpu.json"] for r in ("pose", "geometric", "full")],
        *[["train.json", f"lab/baselines/{b}.json", "cpu.json"] for b in ("psr", "sit", "e2e", "bx2s")],
    ],
)
def test_documented_combinations_build_their_network(files):
    parser = _parser(*files)
    net = parser.get_parsed_content("network_def")
    assert sum(p.numel() for p in net.parameters()) > 0
    assert {"hu_mean", "hu_std", "spacing_mm", "roi_size"} <= {n for n, _ in net.named_buffers()}
    if files[0] == "train.json":  # the trained network carries the training statistics, spacing and crop size
        parser["stats"] = {"gt_mean": -990.0, "gt_std": 180.0}
        key = "network#module" if "multi_gpu_train.json" in files else "network"
        info = read_model_info(parser.get_parsed_content(key))
        assert (info["gt_mean"], info["gt_std"], info["roi_size"]) == (
            -990.0,
            180.0,
            parser.get_parsed_content("roi_size"),
        )


@pytest.mark.parametrize(
    "files, workflow_type",
    [
        (["train.json"], "train"),
        (["train.json", "cpu.json"], "train"),
        (["train.json", "evaluate.json"], "eval"),
        (["train.json", "evaluate.json", "cpu.json"], "eval"),
        (["inference.json"], "infer"),
        (["inference.json", "cpu.json"], "infer"),
        (["inference.json", "inference_simulated.json"], "infer"),
        (["inference.json", "inference_simulated.json", "cpu.json"], "infer"),
    ],
)
def test_documented_combinations_pass_their_properties(files, workflow_type, dataset, trained):
    """MONAI's own property check of every documented single-process combination (test sizes, test data)."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in files],
        workflow_type=workflow_type,
        dataset_dir=str(dataset),
        ckpt_dir=str(trained),
        **SMALL,
    )
    wf.initialize()
    assert not wf.check_properties()


def test_simulated_inference_sees_the_validation_x_rays():
    """inference_simulated.json repeats the simulation settings that the stand-alone inference.json lacks: they
    and its SeededDRRd must be those of train.json's validation, so both see the same X-rays of a vertebra."""
    train, infer = _parser("train.json"), _parser("inference.json", "inference_simulated.json")
    for key in ("seed", "drr_source", "physics", "spectrum", "photon_count"):
        assert infer.get(key) == train.get(key), f"{key} differs between train.json and inference_simulated.json"
    infer["ckpt_dir"] = str(ROOT / "no-model-here")  # without a model, the views default to training's
    assert infer.get_parsed_content("views") == train.get_parsed_content("views")
    (val,) = train.get("validate#simulate_transforms")
    sim = next(t for t in infer.get("preprocessing#transforms") if t["_target_"] == val["_target_"])
    assert {k: v for k, v in sim.items() if k != "output_keys"} == {k: v for k, v in val.items() if k != "output_keys"}


@pytest.mark.parametrize("size", [[], ["cpu.json"]])
def test_training_writes_into_its_run_folder_and_inference_reads_the_bundle_model(size):
    train, infer = _parser("train.json", *size), _parser("inference.json", *size)
    ckpt, out = Path(train.get_parsed_content("ckpt_dir")), Path(train.get_parsed_content("output_dir"))
    assert ckpt.is_relative_to(out) and not ckpt.resolve().is_relative_to(ROOT / "models")
    shipped = ROOT / "models" / ("cpu" if size else "")
    assert Path(infer.get_parsed_content("ckpt_dir")).resolve() == shipped.resolve()
    evaluate = _parser("train.json", "evaluate.json", *size)
    assert Path(evaluate.get_parsed_content("ckpt_dir")).resolve() == shipped.resolve()


@pytest.mark.parametrize("config", ["train.json", "finder_train.json"])
def test_a_run_shorter_than_the_validation_interval_still_validates(config):
    """``--epochs`` below ``val_interval`` validates every epoch, so the run keeps a model.pt; ``--val_interval 0``
    never validates (the epoch benchmark's timing runs)."""
    for epochs, val_interval, interval in ((2, 3, 2), (100, 3, 3), (4, 0, 5)):
        parser = _parser(config)
        parser["epochs"], parser["val_interval"] = epochs, val_interval
        handler = next(h for h in parser["train"]["handlers"] if h["_target_"] == "ValidationHandler")
        parser["probe"] = handler["interval"]
        assert parser.get_parsed_content("probe") == interval
