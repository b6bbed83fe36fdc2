# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""FFT of channel-first volumes as real and imaginary channels (the functions, and the spectral distance of the
frequency-distance loss and metric, are in :mod:`scripts.functional`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor
from scripts.functional import real_imag_spectrum, spectral_distance
from scripts.transforms.projection import _output_keys

__all__ = ["real_imag_spectrum", "spectral_distance", "FourierRealImag", "FourierRealImagd"]


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
