# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Baseline networks (PSR, SIT, E2E, BX2S): shapes, gradients, TorchScript, the view helpers, config overlays."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from scripts.drr.geometry import ConeBeamGeometry
from scripts.losses import EARLoss
from scripts.networks import BX2S, E2E, PSR, SIT, ap_frame_to_grid, stack_views, views_from_volume, volume_from_views
from scripts.transforms import DimensionExpansion, zscore_images
from tests.test_workflows import CONFIGS, SMALL, _workflow

SIZE = 32
WIDTHS = (4, 8, 16, 16, 32)
OVERLAYS = {"psr": PSR, "sit": SIT, "e2e": E2E, "bx2s": BX2S}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: the small convolutions here run faster so, and the tests stay quick on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name: str, size: int = SIZE, widths=WIDTHS) -> torch.nn.Module:
    torch.manual_seed(0)
    if name in ("psr", "sit"):
        return OVERLAYS[name](in_channels=2, out_channels=1, spatial_size=size, channels=widths)
    return OVERLAYS[name](in_channels=2, out_channels=1, channels=widths)


def _pair(n: int, seed: int = 0) -> torch.Tensor:
    """Two smooth, asymmetric test images (2, n, n)."""
    r, c = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    noise = torch.rand(2, n, n, generator=torch.Generator().manual_seed(seed))
    return torch.stack([torch.sin(r / 5) + c / 9, torch.cos(c / 4) - r / 7]) + noise


def _exact_geometry(n: int, spacing: float) -> ConeBeamGeometry:
    """A system whose detector pixels, scaled to the isocentre plane, are the grid's voxels."""
    sdd, sod = 1020.0, 700.0
    return ConeBeamGeometry(sdd=sdd, sod=sod, detector_shape=(n, n), pixel_spacing=(spacing * sdd / sod,) * 2)


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_forward_backward_shapes_and_gradients(name):
    net = _build(name).train()
    x = torch.randn(2, 2, SIZE, SIZE, SIZE)
    y = torch.randn(2, 1, SIZE, SIZE, SIZE)
    out = net(x)
    # BX2S returns its edge logits as a second channel in training (like EAR); the others the volume only
    assert out.shape == (2, 2 if name == "bx2s" else 1, SIZE, SIZE, SIZE)
    loss = EARLoss()(out, y)
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
    assert any(p.grad.abs().sum() > 0 for p in net.parameters())
    net.eval()
    with torch.no_grad():
        vol = net(x)
    assert vol.shape == (2, 1, SIZE, SIZE, SIZE) and torch.isfinite(vol).all()


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_torchscript_matches_eager(name):
    net = _build(name).eval()
    x = torch.randn(2, 2, SIZE, SIZE, SIZE)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)


def test_bx2s_without_edge_output_returns_the_volume_in_training():
    net = BX2S(channels=WIDTHS, edge_output=False).train()
    assert net(torch.randn(2, 2, SIZE, SIZE, SIZE)).shape == (2, 1, SIZE, SIZE, SIZE)


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_input_checks(name):
    net = _build(name).eval()
    with pytest.raises(ValueError, match="channels|two expanded"):
        net(torch.randn(1, 3, SIZE, SIZE, SIZE))
    with pytest.raises(ValueError, match="5-D|dimension"):
        net(torch.randn(2, SIZE, SIZE, SIZE))
    with pytest.raises(ValueError, match="multiple|built for"):
        net(torch.randn(1, 2, SIZE, SIZE, SIZE + 8))
    if name in ("psr", "sit"):
        with pytest.raises(ValueError, match="built for"):
            net(torch.randn(1, 2, 2 * SIZE, 2 * SIZE, 2 * SIZE))
        with pytest.raises(ValueError, match="in_channels=2"):
            OVERLAYS[name](in_channels=1, spatial_size=SIZE)
        with pytest.raises(ValueError, match="X == Y"):
            OVERLAYS[name](spatial_size=(SIZE, 2 * SIZE, SIZE))


def test_views_round_trip_through_dimension_expansion():
    n, spacing = 24, 2.0
    img = _pair(n)
    vol = DimensionExpansion("replicate", n, spacing, _exact_geometry(n, spacing))(img, [0, 90])[None]
    ap, lateral = views_from_volume(vol.as_tensor())
    # the detector pixels land exactly on voxel centres: the images come back (z-scored by the expansion)
    torch.testing.assert_close(torch.stack([ap[0], lateral[0]]), zscore_images(img), atol=1e-4, rtol=0)
    torch.testing.assert_close(stack_views(vol.as_tensor())[0], zscore_images(img), atol=1e-4, rtol=0)
    # and replicating them again gives the expanded volume
    torch.testing.assert_close(volume_from_views(ap, lateral, n, n), vol.as_tensor(), atol=1e-4, rtol=0)


def test_views_round_trip_default_geometry():
    # the default system magnifies the images onto the grid; views -> volume -> views is exact all the same
    vol = DimensionExpansion("replicate", 20, 1.5)(_pair(32, seed=1), [0, 90])[None].as_tensor()
    ap, lateral = views_from_volume(vol)
    assert ap.shape == lateral.shape == (1, 20, 20)
    torch.testing.assert_close(volume_from_views(ap, lateral, 20, 20), vol, atol=1e-5, rtol=0)


def test_ap_frame_to_grid_matches_the_expansion_layout():
    n = 16
    img = _pair(n, seed=2)
    vol = DimensionExpansion("replicate", n, 2.0, _exact_geometry(n, 2.0), zscore=False)(img, [0, 90])[None]
    # the AP image copied along the depth of its own frame is the AP channel of the expanded volume
    frame = img[0][None, None, None].expand(1, 1, n, n, n)
    torch.testing.assert_close(ap_frame_to_grid(frame), vol.as_tensor()[:, :1], atol=1e-4, rtol=0)


def test_views_input_checks():
    with pytest.raises(ValueError, match=r"\(B, 2, X, Y, Z\)"):
        views_from_volume(torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="wide"):
        stack_views(torch.zeros(1, 2, 8, 12, 8))
    with pytest.raises(ValueError, match="do not fit"):
        volume_from_views(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), 8, 12)


def _parse(files: list[str]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser["bundle_root"] = str(CONFIGS.parent)
    return parser


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_builds_its_network_with_train_evaluate_inference(name):
    overlay = f"lab/baselines/{name}.json"
    for files in (
        ["train.json", overlay, "cpu.json"],
        ["train.json", "evaluate.json", overlay, "cpu.json"],
        ["inference.json", overlay],
    ):
        net = _parse(files).get_parsed_content("network_def", instantiate=True)
        assert isinstance(net, OVERLAYS[name]), files
    # the CPU overlay shrinks the widths and the grid: the network takes a 64^3 pair
    net = _parse(["train.json", overlay, "cpu.json"]).get_parsed_content("network_def").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, 64, 64, 64)).shape == (1, 1, 64, 64, 64)


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_passes_train_workflow_check_properties(name, dataset, tmp_path):
    wf = _workflow(
        ["train.json", f"lab/baselines/{name}.json"], "train", dataset_dir=str(dataset), ckpt_dir=str(tmp_path), **SMALL
    )
    wf.initialize()
    assert not wf.check_properties()
    assert isinstance(wf.network_def, OVERLAYS[name])


def test_network_benchmark_includes_the_baselines():
    from scripts.tools.network_speed import network_benchmark

    report = network_benchmark(
        sizes=[32], channels=WIDTHS, infer_repeat=1, train_repeat=1, warmup=0, memory=False, baselines=True
    )
    entry = report["sizes"]["32"]
    for name in OVERLAYS:
        assert entry["params"][name] == sum(p.numel() for p in _build(name, widths=_overlay_widths(name)).parameters())
        for mode in ("inference", "train_step"):
            assert entry[mode][name]["median_ms"] > 0 and entry[mode]["ratio_to_ear"][name]["median_ms"] > 0
    assert set(report["baselines"]) == set(OVERLAYS)


def _overlay_widths(name: str) -> tuple[int, ...]:
    """The widths the overlay gives a network for ``@channels == WIDTHS`` (SIT doubles them)."""
    return tuple(2 * c for c in WIDTHS) if name == "sit" else WIDTHS
