# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Networks of the bundle, importable from configs as ``scripts.networks.<Name>``."""

from __future__ import annotations

from scripts.networks.baselines import E2E, PSR, SIT, FeatureTransform, ResidualDown2D, UpBlock3D
from scripts.networks.blocks import CBAM3D, EAM, FEM, ChannelAttention3D, GatedConvBlock, SpatialAttention3D
from scripts.networks.bx2s import BX2S, FFAG
from scripts.networks.ear import EAR, DecoderLevel, EncoderLevel
from scripts.networks.model_info import MODEL_INFO_KEYS, attach_model_info, read_model_info
from scripts.networks.views import ap_frame_to_grid, stack_views, views_from_volume, volume_from_views

__all__ = [
    "EAR",
    "EncoderLevel",
    "DecoderLevel",
    "FEM",
    "EAM",
    "GatedConvBlock",
    "CBAM3D",
    "ChannelAttention3D",
    "SpatialAttention3D",
    "PSR",
    "SIT",
    "E2E",
    "BX2S",
    "ResidualDown2D",
    "FeatureTransform",
    "UpBlock3D",
    "FFAG",
    "views_from_volume",
    "stack_views",
    "volume_from_views",
    "ap_frame_to_grid",
    "MODEL_INFO_KEYS",
    "attach_model_info",
    "read_model_info",
]
