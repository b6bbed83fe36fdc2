# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""EAR: edge-aware reconstruction network (Tan et al., section 3), a five-level 3-D encoder-decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from scripts.networks.blocks import CBAM3D, EAM, FEM
from scripts.networks.model_info import attach_model_info
from torch import nn

__all__ = ["EAR", "EncoderLevel", "DecoderLevel"]


def _act(act: str | tuple, negative_slope: float) -> str | tuple:
    """``act`` as a MONAI activation argument; a plain ``"leakyrelu"`` gets ``negative_slope``."""
    if isinstance(act, str) and act.lower() == "leakyrelu":
        return ("leakyrelu", {"negative_slope": negative_slope, "inplace": True})
    return act


class EncoderLevel(nn.Sequential):
    """Encoder level: Conv3d k3 stride 2 -> Conv3d k3 stride 1, each followed by norm and activation.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        act: MONAI activation argument.
        norm: MONAI normalisation argument.
    """

    def __init__(self, in_channels: int, out_channels: int, act: str | tuple, norm: str | tuple) -> None:
        super().__init__(
            Convolution(3, in_channels, out_channels, strides=2, kernel_size=3, act=act, norm=norm),
            Convolution(3, out_channels, out_channels, strides=1, kernel_size=3, act=act, norm=norm),
        )


class DecoderLevel(nn.Module):
    """Decoder level: ConvTranspose3d k2 stride 2 -> (concatenate skip) -> Conv3d k3 -> norm -> activation.

    Args:
        in_channels: channels of the coarser input.
        skip_channels: channels of the skip features (0: no skip).
        out_channels: output channels.
        act: MONAI activation argument.
        norm: MONAI normalisation argument.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, act: str | tuple, norm: str | tuple
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = Convolution(3, out_channels + skip_channels, out_channels, kernel_size=3, act=act, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class EAR(nn.Module):
    """Edge-aware reconstruction network.

    Encoder: five :class:`EncoderLevel` s (each halves the size), a :class:`~scripts.networks.blocks.FEM`
    after levels 1-3 (``e1, e2, e3``). Skips ``e1..e4`` pass through
    :class:`~scripts.networks.blocks.CBAM3D` (ABS). Decoder: five :class:`DecoderLevel` s back to the input
    size (the last one has no skip), then a 1x1x1 convolution to ``out_channels`` (no activation: the
    output is a z-scored volume). The :class:`~scripts.networks.blocks.EAM` turns ``e1, e2, e3`` into edge
    logits at half the input size, upsampled (trilinear) to the input size; their sigmoid ``A_e``,
    average-pooled to each decoder level's size, re-weights that level's output as ``d * (1 + A_e)``.

    Output (one Tensor in both modes, so that the module is TorchScript compatible, like MONAI's DynUNet
    with deep supervision):

    - training mode with ``use_eam=True``: ``torch.cat([volume, edge_logits], dim=1)``, shape
      ``(B, out_channels + 1, X, Y, Z)``; the last channel holds the edge logits (input of
      :class:`scripts.losses.EARLoss`, which splits them off).
    - eval mode, or ``use_eam=False``: the volume, ``(B, out_channels, X, Y, Z)``.

    The switches give the paper's ablations: ``use_abs=use_fem=use_eam=False`` is the baseline
    encoder-decoder; each switch adds exactly its modules (CBAM3D on the four skips, FEM on encoder
    levels 1-3, the EAM and its re-weighting).

    Args:
        in_channels: input channels (the two dimension-expanded X-ray images).
        out_channels: output channels.
        channels: widths of the five levels.
        act: activation of encoder and decoder (MONAI name or (name, args)).
        norm: normalisation of encoder and decoder (MONAI name or (name, args)); the bottleneck is
            1/32 of the input size, so instance normalisation needs inputs of at least 64^3 in training.
        negative_slope: slope of the LeakyReLU when ``act == "leakyrelu"``.
        use_abs: CBAM3D on the skip connections.
        use_fem: FEM after encoder levels 1-3.
        use_eam: edge attention module.
        edge_channels: width of the EAM's edge stream (default ``channels[0]``).
        fem_spectral_kernel_size: kernel size of the FEM's frequency-domain convolutions.
        cbam_reduction: channel reduction ratio of CBAM3D.

    Raises:
        ValueError: in ``forward``, if the input does not have ``in_channels`` channels or a spatial size
            is not a multiple of 32.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        act: str | tuple = "leakyrelu",
        norm: str | tuple = "batch",
        negative_slope: float = 0.01,
        use_abs: bool = True,
        use_fem: bool = True,
        use_eam: bool = True,
        edge_channels: int | None = None,
        fem_spectral_kernel_size: int = 1,
        cbam_reduction: int = 16,
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"EAR has five levels: channels needs five widths, got {tuple(channels)}.")
        c = [int(v) for v in channels]
        act = _act(act, negative_slope)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.divisor = 32
        self.use_eam = bool(use_eam)

        self.enc1 = EncoderLevel(in_channels, c[0], act, norm)
        self.enc2 = EncoderLevel(c[0], c[1], act, norm)
        self.enc3 = EncoderLevel(c[1], c[2], act, norm)
        self.enc4 = EncoderLevel(c[2], c[3], act, norm)
        self.enc5 = EncoderLevel(c[3], c[4], act, norm)

        def fem(ch: int) -> nn.Module:
            return FEM(ch, spectral_kernel_size=fem_spectral_kernel_size) if use_fem else nn.Identity()

        self.fem1, self.fem2, self.fem3 = fem(c[0]), fem(c[1]), fem(c[2])

        def skip(ch: int) -> nn.Module:
            return CBAM3D(ch, reduction=cbam_reduction) if use_abs else nn.Identity()

        self.skip1, self.skip2, self.skip3, self.skip4 = skip(c[0]), skip(c[1]), skip(c[2]), skip(c[3])

        self.eam: EAM | None = EAM((c[0], c[1], c[2]), channels=edge_channels, norm=norm) if use_eam else None

        self.dec4 = DecoderLevel(c[4], c[3], c[3], act, norm)
        self.dec3 = DecoderLevel(c[3], c[2], c[2], act, norm)
        self.dec2 = DecoderLevel(c[2], c[1], c[1], act, norm)
        self.dec1 = DecoderLevel(c[1], c[0], c[0], act, norm)
        self.dec0 = DecoderLevel(c[0], 0, c[0], act, norm)
        self.head = nn.Conv3d(c[0], out_channels, kernel_size=1)
        attach_model_info(self)  # buffers for the training statistics, so that every copy of the weights carries them

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(
                f"EAR expects a 5-D input (batch, channel, X, Y, Z), got shape {list(x.shape)}; add the batch "
                "and channel dimensions."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"EAR expects {self.in_channels} input channels (the expanded X-ray images), got {x.shape[1]} "
                f"(input shape {list(x.shape)}); set in_channels or fix the channel stacking of the input."
            )
        for s in x.shape[2:]:
            if s % self.divisor != 0:
                raise ValueError(
                    f"EAR needs every spatial size to be a multiple of {self.divisor} (five stride-2 levels), "
                    f"got {list(x.shape[2:])}; pad or resample the input (e.g. roi_size 64 or 128)."
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        e1 = self.fem1(self.enc1(x))
        e2 = self.fem2(self.enc2(e1))
        e3 = self.fem3(self.enc3(e2))
        e4 = self.enc4(e3)
        e5 = self.enc5(e4)

        eam = self.eam
        if eam is None:
            d = self.dec4(e5, self.skip4(e4))
            d = self.dec3(d, self.skip3(e3))
            d = self.dec2(d, self.skip2(e2))
            d = self.dec1(d, self.skip1(e1))
            return self.head(self.dec0(d))

        edge = eam(e1, e2, e3)  # logits at half the input size
        att = torch.sigmoid(edge)
        d = self.dec4(e5, self.skip4(e4))
        d = d * (1.0 + F.avg_pool3d(att, kernel_size=8))
        d = self.dec3(d, self.skip3(e3))
        d = d * (1.0 + F.avg_pool3d(att, kernel_size=4))
        d = self.dec2(d, self.skip2(e2))
        d = d * (1.0 + F.avg_pool3d(att, kernel_size=2))
        d = self.dec1(d, self.skip1(e1))
        d = d * (1.0 + att)
        edge = F.interpolate(edge, scale_factor=2.0, mode="trilinear", align_corners=False)
        d = self.dec0(d)
        d = d * (1.0 + torch.sigmoid(edge))
        volume = self.head(d)
        if self.training:
            return torch.cat([volume, edge], dim=1)
        return volume
