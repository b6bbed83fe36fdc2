# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The two X-ray images inside a ``replicate``-expanded volume, for networks that work on 2-D images.

:class:`scripts.transforms.DimensionExpansion` (``mode="replicate"``) turns the AP and lateral images into
a 2-channel volume ``(B, 2, X, Y, Z)`` on the CT grid: channel 0 is the AP image copied along the
antero-posterior axis Y (dim 3), channel 1 the lateral image copied along the left-right axis X (dim 2).
The image rows run from high to low Z (row 0 at the top), the AP columns from high to low X (column 0 is
the patient's right) and the lateral columns from high to low Y (column 0 is anterior). The functions here
undo and redo that layout, so 2-D networks (:class:`~scripts.networks.PSR`, :class:`~scripts.networks.SIT`)
take the same input as the 3-D ones and train through the same transforms:

- :func:`views_from_volume`: ``(B, 2, X, Y, Z)`` -> AP ``(B, Z, X)`` and lateral ``(B, Z, Y)`` images in
  detector orientation (the mean along each beam axis, exact for ``replicate`` expansion; for
  ``backproject`` expansion it is a blurred version of the images).
- :func:`stack_views`: the two as one ``(B, 2, H, W)`` tensor (needs ``X == Y``).
- :func:`volume_from_views`: the inverse, replicating the images along their beam axes.
- :func:`ap_frame_to_grid`: a volume laid out like the AP view, ``(B, C, depth=Y, rows, columns)``, to
  the grid layout ``(B, C, X, Y, Z)``.
- :func:`check_volume_input`: the input check of the networks on expanded volumes (5-D, channels, sizes).

All functions are TorchScript compatible.
"""

from __future__ import annotations

import torch

__all__ = ["views_from_volume", "stack_views", "volume_from_views", "ap_frame_to_grid", "check_volume_input"]


def check_volume_input(x: torch.Tensor, name: str, in_channels: int, divisor: int) -> None:
    """Raise a ValueError unless ``x`` is ``(B, in_channels, X, Y, Z)`` with every size a multiple of ``divisor``."""
    if x.dim() != 5:
        raise ValueError(
            f"{name} expects a 5-D input (batch, channel, X, Y, Z), got shape {list(x.shape)}; add the batch "
            "and channel dimensions."
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name} expects {in_channels} input channels (the expanded X-ray images), got {x.shape[1]} "
            f"(input shape {list(x.shape)})."
        )
    for s in x.shape[2:]:
        if s % divisor != 0:
            raise ValueError(
                f"{name} needs every spatial size to be a multiple of {divisor}, got {list(x.shape[2:])}; pad or "
                "resample the input (e.g. roi_size 64 or 128)."
            )


def _check_expanded(volume: torch.Tensor) -> None:
    if volume.dim() != 5 or volume.shape[1] != 2:
        raise ValueError(
            f"expected a dimension-expanded X-ray pair (B, 2, X, Y, Z), got shape {list(volume.shape)}; channel 0 "
            "is the AP view, channel 1 the lateral view."
        )


def views_from_volume(volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The AP and lateral images of an expanded pair, in detector orientation.

    Args:
        volume: ``(B, 2, X, Y, Z)``, channel 0 the AP image replicated along Y, channel 1 the lateral image
            replicated along X.

    Returns:
        ``(ap, lateral)``: ``ap[b, r, c] = mean_y volume[b, 0, X-1-c, y, Z-1-r]``, shape ``(B, Z, X)``, and
        ``lateral[b, r, c] = mean_x volume[b, 1, x, Y-1-c, Z-1-r]``, shape ``(B, Z, Y)``.
    """
    _check_expanded(volume)
    ap = volume[:, 0].mean(dim=2)  # (B, X, Z)
    lateral = volume[:, 1].mean(dim=1)  # (B, Y, Z)
    return ap.flip([1, 2]).transpose(1, 2), lateral.flip([1, 2]).transpose(1, 2)


def stack_views(volume: torch.Tensor) -> torch.Tensor:
    """:func:`views_from_volume` stacked as channels, ``(B, 2, Z, X)`` (AP, lateral); needs ``X == Y``."""
    ap, lateral = views_from_volume(volume)
    if ap.shape[-1] != lateral.shape[-1]:
        raise ValueError(
            f"the AP ({ap.shape[-1]} columns) and lateral ({lateral.shape[-1]} columns) images can only be stacked "
            f"when the grid is as wide (X) as deep (Y); got a grid of {list(volume.shape[2:])}."
        )
    return torch.stack([ap, lateral], dim=1)


def volume_from_views(ap: torch.Tensor, lateral: torch.Tensor, depth_y: int, depth_x: int) -> torch.Tensor:
    """Replicate the two images along their beam axes: the inverse of :func:`views_from_volume`.

    Args:
        ap: ``(B, Z, X)`` AP images in detector orientation.
        lateral: ``(B, Z, Y)`` lateral images in detector orientation.
        depth_y: Y size of the grid (the AP image's beam axis).
        depth_x: X size of the grid (the lateral image's beam axis).

    Returns:
        ``(B, 2, X, Y, Z)``.
    """
    ap_grid = ap.transpose(1, 2).flip([1, 2])  # (B, X, Z)
    lat_grid = lateral.transpose(1, 2).flip([1, 2])  # (B, Y, Z)
    b, x, z = ap_grid.shape[0], ap_grid.shape[1], ap_grid.shape[2]
    y = lat_grid.shape[1]
    if depth_x != x or depth_y != y or lat_grid.shape[2] != z:
        raise ValueError(
            f"AP images {list(ap.shape)} and lateral images {list(lateral.shape)} do not fit a grid of "
            f"({depth_x}, {depth_y}, {z}) voxels."
        )
    ap_vol = ap_grid[:, :, None, :].expand(b, x, y, z)
    lat_vol = lat_grid[:, None, :, :].expand(b, x, y, z)
    return torch.stack([ap_vol, lat_vol], dim=1).contiguous()


def ap_frame_to_grid(volume: torch.Tensor) -> torch.Tensor:
    """A volume in the AP view's frame to the grid layout.

    Args:
        volume: ``(B, C, D, H, W)`` with ``D`` along the AP beam (grid axis Y, same direction), ``H`` the
            image rows (grid axis Z, reversed) and ``W`` the image columns (grid axis X, reversed), i.e. the
            layout of :func:`stack_views` with a depth axis in front.

    Returns:
        ``(B, C, X, Y, Z)`` with ``out[b, c, x, y, z] = volume[b, c, y, Z-1-z, X-1-x]``.
    """
    if volume.dim() != 5:
        raise ValueError(f"expected (B, C, D, H, W), got shape {list(volume.shape)}.")
    return volume.flip([3, 4]).permute(0, 1, 4, 2, 3).contiguous()
