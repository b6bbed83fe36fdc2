# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""BX2S-Net (Chen et al., Comput. Biol. Med. 2023), written here from the paper: dimension expansion + a 3-D
U-Net whose skip connections carry full-scale (multi-scale) feature attention guidance (FFAG), with an edge
output channel.

Choices made here where the description leaves them open:

- Encoder and decoder follow the 3-D U-Net (two Conv3d k3 + norm + act per level, max-pooling, transposed
  convolution k2 stride 2 upsampling), five levels of widths ``channels`` like the other networks.
- :class:`FFAG` at decoder level ``l`` gathers every encoder level ``e0 .. e4``: finer levels are
  max-pooled to level ``l``'s size, each level is projected by a 1x1x1 convolution to the width of level
  ``l`` (coarser levels are projected first and then upsampled trilinearly, which gives the same result at
  less cost), the projections are summed and fused by a Conv3d k3 + norm + act. An additive attention
  gate driven by the upsampled decoder features, ``a = sigmoid(norm(psi(ReLU(W_f f + W_g g))))`` (one
  spatial map per item), weights the fused features, which are concatenated to the decoder features in
  place of the plain skip.
- The edge channel is a second 1x1x1 head on the last decoder level; in training mode the network
  returns ``cat([volume, edge_logits])`` like :class:`~scripts.networks.EAR`, so
  :class:`scripts.losses.EARLoss` supervises it with its edge term; in eval mode it returns the volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.basic_unet import TwoConv
from scripts.networks.model_info import attach_model_info
from scripts.networks.views import check_volume_input
from torch import nn

__all__ = ["BX2S", "FFAG"]


class FFAG(nn.Module):
    """Full-scale feature attention guidance for one decoder level (see the module docstring).

    Args:
        encoder_channels: widths of all encoder levels, finest first.
        out_channels: width of this decoder level (of the fused features it returns).
        gate_channels: width of the decoder features that drive the attention.
        attention_channels: width of the attention gate's hidden layer (default ``max(out_channels // 2, 1)``).
        act: MONAI activation argument of the fusion convolution.
        norm: MONAI normalisation argument.

    Returns:
        ``forward(features, gate)``: the attention-weighted fused features, ``(B, out_channels, *gate.shape[2:])``.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        out_channels: int,
        gate_channels: int,
        attention_channels: int | None = None,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        hidden = max(int(out_channels) // 2, 1) if attention_channels is None else int(attention_channels)
        self.proj = nn.ModuleList([nn.Conv3d(int(c), out_channels, kernel_size=1) for c in encoder_channels])
        self.fuse = Convolution(3, out_channels, out_channels, kernel_size=3, act=act, norm=norm)
        self.att_f = nn.Conv3d(out_channels, hidden, kernel_size=1)
        self.att_g = nn.Conv3d(gate_channels, hidden, kernel_size=1, bias=False)
        self.psi = Convolution(3, hidden, 1, kernel_size=1, act="sigmoid", norm=norm)

    def forward(self, features: list[torch.Tensor], gate: torch.Tensor) -> torch.Tensor:
        size = [int(s) for s in gate.shape[2:]]
        fused = torch.zeros(1, dtype=gate.dtype, device=gate.device)
        for i, proj in enumerate(self.proj):
            f = features[i]
            if f.shape[2] > size[0]:  # finer level: pool, then project
                f = proj(F.adaptive_max_pool3d(f, size))
            elif f.shape[2] < size[0]:  # coarser level: project, then upsample
                f = F.interpolate(proj(f), size=size, mode="trilinear", align_corners=False)
            else:
                f = proj(f)
            fused = fused + f
        fused = self.fuse(fused)
        attention = self.psi(torch.relu(self.att_f(fused) + self.att_g(gate)))
        return fused * attention


class BX2S(nn.Module):
    """BX2S-Net: 3-D U-Net with full-scale feature attention guidance on every skip and an edge output.

    Encoder: ``e0 = TwoConv(x)``, ``e_k = TwoConv(maxpool(e_{k-1}))`` for ``k = 1..4`` (widths ``channels``;
    ``TwoConv`` is MONAI's pair of 3x3x3 convolutions with norm and activation). Decoder, for ``l = 3..0``:
    ``g = ConvTranspose3d(d_{l+1})``,
    ``d_l = TwoConv(cat[g, FFAG_l(e0..e4, g)])`` with ``d_4 = e4``; then 1x1x1 heads for the volume
    (``out_channels``, no activation) and, with ``edge_output``, the edge logits.

    Output (one Tensor, TorchScript compatible, the same contract as :class:`~scripts.networks.EAR`):
    in training mode with ``edge_output``, ``(B, out_channels + 1, X, Y, Z)`` with the edge logits last;
    otherwise the volume ``(B, out_channels, X, Y, Z)``.

    Args:
        in_channels: input channels (the two expanded X-ray images).
        out_channels: output channels.
        channels: widths of the five levels.
        act: activation (MONAI name or (name, args)).
        norm: normalisation (MONAI name or (name, args)).
        edge_output: add the edge channel (trained by ``EARLoss``'s edge term).
        attention_channels: hidden width of the attention gates (default half of each level's width).
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        edge_output: bool = True,
        attention_channels: int | None = None,
    ) -> None:
        super().__init__()
        attach_model_info(self)  # training statistics travel with every copy of the weights
        if len(channels) != 5:
            raise ValueError(f"BX2S has five levels: channels needs five widths, got {tuple(channels)}.")
        c = [int(v) for v in channels]
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.divisor = 16
        self.enc0 = TwoConv(3, self.in_channels, c[0], act, norm, bias=True)
        self.enc1 = TwoConv(3, c[0], c[1], act, norm, bias=True)
        self.enc2 = TwoConv(3, c[1], c[2], act, norm, bias=True)
        self.enc3 = TwoConv(3, c[2], c[3], act, norm, bias=True)
        self.enc4 = TwoConv(3, c[3], c[4], act, norm, bias=True)
        self.up3 = nn.ConvTranspose3d(c[4], c[3], kernel_size=2, stride=2)
        self.up2 = nn.ConvTranspose3d(c[3], c[2], kernel_size=2, stride=2)
        self.up1 = nn.ConvTranspose3d(c[2], c[1], kernel_size=2, stride=2)
        self.up0 = nn.ConvTranspose3d(c[1], c[0], kernel_size=2, stride=2)
        self.ffag3 = FFAG(c, c[3], c[3], attention_channels, act, norm)
        self.ffag2 = FFAG(c, c[2], c[2], attention_channels, act, norm)
        self.ffag1 = FFAG(c, c[1], c[1], attention_channels, act, norm)
        self.ffag0 = FFAG(c, c[0], c[0], attention_channels, act, norm)
        self.dec3 = TwoConv(3, 2 * c[3], c[3], act, norm, bias=True)
        self.dec2 = TwoConv(3, 2 * c[2], c[2], act, norm, bias=True)
        self.dec1 = TwoConv(3, 2 * c[1], c[1], act, norm, bias=True)
        self.dec0 = TwoConv(3, 2 * c[0], c[0], act, norm, bias=True)
        self.head = nn.Conv3d(c[0], self.out_channels, kernel_size=1)
        self.edge_head: nn.Conv3d | None = nn.Conv3d(c[0], 1, kernel_size=1) if edge_output else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_volume_input(x, "BX2S", self.in_channels, self.divisor)
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool3d(e0, 2))
        e2 = self.enc2(F.max_pool3d(e1, 2))
        e3 = self.enc3(F.max_pool3d(e2, 2))
        e4 = self.enc4(F.max_pool3d(e3, 2))
        features = [e0, e1, e2, e3, e4]
        g = self.up3(e4)
        d = self.dec3(torch.cat([g, self.ffag3(features, g)], dim=1))
        g = self.up2(d)
        d = self.dec2(torch.cat([g, self.ffag2(features, g)], dim=1))
        g = self.up1(d)
        d = self.dec1(torch.cat([g, self.ffag1(features, g)], dim=1))
        g = self.up0(d)
        d = self.dec0(torch.cat([g, self.ffag0(features, g)], dim=1))
        volume = self.head(d)
        edge_head = self.edge_head
        if self.training and edge_head is not None:
            return torch.cat([volume, edge_head(d)], dim=1)
        return volume
