# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Networks of the bundle, importable from configs as ``scripts.networks.<Name>``."""

from __future__ import annotations

from scripts.networks.blocks import CBAM3D, EAM, FEM, ChannelAttention3D, GatedConvBlock, SpatialAttention3D
from scripts.networks.ear import EAR, DecoderLevel, EncoderLevel
from scripts.networks.model_info import MODEL_INFO_KEYS, attach_model_info, read_model_info

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
    "MODEL_INFO_KEYS",
    "attach_model_info",
    "read_model_info",
]
