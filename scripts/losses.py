# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""EAR losses (Tan et al., section 3.5).

Every loss takes channel-first batches ``(B, C, X, Y, Z)`` and honours ``reduction``: ``"mean"`` (over
the batch), ``"sum"`` (over the batch) or ``"none"`` (one value per batch item, shape ``(B,)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from scripts.functional import boundary_map, maximum_intensity_projections, spectral_distance
from torch.nn.modules.loss import _Loss

__all__ = ["L1ReconstructionLoss", "EdgeLoss", "FrequencyDistanceLoss", "ProjectionLoss", "EARLoss"]


def _reduce(per_item: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == LossReduction.MEAN.value:
        return per_item.mean()
    if reduction == LossReduction.SUM.value:
        return per_item.sum()
    if reduction == LossReduction.NONE.value:
        return per_item
    raise ValueError(f'reduction must be "mean", "sum" or "none", got {reduction!r}.')


def _check_pair(name: str, input: torch.Tensor, target: torch.Tensor) -> None:
    if input.shape != target.shape:
        raise ValueError(
            f"{name}: input {tuple(input.shape)} and target {tuple(target.shape)} must have the same shape."
            " (EAR's training output has one more channel: use EARLoss, which splits off the edge logits.)"
        )
    if input.dim() != 5:
        raise ValueError(f"{name}: expected (B, C, X, Y, Z) tensors, got shape {tuple(input.shape)}.")


class L1ReconstructionLoss(_Loss):
    """Reconstruction loss ``mean |V - G|`` per batch item.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair("L1ReconstructionLoss", input, target)
        return _reduce((input - target).abs().flatten(1).mean(1), self.reduction)


class EdgeLoss(_Loss):
    """Binary cross-entropy between edge logits and the edge map ``E(G)`` of the target volume.

    ``E(G)`` = inner boundary voxels (:func:`scripts.functional.boundary_map`) of ``target > threshold``.

    Args:
        threshold: binarisation threshold in the target's units (for z-scored targets: the z-score of
            -500 HU, ``(-500 - mean) / std``).
        pos_weight: optional weight of the (rare) edge voxels, as in ``BCEWithLogitsLoss``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
    """

    def __init__(
        self, threshold: float = 0.0, pos_weight: float | None = None, reduction: LossReduction | str = "mean"
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.threshold = float(threshold)
        self.pos_weight = pos_weight

    def edge_target(self, target: torch.Tensor) -> torch.Tensor:
        """``E(G)``: boundary of the binarised target, same shape, float."""
        return boundary_map(target > self.threshold)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: edge logits ``(B, 1, X, Y, Z)``.
            target: target volume ``(B, 1, X, Y, Z)`` (not yet an edge map).
        """
        _check_pair("EdgeLoss", input, target)
        pos_weight = None
        if self.pos_weight is not None:
            pos_weight = torch.tensor(self.pos_weight, dtype=input.dtype, device=input.device)
        bce = F.binary_cross_entropy_with_logits(
            input, self.edge_target(target).to(input.dtype), pos_weight=pos_weight, reduction="none"
        )
        return _reduce(bce.flatten(1).mean(1), self.reduction)


class FrequencyDistanceLoss(_Loss):
    """Frequency distance ``log10(1 + D_real + D_imag)`` per batch item.

    ``D_real`` (``D_imag``) is the Euclidean distance between the real (imaginary) parts of the 3-D FFTs of
    input and target (:func:`scripts.functional.spectral_distance`). The paper's
    ``log10(D_real + D_imag)`` is ``-inf`` for identical volumes and has an unbounded gradient there; the
    ``1 +`` makes it 0 for a perfect prediction and differs from the paper's value by less than
    ``0.44 / D`` (``D`` is in the hundreds for 128^3 volumes with the orthonormal FFT).

    Args:
        fft_norm: FFT normalisation (``"ortho"``: the distance is independent of the volume size up to the
            error itself; Parseval gives ``D_real^2 + D_imag^2 = ||V - G||^2``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
    """

    def __init__(self, fft_norm: str = "ortho", reduction: LossReduction | str = "mean") -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.fft_norm = fft_norm

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair("FrequencyDistanceLoss", input, target)
        return _reduce(torch.log10(1.0 + spectral_distance(input, target, norm=self.fft_norm)), self.reduction)


class ProjectionLoss(_Loss):
    """Mean over the three spatial axes of the mean L1 distance between maximum intensity projections.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
    """

    def __init__(self, reduction: LossReduction | str = "mean") -> None:
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair("ProjectionLoss", input, target)
        terms = [
            (p - t).abs().flatten(1).mean(1)
            for p, t in zip(maximum_intensity_projections(input), maximum_intensity_projections(target))
        ]
        return _reduce(torch.stack(terms).mean(0), self.reduction)


class EARLoss(_Loss):
    """``L = w_recon * L1 + w_edge * Edge + w_freq * FD + w_proj * Projection`` on the network's output.

    ``y_pred`` is :class:`scripts.networks.EAR`'s output: in training mode ``(B, C + 1, ...)`` with the edge
    logits in the last channel, otherwise ``(B, C, ...)``, in which case the edge term is left out
    (eval-mode outputs, or ``use_eam=False``). ``target`` is the z-scored ground truth ``(B, C, ...)``.

    Args:
        recon_weight: weight of :class:`L1ReconstructionLoss`.
        edge_weight: weight of :class:`EdgeLoss`.
        freq_weight: weight of :class:`FrequencyDistanceLoss`.
        proj_weight: weight of :class:`ProjectionLoss`.
        edge_threshold: binarisation threshold of the edge target in the target's units. For z-scored targets give
            the z-score of the bone level, -500 HU, with the data's statistics, as ``configs/train.json`` does
            (``scripts.workflow.zscore_of_hu(-500.0, stats)``); the default 0.0 is the z-scored mean (about -994 HU
            on this bundle's data), not the bone level.
        edge_pos_weight: ``pos_weight`` of the edge BCE.
        fft_norm: FFT normalisation of the frequency term.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
    """

    def __init__(
        self,
        recon_weight: float = 1.0,
        edge_weight: float = 0.1,
        freq_weight: float = 0.1,
        proj_weight: float = 0.1,
        edge_threshold: float = 0.0,
        edge_pos_weight: float | None = None,
        fft_norm: str = "ortho",
        reduction: LossReduction | str = "mean",
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.weights = {"recon": recon_weight, "edge": edge_weight, "freq": freq_weight, "proj": proj_weight}
        self.recon = L1ReconstructionLoss(reduction="none")
        self.edge = EdgeLoss(edge_threshold, edge_pos_weight, reduction="none")
        self.freq = FrequencyDistanceLoss(fft_norm, reduction="none")
        self.proj = ProjectionLoss(reduction="none")

    def components(self, y_pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms, each of shape ``(B,)`` (``"edge"`` only when ``y_pred`` has edge logits)."""
        if y_pred.dim() != 5 or target.dim() != 5:
            raise ValueError(
                "EARLoss expects (B, C, X, Y, Z) tensors, "
                f"got y_pred {tuple(y_pred.shape)}, target {tuple(target.shape)}."
            )
        c = target.shape[1]
        if y_pred.shape[1] == c + 1:
            volume, edge = y_pred[:, :c], y_pred[:, c:]
        elif y_pred.shape[1] == c:
            volume, edge = y_pred, None
        else:
            raise ValueError(
                f"EARLoss: y_pred has {y_pred.shape[1]} channels, target {c}; y_pred must have the target's channels "
                "(volume) or one more (volume and edge logits, the EAR training output)."
            )
        terms = {
            "recon": self.recon(volume, target),
            "freq": self.freq(volume, target),
            "proj": self.proj(volume, target),
        }
        if edge is not None:
            terms["edge"] = self.edge(edge, target[:, :1] if c > 1 else target)
        return terms

    def forward(self, y_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        terms = self.components(y_pred, target)
        total = sum(self.weights[k] * v for k, v in terms.items())
        return _reduce(total, self.reduction)
