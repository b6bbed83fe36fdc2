# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""FFT of channel-first volumes as real and imaginary channels, and the spectral distance used by the
frequency-distance loss and metric."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor
from scripts.transforms.projection import _output_keys

__all__ = ["real_imag_spectrum", "spectral_distance", "FourierRealImag", "FourierRealImagd"]


def real_imag_spectrum(
    x: torch.Tensor, spatial_dims: int = 3, norm: str = "ortho", shift: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the FFT of ``x`` over its last ``spatial_dims`` axes.

    Args:
        x: real tensor (any leading axes).
        spatial_dims: number of trailing axes transformed.
        norm: ``torch.fft`` normalisation (``"ortho"``: unitary, Parseval holds).
        shift: move the zero frequency to the centre (``fftshift``).
    """
    dims = tuple(range(x.dim() - spatial_dims, x.dim()))
    spec = torch.fft.fftn(x.float(), dim=dims, norm=norm)
    if shift:
        spec = torch.fft.fftshift(spec, dim=dims)
    return spec.real, spec.imag


def spectral_distance(pred: torch.Tensor, target: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Per-item ``D_real + D_imag``, the Euclidean distances between the real (imaginary) parts of the 3-D
    FFTs of ``pred`` and ``target`` over all channels and voxels of each batch item.

    Args:
        pred: ``(B, C, X, Y, Z)``.
        target: same shape as ``pred``.
        norm: FFT normalisation.

    Returns:
        shape ``(B,)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
    # the FFT is linear: transform the difference once instead of both volumes
    real, imag = real_imag_spectrum(pred - target, spatial_dims=3, norm=norm)
    d_real = torch.linalg.vector_norm(real.flatten(1), dim=1)
    d_imag = torch.linalg.vector_norm(imag.flatten(1), dim=1)
    return d_real + d_imag


class FourierRealImag(Transform):
    """FFT of a channel-first image ``(C, *spatial)`` as ``2C`` channels: ``[real parts..., imaginary parts...]``.

    Args:
        norm: ``torch.fft`` normalisation.
        shift: centre the zero frequency.
    """

    backend = ["torch", "numpy"]

    def __init__(self, norm: str = "ortho", shift: bool = False) -> None:
        self.norm = norm
        self.shift = shift

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        t = convert_to_tensor(img, track_meta=False)
        real, imag = real_imag_spectrum(t, spatial_dims=t.dim() - 1, norm=self.norm, shift=self.shift)
        out = torch.cat([real, imag], dim=0)
        return convert_to_dst_type(out, img if not isinstance(img, torch.Tensor) else t)[0]


class FourierRealImagd(MapTransform):
    """Dictionary version of :class:`FourierRealImag`.

    Args:
        keys: keys to transform.
        norm: ``torch.fft`` normalisation.
        shift: centre the zero frequency.
        output_keys: where to store the spectra (default: replace the inputs).
        allow_missing_keys: do not raise for missing keys.
    """

    backend = FourierRealImag.backend

    def __init__(
        self,
        keys: KeysCollection,
        norm: str = "ortho",
        shift: bool = False,
        output_keys: Sequence[Hashable] | Hashable | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fft = FourierRealImag(norm, shift)
        self.output_keys = _output_keys(self.keys, output_keys)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self.fft(d[key])
        return d
