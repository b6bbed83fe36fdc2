# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""TwoStageEAR: the view stage reads the views back exactly, feeds EAR, trains end to end, scripts; ``combine``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from scripts.errors import BundleInputError
from scripts.functional import zscore_images
from scripts.networks import EAR, TwoStageEAR, stack_views, volume_from_views
from scripts.networks.model_info import attach_model_info, read_model_info
from scripts.tools.spine_stage import combine, scale_bone_density
from torch import nn

SMALL = (4, 8, 16, 32, 64)
VIEW = (4, 4, 8, 8, 16, 4)


class _Identity2D(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _net() -> TwoStageEAR:
    torch.manual_seed(0)
    return TwoStageEAR(channels=SMALL, view_features=VIEW)


def _expanded(b: int = 2, size: int = 32) -> torch.Tensor:
    torch.manual_seed(1)
    views = torch.randn(b, 2, size, size) * 3.0 + 5.0
    return volume_from_views(views[:, 0], views[:, 1], size, size)


def test_identity_view_stage_gives_ear_on_the_zscored_views():
    net = _net().eval()
    net.view_net = _Identity2D()
    x = _expanded()
    z = zscore_images(stack_views(x))
    with torch.no_grad():
        expected = net.volume_net(volume_from_views(z[:, 0], z[:, 1], 32, 32))
        assert torch.allclose(net(x), expected, atol=1e-5)
    # the views the stage sees are the expanded views, z-scored: mean 0, std 1 per view
    assert torch.allclose(z.mean((-2, -1)), torch.zeros(2, 2), atol=1e-5)
    assert torch.allclose(z.std((-2, -1)), torch.ones(2, 2), atol=1e-4)


def test_shapes_and_gradients_reach_both_stages():
    net = _net().train()
    x = _expanded()
    out = net(x)
    assert out.shape == (2, 2, 32, 32, 32)  # volume + edge logits, as EAR's
    out[:, :1].mean().backward()
    assert net.view_net.final_conv.weight.grad.abs().sum() > 0
    assert net.volume_net.head.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        assert net(x[:1]).shape == (1, 1, 32, 32, 32)


def test_torchscript_matches_eager():
    net = _net().eval()
    x = _expanded(1)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(net)(x), net(x), atol=1e-5)


def test_carries_a_contract_and_refuses_bad_input():
    net = _net()
    own = dict(net.named_buffers(recurse=False))
    assert "model_contract" in own and torch.isnan(own["hu_mean"]).all()  # the statistics, unknown until trained
    record = json.loads(bytes(own["model_contract"].tolist()).rstrip(b"\0"))["record"]
    assert record == {"network": "TwoStageEAR", "view_features": list(VIEW), "joint_views": False}
    with pytest.raises(ValueError, match="2 input channels"):
        net(torch.zeros(1, 3, 32, 32, 32))
    with pytest.raises(ValueError, match="in_channels must be 2"):
        TwoStageEAR(in_channels=3)


def test_combine_writes_a_two_stage_model_with_the_ear_contract(tmp_path):
    torch.manual_seed(2)
    view = TwoStageEAR(channels=SMALL, view_features=VIEW).view_net
    ear = attach_model_info(
        EAR(channels=SMALL), {"gt_mean": -900.0, "gt_std": 200.0}, 2.0, 32, [[0, 0], [90, 0]], "replicate",
        {"channels": list(SMALL), "drr_source": "gt"},
    )  # fmt: skip
    torch.save(view.state_dict(), tmp_path / "stage2d.pt")
    torch.save(ear.state_dict(), tmp_path / "ear.pt")
    path = combine(str(tmp_path / "stage2d.pt"), str(tmp_path / "ear.pt"), str(tmp_path / "two_stage.pt"))
    info = read_model_info(str(path))
    assert (info["gt_mean"], info["gt_std"], info["spacing"], info["roi_size"]) == (-900.0, 200.0, 2.0, 32)
    record = info["record"]
    assert record["network"] == "TwoStageEAR" and record["drr_source"] == "body"
    assert record["view_stage"]["file"] == "stage2d.pt" and len(record["view_stage"]["sha256"]) == 64
    assert record["volume_stage"] == {"file": "ear.pt", "drr_source": "gt"}
    net = TwoStageEAR(channels=SMALL, view_features=VIEW)
    net.load_state_dict(torch.load(path, weights_only=True))  # strict: every tensor, and the contract's fingerprint
    for part, source in ((net.volume_net, ear), (net.view_net, view)):
        loaded = part.state_dict()
        for k, v in source.state_dict().items():
            torch.testing.assert_close(loaded[k], v, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(BundleInputError, match="another"):
        EAR(channels=SMALL).load_state_dict(torch.load(path, weights_only=True), strict=False)
    # a folder as --out gets model.pt, the name --ckpt_dir reads
    assert combine(str(tmp_path / "stage2d.pt"), str(tmp_path / "ear.pt"), str(tmp_path / "run")) == (
        tmp_path / "run" / "model.pt"
    )
    # files of the wrong kind are refused in one line, and nothing is written
    torch.save({"net": view.state_dict(), "epoch": 3, "note": "a run's state"}, tmp_path / "last.pt")
    for views, volume, message in [
        ("ear.pt", "ear.pt", r"--view_weights .*ear.pt holds no view stage"),
        ("last.pt", "ear.pt", r"--view_weights .*last.pt holds no state dict of tensors"),
        ("stage2d.pt", "stage2d.pt", r"--volume_weights .*stage2d.pt is not an EAR model"),
        ("stage2d.pt", str(path), r"--volume_weights .*two_stage.pt is not an EAR model"),
        ("missing.pt", "ear.pt", r"--view_weights .*missing.pt: no such file"),
    ]:
        with pytest.raises(BundleInputError, match=message):
            combine(str(tmp_path / views), str(tmp_path / volume), str(tmp_path / "bad" / "model.pt"))
    # a view stage trained on high-passed views (its run's report says so) would read raw views in the model
    (tmp_path / "report.json").write_text(json.dumps({"highpass_px": 8.0}))
    with pytest.raises(BundleInputError, match=r"stage2d.pt was trained on high-passed views \(--highpass_px 8.0\)"):
        combine(str(tmp_path / "stage2d.pt"), str(tmp_path / "ear.pt"), str(tmp_path / "bad" / "model.pt"))
    (tmp_path / "report.json").write_text(json.dumps({"highpass_px": None}))
    assert combine(str(tmp_path / "stage2d.pt"), str(tmp_path / "ear.pt"), str(tmp_path / "ok")).is_file()
    (tmp_path / "report.json").unlink()  # without a report: a run's last.pt (here another kind of state) says nothing
    assert combine(str(tmp_path / "stage2d.pt"), str(tmp_path / "ear.pt"), str(tmp_path / "ok2")).is_file()
    assert not (tmp_path / "bad").exists()
    with pytest.raises(BundleInputError, match=r"--out .*m.pth: give a .pt file"):
        combine(str(tmp_path / "stage2d.pt"), str(tmp_path / "ear.pt"), str(tmp_path / "m.pth"))


def test_joint_views_read_both_views_at_once():
    torch.manual_seed(3)
    net = TwoStageEAR(channels=SMALL, view_features=VIEW, joint_views=True).eval()
    assert net.view_net.conv_0.conv_0.conv.in_channels == 2 and net.view_net.final_conv.out_channels == 2
    x = _expanded(1)
    with torch.no_grad():
        out = net(x)
        # changing the lateral view changes the AP view's stage output: the views are read together
        y = x.clone()
        y[:, 1] = y[:, 1] + torch.randn_like(y[:, 1:2].mean(2, keepdim=True).expand_as(y[:, 1:2]))[:, 0]
        assert not torch.allclose(net.spine_views(x)[:, 0], net.spine_views(y)[:, 0])
        assert torch.allclose(torch.jit.script(net)(x), out, atol=1e-5)


def test_the_lab_overlay_rebuilds_the_network_from_the_model_file(tmp_path):
    from monai.bundle import ConfigParser
    from tests.conftest import BUNDLE_ROOT

    view = TwoStageEAR(channels=SMALL, view_features=VIEW, joint_views=True).view_net
    ear = attach_model_info(
        EAR(channels=SMALL), {"gt_mean": -900.0, "gt_std": 200.0}, 2.0, 32, [[0, 0], [90, 0]], "replicate",
        {"channels": list(SMALL)},
    )  # fmt: skip
    torch.save(view.state_dict(), tmp_path / "stage2d.pt")
    torch.save(ear.state_dict(), tmp_path / "ear.pt")
    combine(str(tmp_path / "stage2d.pt"), str(tmp_path / "ear.pt"), str(tmp_path / "ckpt" / "model.pt"))
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / c) for c in ("inference.json", "body_model.json")])
    parser["ckpt_dir"] = str(tmp_path / "ckpt")
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, TwoStageEAR) and net.joint_views
    net.load_state_dict(torch.load(tmp_path / "ckpt" / "model.pt", weights_only=True))  # strict: the same shapes


def test_bone_density_draw_scales_the_vertebra_above_water():
    """A vertebra of 250 HU along 30 mm of each ray, in 200 mm of water: the draw gives the line integral of the same
    vertebra at f * 250 HU."""
    mu_water, path, rest = 0.02, 30.0, 0.02 * 200.0

    def spine_of(hu: float) -> torch.Tensor:
        return torch.full((2, 4, 4), mu_water * (1 + hu / 1000) * path)

    body = rest + spine_of(250.0)
    for f in (0.3, 1.0, 1.5):
        torch.testing.assert_close(scale_bone_density(body, spine_of(250.0), f), rest + spine_of(f * 250.0))


def test_stage_parser_widens_the_pose_and_window_draws_of_the_body_windows():
    """``--pose_deg`` reaches the body windows' pose draw (RandPosed) in place of the configs' 15 degrees, and
    ``--window_shift_mm`` their window shift (RandWindowShiftd) in place of 7 mm."""
    from scripts.tools.spine_stage import stage_parser
    from scripts.transforms import RandPosed

    def pose_bound(parser) -> list[float]:
        poses = [t for t in parser.get_parsed_content("augment_transforms") if isinstance(t, RandPosed)]
        assert len(poses) == 1
        return poses[0].range_deg.tolist()

    assert pose_bound(stage_parser("data/none")) == [15.0, 15.0, 15.0]
    assert pose_bound(stage_parser("data/none", (35, 15, 15))) == [35.0, 15.0, 15.0]
    assert pose_bound(stage_parser("data/none", 20)) == [20.0, 20.0, 20.0]
    with pytest.raises(ValueError, match="pose_deg"):
        stage_parser("data/none", (-5, 15, 15))
    from scripts.transforms import RandWindowShiftd

    def shift_bound(parser) -> list[float]:
        (shift,) = [t for t in parser.get_parsed_content("window_transforms") if isinstance(t, RandWindowShiftd)]
        return shift.max_shift.tolist()

    assert shift_bound(stage_parser("data/none")) == [7.0, 7.0, 7.0]
    assert shift_bound(stage_parser("data/none", window_shift_mm=15)) == [15.0, 15.0, 15.0]
    with pytest.raises(ValueError, match="window_shift_mm"):
        stage_parser("data/none", window_shift_mm=-1)


def test_the_shipped_body_model_reads_body_windows_where_the_isolated_model_fails(example64, tmp_path):
    """The example's T7 (a training vertebra of both) from X-rays through the whole scan: the body model,
    ``configs/body_model.json`` on its default ``models/body``, against the CPU model of isolated vertebrae on the same
    seeded body windows (measured: Dice 0.833 against 0.211), with its calibrated confidence, which falls when the
    window is 20 mm off the vertebra (measured: Dice 0.511, window centring 0.36 -> 0.07, confidence 0.72 -> 0.53).
    The isolated model's confidence is 0: the input type check finds views unlike its training X-rays."""
    import csv

    from tests.conftest import ROOT, bundle_workflow

    folder, _ = example64
    rows = {}
    body_configs = ["train.json", "cpu.json", "body.json", "evaluate.json", "body_model.json"]
    for name, configs, ckpt in (
        ("body", body_configs, {}),
        ("body_off", body_configs, {"window_error_mm": 20.0}),
        ("isolated", ["train.json", "cpu.json", "body.json", "evaluate.json"], {"ckpt_dir": str(ROOT / "models/cpu")}),
    ):
        out = tmp_path / name
        wf = bundle_workflow(configs, "eval", dataset_dir=str(folder), output_dir=str(out), **ckpt)
        wf.initialize()
        wf.run()
        with open(out / "metrics_per_vertebra.csv") as f:
            rows[name] = next(csv.DictReader(f))
    body, isolated = rows["body"], rows["isolated"]
    assert body["id"] == isolated["id"] == "LIDC-IDRI-0001_T7"
    assert float(body["val_dice"]) > 0.7 and float(isolated["val_dice"]) < 0.4
    assert 0.0 < float(body["val_confidence"]) < 1.0 and body["val_confidence"] != body["val_tta_agreement"]
    # the window 20 mm off: the finder sees no vertebra at its centre, and the confidence falls with it
    off = rows["body_off"]
    assert float(off["val_window_centring"]) < float(body["val_window_centring"]) - 0.05
    assert float(off["val_confidence"]) < float(body["val_confidence"]) - 0.05
    assert "val_window_centring" not in isolated, "the isolated model's calibration does not use it"
    # the views are X-rays through a body: the body model expects them; the isolated model's confidence is void
    assert float(body["val_input_background_share"]) < 0.55 and float(body["val_confidence"]) > 0.0
    assert float(isolated["val_input_background_share"]) < 0.55 and float(isolated["val_confidence"]) == 0.0


def test_an_ensemble_of_view_stages_averages_their_views(tmp_path):
    torch.manual_seed(5)
    single = TwoStageEAR(channels=SMALL, view_features=VIEW).eval()
    pair = TwoStageEAR(channels=SMALL, view_features=VIEW, view_members=2).eval()
    pair.view_net.load_state_dict(single.view_net.state_dict())
    pair.more_view_nets[0].load_state_dict(single.view_net.state_dict())
    pair.volume_net.load_state_dict(single.volume_net.state_dict())
    x = _expanded(1)
    with torch.no_grad():
        assert torch.allclose(pair(x), single(x), atol=1e-5), "two equal members: the one member's output"
        second = TwoStageEAR(channels=SMALL, view_features=VIEW).eval()  # a different member
        other = second.view_net
        pair.more_view_nets[0].load_state_dict(other.state_dict())
        mean = (single.spine_views(x) + second.spine_views(x)) / 2
        assert torch.allclose(pair.spine_views(x), zscore_images(mean), atol=1e-5)
        assert torch.allclose(torch.jit.script(pair)(x), pair(x), atol=1e-5)
    record = json.loads(bytes(dict(pair.named_buffers(recurse=False))["model_contract"].tolist()).rstrip(b"\0"))
    assert record["record"]["view_members"] == 2
    with pytest.raises(ValueError, match="at least one"):
        TwoStageEAR(view_members=0)
    # combine: two stage files into one model; stages of two shapes are refused
    torch.save(single.view_net.state_dict(), tmp_path / "a.pt")
    torch.save(other.state_dict(), tmp_path / "b.pt")
    ear = attach_model_info(
        EAR(channels=SMALL), {"gt_mean": -900.0, "gt_std": 200.0}, 2.0, 32, [[0, 0], [90, 0]], "replicate",
        {"channels": list(SMALL), "drr_source": "gt"},
    )  # fmt: skip
    torch.save(ear.state_dict(), tmp_path / "ear.pt")
    path = combine([str(tmp_path / "a.pt"), str(tmp_path / "b.pt")], str(tmp_path / "ear.pt"), str(tmp_path / "m.pt"))
    info = read_model_info(str(path))
    assert info["record"]["view_members"] == 2 and [s["file"] for s in info["record"]["view_stage"]] == ["a.pt", "b.pt"]
    loaded = TwoStageEAR(channels=SMALL, view_features=VIEW, view_members=2)
    loaded.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(loaded.more_view_nets[0].state_dict()["final_conv.weight"], other.final_conv.weight)
    # a two-stage model file gives all its view stages, in order
    again = combine(str(path), str(tmp_path / "ear.pt"), str(tmp_path / "m2.pt"))
    info = read_model_info(str(again))
    assert info["record"]["view_members"] == 2 and [s.get("member", 0) for s in info["record"]["view_stage"]] == [0, 1]
    twice = TwoStageEAR(channels=SMALL, view_features=VIEW, view_members=2)
    twice.load_state_dict(torch.load(again, weights_only=True))
    weights = {k: v for k, v in twice.state_dict().items() if k != "model_contract"}  # the records name other files
    torch.testing.assert_close(weights, {k: v for k, v in loaded.state_dict().items() if k != "model_contract"})
    wide = TwoStageEAR(channels=SMALL, view_features=(8, 8, 16, 32, 64, 8)).view_net
    torch.save(wide.state_dict(), tmp_path / "c.pt")
    with pytest.raises(ValueError, match="one shape"):
        combine([str(tmp_path / "a.pt"), str(tmp_path / "c.pt")], str(tmp_path / "ear.pt"), str(tmp_path / "x.pt"))


def test_train_starts_from_a_view_stage_file_or_a_member_of_a_model_file(tmp_path):
    """``train --init``: a ``stage2d.pt`` or any view stage of a two-stage model file; a wrong member, shape, file
    or resumed run is refused before the pool of windows is drawn."""
    from scripts.tools.spine_stage import _init_view_stage, train

    torch.manual_seed(7)
    pair = TwoStageEAR(channels=SMALL, joint_views=True, view_members=2)
    torch.save(pair.state_dict(), tmp_path / "model.pt")
    torch.save(pair.view_net.state_dict(), tmp_path / "stage2d.pt")
    for path, member, expected in [("model.pt", 1, pair.more_view_nets[0]), ("model.pt", 0, pair.view_net),
                                   ("stage2d.pt", 0, pair.view_net)]:  # fmt: skip
        state, used = _init_view_stage(str(tmp_path / path), member, joint_views=True)
        torch.testing.assert_close(state, expected.state_dict())
        assert used == member
    with pytest.raises(ValueError, match=r"init_member must be in \[0, 1\]"):
        _init_view_stage(str(tmp_path / "model.pt"), 2, joint_views=True)
    with pytest.raises(ValueError, match="holds one view stage"):
        _init_view_stage(str(tmp_path / "stage2d.pt"), 1, joint_views=True)
    with pytest.raises(ValueError, match="joint_views=False"):
        _init_view_stage(str(tmp_path / "model.pt"), 0, joint_views=False)
    with pytest.raises(ValueError, match="no such file"):
        _init_view_stage(str(tmp_path / "missing.pt"), 0, joint_views=True)
    torch.save(pair.volume_net.state_dict(), tmp_path / "ear.pt")  # an EAR model: no view stage at all
    with pytest.raises(ValueError, match=r"ear.pt holds no view stage \(e.g. an EAR model.pt\)"):
        _init_view_stage(str(tmp_path / "ear.pt"), 0, joint_views=True)
    torch.save({"net": pair.view_net.state_dict(), "rng": np.random.RandomState(0).get_state()}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="is not a view stage"):  # a run's last.pt holds more than weights
        _init_view_stage(str(tmp_path / "last.pt"), 0, joint_views=True)
    with pytest.raises(ValueError, match="needs --init"):
        train(init_member=1, minutes=0.0, out=str(tmp_path / "run"))
    # a run folder started from scratch does not silently resume instead of starting from --init
    (tmp_path / "run").mkdir()
    torch.save({"net": {}, "criterion": "val_ncc", "init": None}, tmp_path / "run" / "last.pt")
    with pytest.raises(ValueError, match="started from scratch, not from"):
        train(init=str(tmp_path / "stage2d.pt"), minutes=0.0, out=str(tmp_path / "run"))


def test_one_isolated_view_pairs_each_view_with_the_other_source():
    """``views``' ``dice_isolated_ap`` reads the isolated AP with the view stage's lateral, ``dice_isolated_lateral``
    the view stage's AP with the isolated lateral (channel 0 the AP view, 1 the lateral)."""
    from scripts.tools.spine_stage import _one_isolated_view

    stage, true = torch.zeros(3, 2, 4, 5), torch.ones(3, 2, 4, 5)
    true_ap, true_lateral = _one_isolated_view(stage, true)
    assert true_ap.shape == true_lateral.shape == (3, 2, 4, 5)
    assert torch.equal(true_ap[:, 0], true[:, 0]) and torch.equal(true_ap[:, 1], stage[:, 1])
    assert torch.equal(true_lateral[:, 0], stage[:, 0]) and torch.equal(true_lateral[:, 1], true[:, 1])


def test_best_shift_bone_dice_finds_a_known_move():
    """The placement oracle undoes a known whole-voxel move, loses what left the grid, and refuses bad input."""
    from monai.metrics import compute_dice
    from scripts.tools.input_sensitivity import best_shift_bone_dice

    gt = torch.zeros(20, 20, 20)
    gt[5:12, 6:14, 4:9] = 1.0
    pred = torch.roll(gt, (2, -1, 3), (0, 1, 2))  # the box lies inside the grid before and after
    assert best_shift_bone_dice(pred, gt, 0.5) == (1.0, (-2, 1, -3))
    assert best_shift_bone_dice(gt, gt, 0.5) == (1.0, (0, 0, 0))
    dice, shift = best_shift_bone_dice(pred, gt, 0.5, max_shift=1)  # too short a reach: the nearest move
    assert shift == (-1, 1, -1)
    overlap = (torch.roll(pred, shift, (0, 1, 2)) * gt).sum()
    assert dice == pytest.approx(float(2 * overlap / (2 * gt.sum())))
    unmoved = float(compute_dice(pred[None, None], gt[None, None], include_background=True))
    assert best_shift_bone_dice(pred, gt, 0.5, max_shift=0) == (pytest.approx(unmoved), (0, 0, 0))
    edge = torch.zeros(20, 20, 20)
    edge[0:4, 6:14, 4:9] = 1.0  # moved up by 3, a box at the grid's edge: nothing wraps round
    assert best_shift_bone_dice(edge, torch.roll(edge, 3, 0), 0.5) == (1.0, (3, 0, 0))
    assert best_shift_bone_dice(torch.roll(edge, 3, 0), edge, 0.5) == (1.0, (-3, 0, 0))
    split = torch.zeros(20, 20, 20)  # a box cut by the grid's edge, as if wrapped round: its top part is lost
    split[17:20, 5:9, 5:9], split[0:2, 5:9, 5:9] = 1.0, 1.0
    dice, shift = best_shift_bone_dice(split, torch.roll(split, 3, 0), 0.5)
    assert shift == (3, 0, 0) and dice == pytest.approx(2 * 2 / (2 + 5))  # 2 of 5 slices stay on the grid; roll: 1
    with pytest.raises(ValueError, match="one shape"):
        best_shift_bone_dice(gt, gt[:10], 0.5)
    with pytest.raises(ValueError, match="0 or more"):
        best_shift_bone_dice(gt, gt, 0.5, max_shift=-1)


def test_half_turn_keeps_views_and_volume_consistent():
    """The turned views are the projections of the turned volume (parallel rays: means along the beams)."""
    from scripts.networks import views_from_volume
    from scripts.tools.spine_stage import half_turn

    torch.manual_seed(3)
    volume = torch.rand(2, 1, 8, 8, 6)
    volume[:, :, :3, 5:, 1:] += 2.0  # asymmetric in X, Y and Z

    def views(v: torch.Tensor) -> torch.Tensor:
        return torch.stack(views_from_volume(torch.cat([v, v], 1)), 1)

    turned_views, turned = half_turn(views(volume), volume)
    assert torch.allclose(views(turned), turned_views)
    assert not torch.allclose(turned_views, views(volume))
    assert half_turn(turned_views)[1] is None
    assert torch.equal(half_turn(*half_turn(views(volume), volume))[1], volume)


@pytest.mark.slow
def test_the_volume_loss_trains_the_view_stage_through_the_frozen_3d_stage(example64, tmp_path):
    """``train --volume_weight``: the starting view stage is scored first, its weights move, the view stage kept is
    the one of best validation Dice, and the run folder resumes only its own kind of run."""
    from scripts.networks.model_info import load_state_dict_file
    from scripts.tools.spine_stage import train
    from tests.conftest import ROOT

    folder, _ = example64
    body = load_state_dict_file(ROOT / "models/body/model.pt")  # its second view stage is the one started from
    init = {k[len("more_view_nets.0.") :]: v for k, v in body.items() if k.startswith("more_view_nets.0.")}
    report = train(
        dataset_dir=str(folder), model_3d=str(ROOT / "models/cpu/model.pt"), minutes=0.15, draws=1,
        volume_weight=1.0, init=str(ROOT / "models/body/model.pt"), init_member=1, lr=1e-3, score_every=1,
        out=str(tmp_path / "run"),
    )  # fmt: skip
    assert report["init_member"] == 1
    curve = report["curve"]
    assert curve[0]["step"] == 0 and curve[0]["loss"] is None and len(curve) >= 2
    assert all("val_dice" in c for c in curve) and all(c["loss"] > 0 for c in curve[1:])
    assert report["mean_dice"]["stage_own"] == pytest.approx(max(c["val_dice"] for c in curve), abs=1e-3)
    assert report["val_dice_best"] == pytest.approx(max(c["val_dice"] for c in curve), abs=1e-4)
    assert report["mean_dice"]["stage_swapped"] is None, "one validation vertebra: no swap test"
    assert (tmp_path / "run" / "curve.png").is_file()
    kept = torch.load(tmp_path / "run" / "pool_gt_1_0.pt", weights_only=True)
    assert len(kept["windows"]) == report["pool"] == 11 and kept["gt_std"] > 0  # with the statistics it used
    moved = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["net"]
    assert any(not torch.equal(moved[k], init[k]) for k in init)
    with pytest.raises(ValueError, match="keeps the best val_dice, this one the best val_ncc"):  # another kind of run
        train(dataset_dir=str(folder), minutes=0.0, draws=1, out=str(tmp_path / "run"))


def test_view_scale_runs_a_coarser_view_stage_before_a_finer_ear(tmp_path):
    """``view_scale=2``: the views averaged over 2 x 2 pixels, the stage's output upsampled back; the same as the
    stage at its own pixel size on the coarser pair, upsampled."""
    torch.manual_seed(3)
    coarse = TwoStageEAR(channels=SMALL, view_features=VIEW, joint_views=True).eval()
    fine = TwoStageEAR(channels=SMALL, view_features=VIEW, joint_views=True, view_scale=2).eval()
    fine.view_net.load_state_dict(coarse.view_net.state_dict())
    x = _expanded(1, size=64)
    views = stack_views(x)
    pooled = torch.nn.functional.avg_pool2d(views, 2)
    assert torch.allclose(pooled[0, 0, 0, 0], views[0, 0, :2, :2].mean())
    with torch.no_grad():
        small = coarse.spine_views(volume_from_views(pooled[:, 0], pooled[:, 1], 32, 32))
        up = zscore_images(torch.nn.functional.interpolate(small, scale_factor=2.0, mode="bilinear"))
        out = fine.spine_views(x)
        assert out.shape == views.shape and torch.allclose(out, up, atol=1e-5)
        assert fine(x).shape == (1, 1, 64, 64, 64)
        assert torch.allclose(torch.jit.script(fine)(x), fine(x), atol=1e-5)
    with pytest.raises(ValueError, match="view_scale"):
        TwoStageEAR(view_scale=3)
    # combine records it, and the configs' record rebuilds the network
    torch.save(coarse.view_net.state_dict(), tmp_path / "a.pt")
    ear = attach_model_info(
        EAR(channels=SMALL), {"gt_mean": -900.0, "gt_std": 200.0}, 1.0, 64, [[0, 0], [90, 0]], "replicate",
        {"channels": list(SMALL), "drr_source": "gt"},
    )  # fmt: skip
    torch.save(ear.state_dict(), tmp_path / "ear.pt")
    path = combine(str(tmp_path / "a.pt"), str(tmp_path / "ear.pt"), str(tmp_path / "m.pt"), view_scale=2)
    info = read_model_info(str(path))
    assert info["record"]["view_scale"] == 2 and info["spacing"] == 1.0 and info["roi_size"] == 64
    loaded = TwoStageEAR(channels=SMALL, view_features=VIEW, joint_views=True, view_scale=2).eval()
    loaded.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        assert torch.allclose(loaded.spine_views(x), fine.spine_views(x), atol=1e-5)
    # the scale is no weight: the contract check names a network built without it
    from scripts.workflow import check_model

    assert check_model(path, loaded) == path
    plain = TwoStageEAR(channels=SMALL, view_features=VIEW, joint_views=True)
    with pytest.raises(BundleInputError, match="view_scale 2 but the config's network_def sets 1"):
        check_model(path, plain)


def test_a_fold_leaves_one_training_patient_out_of_the_pool():
    """``train --holdout P`` trains on the pool windows of the other patients; the pool holds ``draws`` rounds of the
    training items in order, so window ``i`` is of item ``i % n``."""
    from scripts.tools.spine_stage import _pool_indices

    items = [{"id": "a_L1", "patient": "a"}, {"id": "b_L1", "patient": "b"}, {"id": "a_L2", "patient": "a"}]
    assert _pool_indices(items, 6, None).tolist() == [0, 1, 2, 3, 4, 5]
    assert _pool_indices(items, 6, "a").tolist() == [1, 4]
    assert _pool_indices(items, 6, "b").tolist() == [0, 2, 3, 5]
    with pytest.raises(ValueError, match=r"'c' is not a training patient of this dataset; give one of \['a', 'b'\]"):
        _pool_indices(items, 6, "c")
    with pytest.raises(ValueError, match="the only training patient"):
        _pool_indices(items[:1], 3, "a")


def test_a_fold_names_a_training_patient_and_resumes_only_its_own_run(example64, tmp_path):
    """``train --holdout``: a name that is not a training patient stops before the pool is drawn; a run folder
    resumes only a run that left out the same patient."""
    from scripts.tools.spine_stage import train

    folder, _ = example64
    with pytest.raises(ValueError, match=r"'nobody' is not a training patient.*\['LIDC-IDRI-0001'\]"):
        train(dataset_dir=str(folder), holdout="nobody", minutes=0.0, draws=1, out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    (tmp_path / "fold").mkdir()
    torch.save(
        {"net": {}, "criterion": "val_ncc", "init": None, "holdout": "LIDC-IDRI-0001"}, tmp_path / "fold" / "last.pt"
    )
    with pytest.raises(ValueError, match="left out LIDC-IDRI-0001, not none"):
        train(dataset_dir=str(folder), minutes=0.0, draws=1, out=str(tmp_path / "fold"))


def test_the_scale_draw_and_lateral_weight_refuse_bad_settings(example64, tmp_path):
    """``train --scale_range`` scales the views, not the ground truth volumes the volume loss compares with, and
    ``--lateral_weight`` must weigh the lateral view's loss; both stop before anything is written."""
    from scripts.tools.spine_stage import train

    folder, _ = example64
    with pytest.raises(ValueError, match="scale_range scales the views but not the ground truth volumes"):
        train(dataset_dir=str(folder), scale_range=0.2, volume_weight=1.0, minutes=0.0, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"--scale_range: scale_range must be one or three values in \[0, 1\)"):
        train(dataset_dir=str(folder), scale_range=1.5, minutes=0.0, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="lateral_weight must be > 0, got 0"):
        train(dataset_dir=str(folder), lateral_weight=0, minutes=0.0, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="highpass_px must be > 0 pixels"):
        train(dataset_dir=str(folder), highpass_px=0, minutes=0.0, out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_highpass_images_keeps_edges_and_drops_what_varies_slowly():
    """A constant image goes to 0, a ramp to 0 away from the edges, a step keeps its jump (half of it on either
    side, odd about the step), and a small spot keeps nearly all of its height; bad input is refused."""
    from scripts.functional import highpass_images

    assert highpass_images(torch.full((2, 2, 32, 40), 3.0), 4.0).abs().max() < 1e-5
    ramp = torch.arange(64.0).expand(1, 1, 64, 64)
    assert highpass_images(ramp, 4.0)[..., 16:48, 16:48].abs().max() < 0.01
    step = (torch.arange(64.0) >= 32).float().expand(1, 1, 64, 64)
    out = highpass_images(step, 4.0)[0, 0, 32].tolist()
    assert out[32] - out[31] == pytest.approx(1.0, abs=0.2) and out[31] == pytest.approx(-out[32], abs=1e-4)
    assert max(abs(v) for v in out[:8] + out[-8:]) < 1e-3  # far from the step: nothing
    spot = torch.zeros(1, 1, 64, 64)
    spot[..., 32, 32] = 1.0
    kept = highpass_images(spot, 8.0)
    assert kept[0, 0, 32, 32] > 0.99 and kept.sum().abs() < 1e-4  # the blur's share of a spot is tiny; no net gain
    with pytest.raises(ValueError, match="sigma_px must be > 0"):
        highpass_images(spot, 0.0)
    with pytest.raises(ValueError, match=r"expects \(B, C, H, W\)"):
        highpass_images(spot[0], 2.0)


def test_stack_needs_one_fold_per_training_patient(example64, tmp_path):
    """``stack`` stops before any work when a training patient has no fold, or a folder is not a fold."""
    from scripts.tools.spine_stage import stack

    folder, _ = example64

    def fold(name: str, **report) -> str:
        (tmp_path / name).mkdir()
        base = {"holdout": "LIDC-IDRI-0001", "target": "isolated", "joint_views": True, "draws": 1, "seed": 0,
                "pool": 11, "dataset_dir": str(folder), "pose_deg": 15.0, "window_shift_mm": 7.0}  # fmt: skip
        (tmp_path / name / "report.json").write_text(json.dumps({**base, **report}))
        return str(tmp_path / name)

    for folds, message in [
        ([], "stack needs the folds"),
        ([str(tmp_path / "none")], r"none/report.json is missing; train the fold first"),
        ([fold("all", holdout=None)], "left no patient out; train it with --holdout P"),
        ([fold("spine", target="spine")], "is not a body model's view stage"),
        ([fold("other", holdout="ts_s0561")], r"no fold leaves out \['LIDC-IDRI-0001'\]"),
        ([fold("one"), fold("two", draws=2, holdout="x")], "were trained on different pools"),
        ([fold("three"), fold("four")], "three and .*four both leave out LIDC-IDRI-0001"),
        ([fold("five", dataset_dir=str(tmp_path))], "was trained on .*, not --dataset_dir"),
        ([fold("six"), fold("seven", holdout="ts_s0561")], r"\['ts_s0561'\] are not training patients"),
        (fold("eight"), r"eight/pool_raw_1_0.pt is missing: copy the folds' shared pool"),  # one folder, as a string
    ]:
        with pytest.raises(ValueError, match=message):
            stack(folds, dataset_dir=str(folder), minutes=0.0, out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_stack_fine_tunes_the_ear_stage_on_the_folds_views(example64, tmp_path):
    """``stack``: the starting EAR stage is scored first, its weights move, the one of best validation Dice is kept
    with the starting model's contract, ``combine`` joins it to the view stages, and the run resumes."""
    from scripts.networks.model_info import load_state_dict_file, read_model_info
    from scripts.tools.spine_stage import stack, train
    from tests.conftest import ROOT

    folder, _ = example64
    fold = tmp_path / "fold"
    train(dataset_dir=str(folder), minutes=0.01, draws=1, score_every=1, scale_range=0.2, lateral_weight=3.0,
          out=str(fold))  # fmt: skip
    report = json.loads((fold / "report.json").read_text())
    assert report["holdout"] is None and report["pool"] == 11
    assert report["scale_range"] == 0.2 and report["lateral_weight"] == 3.0 and report["highpass_px"] is None
    assert all(c["loss"] > 0 for c in report["curve"])
    # a run on high-passed views: recorded, resumed only as such, and refused where the model would read raw views
    hp = tmp_path / "hp"
    hp.mkdir()
    shutil.copy(fold / "pool_raw_1_0.pt", hp / "pool_raw_1_0.pt")
    train(dataset_dir=str(folder), minutes=0.01, draws=1, score_every=1, highpass_px=8.0, out=str(hp))
    hp_report = json.loads((hp / "report.json").read_text())
    assert hp_report["highpass_px"] == 8.0 and all(c["loss"] > 0 for c in hp_report["curve"])
    with pytest.raises(ValueError, match="is a run with highpass_px 8.0, not None"):  # a resume keeps its input
        train(dataset_dir=str(folder), minutes=0.0, draws=1, out=str(hp))
    (hp / "report.json").write_text(json.dumps({**hp_report, "holdout": "LIDC-IDRI-0001"}))
    with pytest.raises(ValueError, match=r"--folds: .*hp was trained on high-passed views"):
        stack([str(hp)], dataset_dir=str(folder), minutes=0.0, out=str(tmp_path / "no_stack"))
    (hp / "report.json").unlink()  # a run stopped before its report: its last.pt says it
    shutil.copy(hp / "stage2d.pt", hp / "renamed.pt")
    with pytest.raises(ValueError, match=r"renamed.pt was trained on high-passed views \(--highpass_px 8.0\)"):
        combine(str(hp / "renamed.pt"), str(ROOT / "models/cpu/model.pt"), str(tmp_path / "no_model"))
    assert not (tmp_path / "no_stack").exists() and not (tmp_path / "no_model").exists()
    # the example holds one training patient: its fold is this run, marked as one that left it out
    (fold / "report.json").write_text(json.dumps({**report, "holdout": "LIDC-IDRI-0001"}))
    start = load_state_dict_file(ROOT / "models/cpu/model.pt")
    out = tmp_path / "stack"
    result = stack([str(fold)], dataset_dir=str(folder), minutes=0.15, score_every=1, dice_weight=0.5, out=str(out))
    assert result["dice_weight"] == 0.5
    curve = result["curve"]
    assert curve[0]["step"] == 0 and curve[0]["loss"] is None and len(curve) >= 2
    assert all(c["loss"] > 0 for c in curve[1:])
    assert result["val_dice_start"] == curve[0]["val_dice"]
    assert result["val_dice_best"] == pytest.approx(max(c["val_dice"] for c in curve), abs=1e-4)
    assert len(torch.load(fold / "pool_gt_1_0.pt", weights_only=True)["windows"]) == 11
    moved = torch.load(out / "last.pt", weights_only=False)["model"]
    assert any(not torch.equal(moved[k], start[k]) for k in start if start[k].is_floating_point())
    kept = load_state_dict_file(out / "ear.pt")
    assert read_model_info(kept)["gt_mean"] == read_model_info(start)["gt_mean"]
    path = combine(str(ROOT / "models/body/model.pt"), str(out / "ear.pt"), str(tmp_path / "model"))
    assert read_model_info(str(path))["record"]["network"] == "TwoStageEAR"
    again = stack([str(fold)], dataset_dir=str(folder), minutes=0.0, score_every=1, dice_weight=0.5, out=str(out))
    assert again["steps"] == result["steps"] and again["curve"][: len(curve)] == curve
    with pytest.raises(ValueError, match="'dice_weight': 0.5.*not of.*'dice_weight': 0.0"):  # another loss
        stack([str(fold)], dataset_dir=str(folder), minutes=0.0, score_every=1, out=str(out))
    state = torch.load(out / "last.pt", weights_only=False)  # a run saved before dice_weight: without the term
    state["args"].pop("dice_weight")
    torch.save(state, out / "last.pt")
    old = stack([str(fold)], dataset_dir=str(folder), minutes=0.0, score_every=1, out=str(out))
    assert old["steps"] == result["steps"] and old["dice_weight"] == 0.0


def test_views_shows_the_view_stage_and_what_a_blur_costs_its_ear_stage(example64, tmp_path):
    """``views`` writes its report and figure, and refuses a model without a view stage."""
    from scripts.tools.spine_stage import views
    from tests.conftest import ROOT

    folder, _ = example64
    report = views(str(ROOT / "models/body/model.pt"), str(folder), "test", blur_px=(1.0, 4.0),
                   out=str(tmp_path / "v.json"), figure=str(tmp_path / "v.png"))  # fmt: skip
    row = report["vertebrae"][0]
    assert report["n"] == 1 and row["id"].endswith("_T7")
    assert 0.5 < row["ncc_ap"] <= 1 and 0.5 < row["ncc_lateral"] <= 1
    assert row["dice_isolated_blur_4px"] < row["dice_isolated_blur_1px"]  # a blurred view costs the EAR stage
    assert all(0 <= row[k] <= 1 for k in ("dice_isolated_ap", "dice_isolated_lateral"))  # one isolated view each
    assert row["dice_view_stage"] - 1e-4 <= row["dice_view_stage_best_shift"] <= 1  # the oracle moves only to gain
    assert len(row["best_shift_vox"]) == 3 and max(abs(v) for v in row["best_shift_vox"]) <= 3  # whole voxels
    assert row["best_shift_mm"] == pytest.approx(2.0 * float(np.linalg.norm(row["best_shift_vox"])), abs=0.01)
    assert isinstance(row["bone_components"], int) and row["bone_components"] >= 1
    # overrides reach the simulation (1,000 photons: other windows) and are recorded in the report
    other = views(str(ROOT / "models/body/model.pt"), str(folder), "test", blur_px=(), overrides={"photon_count": 1e3})
    assert other["overrides"] == {"photon_count": 1e3} and other["configs"] == report["configs"]
    noisy = other["vertebrae"][0]
    assert noisy["ncc_ap"] != row["ncc_ap"] and noisy["ncc_lateral"] != row["ncc_lateral"]
    assert json.loads((tmp_path / "v.json").read_text())["mean"] == report["mean"]
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="not a two-stage model"):
        views(
            str(ROOT / "models/cpu/model.pt"), str(folder), "test", configs=["configs/train.json", "configs/cpu.json"]
        )


@pytest.mark.slow
def test_views_scores_agree_with_the_swap_test_and_the_isolated_model(example64):
    """The Dice from the view stage's views is the model's own (the swap test's, through the configs); the Dice
    from the isolated views is close to its EAR stage's on isolated X-rays (the CPU model evaluated as such)."""
    from scripts.tools.input_sensitivity import input_sensitivity
    from scripts.tools.spine_stage import views
    from tests.conftest import ROOT

    folder, _ = example64
    body, cpu = str(ROOT / "models/body/model.pt"), str(ROOT / "models/cpu/model.pt")
    report = views(body, str(folder), "training", blur_px=())
    cfg = ["configs/train.json", "configs/cpu.json"]
    own = input_sensitivity(body, str(folder), [*cfg, "configs/body.json", "configs/body_model.json"], "training", 1)
    isolated = input_sensitivity(cpu, str(folder), cfg, "training", 1)
    assert len(report["vertebrae"]) == len(own["vertebrae"]) == 11
    for r, o, i in zip(report["vertebrae"], own["vertebrae"], isolated["vertebrae"]):
        assert r["id"] == o["id"] == i["id"]
        assert r["dice_view_stage"] == pytest.approx(o["own"], abs=1e-4)
        # the EAR stage reads z-scored views inside the two-stage model, the CPU model its expanded X-rays as they are
        assert r["dice_isolated"] == pytest.approx(i["own"], abs=0.02)
