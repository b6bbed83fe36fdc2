# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Map one image of a MONAI Label datastore to the X-ray pair the bundle reconstructs from.

MONAI Label asks for inference on one image; the bundle needs two views. The partner is found in the image's
folder, first by a sidecar JSON, then by the naming convention:

- sidecar: ``<stem>.json`` beside the image (``<stem>`` is the file name without its image extension), or
  ``<case>.json`` when the name follows the naming convention. It holds one case of the bundle's inference
  datalist: ``{"xray": ["first.png", "second.png"], "angles": [[0, 0], [90, 0]], "pixel_spacing": 0.5,
  "id": "P1"}``; ``xray`` is required, paths are relative to the JSON's folder, and the image asked for
  must be one of the two.
- naming convention: ``<case><sep><view>.<ext>`` with ``<sep>`` one of ``_``, ``-``, ``.`` and ``<view>``
  ``ap`` (angles ``[0, 0]``) or ``lat`` / ``lateral`` (``[90, 0]``), letter case ignored: ``P1_ap.png`` and
  ``P1_lat.png`` are case ``P1``. Either file may be the one asked for; the pair is always AP first.

Nothing here imports MONAI Label or reads the images; :func:`resolve_pair` only looks at names and JSON.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from scripts.errors import BundleInputError

__all__ = ["IMAGE_EXTENSIONS", "VIEW_ANGLES", "SIDECAR_KEYS", "PairError", "XRayPair", "image_stem", "resolve_pair"]

#: file name endings the adapter treats as X-ray images (longest first, matched without letter case)
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".nii.gz",
    ".dicom",
    ".tiff",
    ".jpeg",
    ".nrrd",
    ".png",
    ".tif",
    ".dcm",
    ".nii",
    ".mha",
    ".mhd",
    ".jpg",
    ".bmp",
)

#: view names of the naming convention -> (alpha, beta) in degrees
VIEW_ANGLES: dict[str, tuple[float, float]] = {"ap": (0.0, 0.0), "lat": (90.0, 0.0), "lateral": (90.0, 0.0)}

#: keys a sidecar JSON may hold (one case of the bundle's inference datalist)
SIDECAR_KEYS: tuple[str, ...] = ("xray", "angles", "pixel_spacing", "id")

_CONVENTION = re.compile(r"^(?P<case>.+?)(?P<sep>[_.-])(?P<view>ap|lateral|lat)$", re.IGNORECASE)


class PairError(BundleInputError):
    """The X-ray pair of a datastore image cannot be found. ``str(error)`` names the cause and the fix."""


@dataclass(frozen=True)
class XRayPair:
    """Two X-ray views of one vertebra, as one case of the bundle's inference datalist.

    Attributes:
        case_id: the case's name (names the outputs).
        xray: absolute paths of the two images, in the order of ``angles``.
        angles: ``[[alpha1, beta1], [alpha2, beta2]]`` in degrees.
        pixel_spacing: detector pixel spacing in mm (a number or ``[row, column]``), ``None``: unknown.
        source: how the pair was found: ``"sidecar <path>"`` or ``"naming convention"``.
    """

    case_id: str
    xray: tuple[str, str]
    angles: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 0.0), (90.0, 0.0))
    pixel_spacing: float | tuple[float, float] | None = None
    source: str = field(default="naming convention", compare=False)

    def datalist_entry(self) -> dict:
        """The case as one item of the bundle's inference datalist (``--datalist``)."""
        entry: dict = {"id": self.case_id, "xray": list(self.xray), "angles": [list(a) for a in self.angles]}
        if self.pixel_spacing is not None:
            ps = self.pixel_spacing
            entry["pixel_spacing"] = list(ps) if isinstance(ps, tuple) else ps
        return entry


def image_stem(path: str | Path) -> str:
    """The file name without its image extension (``P1_ap.nii.gz`` -> ``P1_ap``; other names: the last suffix off)."""
    name = Path(path).name
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _is_image(path: Path) -> bool:
    lower = path.name.lower()
    return path.is_file() and any(lower.endswith(ext) for ext in IMAGE_EXTENSIONS) and not path.name.startswith(".")


def _safe_case_id(name: str) -> str:
    """A case id that can name an output folder (no path separators, no leading dot)."""
    cleaned = re.sub(r"[\\/:\s]+", "_", str(name)).lstrip(".") or "case"
    return cleaned


def _angles(value, where: str) -> tuple[tuple[float, float], tuple[float, float]]:
    fix = 'write "angles": [[0, 0], [90, 0]] (two [alpha, beta] pairs in degrees) or leave it out for AP + lateral'
    try:
        pairs = [[float(v) for v in (a if isinstance(a, (list, tuple)) else [a, 0.0])] for a in value]
    except (TypeError, ValueError) as e:
        raise PairError(f"{where}: angles {value!r} are not numbers; {fix}.") from e
    if len(pairs) != 2 or any(len(p) != 2 for p in pairs) or not all(math.isfinite(v) for p in pairs for v in p):
        raise PairError(f"{where}: angles {value!r} must be two finite [alpha, beta] pairs; {fix}.")
    return (pairs[0][0], pairs[0][1]), (pairs[1][0], pairs[1][1])


def _pixel_spacing(value, where: str) -> float | tuple[float, float] | None:
    if value is None:
        return None
    fix = 'write "pixel_spacing": 0.5 or [0.5, 0.5] (mm per detector pixel, row then column)'
    try:
        values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
    except (TypeError, ValueError) as e:
        raise PairError(f"{where}: pixel_spacing {value!r} is not a number; {fix}.") from e
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise PairError(f"{where}: pixel_spacing {value!r} must be one or two positive numbers; {fix}.")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _from_sidecar(sidecar: Path, image: Path) -> XRayPair:
    where = f"sidecar {sidecar}"
    example = '{"xray": ["P1_ap.png", "P1_lat.png"], "angles": [[0, 0], [90, 0]]}'
    try:
        content = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        raise PairError(f"{where} is not readable JSON ({e}); fix it or remove it, e.g. {example}.") from e
    if not isinstance(content, dict):
        raise PairError(f"{where} must hold one JSON object like {example}, not {type(content).__name__}.")
    unknown = sorted(set(content) - set(SIDECAR_KEYS))
    if unknown:
        raise PairError(f"{where} has unknown keys {unknown}; allowed: {list(SIDECAR_KEYS)}.")
    files = content.get("xray")
    if not isinstance(files, (list, tuple)) or len(files) != 2 or not all(isinstance(f, str) and f for f in files):
        raise PairError(f'{where} needs "xray": a list of exactly two image paths (relative to it), e.g. {example}.')
    paths = [(sidecar.parent / f).resolve() for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PairError(f"{where} names {missing}, which do not exist; fix the paths (relative to the JSON's folder).")
    if paths[0] == paths[1]:
        raise PairError(f"{where} lists {paths[0].name} twice; the two views must be two different images.")
    if image.resolve() not in paths:
        raise PairError(
            f"{where} lists {[p.name for p in paths]} but not the requested image {image.name}; "
            "add it to its xray list or rename the sidecar."
        )
    angles = _angles(content.get("angles", [[0, 0], [90, 0]]), where)
    case_id = content.get("id")
    return XRayPair(
        case_id=_safe_case_id(case_id if case_id not in (None, "") else _convention_case(image) or image_stem(image)),
        xray=(str(paths[0]), str(paths[1])),
        angles=angles,
        pixel_spacing=_pixel_spacing(content.get("pixel_spacing"), where),
        source=f"sidecar {sidecar.name}",
    )


def _convention_case(image: Path) -> str | None:
    match = _CONVENTION.match(image_stem(image))
    return match.group("case") if match else None


def _from_convention(image: Path) -> XRayPair:
    stem = image_stem(image)
    match = _CONVENTION.match(stem)
    if match is None:
        raise PairError(
            f"{image.name}: no sidecar {stem}.json and the name does not follow the naming convention "
            f"<case>_ap.<ext> / <case>_lat.<ext>; rename the two views (e.g. {stem}_ap.png and {stem}_lat.png) "
            f'or write {stem}.json with {{"xray": ["{image.name}", "<other view>"]}}.'
        )
    case, view = match.group("case"), match.group("view").lower()
    wanted = "ap" if view != "ap" else "lat"
    partner_views = ("ap",) if wanted == "ap" else ("lat", "lateral")
    candidates = sorted(
        p
        for p in image.parent.iterdir()
        if p != image and _is_image(p) and (m := _CONVENTION.match(image_stem(p))) is not None
        if m.group("case") == case and m.group("view").lower() in partner_views
    )
    label = "AP" if wanted == "ap" else "lateral"
    if not candidates:
        names = " or ".join(f"{case}_{v}.<ext>" for v in partner_views)
        raise PairError(
            f"{image.name}: the {label} view is missing: expected {names} beside it in {image.parent}; "
            f"add that image, or write {case}.json listing both views."
        )
    if len(candidates) > 1:
        raise PairError(
            f"{image.name}: {len(candidates)} {label} views match ({[p.name for p in candidates]}); keep one, "
            f"or write {case}.json listing the two views to use."
        )
    ap, lat = (image, candidates[0]) if view == "ap" else (candidates[0], image)
    return XRayPair(
        case_id=_safe_case_id(case),
        xray=(str(ap.resolve()), str(lat.resolve())),
        angles=(VIEW_ANGLES["ap"], VIEW_ANGLES["lat"]),
    )


def resolve_pair(image: str | Path) -> XRayPair:
    """The X-ray pair that ``image`` belongs to (see the module docstring for the rules).

    Args:
        image: path of one of the two views (what MONAI Label's datastore gives for an image id).

    Raises:
        PairError: the image does not exist, its sidecar is invalid, or its partner view is missing or
            ambiguous; the message names the files and the fix.
    """
    path = Path(image)
    if not path.is_file():
        raise PairError(f"image {path} does not exist; give the id or path of an X-ray in the datastore.")
    stem = image_stem(path)
    sidecars = [path.parent / f"{stem}.json"]
    case = _convention_case(path)
    if case is not None:
        sidecars.append(path.parent / f"{case}.json")
    for sidecar in sidecars:
        if sidecar.is_file():
            return _from_sidecar(sidecar, path)
    return _from_convention(path)
