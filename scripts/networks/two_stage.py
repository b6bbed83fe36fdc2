# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""A two-stage network for X-rays through the whole body: a 2-D view stage, then EAR.

A body X-ray adds, in the attenuation (log) domain, the target vertebra, its neighbours and the rest of the body
along every ray. Trained end to end on body windows of a few patients, EAR learns the average vertebra and stops
reading its input (``docs/body-xrays.md``, the swap test). Trained on X-rays of the isolated vertebra (the paper's
input) or of the spine alone (:class:`scripts.transforms.SpineDRRd`), it reads them. :class:`TwoStageEAR` puts a
stage that makes such X-rays from body X-rays before EAR, in one module, so that one weight file, one contract and
the bundle's unchanged transforms and configs carry it:

1. the **view stage**, a 2-D MONAI :class:`~monai.networks.nets.BasicUNet`, maps the z-scored body views to the
   X-rays of the isolated vertebra (or of the spine alone) in the same window (trained first on windows drawn by
   ``python -m scripts.tools.spine_stage train``);
2. its outputs, z-scored per view, are replicated along their beam axes again
   (:func:`~scripts.networks.views.volume_from_views`) and reconstructed by :class:`~scripts.networks.EAR`.

The input and output are EAR's: the ``replicate``-expanded pair ``(B, 2, X, Y, Z)`` with ``X == Y`` (the two views
are read back exactly by :func:`~scripts.networks.views.stack_views`), and the volume (with the edge logits in
training mode when ``use_eam``). The stages can be fine-tuned together through the bundle's training workflow.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from scripts.functional import zscore_images
from scripts.networks.ear import EAR
from scripts.networks.model_info import attach_model_info
from scripts.networks.views import check_volume_input, stack_views, volume_from_views
from torch import nn

__all__ = ["TwoStageEAR"]


class TwoStageEAR(nn.Module):
    """A 2-D view stage that keeps the vertebra (or the spine) of each body X-ray, then :class:`~scripts.networks.EAR`.

    Args:
        in_channels: input channels, the two expanded views (only 2 is supported: AP and lateral).
        out_channels: output channels of EAR.
        channels: widths of EAR's five levels.
        view_features: the six feature widths of the view stage's BasicUNet.
        joint_views: the view stage reads both views at once (two channels in, two out), so that each view's
            output can use the other (they share the long axis: image rows); else one view at a time.
        view_members: how many view stages of this shape (e.g. trained with different seeds) read the views; their
            z-scored outputs are averaged, a deep ensemble of the view stage (``view_net`` is the first member,
            ``more_view_nets`` the others, so a one-member file loads as before).
        view_scale: the view stage reads the views averaged over ``view_scale`` x ``view_scale`` pixels and its
            output is upsampled back (bilinear), so a view stage trained at 2 mm per pixel serves an EAR at 1 mm
            over the same window (e.g. the CPU body model's view stage before the paper-sized EAR: ``2``).
        use_abs, use_fem, use_eam: EAR's module switches.

    Raises:
        ValueError: for ``in_channels`` other than 2, ``view_members`` below 1 or a ``view_scale`` that does not
            divide 32; in ``forward``, for an input that is not ``(B, 2, X, Y, Z)`` with ``X == Y`` and every size
            a multiple of 32.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        view_features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        joint_views: bool = False,
        view_members: int = 1,
        view_scale: int = 1,
        use_abs: bool = True,
        use_fem: bool = True,
        use_eam: bool = True,
    ) -> None:
        super().__init__()
        if int(in_channels) != 2:
            raise ValueError(f"TwoStageEAR reads two views (AP and lateral): in_channels must be 2, got {in_channels}.")
        self.in_channels = 2
        self.divisor = 32
        self.joint_views = bool(joint_views)
        width = 2 if self.joint_views else 1
        if int(view_members) < 1:
            raise ValueError(f"TwoStageEAR needs at least one view stage, got view_members={view_members}.")
        self.view_members = int(view_members)
        if int(view_scale) < 1 or self.divisor % int(view_scale):
            raise ValueError(f"TwoStageEAR's view_scale must divide {self.divisor} (1, 2, 4, ...), got {view_scale}.")
        self.view_scale = int(view_scale)

        def view_stage() -> BasicUNet:
            return BasicUNet(
                spatial_dims=2, in_channels=width, out_channels=width, features=tuple(int(f) for f in view_features)
            )

        self.view_net = view_stage()
        self.more_view_nets = nn.ModuleList([view_stage() for _ in range(self.view_members - 1)])
        self.volume_net = EAR(2, out_channels, channels, use_abs=use_abs, use_fem=use_fem, use_eam=use_eam)
        # the contract of the whole model (volume_net keeps its own, its pretraining's); its record starts with the
        # view stage's shape, which training keeps, so inference configs can rebuild this network from the file
        record = {"view_features": [int(f) for f in view_features], "joint_views": self.joint_views}
        if self.view_members > 1:  # one member: the record of the files written before ensembles
            record["view_members"] = self.view_members
        if self.view_scale > 1:
            record["view_scale"] = self.view_scale
        attach_model_info(self, record=record)

    def spine_views(self, x: torch.Tensor) -> torch.Tensor:
        """The view stage's output for an expanded pair ``x``: ``(B, 2, Z, X)`` views, z-scored (with several
        members, their z-scored outputs averaged and z-scored again), at the input's pixel size."""
        views = stack_views(x)
        if self.view_scale > 1:  # the view stage's pixel size (a mean over each block, as a coarser detector)
            views = F.avg_pool2d(views, self.view_scale)
        views = zscore_images(views)
        b, v, h, w = views.shape
        inputs = views if self.joint_views else views.reshape(b * v, 1, h, w)
        out = zscore_images(self.view_net(inputs).reshape(b, v, h, w))
        for net in self.more_view_nets:
            out = out + zscore_images(net(inputs).reshape(b, v, h, w))
        if self.view_members > 1:
            out = zscore_images(out / self.view_members)
        if self.view_scale > 1:
            out = zscore_images(F.interpolate(out, scale_factor=float(self.view_scale), mode="bilinear"))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_volume_input(x, "TwoStageEAR", self.in_channels, self.divisor)
        spine = self.spine_views(x)
        return self.volume_net(volume_from_views(spine[:, 0], spine[:, 1], x.shape[3], x.shape[2]))
