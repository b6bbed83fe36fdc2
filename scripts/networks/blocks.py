# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Building blocks of the EAR network (Tan et al., sections 3.3-3.4), usable on their own.

- :class:`FEM`: frequency enhancement module (FFT -> convolutions on real and imaginary parts -> IFFT
  magnitude, fused with the input features).
- :class:`GatedConvBlock`: the modified gated convolution block (m-GCB) of the edge attention module.
- :class:`EAM`: edge attention module, residual blocks with m-GCBs over three encoder levels, returning
  edge logits.
- :class:`ChannelAttention3D`, :class:`SpatialAttention3D`, :class:`CBAM3D`: 3-D convolutional block
  attention module used on the skip connections (attention-based shortcut, ABS).

CBAM is not part of MONAI, so it is written here after Woo et al. (ECCV 2018), extended to 3-D. All
blocks work on channel-first 3-D tensors ``(B, C, X, Y, Z)`` and are TorchScript compatible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

__all__ = ["FEM", "GatedConvBlock", "EAM", "ChannelAttention3D", "SpatialAttention3D", "CBAM3D"]


class FEM(nn.Module):
    """Frequency enhancement module: ``F_fem = ReLU(IN(Conv(|IFFT(R + iI)| concat F)))`` with
    ``R, I = Conv_r(Re FFT(IN(F))), Conv_i(Im FFT(IN(F)))``.

    The spectrum is the real-input FFT (``torch.fft.rfftn``, half the last axis), which holds the same
    information as the full FFT of a real signal at about half the cost; ``irfftn`` of the convolved
    half-spectrum is the Hermitian-symmetric part of the full inverse, so its magnitude is the absolute
    value of a real volume. The FFT runs in float32 even under mixed precision (half-precision FFTs are
    limited to power-of-two sizes).

    Args:
        channels: number of input (and output) channels.
        spectral_kernel_size: kernel size of the two convolutions in the frequency domain (1: a
            per-frequency channel mixing, as in fast Fourier convolutions).
        kernel_size: kernel size of the fusion convolution.
        fft_norm: normalisation of the FFT pair (``"ortho"``, ``"forward"`` or ``"backward"``).
    """

    def __init__(
        self, channels: int, spectral_kernel_size: int = 1, kernel_size: int = 3, fft_norm: str = "ortho"
    ) -> None:
        super().__init__()
        self.fft_norm = fft_norm
        self.norm_in = nn.InstanceNorm3d(channels)
        pad = spectral_kernel_size // 2
        self.conv_real = nn.Conv3d(channels, channels, spectral_kernel_size, padding=pad)
        self.conv_imag = nn.Conv3d(channels, channels, spectral_kernel_size, padding=pad)
        self.fuse = Convolution(
            spatial_dims=3,
            in_channels=2 * channels,
            out_channels=channels,
            kernel_size=kernel_size,
            act="relu",
            norm="instance",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(s) for s in x.shape[2:]]
        spec = torch.fft.rfftn(self.norm_in(x).float(), dim=[2, 3, 4], norm=self.fft_norm)
        # .float(): under autocast the convolutions return half precision, which complex FFTs do not take
        spec = torch.complex(self.conv_real(torch.real(spec)).float(), self.conv_imag(torch.imag(spec)).float())
        freq = torch.fft.irfftn(spec, s=size, dim=[2, 3, 4], norm=self.fft_norm).abs().to(x.dtype)
        return self.fuse(torch.cat([freq, x], dim=1))


class GatedConvBlock(nn.Module):
    """Modified gated convolution block (m-GCB): ``alpha = F * sigmoid(BN(Conv(ReLU(BN(Conv(F concat G)))))) + F``.

    The features ``F`` of the current level and the gating features ``G`` of the previous (deeper)
    level, already at the same spatial size, are concatenated; two 1x1x1 convolution blocks (the second
    with a sigmoid) give a one-channel gate map that re-weights ``F`` with a residual connection.

    Args:
        channels: channels of ``F``.
        gate_channels: channels of ``G``.
        norm: normalisation of the two convolution blocks (MONAI name or (name, args)).
    """

    def __init__(self, channels: int, gate_channels: int, norm: str | tuple = "batch") -> None:
        super().__init__()
        self.gate = nn.Sequential(
            Convolution(3, channels + gate_channels, channels, kernel_size=1, act="relu", norm=norm),
            Convolution(3, channels, 1, kernel_size=1, act="sigmoid", norm=norm),
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.gate(torch.cat([x, g], dim=1)) + x


class EAM(nn.Module):
    """Edge attention module over three encoder levels ``e1`` (finest), ``e2``, ``e3``.

    ``s = ResBlock(e1)``; ``s = m-GCB(s, up(proj(e2)))``; ``s = ResBlock(s)``; ``s = m-GCB(s, up(proj(e3)))``;
    ``logits = Conv1x1(s)``. Each residual block is MONAI's :class:`~monai.networks.blocks.ResidualUnit`
    with two Conv3d + norm + ReLU units; ``proj`` is a 1x1x1 convolution to the edge-stream width and
    ``up`` trilinear interpolation to the size of ``e1``.

    Args:
        in_channels: channels of ``(e1, e2, e3)``.
        channels: width of the edge stream (default: channels of ``e1``).
        kernel_size: kernel size of the residual blocks.
        norm: normalisation (MONAI name or (name, args)).

    Returns:
        edge logits, shape ``(B, 1, *e1.shape[2:])`` (apply a sigmoid for the edge map ``A_e``).
    """

    def __init__(
        self,
        in_channels: tuple[int, int, int] | list[int],
        channels: int | None = None,
        kernel_size: int = 3,
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"EAM takes three encoder levels, got in_channels={in_channels}.")
        c1, c2, c3 = (int(c) for c in in_channels)
        width = c1 if channels is None else int(channels)
        self.res1 = ResidualUnit(3, c1, width, kernel_size=kernel_size, subunits=2, act="relu", norm=norm)
        self.proj2 = nn.Conv3d(c2, width, kernel_size=1)
        self.gate1 = GatedConvBlock(width, width, norm=norm)
        self.res2 = ResidualUnit(3, width, width, kernel_size=kernel_size, subunits=2, act="relu", norm=norm)
        self.proj3 = nn.Conv3d(c3, width, kernel_size=1)
        self.gate2 = GatedConvBlock(width, width, norm=norm)
        self.head = nn.Conv3d(width, 1, kernel_size=1)

    def forward(self, e1: torch.Tensor, e2: torch.Tensor, e3: torch.Tensor) -> torch.Tensor:
        size = [int(s) for s in e1.shape[2:]]
        s = self.res1(e1)
        s = self.gate1(s, F.interpolate(self.proj2(e2), size=size, mode="trilinear", align_corners=False))
        s = self.res2(s)
        s = self.gate2(s, F.interpolate(self.proj3(e3), size=size, mode="trilinear", align_corners=False))
        return self.head(s)


class ChannelAttention3D(nn.Module):
    """CBAM channel attention: ``A_c = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))``, shape ``(B, C, 1, 1, 1)``.

    Args:
        channels: input channels.
        reduction: channel reduction ratio of the shared MLP (hidden width ``max(channels // reduction, 1)``).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv3d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(x, dim=[2, 3, 4], keepdim=True)
        mx = torch.amax(x, dim=[2, 3, 4], keepdim=True)
        return torch.sigmoid(self.mlp(torch.cat([avg, mx], dim=0)).view(2, x.shape[0], x.shape[1], 1, 1, 1).sum(0))


class SpatialAttention3D(nn.Module):
    """CBAM spatial attention: ``A_s = sigmoid(Conv([mean_c(F), max_c(F)]))``, shape ``(B, 1, X, Y, Z)``.

    Args:
        kernel_size: kernel size of the convolution (odd).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([torch.mean(x, dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM3D(nn.Module):
    """3-D convolutional block attention module: ``F' = F * A_c(F)``, ``F'' = F' * A_s(F')``.

    Args:
        channels: input (and output) channels.
        reduction: reduction ratio of the channel attention's MLP.
        kernel_size: kernel size of the spatial attention's convolution.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention3D(channels, reduction)
        self.spatial = SpatialAttention3D(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)
