# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""EAR network and its blocks: shapes, modes, switches, gradients, TorchScript, input checks, bundle metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from scripts.losses import EARLoss
from scripts.networks import CBAM3D, EAM, EAR, FEM, GatedConvBlock
from scripts.networks.blocks import ChannelAttention3D, SpatialAttention3D
from torch import nn

SMALL = (4, 8, 16, 32, 64)


def _net(**kwargs) -> EAR:
    torch.manual_seed(0)
    return EAR(channels=kwargs.pop("channels", SMALL), **kwargs)


@pytest.mark.parametrize("size", [32, 64])
def test_output_shapes_train_and_eval(size):
    net = _net()
    x = torch.randn(2, 2, size, size, size)
    net.train()
    assert net(x).shape == (2, 2, size, size, size)  # volume + edge logits
    net.eval()
    with torch.no_grad():
        assert net(x[:1]).shape == (1, 1, size, size, size)


def test_default_widths_shapes():
    net = EAR()
    x = torch.randn(2, 2, 32, 32, 32)
    assert net(x).shape == (2, 2, 32, 32, 32)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 1, 32, 32, 32)


def test_eval_forward_128():
    net = _net().eval()
    with torch.no_grad():
        y = net(torch.randn(1, 2, 128, 128, 128))
    assert y.shape == (1, 1, 128, 128, 128)
    assert torch.isfinite(y).all()


def test_training_output_splits_volume_and_edge_logits():
    net = _net()
    x = torch.randn(2, 2, 32, 32, 32)
    out = net(x)
    # the edge logits are the upsampled output of the EAM applied to the encoder features
    e1 = net.fem1(net.enc1(x))
    e2 = net.fem2(net.enc2(e1))
    e3 = net.fem3(net.enc3(e2))
    edge = nn.functional.interpolate(net.eam(e1, e2, e3), scale_factor=2.0, mode="trilinear", align_corners=False)
    torch.testing.assert_close(out[:, 1:], edge)


def test_gradients_reach_every_module():
    net = _net(cbam_reduction=1)
    x = torch.randn(2, 2, 32, 32, 32)
    y = torch.randn(2, 1, 32, 32, 32)
    EARLoss()(net(x), y).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for name, module in net.named_modules():
        params = list(module.parameters(recurse=False))
        if params:
            assert any(p.grad.abs().sum() > 0 for p in params), f"no gradient reaches {name}"


def _count(net: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in net.modules())


def _n_params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("use_abs", [True, False])
@pytest.mark.parametrize("use_fem", [True, False])
@pytest.mark.parametrize("use_eam", [True, False])
def test_switches_remove_exactly_their_modules(use_abs, use_fem, use_eam):
    full = _net()
    net = _net(use_abs=use_abs, use_fem=use_fem, use_eam=use_eam)
    assert _count(net, CBAM3D) == (4 if use_abs else 0)
    assert _count(net, FEM) == (3 if use_fem else 0)
    assert _count(net, EAM) == (1 if use_eam else 0)
    removed = []
    if not use_abs:
        removed += [m for m in full.modules() if isinstance(m, CBAM3D)]
    if not use_fem:
        removed += [m for m in full.modules() if isinstance(m, FEM)]
    if not use_eam:
        removed += [full.eam]
    # the backbone is untouched: the parameter count drops by exactly the removed modules' parameters
    assert _n_params([net]) == _n_params([full]) - _n_params(removed)
    # and the remaining parameter names are those of the full model minus the removed subtrees
    prefixes = tuple(n + "." for n, m in full.named_modules() if any(m is r for r in removed))
    expected = {n for n, _ in full.named_parameters() if not n.startswith(prefixes)}
    assert {n for n, _ in net.named_parameters()} == expected
    x = torch.randn(2, 2, 32, 32, 32)
    assert net(x).shape[1] == (2 if use_eam else 1)


@pytest.mark.parametrize("kwargs", [{}, {"use_abs": False, "use_fem": False, "use_eam": False}])
def test_torchscript_matches_eager(kwargs):
    net = _net(**kwargs)
    scripted = torch.jit.script(net)
    x = torch.randn(2, 2, 32, 32, 32)
    for train in (True, False):
        net.train(train)
        scripted.train(train)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)


def test_bad_input_gives_clear_error():
    net = _net().eval()
    scripted = torch.jit.script(net)
    with pytest.raises(ValueError, match="2 input channels"):
        net(torch.randn(1, 3, 32, 32, 32))
    with pytest.raises(ValueError, match="multiple of 32"):
        net(torch.randn(1, 2, 32, 48, 32))
    with pytest.raises(ValueError, match="5-D input"):
        net(torch.randn(2, 32, 32, 32))
    with pytest.raises(torch.jit.Error, match="multiple of 32"):
        scripted(torch.randn(1, 2, 32, 32, 40))
    with pytest.raises(ValueError, match="five widths"):
        EAR(channels=(4, 8, 16))


def test_blocks_shapes_and_behaviour():
    x = torch.randn(2, 8, 8, 8, 8)
    assert FEM(8)(x).shape == x.shape
    assert FEM(8, spectral_kernel_size=3)(x).shape == x.shape
    assert (FEM(8)(x) >= 0).all()  # ends in a ReLU
    assert CBAM3D(8, reduction=2)(x).shape == x.shape
    assert ChannelAttention3D(8)(x).shape == (2, 8, 1, 1, 1)
    assert SpatialAttention3D()(x).shape == (2, 1, 8, 8, 8)
    g = torch.randn(2, 4, 8, 8, 8)
    assert GatedConvBlock(8, 4)(x, g).shape == x.shape
    e1, e2, e3 = torch.randn(2, 4, 16, 16, 16), torch.randn(2, 8, 8, 8, 8), torch.randn(2, 16, 4, 4, 4)
    assert EAM((4, 8, 16))(e1, e2, e3).shape == (2, 1, 16, 16, 16)
    assert EAM((4, 8, 16), channels=6)(e1, e2, e3).shape == (2, 1, 16, 16, 16)


def test_cbam_attention_is_a_reweighting():
    # with a zero spatial convolution and zero MLP, both attention maps are sigmoid(0) = 0.5
    cbam = CBAM3D(8, reduction=2)
    for p in cbam.parameters():
        nn.init.zeros_(p)
    x = torch.randn(1, 8, 6, 6, 6)
    torch.testing.assert_close(cbam(x), x * 0.25)


def test_gated_block_identity_plus_gate():
    block = GatedConvBlock(4, 4).eval()
    x, g = torch.randn(1, 4, 5, 5, 5), torch.randn(1, 4, 5, 5, 5)
    gate = block.gate(torch.cat([x, g], 1))
    assert gate.shape == (1, 1, 5, 5, 5) and (gate > 0).all() and (gate < 1).all()
    torch.testing.assert_close(block(x, g), x * gate + x)


# slow: covered by tests/test_bundle_api.py::test_monai_bundle_commands_from_another_folder (verify_net_in_out of
# the bundle's network_def against metadata.json, from a fresh process in another folder)
@pytest.mark.slow
def test_verify_net_in_out_with_bundle_metadata(bundle_root, tmp_path):
    config = tmp_path / "net.json"
    config.write_text(json.dumps({"network_def": {"_target_": "scripts.networks.EAR", "channels": list(SMALL)}}))
    env = dict(os.environ, PYTHONPATH=str(bundle_root), CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
    cmd += ["--meta_file", str(bundle_root / "configs" / "metadata.json"), "--config_file", str(config), "--n", "1"]
    result = subprocess.run(cmd, cwd=bundle_root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "verified with no error" in result.stdout + result.stderr


def test_exported_torchscript_file_matches_eager(tmp_path):
    from monai.networks.utils import convert_to_torchscript

    net = _net()
    x = torch.randn(1, 2, 32, 32, 32)
    path = tmp_path / "model.ts"
    # what `python -m monai.bundle ckpt_export` calls: eval mode, torch.jit.script, save, reload, compare
    convert_to_torchscript(net, filename_or_obj=path, verify=True, inputs=[x], device="cpu", rtol=1e-5, atol=1e-5)
    loaded = torch.jit.load(str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x), rtol=1e-5, atol=1e-5)
        assert loaded(x).shape == (1, 1, 32, 32, 32)


def test_network_benchmark_report_structure():
    from scripts.tools.network_speed import network_benchmark

    report = network_benchmark(sizes=[32], channels=SMALL, infer_repeat=1, train_repeat=1, warmup=0, memory=False)
    entry = report["sizes"]["32"]
    for mode in ("inference", "train_step"):
        assert entry[mode]["ear"]["median_ms"] > 0 and entry[mode]["basic_unet"]["median_ms"] > 0
        assert entry[mode]["ratio_ear_to_unet"]["median_ms"] > 0
    assert report["params"]["ear"] == sum(p.numel() for p in EAR(channels=SMALL).parameters())


def test_mixed_precision_and_other_act_norm():
    net = _net(act="prelu", norm="instance")  # instance norm needs more than one voxel at the bottleneck: 64^3
    x = torch.randn(2, 2, 64, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)  # the FEM's FFTs run in float32 inside
    assert out.shape == (2, 2, 64, 64, 64) and torch.isfinite(out.float()).all()
    assert not any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    assert any(isinstance(m, nn.PReLU) for m in net.modules())
