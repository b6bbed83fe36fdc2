# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Baseline networks of the paper's comparison (Tan et al., section 4), written here from their papers.

- :class:`PSR` (Shen et al. 2019): 2-D representation encoder on the X-ray images, feature transformation
  (2-D features reshaped into 3-D), 3-D generation decoder.
- :class:`SIT` (Henzler et al. 2018): 2-D U-Net whose output channels are the depth slices of the volume;
  its first layer takes the two images as two channels.
- :class:`E2E` (Kasten et al. 2020): dimension expansion (the bundle's input) + 3-D U-Net (MONAI's
  :class:`~monai.networks.nets.BasicUNet`).
- :class:`~scripts.networks.bx2s.BX2S` (Chen et al. 2023), in ``scripts/networks/bx2s.py``.

Every network takes the bundle's training input, the two X-rays dimension-expanded to a 2-channel volume
``(B, 2, X, Y, Z)``, and returns a z-scored volume ``(B, out_channels, X, Y, Z)`` without a final
activation, so each one trains, evaluates and runs through ``network_def`` alone with the same data,
transforms and loss as EAR. The 2-D networks take the two images out of the volume with
:func:`scripts.networks.views.stack_views` (exact for ``replicate`` expansion). Widths are arguments
(``channels``, five levels like EAR's), so a config's ``@channels`` scales them all alike. All networks
are TorchScript compatible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import BasicUNet
from scripts.networks.model_info import attach_model_info
from scripts.networks.views import ap_frame_to_grid, check_volume_input, stack_views
from torch import nn

__all__ = ["PSR", "SIT", "E2E", "ResidualDown2D", "FeatureTransform", "UpBlock3D", "cube_size"]


def cube_size(spatial_size: int | Sequence[int], name: str, divisor: int) -> list[int]:
    """``spatial_size`` as ``[X, Y, Z]``, checked: ``X == Y`` (the images are stacked), multiples of ``divisor``."""
    size = [int(spatial_size)] * 3 if isinstance(spatial_size, int) else [int(s) for s in spatial_size]
    if len(size) != 3:
        raise ValueError(f"{name}: spatial_size needs one or three sizes, got {spatial_size}.")
    if size[0] != size[1] or any(s < divisor or s % divisor for s in size):
        raise ValueError(
            f"{name}: spatial_size {size} must have X == Y (the AP and lateral images are stacked as channels) "
            f"and sizes that are multiples of {divisor}."
        )
    return size


class ResidualDown2D(nn.Module):
    """PSR representation block: Conv2d k4 stride 2 -> norm -> act, then a residual unit of two 3x3 convolutions.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        act: MONAI activation argument.
        norm: MONAI normalisation argument.
    """

    def __init__(self, in_channels: int, out_channels: int, act: str | tuple, norm: str | tuple) -> None:
        super().__init__()
        self.down = Convolution(2, in_channels, out_channels, strides=2, kernel_size=4, padding=1, act=act, norm=norm)
        self.res = ResidualUnit(2, out_channels, out_channels, kernel_size=3, subunits=2, act=act, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(self.down(x))


class FeatureTransform(nn.Module):
    """PSR transformation module: 2-D features ``(B, C2, H, W)`` -> 3-D features ``(B, C3, D, H, W)``.

    A 1x1 Conv2d + act to ``C3 * D`` channels, a reshape of the channels into ``C3`` channels of depth
    ``D``, and a 1x1x1 ConvTranspose3d + act.

    Args:
        in_channels: channels of the 2-D features.
        out_channels: channels of the 3-D features.
        depth: depth of the 3-D features.
        act: MONAI activation argument.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, act: str | tuple) -> None:
        super().__init__()
        self.out_channels = int(out_channels)
        self.depth = int(depth)
        self.conv2d = Convolution(2, in_channels, out_channels * depth, kernel_size=1, act=act, norm=None)
        self.conv3d = Convolution(
            3, out_channels, out_channels, kernel_size=1, is_transposed=True, output_padding=0, act=act, norm=None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        return self.conv3d(self.conv2d(x).reshape(b, self.out_channels, self.depth, h, w))


class UpBlock3D(nn.Sequential):
    """PSR generation block: ConvTranspose3d k4 stride 2 -> norm -> act -> Conv3d k3 -> norm -> act.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        act: MONAI activation argument.
        norm: MONAI normalisation argument.
    """

    def __init__(self, in_channels: int, out_channels: int, act: str | tuple, norm: str | tuple) -> None:
        super().__init__(
            Convolution(
                3,
                in_channels,
                out_channels,
                strides=2,
                kernel_size=4,
                padding=1,
                output_padding=0,
                is_transposed=True,
                act=act,
                norm=norm,
            ),
            Convolution(3, out_channels, out_channels, kernel_size=3, act=act, norm=norm),
        )


class PSR(nn.Module):
    """Patient-specific reconstruction network (Shen, Zhao and Xing, Nat. Biomed. Eng. 2019), for two views.

    The two images (:func:`~scripts.networks.views.stack_views`, ``(B, 2, Z, X)``, the views as channels as
    in the paper's multi-view variant) pass through

    - a representation network: five :class:`ResidualDown2D` blocks (widths ``channels``), each halving the
      image, to ``(B, channels[4], Z/32, X/32)``;
    - a transformation module (:class:`FeatureTransform`): 1x1 convolution, reshape of the channels into a
      depth of ``Y/32``, 1x1x1 transposed convolution, to ``(B, channels[4], Y/32, Z/32, X/32)``;
    - a generation network: five :class:`UpBlock3D` (widths ``channels[3], ..., channels[0], channels[0]``)
      back to the full size, and a 1x1x1 convolution to ``out_channels`` (no activation).

    The volume, laid out in the AP view's frame, is turned to the grid layout with
    :func:`~scripts.networks.views.ap_frame_to_grid`. The paper's much wider layers (thousands of channels
    at the 2-D bottleneck) are replaced by ``channels``.

    Args:
        in_channels: channels of the input volume: 2 (the AP and lateral views).
        out_channels: output channels.
        spatial_size: grid size ``X = Y = Z`` (int) or ``(X, Y, Z)`` with ``X == Y``, multiples of 32.
        channels: widths of the five representation levels (the generation levels use them in reverse).
        act: activation (MONAI name or (name, args)).
        norm: normalisation (MONAI name or (name, args)).

    Raises:
        ValueError: on other input channels, or, in ``forward``, an input of another size.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        spatial_size: int | Sequence[int] = 128,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        attach_model_info(self)  # training statistics travel with every copy of the weights
        if int(in_channels) != 2:
            raise ValueError(f"PSR takes the two expanded views (in_channels=2), got in_channels={in_channels}.")
        if len(channels) != 5:
            raise ValueError(f"PSR has five levels: channels needs five widths, got {tuple(channels)}.")
        c = [int(v) for v in channels]
        self.in_channels = 2
        self.out_channels = int(out_channels)
        self.divisor = 32
        self.spatial_size = cube_size(spatial_size, "PSR", self.divisor)
        self.encoder = nn.Sequential(
            ResidualDown2D(2, c[0], act, norm),
            ResidualDown2D(c[0], c[1], act, norm),
            ResidualDown2D(c[1], c[2], act, norm),
            ResidualDown2D(c[2], c[3], act, norm),
            ResidualDown2D(c[3], c[4], act, norm),
        )
        self.transform = FeatureTransform(c[4], c[4], self.spatial_size[1] // self.divisor, act)
        self.decoder = nn.Sequential(
            UpBlock3D(c[4], c[3], act, norm),
            UpBlock3D(c[3], c[2], act, norm),
            UpBlock3D(c[2], c[1], act, norm),
            UpBlock3D(c[1], c[0], act, norm),
            UpBlock3D(c[0], c[0], act, norm),
        )
        self.head = nn.Conv3d(c[0], self.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_volume_input(x, "PSR", self.in_channels, self.divisor)
        if list(x.shape[2:]) != self.spatial_size:
            raise ValueError(f"PSR was built for inputs of {self.spatial_size} voxels, got {list(x.shape[2:])}.")
        features = self.transform(self.encoder(stack_views(x)))
        return ap_frame_to_grid(self.head(self.decoder(features)))


class SIT(nn.Module):
    """Single-image tomography network (Henzler et al., Eurographics 2018), for two views.

    A 2-D U-Net (MONAI's :class:`~monai.networks.nets.BasicUNet` with ``spatial_dims=2``: two
    conv-norm-act per level, max-pooling, transposed-convolution upsampling, skip concatenations; widths
    ``channels`` and ``head_channels`` for the last decoder level) maps the two images
    (:func:`~scripts.networks.views.stack_views`, ``(B, 2, Z, X)``; the first layer takes 2 channels) to
    ``out_channels * Y`` channels, which are the slices of the volume along the AP beam axis. The volume,
    ``(B, out_channels, Y, Z, X)`` in the AP view's frame, is turned to the grid layout with
    :func:`~scripts.networks.views.ap_frame_to_grid`. Only the paper's coarse volume network is built (its
    second stage refines a coarse volume to a higher resolution than its output layer holds; here the
    output layer already has the full grid depth).

    Args:
        in_channels: channels of the input volume: 2 (the AP and lateral views).
        out_channels: output channels.
        spatial_size: grid size ``X = Y = Z`` (int) or ``(X, Y, Z)`` with ``X == Y``, multiples of 16.
        channels: widths of the five U-Net levels.
        head_channels: width of the last decoder level, which the 1x1 output convolution maps to the
            ``out_channels * Y`` slices (default ``channels[0]``).
        act: activation (MONAI name or (name, args)).
        norm: normalisation (MONAI name or (name, args)).

    Raises:
        ValueError: on other input channels, or, in ``forward``, an input of another size.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        spatial_size: int | Sequence[int] = 128,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        head_channels: int | None = None,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        attach_model_info(self)  # training statistics travel with every copy of the weights
        if int(in_channels) != 2:
            raise ValueError(f"SIT takes the two expanded views (in_channels=2), got in_channels={in_channels}.")
        if len(channels) != 5:
            raise ValueError(f"SIT has five levels: channels needs five widths, got {tuple(channels)}.")
        c = [int(v) for v in channels]
        self.in_channels = 2
        self.out_channels = int(out_channels)
        self.divisor = 16
        self.spatial_size = cube_size(spatial_size, "SIT", self.divisor)
        self.depth = self.spatial_size[1]
        head = c[0] if head_channels is None else int(head_channels)
        self.unet = BasicUNet(
            spatial_dims=2,
            in_channels=2,
            out_channels=self.out_channels * self.depth,
            features=(*c, head),
            act=act,
            norm=norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_volume_input(x, "SIT", self.in_channels, self.divisor)
        if list(x.shape[2:]) != self.spatial_size:
            raise ValueError(f"SIT was built for inputs of {self.spatial_size} voxels, got {list(x.shape[2:])}.")
        slices = self.unet(stack_views(x))  # (B, out_channels * Y, Z, X)
        b, h, w = slices.shape[0], slices.shape[2], slices.shape[3]
        return ap_frame_to_grid(slices.reshape(b, self.out_channels, self.depth, h, w))


class E2E(nn.Module):
    """End-to-end network (Kasten et al., MLMIR 2020): dimension expansion + 3-D U-Net.

    The dimension expansion is the bundle's input (the two images replicated along their beam axes); the
    3-D U-Net is MONAI's :class:`~monai.networks.nets.BasicUNet` (the 3-D U-Net of Cicek et al.: two
    Conv3d k3 + norm + act per level, max-pooling, transposed-convolution upsampling, skip concatenations)
    with widths ``channels`` and ``channels[0]`` for the last decoder level, batch normalisation and ReLU
    as in that U-Net, and a 1x1x1 output convolution without activation (a regression of the z-scored
    volume instead of the paper's bone-class probabilities).

    Args:
        in_channels: input channels (the two expanded X-ray images).
        out_channels: output channels.
        channels: widths of the five U-Net levels.
        act: activation (MONAI name or (name, args)).
        norm: normalisation (MONAI name or (name, args)).
        dropout: dropout rate of the U-Net's convolutions.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        attach_model_info(self)  # training statistics travel with every copy of the weights
        if len(channels) != 5:
            raise ValueError(f"E2E has five levels: channels needs five widths, got {tuple(channels)}.")
        c = [int(v) for v in channels]
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.divisor = 16
        self.unet = BasicUNet(
            spatial_dims=3,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            features=(*c, c[0]),
            act=act,
            norm=norm,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_volume_input(x, "E2E", self.in_channels, self.divisor)
        return self.unet(x)
