# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Edge maps of volumes: the boundary voxels of the binarised volume (the edge target ``E(G)`` of the
EAR edge loss) or, as an option, the Sobel gradient magnitude (MONAI's ``SobelGradients``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, SobelGradients, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor
from scripts.functional import boundary_map
from scripts.transforms.projection import _output_keys

__all__ = ["boundary_map", "EdgeMap", "EdgeMapd"]


class EdgeMap(Transform):
    """Edge map of a channel-first volume ``(C, X, Y, Z)``, same shape, float.

    Args:
        threshold: binarisation threshold in the image's units (voxels ``> threshold`` are foreground);
            for HU volumes the bundle uses -500. Required for ``mode="boundary"``; with ``mode="sobel"`` and
            ``threshold=None`` the gradient of the raw intensities is returned.
        mode: ``"boundary"`` (binary inner boundary, :func:`boundary_map`) or ``"sobel"`` (gradient
            magnitude from MONAI's :class:`~monai.transforms.SobelGradients`).
        sobel_kernel_size: kernel size of the Sobel filter.
    """

    backend = ["torch", "numpy"]

    def __init__(self, threshold: float | None = -500.0, mode: str = "boundary", sobel_kernel_size: int = 3) -> None:
        if mode not in ("boundary", "sobel"):
            raise ValueError(f"mode must be 'boundary' or 'sobel', got {mode!r}.")
        if mode == "boundary" and threshold is None:
            raise ValueError("mode='boundary' needs a binarisation threshold.")
        self.threshold = threshold
        self.mode = mode
        self.sobel = SobelGradients(kernel_size=sobel_kernel_size, padding_mode="replicate")

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        t = convert_to_tensor(img, track_meta=False).float()
        if t.dim() != 4:
            raise ValueError(f"EdgeMap expects a channel-first 3-D volume (C, X, Y, Z), got shape {tuple(t.shape)}.")
        if self.threshold is not None:
            t = (t > self.threshold).float()
        if self.mode == "boundary":
            out = boundary_map(t)
        else:
            grads = convert_to_tensor(self.sobel(t), track_meta=False)  # (3 * C, ...) grouped by axis
            out = torch.linalg.vector_norm(grads.reshape((3,) + tuple(t.shape)), dim=0)
        if isinstance(img, torch.Tensor):
            return convert_to_dst_type(out, img)[0]  # a MetaTensor keeps its metadata: same grid
        return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class EdgeMapd(MapTransform):
    """Dictionary version of :class:`EdgeMap`.

    Args:
        keys: keys to transform.
        threshold, mode, sobel_kernel_size: as :class:`EdgeMap`.
        output_keys: where to store the edge maps (default: replace the inputs).
        allow_missing_keys: do not raise for missing keys.
    """

    backend = EdgeMap.backend

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float | None = -500.0,
        mode: str = "boundary",
        sobel_kernel_size: int = 3,
        output_keys: Sequence[Hashable] | Hashable | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.edges = EdgeMap(threshold, mode, sobel_kernel_size)
        self.output_keys = _output_keys(self.keys, output_keys)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self.edges(d[key])
        return d
