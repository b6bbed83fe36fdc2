# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""What real radiographs add to simulated X-rays, as seeded MONAI transforms.

- :class:`RandWindowShiftd` (before the X-rays are simulated): the window a person cuts is not centred exactly on
  the vertebra. The crops (``ct``, ``gt``) are resampled onto a grid moved by a random offset in world mm, so
  the window (whose centre is the grid's centre, see :class:`scripts.transforms.DRRd`) moves with the grid and
  the vertebra lies off the grid's centre, placed right in world coordinates.
- :class:`RandViewRotated`: each view turned in its own plane by a small random angle (detector or cassette
  not square to the patient's long axis).
- :class:`RandScatterd`: scattered radiation, a smooth additive fraction of the primary intensity.
- Detector blur and the display processing of clinical systems (contrast curve, gamma, unsharp masking) are
  MONAI's ``RandGaussianSmoothd``, ``RandHistogramShiftd``, ``RandAdjustContrastd`` and
  ``RandGaussianSharpend``, wired in the configs (``realism_transforms`` of ``configs/train.json``).
- :class:`RandClutterTransplantd`: the target vertebra's own X-ray set into the body around another vertebra
  (a clutter bank of other windows, ``python -m scripts.tools.clutter_bank``), so the context says nothing about
  the target and a network can only lower its loss by reading the target itself.
- :class:`SeededRandomd` runs random transforms with a random state drawn from each item's name, so a
  validation or test set holds the same perturbations at every evaluation (and ``CacheDataset`` caches them).

The X-ray transforms work on the images ``(V, H, W)`` of :class:`scripts.transforms.DRRd`: line integrals
``-log(I / I0)``, bone bright. They keep the image's metadata (the geometry that dimension expansion reads): the
perturbations are what the model is not told about.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.networks.layers import GaussianFilter
from monai.transforms import Compose, MapTransform, Randomizable, Rotate, SpatialResample, Transform
from scripts.errors import BundleInputError
from scripts.functional import item_seed

__all__ = [
    "RandWindowShiftd",
    "RandViewRotated",
    "RandScatterd",
    "RandClutterBlendd",
    "RandClutterTransplantd",
    "load_clutter_bank",
    "SeededRandomd",
    "with_meta",
]


def with_meta(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``out`` with the metadata (and affine) of ``like`` when ``like`` is a ``MetaTensor``."""
    if not isinstance(like, MetaTensor):
        return out
    result = MetaTensor(torch.as_tensor(out.as_tensor() if isinstance(out, MetaTensor) else out), meta=dict(like.meta))
    result.affine = like.affine.clone()
    return result


def _check_prob(prob: float) -> float:
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}.")
    return float(prob)


def _check_range(name: str, value: float | Sequence[float], low: float = 0.0) -> tuple[float, float]:
    """A (min, max) pair from one number (``(low, value)``) or a pair; both at least ``low``."""
    pair = (low, float(value)) if np.ndim(value) == 0 else tuple(float(v) for v in value)
    if len(pair) != 2 or not low <= pair[0] <= pair[1]:
        raise ValueError(
            f"{name} must be a number >= {low} or a pair (min, max) with {low} <= min <= max, got {value}."
        )
    return pair  # type: ignore[return-value]


class RandWindowShiftd(Randomizable, MapTransform):
    """Move the window (the crops' grid) off the vertebra's centre by a random offset in world mm.

    Every key is resampled (MONAI ``SpatialResample``) onto the grid shifted by ``offset``: same size, spacing and
    orientation, origin moved by ``offset``. The anatomy stays where it is in world coordinates, so the ground
    truth is the isolated vertebra on the shifted grid, and the X-ray window, centred on the grid's centre,
    is centred ``offset`` away from the vertebra: a shift along x or z moves the vertebra in the AP image, one
    along y or z in the lateral image. The offset is written to ``offset_key`` (float64, 3 values).

    Run it before :class:`scripts.transforms.RandPosed`, which turns the object about the (shifted) grid centre,
    the point the rays turn about.

    Args:
        keys: channel-first ``(C, X, Y, Z)`` MetaTensors on one grid (e.g. ``["ct", "gt"]``).
        max_shift_mm: training draws: each world axis's offset is uniform in ``[-max, max]`` mm (one value or three).
        shift_norm_mm: evaluation draws: the offset has exactly this length (mm), in a uniformly random direction;
            overrides ``max_shift_mm``.
        prob: probability of shifting an item.
        offset_key: where to write the offset (mm).
        mode: interpolation (one, or one per key): ``"bilinear"`` for HU, ``"nearest"`` for masks.
        padding_mode: how to fill what the shifted grid holds beyond the crop (``"border"`` repeats the crop's
            edge, air for a vertebra crop).
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_shift_mm: float | Sequence[float] = 10.0,
        shift_norm_mm: float | None = None,
        prob: float = 1.0,
        offset_key: str = "window_offset_mm",
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str = "border",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.max_shift = np.broadcast_to(np.asarray(max_shift_mm, dtype=np.float64), (3,)).copy()
        if np.any(self.max_shift < 0) or (shift_norm_mm is not None and float(shift_norm_mm) < 0):
            raise BundleInputError(
                f"window shifts are lengths in mm >= 0 (--window_shift_mm, --window_error_mm); got max_shift_mm="
                f"{max_shift_mm}, shift_norm_mm={shift_norm_mm}."
            )
        self.shift_norm = None if shift_norm_mm is None else float(shift_norm_mm)
        self.prob = _check_prob(prob)
        self.offset_key = offset_key
        modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        if len(modes) != len(self.keys):
            raise ValueError(f"need one mode or one per key: keys={self.keys}, mode={mode}.")
        self.modes = dict(zip(self.keys, modes))
        self.padding_mode = padding_mode
        self._offset = np.zeros(3)

    def randomize(self, data: Any = None) -> None:
        move = self.R.rand() < self.prob
        if self.shift_norm is not None:
            direction = self.R.normal(size=3)
            offset = direction / max(float(np.linalg.norm(direction)), 1e-12) * self.shift_norm
        else:
            offset = self.R.uniform(-1.0, 1.0, size=3) * self.max_shift
        self._offset = offset if move else np.zeros(3)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        offset = self._offset
        if np.any(offset != 0):
            for key in self.key_iterator(d):
                img = d[key]
                if not isinstance(img, MetaTensor) or img.ndim != 4:
                    raise ValueError(f"RandWindowShiftd needs {key!r} as a channel-first (C, X, Y, Z) MetaTensor.")
                dst = img.affine.clone().to(torch.float64)
                dst[:3, 3] += torch.as_tensor(offset, dtype=torch.float64)
                moved = SpatialResample(mode=self.modes[key], padding_mode=self.padding_mode)(
                    img, dst_affine=dst, spatial_size=img.shape[1:]
                )
                out = MetaTensor(torch.as_tensor(moved.as_tensor(), dtype=img.dtype), meta=dict(img.meta))
                out.affine = dst.to(img.affine.dtype)
                d[key] = out
        d[self.offset_key] = torch.as_tensor(offset, dtype=torch.float64)
        return d


class RandViewRotated(Randomizable, MapTransform):
    """Turn each view ``(V, H, W)`` in its own plane about the image centre by its own small random angle.

    Uses MONAI's ``Rotate`` per view (``RandRotated`` would turn every view of an item by one angle). The
    image's metadata, and so the geometry given to the model, is kept: the turn is what the model is not told.

    Args:
        keys: X-ray images ``(V, H, W)``.
        range_deg: maximum absolute angle in degrees.
        prob: probability of turning an item's views.
        padding_mode: how to fill the corners turned in from outside (``"border"`` repeats the image's edge).
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        range_deg: float = 2.0,
        prob: float = 0.5,
        padding_mode: str = "border",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0.0 <= float(range_deg) <= 45.0:
            raise ValueError(f"range_deg must be in [0, 45] degrees, got {range_deg}.")
        self.range_deg = float(range_deg)
        self.prob = _check_prob(prob)
        self.padding_mode = padding_mode
        self._angles: np.ndarray | None = None

    def randomize(self, data: Any = None, views: int = 2) -> None:
        turn = self.R.rand() < self.prob
        angles = self.R.uniform(-1.0, 1.0, size=views) * self.range_deg
        self._angles = angles if turn else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        views = next((int(d[k].shape[0]) for k in self.key_iterator(d)), 2)
        self.randomize(views=views)
        if self._angles is None:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim != 3 or img.shape[0] != len(self._angles):
                raise ValueError(
                    f"RandViewRotated expects {len(self._angles)} views (V, H, W); got {tuple(img.shape)}."
                )
            plain = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
            turned = [
                torch.as_tensor(
                    Rotate(np.deg2rad(a), keep_size=True, padding_mode=self.padding_mode)(plain[i : i + 1]),
                    dtype=plain.dtype,
                )
                for i, a in enumerate(self._angles)
            ]
            d[key] = with_meta(torch.cat(turned), img)
        return d


class RandScatterd(Randomizable, MapTransform):
    """Add scattered radiation to line-integral X-rays: ``I' = I + f * G_sigma(I)``, ``I = exp(-p)``.

    Scatter reaches the detector as a smooth haze of roughly the primary beam's spread-out intensity: its share
    of the primary (scatter-to-primary ratio) runs from about 0.1-0.5 behind an antiscatter grid to 1-5 without
    one, and its spread is a few centimetres. The image ``p`` (``-log(I / I0)``) becomes ``-log(I')``: contrast
    drops most where the primary is weak (through bone and thick tissue). The kernel sees only the window, not
    the whole detector (it is renormalised at the window's edges), an approximation for a scatter field whose
    spread is comparable to the window.

    Args:
        keys: X-ray images ``(V, H, W)``, line integrals.
        fraction: scatter-to-primary fraction, one maximum (drawn from ``[0, max]``) or ``(min, max)``.
        sigma_mm: the haze's Gaussian spread in mm on the detector, one maximum or ``(min, max)``.
        pixel_spacing_mm: detector pixel size in mm (default: the image's ``pixel_spacing`` metadata, else 1).
        prob: probability of adding scatter to an item.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        fraction: float | Sequence[float] = (0.0, 0.5),
        sigma_mm: float | Sequence[float] = (20.0, 60.0),
        pixel_spacing_mm: float | None = None,
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.fraction = _check_range("fraction", fraction)
        self.sigma = _check_range("sigma_mm", sigma_mm)
        if self.sigma[0] <= 0:
            raise ValueError(f"sigma_mm must be > 0, got {sigma_mm}.")
        self.pixel_spacing = None if pixel_spacing_mm is None else float(pixel_spacing_mm)
        self.prob = _check_prob(prob)
        self._draw: tuple[float, float] | None = None

    def randomize(self, data: Any = None) -> None:
        add = self.R.rand() < self.prob
        draw = (float(self.R.uniform(*self.fraction)), float(self.R.uniform(*self.sigma)))
        self._draw = draw if add else None

    def _spacing(self, img: torch.Tensor) -> float:
        if self.pixel_spacing is not None:
            return self.pixel_spacing
        spacing = img.meta.get("pixel_spacing") if isinstance(img, MetaTensor) else None
        return 1.0 if spacing is None else float(np.mean(np.asarray(spacing, dtype=np.float64)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if self._draw is None:
            return d
        fraction, sigma_mm = self._draw
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim != 3:
                raise ValueError(f"RandScatterd expects X-rays (V, H, W); got {tuple(img.shape)}.")
            plain = (img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)).float()
            primary = torch.exp(-plain)
            sigma_px = sigma_mm / self._spacing(img)
            # normalised convolution (MONAI's Gaussian filter pads with zeros; dividing by the filtered ones
            # renormalises the kernel at the window's edges, as if the field went on like its nearby average)
            blur = GaussianFilter(2, sigma_px)
            haze = blur(primary[:, None])[:, 0] / blur(torch.ones_like(primary[:1, None]))[:, 0]
            out = -torch.log((primary + fraction * haze).clamp_min(1e-12))
            d[key] = with_meta(out.to(plain.dtype), img)
        return d


class RandClutterBlendd(Randomizable, MapTransform):
    """Blend the X-rays of the isolated vertebra with those of the whole body: ``p = p_v + a (p_b - p_v)``.

    Line integrals add along a ray, so ``p_b - p_v`` is what the rest of the body adds to the vertebra's own
    X-ray (exactly for monochromatic physics, nearly for polychromatic). A random ``a`` in ``alpha_range`` shows
    the network the target's signal with every strength of clutter, from none (the paper's isolated input) to
    the full body (``a = 1``), so it keeps learning to read the target from the images instead of settling on
    an average vertebra when the clutter hides it. With probability ``1 - prob`` the full body is used.

    Args:
        keys: the isolated vertebra's X-rays and the whole body's, ``(V, H, W)`` each, projected with the same
            draws (one :class:`scripts.transforms.DRRd` with ``keys: ["gt", "body"]``).
        output_key: where to write the blend (the metadata, geometry included, of the body's X-rays).
        alpha_range: the clutter strength's range, drawn uniformly.
        prob: probability of drawing ``a`` (else ``a = 1``).
        delete_inputs: remove the two inputs from the item afterwards.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_key: str = "drr",
        alpha_range: Sequence[float] = (0.0, 1.0),
        prob: float = 0.5,
        delete_inputs: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 2:
            raise ValueError(f"RandClutterBlendd takes two keys (isolated, body), got {self.keys}.")
        self.output_key = output_key
        self.alpha_range = _check_range("alpha_range", alpha_range)
        self.prob = _check_prob(prob)
        self.delete_inputs = delete_inputs
        self._alpha = 1.0

    def randomize(self, data: Any = None) -> None:
        draw = self.R.rand() < self.prob
        alpha = float(self.R.uniform(*self.alpha_range))
        self._alpha = alpha if draw else 1.0

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        isolated, body = (d[k] for k in self.keys)
        if isolated.shape != body.shape:
            raise ValueError(f"the two X-rays differ in shape: {tuple(isolated.shape)} and {tuple(body.shape)}.")
        p_v = isolated.as_tensor() if isinstance(isolated, MetaTensor) else torch.as_tensor(isolated)
        p_b = body.as_tensor() if isinstance(body, MetaTensor) else torch.as_tensor(body)
        d[self.output_key] = with_meta(p_v + self._alpha * (p_b - p_v), body)
        if f"{self.keys[1]}_geometry" in d:
            d[f"{self.output_key}_geometry"] = d[f"{self.keys[1]}_geometry"]
        if self.delete_inputs:
            for k in self.keys:
                d.pop(k, None)
                d.pop(f"{k}_geometry", None)
        return d


def load_clutter_bank(path: str | Any) -> dict[str, Any]:
    """Read a clutter bank written by ``python -m scripts.tools.clutter_bank`` (``torch.save`` of a dict).

    Returns:
        the dict: ``clutter`` ``(N, V, H, W)`` line integrals of the body around N windows with their own vertebra
        replaced by water, ``ids`` (the window's vertebra per entry), ``views``, ``roi_size``, ``spacing``,
        ``spectrum``, ``physics``.

    Raises:
        BundleInputError: a missing file or one without a ``clutter`` tensor, saying how to make one.
    """
    from pathlib import Path

    file = Path(path)
    fix = "make one with python -m scripts.tools.clutter_bank --dataset_dir <prepared dataset>"
    if not file.is_file():
        raise BundleInputError(f"clutter bank {file} does not exist; {fix}.")
    bank = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(bank, dict) or not isinstance(bank.get("clutter"), torch.Tensor) or bank["clutter"].ndim != 4:
        raise BundleInputError(f"{file} is not a clutter bank (no (N, V, H, W) 'clutter' tensor); {fix}.")
    return bank


class RandClutterTransplantd(Randomizable, MapTransform):
    """Set the target vertebra's X-rays into the body around another vertebra: ``p = c_j + p_v - p_w``.

    A body X-ray of window ``i`` is, along every ray, the body with its vertebra replaced by water, ``c_i``, plus
    what the vertebra adds over water, ``p_v - p_w`` (``p_v``: the isolated vertebra, in air; ``p_w``: the same
    volume as water, ``min(HU, 0)``). Line integrals add exactly for monochromatic physics and nearly for
    polychromatic. Drawing ``c_j`` from a bank of other windows (other levels, patients, poses and window
    offsets) gives body-like X-rays whose surroundings are unrelated to the target: a network trained on them can
    lower its loss only by reading the target, not by recognising its surroundings and returning their average
    vertebra. Since ``c_j`` has no hole where its own vertebra was (water fills it), the seams are those of
    neighbouring vertebrae of other sizes, not of empty space.

    The two inputs are noise-free; quantum noise of ``photon_count`` photons per unattenuated pixel is drawn after
    the composition (Poisson in counts, ``p = -log(N / N0)``), since noise depends on the whole body's
    attenuation. With probability ``1 - prob`` the isolated vertebra is kept (the paper's input, with noise).

    Args:
        keys: the isolated vertebra's X-rays and the same volume's as water, ``(V, H, W)`` each, projected with
            the same draws and no noise (one :class:`scripts.transforms.DRRd` with ``photon_count: null``).
        bank: a clutter bank (its path, or the dict of :func:`load_clutter_bank`).
        output_key: where to write the result (with the metadata, geometry included, of the first key's X-rays).
        prob: probability of drawing a surrounding from the bank.
        photon_count: photons per pixel of the unattenuated beam for the noise; ``None``: no noise.
        exclude_key: item entry naming the item (its ``id``); bank entries of the same vertebra are not drawn.
        delete_inputs: remove the two inputs (and their geometry entries) afterwards.
    """

    def __init__(
        self,
        keys: KeysCollection,
        bank: Any,
        output_key: str = "drr",
        prob: float = 1.0,
        photon_count: float | None = 1e6,
        exclude_key: str | None = "id",
        delete_inputs: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 2:
            raise ValueError(f"RandClutterTransplantd takes two keys (isolated, water), got {self.keys}.")
        bank = bank if isinstance(bank, dict) else load_clutter_bank(bank)
        self.clutter = bank["clutter"].float()
        self.ids = [str(i) for i in bank.get("ids", [""] * len(self.clutter))]
        if len(self.ids) != len(self.clutter) or len(self.clutter) < 2:
            n = len(self.clutter)
            raise BundleInputError(f"the clutter bank needs at least 2 entries with one id each, got {n}.")
        if photon_count is not None and not (np.isfinite(photon_count) and photon_count > 0):
            raise ValueError(f"photon_count must be positive (or None for no noise), got {photon_count}.")
        self.output_key = output_key
        self.prob = _check_prob(prob)
        self.photon_count = None if photon_count is None else float(photon_count)
        self.exclude_key = exclude_key
        self.delete_inputs = delete_inputs
        self._entry: int | None = None
        self._noise_seed = 0

    def randomize(self, data: Any = None) -> None:
        draw = self.R.rand() < self.prob
        entry = int(self.R.randint(len(self.clutter)))
        if draw and self.exclude_key is not None and isinstance(data, Mapping) and self.exclude_key in data:
            own = str(data[self.exclude_key])
            others = [j for j, name in enumerate(self.ids) if name != own]
            entry = others[int(self.R.randint(len(others)))] if others else entry
        self._entry = entry if draw else None
        self._noise_seed = int(self.R.randint(2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(d)
        isolated, water = (d[k] for k in self.keys)
        p_v = (isolated.as_tensor() if isinstance(isolated, MetaTensor) else torch.as_tensor(isolated)).float()
        p_w = (water.as_tensor() if isinstance(water, MetaTensor) else torch.as_tensor(water)).float()
        if p_v.shape != p_w.shape:
            raise ValueError(f"the two X-rays differ in shape: {tuple(p_v.shape)} and {tuple(p_w.shape)}.")
        if self._entry is None:
            p = p_v
        else:
            c = self.clutter[self._entry]
            if c.shape != p_v.shape:
                raise BundleInputError(
                    f"the clutter bank's windows are {tuple(c.shape)} (views, rows, columns), the item's X-rays "
                    f"{tuple(p_v.shape)}; fix: make the bank with the training's views, roi_size and spacing."
                )
            p = c + p_v - p_w
        if self.photon_count is not None:
            gen = torch.Generator().manual_seed(self._noise_seed)
            counts = torch.poisson(self.photon_count * torch.exp(-p.clamp_min(0.0)), generator=gen)
            p = -torch.log(counts.clamp_min(1.0) / self.photon_count)
        d[self.output_key] = with_meta(p.to(p_v.dtype), isolated)
        if f"{self.keys[0]}_geometry" in d:
            d[f"{self.output_key}_geometry"] = d[f"{self.keys[0]}_geometry"]
        if self.delete_inputs:
            for k in self.keys:
                if k != self.output_key:
                    d.pop(k, None)
                    d.pop(f"{k}_geometry", None)
        return d


class SeededRandomd(Transform):
    """Run a random transform with a random state drawn from each item's name: the same draw for an item every time.

    A validation or test set with perturbations (window shifts, scatter, display processing, ...) must hold the
    same perturbations at every evaluation, or two validations of one model disagree. This wrapper seeds the
    transform (``set_random_state``, which a MONAI ``Compose`` passes on to every random transform inside it)
    from :func:`scripts.functional.item_seed` of the item's ``seed_key`` entry before each call. It is not
    ``Randomizable``, so MONAI's ``CacheDataset`` caches its output.

    Args:
        transform: a MONAI (dictionary) transform, a ``Compose`` or a list of transforms (composed); random ones
            are seeded.
        seed_key: item entry that names the item (its ``id``).
        seed: base seed (different seeds give different, equally fixed, perturbations).
    """

    def __init__(self, transform: Any, seed_key: str = "id", seed: int = 0) -> None:
        self.transform = Compose(list(transform)) if isinstance(transform, (list, tuple)) else transform
        self.seed_key = seed_key
        self.seed = int(seed)

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        if self.seed_key not in data:
            raise KeyError(f"SeededRandomd: the item has no {self.seed_key!r} entry to seed its draws with.")
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed=item_seed(data[self.seed_key], self.seed))
        return self.transform(data)
