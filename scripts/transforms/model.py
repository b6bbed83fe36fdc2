# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Transforms that read the trained model's contract (:mod:`scripts.networks.model_info`).

They are imported from this module (configs: ``scripts.transforms.model.<Name>``), not from
:mod:`scripts.transforms`: reading the contract imports :mod:`scripts.networks`, which the other transforms do
not need.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from scripts.functional import zscore_to_hu
from scripts.networks.model_info import read_model_info
from torch import nn

__all__ = ["ModelZScoreToHUd"]


class ModelZScoreToHUd(MapTransform):
    """z-score -> HU with the statistics stored inside a model (:func:`scripts.networks.attach_model_info`).

    The statistics are read from ``model`` at each call, so weights loaded after the transform was built
    (e.g. by a ``CheckpointLoader`` when the engine starts) are the ones that count, and inference never
    depends on the statistics of the data it runs on.

    Args:
        keys: keys to convert.
        model: the network holding the statistics as buffers.
        allow_missing_keys: do not raise for missing keys.
    """

    backend = ["torch", "numpy"]

    def __init__(self, keys: KeysCollection, model: nn.Module, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.model = model

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        info = read_model_info(self.model)
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = zscore_to_hu(d[key], info["gt_mean"], info["gt_std"])
        return d
