# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""EAR losses against known values."""

from __future__ import annotations

import math

import pytest
import torch
from scripts.losses import EARLoss, EdgeLoss, FrequencyDistanceLoss, L1ReconstructionLoss, ProjectionLoss
from scripts.networks import EAR
from scripts.transforms.edges import boundary_map


def _cube_volume(n: int = 16, lo: int = 4, hi: int = 12, batch: int = 2) -> torch.Tensor:
    x = torch.full((batch, 1, n, n, n), -1.0)
    x[:, :, lo:hi, lo:hi, lo:hi] = 2.0
    return x


@pytest.mark.parametrize("loss", [L1ReconstructionLoss(), FrequencyDistanceLoss(), ProjectionLoss()])
def test_identical_volumes_give_zero_with_finite_gradient(loss):
    target = torch.randn(2, 1, 16, 16, 16)
    pred = target.clone().requires_grad_(True)
    value = loss(pred, target)
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(pred.grad).all()


def test_edge_loss_of_perfect_logits_is_zero():
    target = _cube_volume()
    logits = (boundary_map(target > 0) * 2 - 1) * 40.0  # sigmoid = 1 on E(G), 0 elsewhere
    assert EdgeLoss(threshold=0.0)(logits, target).item() < 1e-12
    # zero logits: BCE = ln 2 per voxel
    assert EdgeLoss()(torch.zeros_like(target), target).item() == pytest.approx(math.log(2), rel=1e-6)


def test_edge_target_is_the_cube_boundary():
    target = _cube_volume(lo=4, hi=12)  # 8^3 cube
    edge = EdgeLoss(threshold=0.5).edge_target(target)
    assert edge.sum().item() == 2 * (8**3 - 6**3)
    assert edge[0, 0, 4, 4, 4] == 1 and edge[0, 0, 7, 7, 7] == 0 and edge[0, 0, 0, 0, 0] == 0
    # the threshold is in the target's units: above the cube's value nothing is foreground
    assert EdgeLoss(threshold=3.0).edge_target(target).sum() == 0


def test_l1_and_projection_known_values():
    a = torch.zeros(2, 1, 8, 8, 8)
    b = torch.full_like(a, 3.0)
    assert L1ReconstructionLoss()(a, b).item() == pytest.approx(3.0)
    assert ProjectionLoss()(a, b).item() == pytest.approx(3.0)
    # one bright voxel: its MIPs differ from the empty ones in one pixel out of 64 per axis
    c = a.clone()
    c[:, :, 2, 3, 4] = 64.0
    assert ProjectionLoss()(c, a).item() == pytest.approx(1.0)
    assert L1ReconstructionLoss()(c, a).item() == pytest.approx(64.0 / 512)


def test_frequency_distance_of_a_constant_offset():
    # orthonormal FFT of a constant c on n^3 voxels: c * n^1.5 at the zero frequency, real
    n, c = 16, 0.5
    target = torch.randn(1, 1, n, n, n)
    value = FrequencyDistanceLoss()(target + c, target)
    assert value.item() == pytest.approx(math.log10(1 + c * n**1.5), rel=1e-5)


def test_reductions():
    target = torch.randn(3, 1, 8, 8, 8)
    pred = target + torch.arange(3.0).view(3, 1, 1, 1, 1)
    for cls in (L1ReconstructionLoss, FrequencyDistanceLoss, ProjectionLoss, EdgeLoss):
        per_item = cls(reduction="none")(pred, target)
        assert per_item.shape == (3,)
        assert cls(reduction="mean")(pred, target).item() == pytest.approx(per_item.mean().item(), rel=1e-6)
        assert cls(reduction="sum")(pred, target).item() == pytest.approx(per_item.sum().item(), rel=1e-6)
    torch.testing.assert_close(L1ReconstructionLoss(reduction="none")(pred, target), torch.arange(3.0))
    with pytest.raises(ValueError):
        L1ReconstructionLoss(reduction="max")


def test_ear_loss_combines_terms_with_weights():
    target = _cube_volume()
    volume = target + 0.3 * torch.randn_like(target)
    edge = torch.randn_like(target)
    loss = EARLoss(edge_threshold=0.0)
    terms = loss.components(torch.cat([volume, edge], 1), target)
    assert set(terms) == {"recon", "edge", "freq", "proj"}
    expected = (
        L1ReconstructionLoss()(volume, target)
        + 0.1 * EdgeLoss(0.0)(edge, target)
        + 0.1 * FrequencyDistanceLoss()(volume, target)
        + 0.1 * ProjectionLoss()(volume, target)
    )
    assert loss(torch.cat([volume, edge], 1), target).item() == pytest.approx(expected.item(), rel=1e-6)
    # without edge logits (eval-mode output, or use_eam=False) the edge term is left out
    assert set(loss.components(volume, target)) == {"recon", "freq", "proj"}
    assert loss(target, target).item() == 0.0
    perfect_edges = (boundary_map(target > 0) * 2 - 1) * 40.0
    assert loss(torch.cat([target, perfect_edges], 1), target).item() < 1e-12
    with pytest.raises(ValueError, match="channels"):
        loss(torch.cat([volume, edge, edge], 1), target)


def test_ear_loss_takes_the_network_training_output():
    torch.manual_seed(0)
    net = EAR(channels=(4, 8, 16, 32, 64))
    x, y = torch.randn(2, 2, 32, 32, 32), torch.randn(2, 1, 32, 32, 32)
    loss = EARLoss(edge_threshold=0.5)(net(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert net.eam.head.weight.grad.abs().sum() > 0  # the edge term trains the EAM
