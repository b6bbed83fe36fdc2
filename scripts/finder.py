# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Training the vertebra finder (:class:`scripts.networks.finder.VertebraFinder`): targets, loss, metric.

The finder's training items are single radiographs (``python -m scripts.tools.finder_data``): an image, its view
(0 AP, 1 lateral), and the ``(row, col)`` and level index of every vertebra centre inside it.

- :class:`FinderTargetsd` draws the targets once per image: ``heatmap`` ``(1, H, W)``, a Gaussian of
  :data:`~scripts.networks.finder.HEATMAP_SIGMA_PX` pixels at each centre (the largest where two overlap), and
  ``levels`` ``(2, H, W)``: the level index of the nearest centre and a mask of the pixels within ``radius`` of a
  centre (where the level is trained). Spatial augmentations then move images and targets together (``heatmap``
  bilinear, ``levels`` nearest).
- :class:`AddViewChanneld` appends the view flag as a second image channel (the network's input,
  :func:`~scripts.networks.finder.finder_input`).
- :class:`FinderLoss`: CenterNet's focal loss of the heatmap logits against the Gaussian targets (a first run
  with a weighted binary cross-entropy drew one ridge along the spine instead of one peak per vertebra after 20
  epochs), plus ``level_weight`` times the smooth L1 error of the level index inside the mask.
- :class:`FinderDetectionMetric`: per image, the F1 score of the heatmap's peaks
  (:func:`~scripts.networks.finder.heatmap_peaks`) against the true centres (the target's peaks), a hit within
  ``radius`` pixels; the key metric of the finder's validation (``configs/finder_train.json``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.metrics import CumulativeIterationMetric
from monai.transforms import MapTransform
from scripts.networks.finder import HEATMAP_SIGMA_PX, heatmap_peaks
from torch import nn

__all__ = [
    "FinderTargetsd",
    "AddViewChanneld",
    "FinderLoss",
    "FinderDetectionMetric",
    "detection_counts",
    "render_targets",
]


def render_targets(
    shape: Sequence[int], centres: Any, levels: Sequence[int], sigma: float = HEATMAP_SIGMA_PX, radius: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The heatmap ``(1, H, W)`` and the level map with its mask ``(2, H, W)`` of centres ``(N, 2)`` (row, col).

    Args:
        shape: ``(H, W)``.
        centres: ``(N, 2)`` sub-pixel positions.
        levels: ``N`` level indices.
        sigma: the Gaussian's spread (pixels).
        radius: the level mask's radius around each centre (pixels).
    """
    h, w = int(shape[0]), int(shape[1])
    rc = torch.as_tensor(np.asarray(centres, dtype=np.float64).reshape(-1, 2), dtype=torch.float32)
    heat = torch.zeros(1, h, w)
    lev = torch.zeros(2, h, w)
    if rc.shape[0] == 0:
        return heat, lev
    rr = torch.arange(h, dtype=torch.float32)[:, None, None]
    cc = torch.arange(w, dtype=torch.float32)[None, :, None]
    d2 = (rr - rc[:, 0]) ** 2 + (cc - rc[:, 1]) ** 2  # (H, W, N)
    heat[0] = torch.exp(-d2 / (2 * sigma**2)).amax(-1)
    nearest, idx = d2.min(-1)
    lev[0] = torch.as_tensor(np.asarray(levels, dtype=np.float32))[idx]
    lev[1] = (nearest <= radius**2).float()
    return heat, lev


class FinderTargetsd(MapTransform):
    """Draw the finder's targets of an image from its centres and levels (see the module docstring).

    Args:
        keys: the image whose shape the targets take (``(1, H, W)``).
        centres_key: the item's ``[[row, col], ...]``.
        levels_key: the item's level indices.
        heatmap_key: where the heatmap goes.
        level_key: where the level map and its mask go.
        sigma: the heatmap Gaussian's spread (pixels).
        radius: the level mask's radius (pixels).
    """

    def __init__(
        self,
        keys: KeysCollection,
        centres_key: str = "centres",
        levels_key: str = "levels",
        heatmap_key: str = "heatmap",
        level_key: str = "level_map",
        sigma: float = HEATMAP_SIGMA_PX,
        radius: float = 4.0,
    ) -> None:
        super().__init__(keys)
        self.centres_key, self.levels_key = centres_key, levels_key
        self.heatmap_key, self.level_key = heatmap_key, level_key
        self.sigma, self.radius = float(sigma), float(radius)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            heat, lev = render_targets(
                d[key].shape[-2:], d[self.centres_key], d[self.levels_key], self.sigma, self.radius
            )
            d[self.heatmap_key], d[self.level_key] = heat, lev
        return d


class AddViewChanneld(MapTransform):
    """Append the view flag (0 AP, 1 lateral) to a ``(1, H, W)`` image as a second channel.

    Args:
        keys: the images.
        view_key: the item's view flag.
    """

    def __init__(self, keys: KeysCollection, view_key: str = "view") -> None:
        super().__init__(keys)
        self.view_key = view_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key], dtype=torch.float32)
            flag = torch.full_like(img[:1], float(d[self.view_key]))
            d[key] = torch.cat([img[:1], flag], dim=0)
        return d


class FinderLoss(nn.Module):
    """Heatmap focal loss plus level regression (see the module docstring).

    The heatmap term is CenterNet's penalty-reduced focal loss (Zhou et al., Objects as points, 2019): the target's
    peaks (local maxima of 3 x 3 above 0.5, so spatial augmentations that blur a peak below 1 keep it) are the
    positives, ``-(1 - p)^alpha log(p)``; every other pixel is a negative down-weighted near a centre,
    ``-(1 - y)^beta p^alpha log(1 - p)``; the sum is divided by the number of positives.

    Args:
        alpha: the focusing exponent.
        beta: the exponent of the reduction near centres.
        level_weight: the weight of the level term.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 4.0, level_weight: float = 0.1) -> None:
        super().__init__()
        self.alpha, self.beta, self.level_weight = float(alpha), float(beta), float(level_weight)

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``pred`` ``(B, 2, H, W)`` (heatmap logits, level); ``label`` ``(B, 3, H, W)`` (heatmap, level, mask)."""
        target = label[:, :1]
        peak = (target >= F.max_pool2d(target, 3, stride=1, padding=1)) & (target > 0.5)
        logits = pred[:, :1]
        p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
        pos = -F.logsigmoid(logits) * (1 - p) ** self.alpha
        neg = -F.logsigmoid(-logits) * p**self.alpha * (1 - target).clamp_min(0) ** self.beta
        heat = (torch.where(peak, pos, neg)).sum() / peak.sum().clamp_min(1)
        mask = (label[:, 2] > 0.5).float()
        level = (F.smooth_l1_loss(pred[:, 1], label[:, 1], reduction="none") * mask).sum() / mask.sum().clamp_min(1)
        return heat + self.level_weight * level


def detection_counts(
    pred_rc: torch.Tensor, true_rc: torch.Tensor, radius: float
) -> tuple[int, int, int, list[tuple[int, int]]]:
    """Greedy one-to-one matching of predicted to true points within ``radius``: ``(hits, n_pred, n_true, pairs)``."""
    from scipy.optimize import linear_sum_assignment

    p = np.asarray(pred_rc, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(true_rc, dtype=np.float64).reshape(-1, 2)
    if len(p) == 0 or len(t) == 0:
        return 0, len(p), len(t), []
    dist = np.linalg.norm(p[:, None] - t[None], axis=-1)
    rows, cols = linear_sum_assignment(np.where(dist <= radius, dist, 1e6))
    pairs = [(int(r), int(c)) for r, c in zip(rows, cols) if dist[r, c] <= radius]
    return len(pairs), len(p), len(t), pairs


class FinderDetectionMetric(CumulativeIterationMetric):
    """Per image, the F1 score of the finder's heatmap peaks against the true centres (see the module docstring).

    Args:
        threshold: the smallest heatmap peak counted as a detection.
        radius: the farthest (pixels) a detection may lie from its centre.
        min_distance: the peaks' suppression radius (pixels).
    """

    def __init__(self, threshold: float = 0.3, radius: float = 4.0, min_distance: int = 3) -> None:
        super().__init__()
        self.threshold, self.radius, self.min_distance = float(threshold), float(radius), int(min_distance)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("FinderDetectionMetric needs the label (heatmap, level, mask).")
        scores = []
        for pred, label in zip(y_pred, y):
            found, _ = heatmap_peaks(torch.sigmoid(pred[0]), self.threshold, self.min_distance)
            true, _ = heatmap_peaks(label[0], 0.5, self.min_distance)
            hits, n_pred, n_true, _ = detection_counts(found, true, self.radius)
            scores.append(1.0 if n_pred + n_true == 0 else 2.0 * hits / (n_pred + n_true))
        return torch.tensor(scores, dtype=torch.float32)[:, None]

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            return torch.tensor(float("nan"))
        return data.float().mean()
