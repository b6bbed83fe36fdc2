# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Pose augmentation: rotate the object inside a fixed voxel grid (and, for body X-rays, turn the rays with it)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Affine, MapTransform, Randomizable, RandRotated
from scipy.spatial.transform import Rotation

__all__ = ["RandPoseRotated", "FixedGridd", "RandPosed", "RandViewPairScaled"]


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


class RandPosed(Randomizable, MapTransform):
    """Turn the object by one random rotation about the grid centre: the crops in their fixed grid, and the rays.

    The crops of ``keys`` (e.g. ``ct`` and ``gt``) are resampled with the rotation while their grid stays put,
    as :class:`RandPoseRotated` does, and the rotation is written to ``rotation_key``, where
    :class:`scripts.transforms.DRRd` reads it as the object's rotation about the isocentre. So an X-ray of a
    whole scan (``drr_source: "body"``), which is never resampled, shows the same turned anatomy as the
    resampled crops: the pose moves the rays. The rotation is drawn with scipy's ``Rotation`` from uniform angles
    about x, y and z (world RAS axes of the crops' grid).

    Args:
        keys: channel-first ``(C, X, Y, Z)`` MetaTensors on one axis-aligned grid.
        range_deg: maximum absolute rotation about x, y and z in degrees (one value or three).
        prob: probability of turning an item.
        rotation_key: where to write the 3x3 rotation (world frame, object about the grid centre); an existing
            one is composed with it.
        mode: interpolation mode (one, or one per key).
        padding_mode: how to fill voxels turned in from outside the crop.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        range_deg: float | Sequence[float] = 15.0,
        prob: float = 0.8,
        rotation_key: str = "object_rotation",
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str = "border",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.range_deg = np.broadcast_to(np.asarray(range_deg, dtype=np.float64), (3,)).copy()
        if np.any(self.range_deg < 0) or np.any(self.range_deg > 180):
            raise ValueError(f"range_deg must be in [0, 180] degrees, got {range_deg}.")
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}.")
        self.prob = float(prob)
        self.rotation_key = rotation_key
        modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        if len(modes) != len(self.keys):
            raise ValueError(f"need one mode or one per key: keys={self.keys}, mode={mode}.")
        self.modes = dict(zip(self.keys, modes))
        self.padding_mode = padding_mode
        self._rotation = np.eye(3)

    def randomize(self, data: Any = None) -> None:
        turn = self.R.rand() < self.prob
        angles = self.R.uniform(-1.0, 1.0, size=3) * self.range_deg
        self._rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() if turn else np.eye(3)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        rot = self._rotation
        if not np.allclose(rot, np.eye(3)):
            # MONAI's Affine samples the input at ``matrix @ output`` about the grid centre: the object turns by
            # the matrix's inverse, so the matrix is the transpose of the object's rotation
            matrix = np.eye(4)
            matrix[:3, :3] = rot.T
            for key in self.key_iterator(d):
                img = d[key]
                turned = Affine(affine=matrix, mode=self.modes[key], padding_mode=self.padding_mode, image_only=True)(
                    img
                )
                out = MetaTensor(torch.as_tensor(turned.as_tensor(), dtype=img.dtype), meta=dict(img.meta))
                out.affine = img.affine.clone()
                d[key] = out
        prior = d.get(self.rotation_key)
        prior = np.eye(3) if prior is None else np.asarray(torch.as_tensor(prior).cpu(), dtype=np.float64)
        d[self.rotation_key] = torch.as_tensor(rot @ prior, dtype=torch.float64)
        return d


class RandViewPairScaled(Randomizable, MapTransform):
    """Scale the object seen in an AP and a lateral view by random factors along x, y and z, in the views alone.

    An object scaled by ``(sx, sy, sz)`` about the window's centre projects, in parallel rays, to its AP view
    (columns along x, rows along z, rays along y) scaled by ``sx`` and ``sz`` with line integrals ``sy`` times as
    long, and to its lateral view (columns along y, rays along x) scaled by ``sy`` and ``sz`` with line integrals
    ``sx`` times as long. This transform does exactly that to view pairs that are already projected, so a pool of
    simulated windows gives vertebrae (and bodies) of other sizes and proportions without projecting again. Every
    key gets the same draw, so an input and its target (e.g. a body X-ray and its isolated vertebra's X-ray) stay
    a pair. In a cone beam the magnification also varies with depth, by a few per cent across a vertebra
    (:func:`scripts.tools.spine_stage.half_turn`), which this ignores. The images' metadata is kept.

    Args:
        keys: view pairs ``(2, H, W)`` or batches of them ``(B, 2, H, W)`` (one draw for the whole batch): the AP
            view first, then the lateral, rows along the patient's long axis (z), as
            :func:`scripts.networks.stack_views` gives them.
        scale_range: the largest relative change of size, one value or three (x, y, z): each factor is drawn
            uniformly from ``[1 - r, 1 + r]``.
        prob: probability of scaling an item.
        line_integrals: scale the values by the depth factor (the images hold line integrals); ``False`` leaves
            the values as they are (e.g. for masks).
        padding_mode: how to fill the border a smaller object leaves: ``"border"`` repeats the image's edge,
            ``"zeros"`` or ``"reflection"`` (torch's ``grid_sample``).
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        scale_range: float | Sequence[float] = 0.15,
        prob: float = 0.8,
        line_integrals: bool = True,
        padding_mode: str = "border",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.scale_range = np.broadcast_to(np.asarray(scale_range, dtype=np.float64), (3,)).copy()
        if np.any(self.scale_range < 0) or np.any(self.scale_range >= 1):
            raise ValueError(f"scale_range must be one or three values in [0, 1), got {scale_range}.")
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}.")
        self.prob = float(prob)
        self.line_integrals = bool(line_integrals)
        self.padding_mode = padding_mode
        self._factors = np.ones(3)

    def randomize(self, data: Any = None) -> None:
        scale = self.R.rand() < self.prob
        factors = 1.0 + self.R.uniform(-1.0, 1.0, size=3) * self.scale_range
        self._factors = factors if scale else np.ones(3)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if np.allclose(self._factors, 1.0):
            return d
        sx, sy, sz = (float(f) for f in self._factors)
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim not in (3, 4) or img.shape[-3] != 2:
                raise ValueError(
                    f"RandViewPairScaled expects an AP and a lateral view (2, H, W) or (B, 2, H, W) in {key!r}; "
                    f"got {tuple(img.shape)}."
                )
            plain = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
            flat = plain.reshape(-1, 2, *plain.shape[-2:]).transpose(0, 1)  # (2 views, items, H, W)
            # one resampling for both views with torch's grid_sample (MONAI's Affine would take one call per view,
            # about 30 times slower on 64 x 64 views); it reads the input at ``theta @ output`` about the centre
            # (normalised coordinates, x along the columns), so an object ``s`` times as large needs 1 / s
            theta = torch.zeros(2, 2, 3, dtype=torch.float32)
            theta[0, 0, 0], theta[1, 0, 0] = 1.0 / sx, 1.0 / sy
            theta[:, 1, 1] = 1.0 / sz
            grid = F.affine_grid(theta, [2, flat.shape[1], *flat.shape[-2:]], align_corners=False)
            scaled = F.grid_sample(
                flat.float(), grid.to(flat.device), padding_mode=self.padding_mode, align_corners=False
            ).to(plain.dtype)
            if self.line_integrals:
                scaled = scaled * torch.tensor([sy, sx], dtype=scaled.dtype, device=scaled.device).view(2, 1, 1, 1)
            views = scaled.transpose(0, 1)
            out = views.reshape(plain.shape)
            d[key] = MetaTensor(out, meta=dict(img.meta)) if isinstance(img, MetaTensor) else out
        return d
