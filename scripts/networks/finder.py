# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The vertebra finder: a 2-D network that marks vertebra centres in a full radiograph and says which level each is.

:class:`VertebraFinder` is MONAI's ``BasicUNet`` (``spatial_dims=2``) with two input channels and two output
channels, one network for both views:

- input ``(B, 2, H, W)``: channel 0 the radiograph (line integrals or any bone-bright image, scaled to about
  0-1, e.g. by its 1st and 99th percentiles), channel 1 the view flag (0 AP or PA, 1 lateral) filled over the image
  (:func:`finder_input`);
- output ``(B, 2, H, W)``: channel 0 the logits of the centre heatmap (a Gaussian of :data:`HEATMAP_SIGMA_PX`
  pixels at each vertebra's projected centre; ``sigmoid`` gives the heatmap), channel 1 the level evidence, a
  per-pixel regression of the level index (:data:`LEVELS`: C1 = 0 ... L5 = 23), trained only near centres.

Any ``H`` and ``W`` are taken: the input is padded to a multiple of 16 and the output cropped back. The level
index is regressed rather than classified because the training patients cover each level a few times only: a
number along the spine needs fewer examples than 24 classes, and the chain of detections (one level per
vertebra, top to bottom) turns it into names (``scripts.localise``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn

__all__ = [
    "VertebraFinder",
    "LEVELS",
    "HEATMAP_SIGMA_PX",
    "FINDER_PIXEL_MM",
    "FINDER_MAGNIFICATION",
    "level_index",
    "level_name",
    "finder_input",
    "heatmap_peaks",
]

#: the levels the finder names, top to bottom; a level's index is its place here (VerSe id - 1).
LEVELS: tuple[str, ...] = tuple(
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
)
#: the spread (pixels of :data:`FINDER_PIXEL_MM`) of each centre's Gaussian in the heatmap target.
HEATMAP_SIGMA_PX = 2.0
#: the detector pixel size (mm) the finder is trained and run at; radiographs are resampled to it.
FINDER_PIXEL_MM = 2.0
#: the magnification (source-detector over source-isocentre distance) at which the finder reads an image whose
#: pixel size is given at the isocentre (:class:`scripts.localise.WindowCentring`): that of ``python -m
#: scripts.simulate radiographs`` (1200 mm / 800 mm), inside the range of the finder's training pairs (1.15-2.0,
#: ``scripts.tools.finder_data.draw_pair``), and the best of 1, 1.5 and 2 on the validation patient. An image of
#: ``s`` mm pixels at the isocentre is read as detector pixels of ``s * FINDER_MAGNIFICATION``.
FINDER_MAGNIFICATION = 1.5
#: the initial bias of the heatmap logits: ``logit(0.1)``.
HEATMAP_PRIOR_BIAS = -2.19
_DIVISOR = 16


def level_index(level: str) -> int:
    """The index of a level name (``"C1"`` 0 ... ``"L5"`` 23).

    Raises:
        ValueError: a name not in :data:`LEVELS` (e.g. ``"L6"`` or ``"T13"``).
    """
    name = str(level).strip().upper()
    if name not in LEVELS:
        raise ValueError(f"unknown vertebra level {level!r}: use one of C1-C7, T1-T12, L1-L5.")
    return LEVELS.index(name)


def level_name(index: int) -> str:
    """The level name of an index (0 ``"C1"`` ... 23 ``"L5"``).

    Raises:
        ValueError: an index outside ``0 .. 23``.
    """
    i = int(index)
    if not 0 <= i < len(LEVELS):
        raise ValueError(f"level index {index} is outside 0-{len(LEVELS) - 1} (C1-L5).")
    return LEVELS[i]


def finder_input(image: torch.Tensor, view: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The network's input: images ``(B, 1, H, W)`` (or ``(H, W)``) with the view flag as a second channel.

    Args:
        image: the scaled radiographs.
        view: 0 (AP / PA) or 1 (lateral), one for all or one per image.

    Returns:
        ``(B, 2, H, W)`` float32.
    """
    img = torch.as_tensor(image, dtype=torch.float32)
    while img.dim() < 4:
        img = img[None]
    flag = torch.as_tensor(view, dtype=torch.float32, device=img.device).reshape(-1, 1, 1, 1)
    return torch.cat([img, flag.expand(img.shape[0], 1, *img.shape[2:])], dim=1)


class VertebraFinder(nn.Module):
    """Vertebra-centre heatmap and level evidence of a radiograph (see the module docstring).

    Args:
        features: the six feature sizes of MONAI's ``BasicUNet`` (five levels and the last layer).
        dropout: dropout of the U-Net's blocks.
        norm: the normalisation of the U-Net's blocks.
    """

    def __init__(
        self,
        features: Sequence[int] = (16, 16, 32, 64, 128, 16),
        dropout: float = 0.0,
        norm: str | tuple = ("instance", {"affine": True}),
    ) -> None:
        super().__init__()
        self.unet = BasicUNet(
            spatial_dims=2, in_channels=2, out_channels=2, features=tuple(features), norm=norm, dropout=dropout
        )
        with torch.no_grad():  # a heatmap prior of 0.1 (CenterNet's), so the focal loss starts stable
            self.unet.final_conv.bias[0].fill_(HEATMAP_PRIOR_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 2, H, W)`` image and view flag -> ``(B, 2, H, W)`` heatmap logits and level index."""
        if x.dim() != 4 or x.shape[1] != 2:
            raise ValueError(
                f"VertebraFinder expects (batch, 2, H, W): the image and the view flag (finder_input); got "
                f"{list(x.shape)}."
            )
        h, w = int(x.shape[2]), int(x.shape[3])
        ph, pw = (-h) % _DIVISOR, (-w) % _DIVISOR
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.unet(x)[:, :, :h, :w]


def heatmap_peaks(
    heatmap: torch.Tensor, threshold: float = 0.3, min_distance: int = 3, max_peaks: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """The local maxima of a heatmap (non-maximum suppression), refined to sub-pixel positions.

    A pixel is a peak when it is the largest within ``min_distance`` pixels (a ``2 * min_distance + 1`` square) and
    at least ``threshold``; its position is the heatmap-weighted mean over its 3 x 3 neighbourhood.

    Args:
        heatmap: ``(H, W)`` values in 0-1 (the finder's ``sigmoid`` output).
        threshold: the smallest peak value kept.
        min_distance: the suppression radius (pixels).
        max_peaks: the most peaks returned (the highest).

    Returns:
        ``(rc (N, 2) float64 (row, col), scores (N,))``, highest score first.
    """
    hm = torch.as_tensor(heatmap, dtype=torch.float32).detach().cpu()
    if hm.dim() != 2:
        raise ValueError(f"heatmap_peaks expects one (H, W) heatmap, got shape {list(hm.shape)}.")
    k = 2 * int(min_distance) + 1
    pooled = F.max_pool2d(hm[None, None], k, stride=1, padding=int(min_distance))[0, 0]
    keep = (hm >= pooled) & (hm >= float(threshold))
    rows, cols = torch.nonzero(keep, as_tuple=True)
    scores = hm[rows, cols]
    order = torch.argsort(scores, descending=True, stable=True)
    kept: list[int] = []
    for i in order.tolist():  # equal neighbours (a plateau) are all maxima: keep the first of them
        near = [
            k for k in kept if max(abs(int(rows[k]) - int(rows[i])), abs(int(cols[k]) - int(cols[i]))) <= min_distance
        ]
        if not near:
            kept.append(i)
        if len(kept) == int(max_peaks):
            break
    idx = torch.tensor(kept, dtype=torch.long)
    rows, cols, scores = rows[idx], cols[idx], scores[idx]
    padded = F.pad(hm[None, None], (1, 1, 1, 1), mode="replicate")[0, 0].double().clamp_min(1e-12).log()
    out = []
    for r, c in zip(rows.tolist(), cols.tolist()):
        out.append([r + _vertex(padded[r : r + 3, c + 1]), c + _vertex(padded[r + 1, c : c + 3])])
    rc = torch.tensor(out, dtype=torch.float64).reshape(-1, 2)
    return rc, scores.double()


def _vertex(logs: torch.Tensor) -> float:
    """The vertex offset (-0.5 .. 0.5) of the parabola through three log values at -1, 0, 1."""
    left, mid, right = (float(v) for v in logs)
    curve = left - 2.0 * mid + right
    if curve >= -1e-12:
        return 0.0
    return float(min(max(0.5 * (left - right) / curve, -0.5), 0.5))
