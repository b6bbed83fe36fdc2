# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""DRR simulation as MONAI transforms: a CT crop (1, X, Y, Z) with affine -> two (or more) DRRs (V, H, W).

The output is a ``MetaTensor`` whose meta dict holds everything back-projection needs:

- ``meta["drr_geometry"]``: ``sdd``, ``sod``, ``detector_shape`` (H, W), ``pixel_spacing`` (row, col mm on
  the detector), ``angles`` ((V, 2) alpha, beta degrees as used, jitter included), ``nominal_angles``
  (before jitter), ``isocentre`` (world mm, the crop centre), ``object_rotation`` (3x3 rotation of the
  object about the isocentre used for augmentation; identity otherwise), ``volume_affine`` and
  ``volume_shape`` (the CT grid), and the physics settings;
- ``meta["angles"]`` ((V, 2) float64) and ``meta["pixel_spacing"]`` ((V, 2) mm), the keys the X-ray
  loader (``scripts/io/xray.py``) writes for real radiographs.

``DRRd`` also writes ``data["<output_key>_geometry"]``: the same geometry as tensors (collatable).
Image orientation: see ``scripts/drr/geometry.py`` (row 0 superior; AP seen from the front with the
patient's right on the image's left; lateral with anterior on the image's left).

Augmentation (seeded by MONAI's ``Randomizable``): ``angle_jitter`` (alpha, beta) degrees moves every view
by a uniform random offset; ``rotation_range`` degrees rotates the object about the isocentre by a random
rotation (uniform angles about x, y, z) before projection. The rotation is applied to the X-ray system
(exact, no resampling); it simulates patient positioning error, so the label is NOT rotated: rotate the
CT and the labels together with MONAI's ``RandRotated`` before ``DRRd`` when the label must follow.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Transform
from scipy.spatial.transform import Rotation
from scripts.drr.body import load_body_scan, ray_slab
from scripts.drr.geometry import ConeBeamGeometry, as_angles, crop_centre
from scripts.drr.projector import DRRProjector, default_geometry
from scripts.functional import check_view_separation, item_seed

__all__ = ["DRR", "DRRd", "SeededDRRd", "SpineDRRd", "item_seed", "random_rotation", "geometry_to_tensors"]


def random_rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix ``Rz(c) @ Ry(b) @ Rx(a)`` from angles (a, b, c) in degrees about the fixed x, y, z axes
    (scipy's extrinsic ``"xyz"`` Euler angles)."""
    return Rotation.from_euler("xyz", np.asarray(angles_deg, dtype=np.float64), degrees=True).as_matrix()


def geometry_to_tensors(meta: Mapping) -> dict[str, torch.Tensor]:
    """The numeric entries of a ``drr_geometry`` meta dict as float32 tensors (collatable by DataLoader)."""
    keys = ("sdd", "sod", "detector_shape", "pixel_spacing", "angles", "isocentre", "object_rotation")
    return {k: torch.as_tensor(np.asarray(meta[k], dtype=np.float64), dtype=torch.float32) for k in keys}


class DRR(Randomizable, Transform):
    """Simulate X-ray images (DRRs) of a CT volume at given view angles.

    Args:
        angles: views as (alpha, beta) pairs in degrees or plain alphas; default AP and lateral ``(0, 90)``.
            Two views whose beams are less than 10 degrees apart (or nearly opposite) are refused
            (``XRayInputError``, :func:`scripts.functional.check_view_separation`).
        geometry: ``ConeBeamGeometry`` (or its dict); None = ``ConeBeamGeometry.for_crop`` of the input
            (detector of the crop's size, sdd 1020 mm, sod 700 mm, isocentre at the crop centre).
        physics: "poly" (polychromatic, noise) or "mono" (line integral of mu, no noise).
        spectrum: "60kV" (3.5 mm Al, default), "90kV" (4.0 mm Al) or "120kV" (4.3 mm Al); a list of them
            draws one per item (augmentation: other tube voltages).
        photon_count: photons per pixel of the unattenuated beam; None = no noise; a pair ``(low, high)``
            draws one per item, log-uniformly (augmentation: other doses).
        energy_kev: energy of the monochromatic mode (default the spectrum's mean energy).
        samples_per_voxel: ray sampling density.
        angle_jitter: maximum random offset (alpha, beta) in degrees added to every view (0 = none).
        rotation_range: maximum random rotation of the object about x, y, z in degrees (0 = none).
        backend: "torch" or "deepdrr" (CUDA only).
        device: where to compute (default: the input's device).
        declared_angles: the view angles written to the images' geometry, i.e. what a model is told, when they
            differ from the ones projected (``angles``): simulates a geometry error (e.g. a lateral view taken at
            100 degrees that the model is told is at 90). Default: the angles projected.
    """

    def __init__(
        self,
        angles: Sequence = (0.0, 90.0),
        geometry: ConeBeamGeometry | dict | None = None,
        physics: str = "poly",
        spectrum: str | Sequence[str] = "60kV",
        photon_count: float | Sequence[float] | None = 1e6,
        energy_kev: float | None = None,
        samples_per_voxel: int = 1,
        angle_jitter: float | Sequence[float] = 0.0,
        rotation_range: float | Sequence[float] = 0.0,
        backend: str = "torch",
        device: str | torch.device | None = None,
        declared_angles: Sequence | None = None,
    ) -> None:
        self.angles = as_angles(angles)
        self.declared_angles = None if declared_angles is None else as_angles(declared_angles)
        if self.declared_angles is not None and self.declared_angles.shape != self.angles.shape:
            raise ValueError(f"declared_angles needs one angle pair per view, got {declared_angles} for {angles}.")
        check_view_separation(self.angles.numpy())  # two views along one line hold no depth
        self.spectra = [spectrum] if isinstance(spectrum, str) else [str(s) for s in spectrum]
        if photon_count is None or np.ndim(photon_count) == 0:
            self.photon_range = None if photon_count is None else (float(photon_count), float(photon_count))
        else:
            low, high = (float(v) for v in photon_count)
            if not 0 < low <= high:
                raise ValueError(f"photon_count range must be 0 < low <= high, got {photon_count}.")
            self.photon_range = (low, high)
        if not self.spectra:
            raise ValueError("spectrum needs at least one name.")
        photons = None if self.photon_range is None else self.photon_range[0]
        self.projector = DRRProjector(
            geometry, physics, self.spectra[0], photons, energy_kev, samples_per_voxel, backend=backend
        )
        for name in self.spectra[1:]:  # validates every name now, not at the first draw
            DRRProjector(None, physics, name, photons, energy_kev, samples_per_voxel)
        self.angle_jitter = np.broadcast_to(np.asarray(angle_jitter, dtype=np.float64), (2,)).copy()
        self.rotation_range = np.broadcast_to(np.asarray(rotation_range, dtype=np.float64), (3,)).copy()
        if np.any(self.angle_jitter < 0) or np.any(self.rotation_range < 0) or np.any(self.rotation_range > 180):
            raise ValueError(
                f"angle_jitter and rotation_range are non-negative degrees; got {angle_jitter}, {rotation_range}."
            )
        self.device = device
        self._offsets = np.zeros((len(self.angles), 2))
        self._rotation = np.eye(3)
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._offsets = self.R.uniform(-1, 1, size=(len(self.angles), 2)) * self.angle_jitter
        self._rotation = random_rotation(self.R.uniform(-1, 1, size=3) * self.rotation_range)
        self._seed = int(self.R.randint(0, 2**31 - 1))
        if len(self.spectra) > 1:
            self.projector.spectrum = self.spectra[int(self.R.randint(len(self.spectra)))]
        if self.photon_range is not None and self.photon_range[1] > self.photon_range[0]:
            low, high = np.log(self.photon_range)
            self.projector.photon_count = float(np.exp(self.R.uniform(low, high)))

    def __call__(
        self,
        img: torch.Tensor | str | os.PathLike,
        affine: Any = None,
        randomize: bool = True,
        reference: Any = None,
        object_rotation: Any = None,
    ) -> MetaTensor:
        """Project ``img`` (1, X, Y, Z) in HU; ``affine`` overrides / supplies the voxel-to-world matrix.

        Args:
            img: the HU volume, or the path of a patient's whole scan (``<patient>_body.nii.gz`` of
                ``python -m scripts.prepare``, read once and cached by :func:`scripts.drr.body.load_body_scan`).
            affine: the volume's voxel-to-world matrix (default: ``img.affine``).
            randomize: draw new random parameters first.
            reference: the grid of the window (a ``MetaTensor`` crop, e.g. the item's ``gt``): the detector
                window, its pixel size and the isocentre (the crop's centre) come from it, and only the part of
                ``img`` that the window's rays cross is projected. Default: ``img`` itself.
            object_rotation: a 3x3 rotation of the object about the isocentre applied before this transform's own
                (e.g. the pose drawn by :class:`scripts.transforms.RandPosed` for the crops).
        """
        if randomize:
            self.randomize()
        if isinstance(img, (str, os.PathLike)):
            img, affine, _ = load_body_scan(img)
        if affine is None:
            if not isinstance(img, MetaTensor):
                raise ValueError(
                    "DRR needs the volume's affine: pass a MetaTensor (e.g. from LoadImaged) or affine=4x4 matrix."
                )
            affine = img.affine
        if img.ndim != 4 or img.shape[0] != 1:
            raise ValueError(f"DRR expects a channel-first volume (1, X, Y, Z); got shape {tuple(img.shape)}.")
        aff = torch.as_tensor(np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64))
        hu = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)
        if self.device is not None:
            hu = hu.to(self.device)
        angles = self.angles + torch.as_tensor(self._offsets)
        if (angles.abs() > 360).any():
            angles = torch.remainder(angles + 180.0, 360.0) - 180.0
        total = self._rotation
        if object_rotation is not None:
            total = self._rotation @ np.asarray(torch.as_tensor(object_rotation).cpu(), dtype=np.float64)
        rot = None if np.allclose(total, np.eye(3)) else total
        if reference is None:
            grid_shape, grid_affine = tuple(hu.shape[1:]), aff
        else:
            if not isinstance(reference, MetaTensor) or reference.ndim != 4:
                raise ValueError("DRR reference must be a channel-first (1, X, Y, Z) MetaTensor with its affine.")
            grid_shape = tuple(reference.shape[1:])
            grid_affine = torch.as_tensor(np.asarray(torch.as_tensor(reference.affine).cpu(), dtype=np.float64))
        geometry = self.projector.geometry or default_geometry(grid_shape, grid_affine)
        iso = crop_centre(grid_affine, grid_shape)
        if reference is not None:  # only the part of the scan that the window's rays cross
            box = ray_slab(hu.shape[1:], aff, geometry, angles, iso.tolist(), rot)
            if any(b.stop <= b.start for b in box):
                raise ValueError("none of the window's rays cross the scan: the reference grid lies outside it.")
            hu = hu[(slice(None), *box)]
            aff = aff.clone()
            aff[:3, 3] += aff[:3, :3] @ torch.tensor([float(b.start) for b in box], dtype=torch.float64)
        gen = torch.Generator(device=hu.device).manual_seed(self._seed)
        out = self.projector(
            hu[None].float(), aff, angles, isocentre=iso, object_rotation=rot, generator=gen, geometry=geometry
        )[0]
        if self.declared_angles is not None:  # a geometry error: the images say other angles than projected
            angles = self.declared_angles.clone()
        meta = {
            **geometry.to_dict(),
            "angles": angles.tolist(),
            "nominal_angles": (self.angles if self.declared_angles is None else self.declared_angles).tolist(),
            "isocentre": iso.tolist(),
            "object_rotation": np.asarray(total).tolist(),
            "volume_affine": grid_affine.tolist(),
            "volume_shape": list(grid_shape),
            "physics": self.projector.physics,
            "spectrum": self.projector.spectrum,
            # 0 photons stands for "no noise" (None would not collate in a DataLoader batch)
            "photon_count": 0.0 if self.projector.photon_count is None else self.projector.photon_count,
            "energy_kev": self.projector.energy_kev,
        }
        out_affine = torch.eye(4, dtype=torch.float64)
        out_affine[0, 0], out_affine[1, 1] = geometry.pixel_spacing
        src_meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
        return MetaTensor(
            out.float().cpu(),
            affine=out_affine,
            meta={
                "filename_or_obj": src_meta.get("filename_or_obj", ""),
                "drr_geometry": meta,
                "angles": angles.numpy(),
                "pixel_spacing": np.tile(np.asarray(geometry.pixel_spacing, dtype=np.float64), (len(angles), 1)),
            },
        )


def _turns_rays(volume: Any, reference: Any) -> bool:
    """Whether a pose moves the rays through ``volume``: a whole scan (a path, or a grid other than the window's)."""
    if isinstance(volume, (str, os.PathLike)):
        return True
    if reference is None or not isinstance(volume, MetaTensor) or volume is reference:
        return False
    same_shape = tuple(volume.shape[1:]) == tuple(reference.shape[1:])
    return not (same_shape and torch.allclose(volume.affine.double(), reference.affine.double(), atol=1e-4))


class DRRd(Randomizable, MapTransform):
    """Dictionary version of :class:`DRR`: project ``keys``.

    The X-ray sources of a prepared dataset's items (``drr_source`` in the configs): ``"gt"``, the isolated
    vertebra (the paper's setting); ``"ct"``, the CT crop around it (neighbours and soft tissue within the crop);
    ``"body"``, the patient's whole scan (a path, :func:`scripts.drr.body.load_body_scan`), seen through the
    window of ``ref_key``'s grid. All keys of one item are projected with the same random angles, rotation and
    noise seed.

    Args:
        keys: keys of the HU volumes (or whole-scan paths) to project.
        output_keys: where to write the images (default "drr" for one key, else "<key>_drr"); the
            geometry goes to "<output_key>_geometry".
        ref_key: key of the grid that sets the detector window and the isocentre (e.g. ``"gt"``); ``None``: each
            volume's own grid. Needed for ``"body"``.
        rotation_key: item entry holding a 3x3 rotation of the object (e.g. the pose of
            :class:`scripts.transforms.RandPosed`), applied by moving the rays through whole scans (a path, or a
            volume on another grid than ``ref_key``'s). Volumes on the window's own grid (the crops, and the
            reference itself) are taken as already turned, as ``RandPosed`` resamples them. Absent entries: none.
        allow_missing_keys: skip missing keys.
        kwargs: arguments of :class:`DRR`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_keys: str | Sequence[str] | None = None,
        ref_key: str | None = None,
        rotation_key: str | None = "object_rotation",
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.rotation_key = rotation_key
        if output_keys is None:
            output_keys = ["drr"] if len(self.keys) == 1 else [f"{k}_drr" for k in self.keys]
        self.output_keys = [output_keys] if isinstance(output_keys, str) else list(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"need one output key per key: keys={self.keys}, output_keys={self.output_keys}.")
        self.drr = DRR(**kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> DRRd:
        super().set_random_state(seed, state)
        self.drr.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.drr.randomize()

    def check_item(self, d: Mapping[Hashable, Any]) -> Any:
        """The item's reference grid (``None`` without ``ref_key``), after checking that the item has its keys."""
        for key in self.keys:
            if key not in d and not self.allow_missing_keys:
                fix = (
                    "prepare the dataset again with python -m scripts.prepare, which writes each patient's whole scan"
                    if key == "body"
                    else "check drr_source and the datalist"
                )
                raise KeyError(f"the item {d.get('id', '')!r} has no {key!r} entry to project; {fix}.")
        if self.ref_key is None:
            return None
        if self.ref_key not in d:
            raise KeyError(f"the item {d.get('id', '')!r} has no {self.ref_key!r} grid (ref_key) to place the window.")
        return d[self.ref_key]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        return self.project(data)

    def project(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Project the item's keys with the current draws (no new random draw)."""
        d = dict(data)
        reference = self.check_item(d)
        rotation = d.get(self.rotation_key) if self.rotation_key else None
        for key, out_key in self.key_iterator(d, self.output_keys):
            turn = rotation if _turns_rays(d[key], reference) else None
            out = self.drr(d[key], randomize=False, reference=reference, object_rotation=turn)
            d[out_key] = out
            d[f"{out_key}_geometry"] = geometry_to_tensors(out.meta["drr_geometry"])
        return d


class SeededDRRd(MapTransform):
    """:class:`DRRd` without randomness: the X-rays of an item depend only on the item.

    The noise seed comes from the item's ``seed_key`` entry (its ``id``) and ``seed``; the views are the
    nominal ones (no jitter, no rotation). Validation during training, evaluation and inference on simulated
    X-rays use it, so the same vertebra gets the same X-rays in each, two validations of one model agree,
    and, since it is not ``Randomizable``, MONAI's ``CacheDataset`` caches its output.

    Args:
        keys: keys of the HU volumes to project.
        output_keys: as :class:`DRRd`.
        seed_key: item entry that names the item (its seed).
        seed: base seed.
        allow_missing_keys: skip missing keys.
        kwargs: arguments of :class:`DRR` (``angle_jitter`` and ``rotation_range`` are not allowed).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_keys: str | Sequence[str] | None = None,
        seed_key: str = "id",
        seed: int = 0,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        for arg in ("angle_jitter", "rotation_range"):
            if arg in kwargs and np.any(np.asarray(kwargs[arg]) != 0):
                raise ValueError(f"SeededDRRd is deterministic: {arg} must be 0 (use DRRd for augmentation).")
        self._drrd = DRRd(keys, output_keys=output_keys, allow_missing_keys=allow_missing_keys, **kwargs)
        super().__init__(self._drrd.keys, allow_missing_keys)
        self.seed_key = seed_key
        self.seed = int(seed)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.seed_key not in data:
            raise KeyError(f"SeededDRRd: the item has no {self.seed_key!r} entry to seed its X-ray noise with.")
        self._drrd.drr._seed = item_seed(data[self.seed_key], self.seed)
        return self._drrd.project(data)


class SpineDRRd(MapTransform):
    """The X-rays of the spine alone in a vertebra's window: the target and its labelled neighbours, no soft tissue.

    A lab source (``configs/lab/recipes/spine_only.json``) between the isolated vertebra (``gt``) and the whole body:
    the window's rays cross every labelled vertebra of the patient whose centre lies within ``reach_mm`` of the
    target's, each projected from its own ground-truth crop and the line integrals summed (exact for monochromatic
    physics where the crops' vertebrae do not overlap, nearly so for polychromatic). It tells apart what stops a
    network from reading body X-rays: the neighbouring vertebrae, or the rest of the body. The target's crop is the
    item's (after any window shift or pose); a neighbour's rays are turned by the item's pose (``rotation_key``),
    since its crop was not resampled. No noise is drawn.

    Args:
        dataset_dir: the prepared dataset (its ``datalist.json`` lists every vertebra's ``gt`` crop and centre).
        ref_key: the target's ground-truth crop (the window's grid).
        output_key: where to write the X-rays ``(V, H, W)``; their geometry goes to ``<output_key>_geometry``.
        angles: the views.
        reach_mm: neighbours whose centre lies farther from the target's are left out.
        rotation_key: item entry holding the pose.
        kwargs: arguments of :class:`DRR` (physics, spectrum; ``photon_count`` is ``None``).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        ref_key: str = "gt",
        output_key: str = "drr",
        angles: Any = ((0.0, 0.0), (90.0, 0.0)),
        reach_mm: float = 110.0,
        rotation_key: str = "object_rotation",
        **kwargs: Any,
    ) -> None:
        import json

        from monai.transforms import LoadImage

        super().__init__(ref_key)
        root = Path(dataset_dir)
        datalist = json.loads((root / "datalist.json").read_text())
        self.vertebrae: dict[str, list[tuple[str, str, np.ndarray]]] = {}
        for section in datalist.values():
            for it in section if isinstance(section, list) else []:
                if {"id", "patient", "gt", "centre_mm"} <= set(it):
                    entry = (str(it["id"]), str(root / it["gt"]), np.asarray(it["centre_mm"], dtype=np.float64))
                    self.vertebrae.setdefault(str(it["patient"]), []).append(entry)
        self.ref_key, self.output_key, self.reach = ref_key, output_key, float(reach_mm)
        self.rotation_key = rotation_key
        self._load = LoadImage(image_only=True, ensure_channel_first=True)
        self._crops: dict[str, torch.Tensor] = {}
        self.project = DRRd("volume", ref_key=ref_key, output_keys="x", angles=angles, photon_count=None, **kwargs)

    def _crop(self, path: str) -> torch.Tensor:
        if path not in self._crops:
            self._crops[path] = self._load(path).float()
        return self._crops[path]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in ("id", "patient", "centre_mm", self.ref_key):
            if key not in d:
                raise KeyError(f"SpineDRRd: the item has no {key!r} entry (prepare it with python -m scripts.prepare).")
        target = d[self.ref_key]
        base = {self.ref_key: target}
        if self.rotation_key in d:
            base[self.rotation_key] = d[self.rotation_key]
        out = self.project({**base, "volume": target})
        total = out["x"].as_tensor().clone()
        centre = np.asarray(d["centre_mm"], dtype=np.float64)
        for vid, path, c in self.vertebrae.get(str(d["patient"]), []):
            if vid != str(d["id"]) and np.linalg.norm(c - centre) <= self.reach:
                total += self.project({**base, "volume": self._crop(path)})["x"].as_tensor()
        d[self.output_key] = MetaTensor(total, meta=dict(out["x"].meta), affine=out["x"].affine)
        d[f"{self.output_key}_geometry"] = out["x_geometry"]
        return d
