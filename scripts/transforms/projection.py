# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Maximum intensity projection (MIP) of channel-first volumes along one spatial axis.

MONAI has no MIP transform; it is a single ``amax`` reduction.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from scripts.functional import maximum_intensity_projections

__all__ = ["maximum_intensity_projections", "MaximumIntensityProjection", "MaximumIntensityProjectiond"]


class MaximumIntensityProjection(Transform):
    """MIP of a channel-first image ``(C, *spatial)`` along spatial axis ``axis``: ``(C, *other spatial)``.

    The result is a plain array/tensor (a MetaTensor's affine does not describe the projection).

    Args:
        axis: spatial axis (0-based, not counting the channel) to project along; with the bundle's RAS
            volumes 0 = left-right, 1 = posterior-anterior, 2 = inferior-superior.
    """

    backend = ["torch", "numpy"]

    def __init__(self, axis: int = 1) -> None:
        self.axis = int(axis)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        n_spatial = img.ndim - 1
        if not -n_spatial <= self.axis < n_spatial:
            raise ValueError(f"axis {self.axis} is not a spatial axis of a channel-first image of shape {img.shape}.")
        dim = 1 + self.axis % n_spatial
        if isinstance(img, torch.Tensor):
            t = img.as_tensor() if isinstance(img, MetaTensor) else img
            return torch.amax(t, dim=dim)
        return img.max(axis=dim)


class MaximumIntensityProjectiond(MapTransform):
    """Dictionary version of :class:`MaximumIntensityProjection`.

    Args:
        keys: keys to project.
        axis: spatial axis to project along.
        output_keys: where to store the projections (default: replace the inputs).
        allow_missing_keys: do not raise for missing keys.
    """

    backend = MaximumIntensityProjection.backend

    def __init__(
        self,
        keys: KeysCollection,
        axis: int = 1,
        output_keys: Sequence[Hashable] | Hashable | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.projector = MaximumIntensityProjection(axis)
        self.output_keys = _output_keys(self.keys, output_keys)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self.projector(d[key])
        return d


def _output_keys(keys: tuple, output_keys: Sequence[Hashable] | Hashable | None) -> tuple:
    """``output_keys`` as a tuple matching ``keys`` (default: the keys themselves)."""
    if output_keys is None:
        return tuple(keys)
    out = (output_keys,) if isinstance(output_keys, (str, int)) else tuple(output_keys)
    if len(out) != len(keys):
        raise ValueError(f"output_keys {out} must have one entry per key in {tuple(keys)}.")
    return out
