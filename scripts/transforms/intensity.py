# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""z-score -> HU conversion with fixed (stored) dataset statistics: ``HU = z * std + mean``.

The network's target and output are CT volumes z-scored with the training set's mean and standard
deviation. The forward step is MONAI's ``NormalizeIntensityd(subtrahend=mean, divisor=std)`` (as in
``configs/train.json``); MONAI has no inverse of it, so the conversion of the output back to HU is here, with
the numbers given directly or read from a JSON file (:class:`scripts.transforms.model.ModelZScoreToHUd` reads
them from the model).
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping
from pathlib import Path

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from scripts.functional import hu_to_zscore, zscore_to_hu

__all__ = ["load_intensity_stats", "hu_to_zscore", "zscore_to_hu", "ZScoreToHU", "ZScoreToHUd"]


def load_intensity_stats(path: str | Path, mean_key: str = "mean", std_key: str = "std") -> tuple[float, float]:
    """Read ``(mean, std)`` from a JSON file such as ``{"mean": -850.2, "std": 310.7}``.

    Args:
        path: JSON file with the statistics.
        mean_key: key of the mean (dots walk into nested objects, e.g. ``"hu.mean"``).
        std_key: key of the standard deviation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"intensity statistics file {path} does not exist; pass mean and std directly.")
    data = json.loads(path.read_text())

    def get(key: str) -> float:
        node = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"{path} has no key {key!r} (keys: {list(data) if isinstance(data, dict) else data}).")
            node = node[part]
        return float(node)

    return get(mean_key), get(std_key)


def _stats(mean: float | None, std: float | None, stats_file: str | Path | None, mean_key: str, std_key: str):
    if stats_file is not None:
        if mean is not None or std is not None:
            raise ValueError("give either mean and std or stats_file, not both.")
        mean, std = load_intensity_stats(stats_file, mean_key, std_key)
    if mean is None or std is None:
        raise ValueError("z-score conversion needs mean and std (or a stats_file holding them).")
    mean, std = float(mean), float(std)
    if not (math.isfinite(std) and std > 0) or not math.isfinite(mean):
        raise ValueError(f"z-score statistics must be finite with std > 0, got mean={mean}, std={std}.")
    return mean, std


class ZScoreToHU(Transform):
    """z-score -> HU with fixed statistics (the inverse of MONAI's ``NormalizeIntensity`` with them).

    Args:
        mean: HU mean (or give ``stats_file``).
        std: HU standard deviation.
        stats_file: JSON file read with :func:`load_intensity_stats`.
        mean_key: key of the mean in ``stats_file``.
        std_key: key of the standard deviation in ``stats_file``.
    """

    backend = ["torch", "numpy"]

    def __init__(
        self,
        mean: float | None = None,
        std: float | None = None,
        stats_file: str | Path | None = None,
        mean_key: str = "mean",
        std_key: str = "std",
    ) -> None:
        self.mean, self.std = _stats(mean, std, stats_file, mean_key, std_key)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return zscore_to_hu(img, self.mean, self.std)


class ZScoreToHUd(MapTransform):
    """Dictionary version of :class:`ZScoreToHU`.

    Args:
        keys: keys to convert.
        mean, std, stats_file, mean_key, std_key: as :class:`ZScoreToHU`.
        allow_missing_keys: do not raise for missing keys.
    """

    backend = ZScoreToHU.backend

    def __init__(
        self,
        keys: KeysCollection,
        mean: float | None = None,
        std: float | None = None,
        stats_file: str | Path | None = None,
        mean_key: str = "mean",
        std_key: str = "std",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ZScoreToHU(mean, std, stats_file, mean_key, std_key)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
