# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Networks of the bundle, importable from configs as ``scripts.networks.<Name>``.

The names are loaded on first use (PEP 562 ``__getattr__``): importing one network module (e.g.
``scripts.networks.finder``) does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

#: exported name -> the module of this package that defines it
_EXPORTS = {
    "E2E": "baselines",
    "PSR": "baselines",
    "SIT": "baselines",
    "FeatureTransform": "baselines",
    "ResidualDown2D": "baselines",
    "UpBlock3D": "baselines",
    "CBAM3D": "blocks",
    "EAM": "blocks",
    "FEM": "blocks",
    "ChannelAttention3D": "blocks",
    "GatedConvBlock": "blocks",
    "SpatialAttention3D": "blocks",
    "BX2S": "bx2s",
    "FFAG": "bx2s",
    "EAR": "ear",
    "TwoStageEAR": "two_stage",
    "DecoderLevel": "ear",
    "EncoderLevel": "ear",
    "MODEL_INFO_KEYS": "model_info",
    "attach_model_info": "model_info",
    "read_model_info": "model_info",
    "ap_frame_to_grid": "views",
    "stack_views": "views",
    "views_from_volume": "views",
    "volume_from_views": "views",
}

__all__ = [
    "EAR",
    "TwoStageEAR",
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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
