# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The bundle's workflows (train, evaluate, infer) through MONAI's ConfigWorkflow, on a synthetic 32^3 dataset."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scripts.metrics import METRIC_NAMES
from scripts.networks import read_model_info
from tests.conftest import CONFIGS, ROI, ROOT, SMALL, SPACING, bundle_workflow

# the test sizes, the synthetic dataset and the model trained on it are shared by the whole session (conftest.py)
_workflow = bundle_workflow


def test_check_properties_train_and_infer(dataset, tmp_path):
    train = _workflow(["train.json"], "train", dataset_dir=str(dataset), ckpt_dir=str(tmp_path), **SMALL)
    train.initialize()
    assert not train.check_properties()
    xrays = _write_xrays(tmp_path, dataset)
    infer = _workflow(["inference.json"], "infer", ckpt_dir=str(tmp_path), xrays=xrays, load_pretrain=False, **SMALL)
    infer.initialize()
    assert not infer.check_properties()


def test_train_one_epoch_writes_checkpoints(trained):
    assert (trained / "model.pt").is_file(), "best model by the validation metric"
    assert (trained / "checkpoint_last.pt").is_file(), "resumable checkpoint"
    info = read_model_info(trained / "model.pt")
    assert info["gt_std"] > 0 and info["spacing"] == SPACING and info["roi_size"] == ROI, "the model owns its stats"
    assert not (trained / "intensity_stats.json").exists()
    state = torch.load(trained / "checkpoint_last.pt", weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "best_model"} <= set(state)
    assert state["trainer"]["iteration"] == state["trainer"]["epoch_length"], "saved after epoch 1"


def test_evaluate_writes_every_metric(dataset, trained, tmp_path):
    wf = _workflow(
        ["train.json", "evaluate.json"],
        "eval",
        dataset_dir=str(dataset),
        ckpt_dir=str(trained),
        output_dir=str(tmp_path),
        **SMALL,
    )
    wf.initialize()
    wf.run()
    with open(tmp_path / "metrics_per_vertebra.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["P3_T4"], "one row per test vertebra, named by its id"
    confidence = {"val_confidence", "val_tta_agreement", "val_input_background_share"}
    assert set(rows[0]) == {"id"} | confidence | {f"val_{n}" for n in METRIC_NAMES}
    assert 0.0 <= float(rows[0]["val_confidence"]) <= 1.0
    assert 0.0 <= float(rows[0]["val_dice"]) <= 1.0
    with open(tmp_path / "metrics_summary.csv") as f:
        summary = {r["metric"]: r for r in csv.DictReader(f)}
    assert set(summary) == confidence | {f"val_{n}" for n in METRIC_NAMES}
    assert (tmp_path / "val_dice_raw.csv").is_file(), "MetricsSaver's per-metric files"
    record = json.loads((tmp_path / "evaluation.json").read_text())
    assert record["split"] == "test" and record["model_file"].endswith("model.pt")
    # a second evaluation into the same folder, without the confidence: no table of the first one stays
    (tmp_path / "notes_summary.csv").write_text("mine")
    wf = _workflow(
        ["train.json", "evaluate.json"], "eval", dataset_dir=str(dataset), ckpt_dir=str(trained),
        output_dir=str(tmp_path), confidence=False, input_check=False, **SMALL,
    )  # fmt: skip
    wf.initialize()
    wf.run()
    assert not list(tmp_path.glob("val_confidence*")) and not list(tmp_path.glob("val_input_background*"))
    assert (tmp_path / "notes_summary.csv").read_text() == "mine", "files of others stay"
    assert json.loads((tmp_path / "evaluation.json").read_text())["confidence"] is False


def _write_xrays(tmp_path: Path, dataset: Path, size: tuple[int, int] = (ROI, ROI)) -> list[str]:
    """Simulate AP and lateral DRRs of the test vertebra and save them as 16-bit PNGs."""
    from monai.transforms import LoadImage
    from scripts.simulate import write_png16
    from scripts.transforms import DRR

    item = json.loads((dataset / "datalist.json").read_text())["test"][0]
    vol = LoadImage(image_only=True, ensure_channel_first=True)(str(dataset / item["gt"]))
    drr = DRR(photon_count=None)(vol).numpy()
    paths = []
    for i, name in enumerate(["ap", "lat"]):
        img = np.asarray(Image.fromarray(drr[i]).resize(size[::-1])) if size != (ROI, ROI) else drr[i]
        path = tmp_path / f"{name}.png"
        write_png16(img, path, float(drr.max()))
        paths.append(str(path))
    return paths


def test_infer_writes_volume_mesh_preview(dataset, trained, tmp_path):
    xrays = _write_xrays(tmp_path, dataset)
    out = tmp_path / "out"
    wf = _workflow(
        ["inference.json"], "infer", ckpt_dir=str(trained), output_dir=str(out), xrays=xrays, case_id="T4", **SMALL
    )
    wf.initialize()
    wf.run()
    case = out / "T4"
    img = nib.load(str(case / "T4_hu.nii.gz"))
    assert img.shape[:3] == (ROI, ROI, ROI)
    np.testing.assert_allclose(np.diag(img.affine)[:3], [SPACING] * 3, atol=1e-5)
    centre = img.affine @ np.array([(ROI - 1) / 2] * 3 + [1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-4, err_msg="the grid is centred on the isocentre")
    report = json.loads((case / "T4_mesh.json").read_text())
    assert "watertight" in report and "components" in report
    if report["vertices"]:
        assert (case / "T4_mesh.stl").is_file() and (case / "T4_mesh.ply").is_file()
    assert Image.open(case / "T4_preview.png").size[0] > 100
    assert sorted(p.name for p in out.iterdir()) == ["T4"], "a finished case only, no staging folder left"


def test_infer_from_simulated_ct_reports_metrics(dataset, trained, tmp_path):
    wf = _workflow(
        ["inference.json", "inference_simulated.json"],
        "infer",
        ckpt_dir=str(trained),
        output_dir=str(tmp_path),
        dataset_dir=str(dataset),
        **SMALL,
    )
    wf.initialize()
    wf.run()
    assert (tmp_path / "P3_T4" / "P3_T4_hu.nii.gz").is_file()
    with open(tmp_path / "metrics_per_vertebra.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["id"] == "P3_T4"
    # the saved volume keeps the crop's affine: it can be put back into patient space
    src = nib.load(str(dataset / json.loads((dataset / "datalist.json").read_text())["test"][0]["gt"]))
    np.testing.assert_allclose(nib.load(str(tmp_path / "P3_T4" / "P3_T4_hu.nii.gz")).affine, src.affine, atol=1e-4)


@pytest.mark.parametrize(
    "case, message",
    [("one_image", "two"), ("different_sizes", "size"), ("unreadable", "cannot read"), ("angles", "360")],
)
def test_bad_inference_inputs(dataset, trained, tmp_path, case, message):
    ap, lat = _write_xrays(tmp_path, dataset)
    angles = None
    if case == "one_image":
        xrays = [ap]
    elif case == "different_sizes":
        Image.fromarray(np.zeros((40, 50), dtype=np.uint16)).save(lat)
        xrays = [ap, lat]
    elif case == "unreadable":
        Path(lat).write_bytes(b"not an image")
        xrays = [ap, lat]
    else:
        xrays, angles = [ap, lat], [[0, 0], [400, 0]]
    out = tmp_path / "out"
    wf = _workflow(["inference.json"], "infer", ckpt_dir=str(trained), output_dir=str(out), xrays=xrays, **SMALL)
    if angles is not None:
        wf.parser["views"] = angles
    with pytest.raises(Exception) as err:
        _initialize_and_run(wf)
    text = "".join(str(e) for e in _chain(err.value))
    assert message in text.lower()
    assert not out.exists() or not any(out.iterdir()), "nothing is written for a bad input"


def test_missing_model_says_how_to_train(tmp_path, dataset):
    ap, lat = _write_xrays(tmp_path, dataset)
    wf = _workflow(["inference.json"], "infer", ckpt_dir=str(tmp_path), xrays=[ap, lat], **SMALL)
    with pytest.raises(Exception) as err:
        _initialize_and_run(wf)
    assert "configs/train.json" in "".join(str(e) for e in _chain(err.value))


def test_missing_dataset_says_how_to_prepare(tmp_path):
    wf = _workflow(["train.json"], "train", dataset_dir=str(tmp_path / "nothing"), ckpt_dir=str(tmp_path), **SMALL)
    with pytest.raises(Exception) as err:
        _initialize_and_run(wf)
    assert "python -m scripts.prepare" in "".join(str(e) for e in _chain(err.value))


def _initialize_and_run(wf) -> None:
    wf.initialize()
    wf.run()


def _chain(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _bundle_cmd(*configs: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", str([str(CONFIGS / c) for c in configs])]


def _overrides(**kw) -> list[str]:
    args = []
    for k, v in {**SMALL, **kw}.items():
        args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return args


def _saved_epoch(ckpt: Path) -> int:
    trainer = torch.load(ckpt / "checkpoint_last.pt", weights_only=False)["trainer"]
    return trainer["iteration"] // trainer["epoch_length"]


# slow: covered by tests/test_trust.py::test_resumed_training_keeps_the_best_model (train.json resumes after the
# saved epoch and says where) and tests/test_trust_saving.py::test_kill_at_each_write_then_resume (kill -9 at every
# write of the same checkpoint handlers, then resume)
@pytest.mark.slow
def test_kill_and_resume(dataset, tmp_path):
    """A training process killed after an epoch continues from the saved epoch when started again."""
    ckpt, log1 = tmp_path / "models", tmp_path / "run1.log"
    args = _bundle_cmd("train.json") + _overrides(
        dataset_dir=str(dataset), ckpt_dir=str(ckpt), output_dir=str(tmp_path / "runs"), epochs=4, warmup_epochs=1
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log1, "w") as f:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 240
        while time.time() < deadline and "epoch 2: checkpoint saved" not in log1.read_text():
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert "epoch 2: checkpoint saved" in log1.read_text(), log1.read_text()[-3000:]
    saved_epoch = _saved_epoch(ckpt)
    assert saved_epoch >= 2
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert f"at epoch {saved_epoch}" in out, "the rerun says where it resumed"
    assert f"Epoch: {saved_epoch + 1}/4" in out and "Epoch: 1/4" not in out
    assert _saved_epoch(ckpt) == 4


def test_ddp_two_gloo_processes(dataset, tmp_path):
    """configs/multi_gpu_train.json under torchrun with 2 CPU processes (gloo)."""
    ckpt = tmp_path / "models"
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29577",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")]),
    ] + _overrides(
        dataset_dir=str(dataset),
        ckpt_dir=str(ckpt),
        output_dir=str(tmp_path / "runs"),
        epochs=1,
        # two items per rank: batch norm needs more than one value per channel at the 1-voxel bottleneck of 32^3
        **{"train#dataset#data": "$@scripts.workflow.load_split(@dataset_dir, 'training') * 2"},
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    state = torch.load(ckpt / "checkpoint_last.pt", weights_only=False)
    assert state["trainer"]["iteration"] == state["trainer"]["epoch_length"], "saved after epoch 1"
    assert not any(k.startswith("module.") for k in state["model"]), "checkpoints hold the unwrapped network"
    assert (tmp_path / "runs" / "curves.png").is_file(), "rank 0 draws the training curves"
    assert (ckpt / "model.pt").is_file()
    # only rank 0 writes logs: one TensorBoard file per handler (training, validation), none left empty by rank 1
    assert len(list((tmp_path / "runs").glob("events.out.tfevents*"))) == 2
    # the learning rate follows the global batch (lr_scaling "linear": 2 processes, twice the rate)
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(2 * 0.01)


# slow: covered by tests/test_bundle_api.py::test_monai_bundle_commands_from_another_folder (ckpt_export of this
# model with its widths as overrides, from another folder: TorchScript matches eager and keeps the statistics)
@pytest.mark.slow
def test_ckpt_export_matches_eager(trained, tmp_path):
    ts = tmp_path / "model.ts"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(trained / "model.pt"),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        str(CONFIGS / "inference.json"),
    ] + _overrides(ckpt_dir=str(trained))
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    from scripts.networks import EAR, attach_model_info

    net = attach_model_info(EAR(channels=SMALL["channels"]))
    net.load_state_dict(torch.load(trained / "model.pt", weights_only=True))
    net.eval()
    scripted = torch.jit.load(str(ts))
    assert read_model_info(ts) == read_model_info(trained / "model.pt"), "the statistics survive TorchScript export"
    x = torch.randn(1, 2, ROI, ROI, ROI)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-4)


def test_train_from_presimulated_pairs(dataset, tmp_path):
    """`simulate_online: false` trains on the pairs written by `python -m scripts.simulate`."""
    import shutil

    from scripts.simulate import main as simulate

    data = tmp_path / "prepared"
    shutil.copytree(dataset, data)
    simulate(str(data), angles="[[0, 90]]", source="in_context")
    item = json.loads((data / "datalist.json").read_text())["training"][0]
    assert len(item["drr_png"]) == 2
    ckpt = tmp_path / "models"
    wf = _workflow(
        ["train.json"],
        "train",
        dataset_dir=str(data),
        ckpt_dir=str(ckpt),
        output_dir=str(tmp_path / "runs"),
        epochs=1,
        simulate_online=False,
        **SMALL,
    )
    wf.initialize()
    batch = wf.parser.get_parsed_content("train#dataset")[0]
    assert batch["image"].shape == (2, ROI, ROI, ROI)
    # fixed images: the target is not pose-augmented (it would no longer match them)
    stats = json.loads((data / "datalist.json").read_text())["statistics"]
    gt = nib.load(str(data / item["gt"])).get_fdata()
    expected = (gt - stats["gt_mean"]) / stats["gt_std"]
    for _ in range(3):
        label = wf.parser.get_parsed_content("train#dataset")[0]["label"][0].numpy()
        np.testing.assert_allclose(label, expected, atol=1e-4)
    # the expanded pre-simulated pair matches an on-the-fly simulation of the same vertebra (noise aside)
    online = _workflow(["train.json"], "train", dataset_dir=str(data), ckpt_dir=str(ckpt), augment_prob=0.0, **SMALL)
    online.initialize()
    ref = online.parser.get_parsed_content("train#dataset")[0]["image"]
    corr = torch.corrcoef(torch.stack([batch["image"].flatten(), ref.flatten()]))[0, 1]
    assert corr > 0.98
    wf.run()
    assert _saved_epoch(ckpt) == 1
    # the model records the pairs it was trained on (in-context X-rays, no augmentation), not the config's defaults
    record = read_model_info(ckpt / "model.pt")["record"]
    assert record["drr_source"] == "ct" and record["recipe"] == {"presimulated": True}
    assert record["physics"] == "poly" and record["photon_count"] == 1e6


def test_infer_from_datalist(dataset, trained, tmp_path):
    """`--datalist cases.json`: relative paths, default and explicit angles, outputs named by id."""
    ap, lat = _write_xrays(tmp_path, dataset)
    cases = [
        {"xray": [Path(ap).name, Path(lat).name], "id": "first"},
        {"xray": [ap, lat], "angles": [[0, 0], [90, 0]], "id": "second"},
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = tmp_path / "out"
    wf = _workflow(
        ["inference.json"],
        "infer",
        ckpt_dir=str(trained),
        output_dir=str(out),
        datalist=str(tmp_path / "cases.json"),
        **SMALL,
    )
    wf.initialize()
    wf.run()
    a = nib.load(str(out / "first" / "first_hu.nii.gz")).get_fdata()
    b = nib.load(str(out / "second" / "second_hu.nii.gz")).get_fdata()
    np.testing.assert_allclose(a, b, atol=1e-4, err_msg="default angles are AP and lateral")


def test_train_other_network_e2e_baseline(dataset, tmp_path):
    """Any MONAI network fits the workflow: E2E (dimension expansion + 3-D U-Net) is a network_def override."""
    ckpt = tmp_path / "models"
    wf = _workflow(
        ["train.json"],
        "train",
        dataset_dir=str(dataset),
        ckpt_dir=str(ckpt),
        output_dir=str(tmp_path / "runs"),
        epochs=1,
        network_def={
            "_target_": "monai.networks.nets.BasicUNet",
            "spatial_dims": 3,
            "in_channels": 2,
            "out_channels": 1,
            "features": [4, 8, 8, 16, 16, 4],
        },
        **SMALL,
    )
    wf.initialize()
    wf.run()
    assert (ckpt / "model.pt").is_file() and _saved_epoch(ckpt) == 1
