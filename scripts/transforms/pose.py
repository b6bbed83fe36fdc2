# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Pose augmentation: rotate the object inside a fixed voxel grid."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, RandRotated

__all__ = ["RandPoseRotated", "FixedGridd"]


class FixedGridd(Randomizable, MapTransform):
    """Apply a spatial transform to the content of ``keys`` while each key keeps its grid (affine).

    MONAI's spatial transforms (``RandAffined``, ``Rand3DElasticd``, ...) move the affine with the data, so
    the object stays where it was in world space. For simulated X-rays the object has to move, scale or
    deform while the grid, and with it the X-ray geometry and the axis-aligned dimension expansion, stays
    put: this wrapper runs ``transform`` and then restores each key's affine (the transform is not
    invertible afterwards). Give the inner transform the same keys; every key gets the same random draw.

    Args:
        keys: channel-first ``(C, X, Y, Z)`` MetaTensors whose affine is kept.
        transform: the MONAI dictionary transform to apply, e.g. ``RandAffined(keys, scale_range=...)``.
        allow_missing_keys: skip missing keys.
    """

    def __init__(self, keys: KeysCollection, transform: MapTransform, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> FixedGridd:
        super().set_random_state(seed, state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """The inner transform draws its own parameters."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        affines = {k: d[k].affine.clone() for k in self.key_iterator(d) if isinstance(d[k], MetaTensor)}
        d = dict(self.transform(d))
        for k, affine in affines.items():
            out = MetaTensor(d[k].as_tensor(), meta=dict(d[k].meta))  # drops the applied operations
            out.affine = affine
            d[k] = out
        return d


class RandPoseRotated(FixedGridd):
    """Rotate the volumes of ``keys`` by one random small rotation about the grid centre, keeping the grid.

    :class:`FixedGridd` around MONAI's ``RandRotated``: the object turns while the grid (and so the X-ray
    geometry and the axis-aligned dimension expansion) stays put. The same rotation is applied to every key,
    so the CT, the ground truth and the mask stay aligned. (The training configs use ``FixedGridd`` around
    ``RandAffined``, which also scales.)

    Args:
        keys: volumes to rotate, channel-first ``(C, X, Y, Z)`` MetaTensors.
        range_deg: maximum absolute rotation about x, y and z in degrees (one value or three).
        prob: probability of rotating an item.
        mode: interpolation mode per key (``"bilinear"`` for HU, ``"nearest"`` for masks).
        padding_mode: how to fill voxels rotated in from outside (``"border"`` repeats the crop's edge, which is
            background for a vertebra crop).
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        range_deg: float | Sequence[float] = 5.0,
        prob: float = 0.5,
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str = "border",
        allow_missing_keys: bool = False,
    ) -> None:
        r = np.deg2rad(np.broadcast_to(np.asarray(range_deg, dtype=np.float64), (3,)))
        if np.any(r < 0) or np.any(r > np.pi):
            raise ValueError(f"range_deg must be in [0, 180] degrees, got {range_deg}.")
        self.rotate = RandRotated(
            keys,
            range_x=float(r[0]),
            range_y=float(r[1]),
            range_z=float(r[2]),
            prob=prob,
            keep_size=True,
            mode=mode,
            padding_mode=padding_mode,
            allow_missing_keys=allow_missing_keys,
        )
        super().__init__(keys, self.rotate, allow_missing_keys)
