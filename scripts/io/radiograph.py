# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Full radiographs with their geometry: reading, writing, and the model's two windows cut from them.

A case of two full radiographs (DICOM, or PNG / TIFF with a sidecar JSON) and the place of the target vertebra
(its centre in each image, or one 3-D point in the system frame) becomes the two detector windows the model
takes (:func:`cut_radiograph_windows`, :class:`LoadRadiographsd`); the geometry maths and their approximations are
in :mod:`scripts.drr.windows` (system frame: origin at the isocentre both views share, RAS axes of
``scripts/drr/geometry.py``).

**DICOM tags read** (a sidecar JSON next to a DICOM file, same name with ``.json``, overrides them):

- source-to-detector distance: DistanceSourceToDetector (0018,1110);
- source-to-isocentre distance: DistanceSourceToIsocenter (0018,9402), else DistanceSourceToPatient (0018,1111),
  else DistanceSourceToDetector / EstimatedRadiographicMagnificationFactor (0018,1114); a view without any of them
  takes the other view's (the two views share the isocentre, and, as in a C-arm turned about the patient or the two
  units of an EOS system, the source distance), or the run's ``source_sod``. Two image centres alone cannot give it:
  scaling the whole system about the isocentre moves both sources along their beams and keeps every ray's
  direction, so the two rays through the centres meet (or miss) at every source distance alike;
- pixel spacing on the detector: ImagerPixelSpacing (0018,1164), else PixelSpacing (0028,0030), taken as the
  detector's spacing unless PixelSpacingCalibrationType (0028,0A02) says it is calibrated in the patient, in which
  case it is taken in the isocentre plane (multiplied by ``sdd / sod``);
- the view: ViewPosition (0018,5101) ``AP`` (alpha 0), ``PA`` (180), ``RL`` (right side at the detector, source on
  the patient's left: 90), ``LL`` (-90), ``LAT`` / ``LATERAL`` (90, the bundle's lateral); else
  PositionerPrimaryAngle (0018,1510) ``theta`` (LAO positive, 0 with the detector anterior) and
  PositionerSecondaryAngle (0018,1511) ``phi`` (cranial positive): ``alpha = theta + 180``, ``beta = -phi``;
- the image's orientation: PatientOrientation (0020,0020) (e.g. ``L\\F``: columns run to the patient's left, rows
  to the feet); without it the pixels are taken as the bundle's images are, seen from the source (AP: the
  patient's right on the image's left; lateral with the source on the left: anterior on the left);
- intensities: RescaleSlope / RescaleIntercept applied, MONOCHROME1 inverted (bone bright, as the bundle's DRRs);
- the transform from a CT's world coordinates (RAS mm) to the system frame, when the file was simulated from a CT:
  private tag group 0x0071, creator ``EAR bundle`` (:data:`PRIVATE_CREATOR`), element 0x01: 16 values, the 4x4
  matrix row by row.

**Sidecar JSON keys** (for PNG / TIFF, ``<image stem>.json`` beside the image): ``sdd_mm`` and
``pixel_spacing_mm`` (a number or ``[row, col]``, on the detector) are required; ``sod_mm`` (source to isocentre,
rules above without it); ``view`` (as ViewPosition) or ``angle_deg`` (alpha, or ``[alpha, beta]``, degrees in the
bundle's convention); optional ``patient_orientation`` (e.g. ``["L", "F"]``), ``principal_point_px`` (``[row,
col]`` where the ray through the isocentre hits the image, default its centre), ``invert`` (true: dark bone) and
``world_to_system`` (4x4).

Pixel positions (``centre_px``, ``principal_point_px``) are ``[row, col]`` in the file's pixels as stored (row 0
the top row a viewer shows), before any reorientation.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scripts.drr.geometry import DEFAULT_SDD, DEFAULT_SOD, ConeBeamGeometry, as_angles, view_rotation
from scripts.drr.windows import (
    DEFAULT_RAY_TOLERANCE_MM,
    RadiographView,
    cut_window,
    locate_centre,
    pair_views,
    window_affine,
)
from scripts.errors import BundleInputError, XRayInputError
from scripts.functional import DEFAULT_ANGLES, parse_angles
from scripts.io.outputs import case_meta_name
from scripts.io.xray import _is_dicom, check_not_blank, number_pair, read_xray, sidecar_path, spacing_pair

__all__ = [
    "Radiograph",
    "LoadRadiographsd",
    "read_radiograph",
    "radiograph_views",
    "cut_radiograph_windows",
    "check_radiograph_case",
    "write_radiograph_dicom",
    "write_radiograph_image",
    "write_projected_radiographs",
    "system_to_world_affine",
    "sidecar_path",
    "VIEW_POSITIONS",
    "SIDECAR_KEYS",
    "PRIVATE_CREATOR",
    "PRIVATE_GROUP",
]

log = logging.getLogger(__name__)

#: ViewPosition (0018,5101) values and their ``(alpha, beta)`` in degrees (``scripts/drr/geometry.py``).
VIEW_POSITIONS: dict[str, tuple[float, float]] = {
    "AP": (0.0, 0.0),
    "PA": (180.0, 0.0),
    "RL": (90.0, 0.0),
    "LL": (-90.0, 0.0),
    "LAT": (90.0, 0.0),
    "LATERAL": (90.0, 0.0),
}
#: the keys a sidecar JSON may hold.
SIDECAR_KEYS = (
    "sdd_mm",
    "sod_mm",
    "pixel_spacing_mm",
    "view",
    "angle_deg",
    "patient_orientation",
    "principal_point_px",
    "invert",
    "world_to_system",
)
#: private creator and group of the world-to-system matrix in the DICOM files the bundle writes.
PRIVATE_CREATOR = "EAR bundle"
PRIVATE_GROUP = 0x0071
_WORLD_TO_SYSTEM_ELEMENT = 0x01

_SDD_TAG = "DistanceSourceToDetector (0018,1110)"
_SOD_TAGS = (
    "DistanceSourceToIsocenter (0018,9402), DistanceSourceToPatient (0018,1111) or "
    "EstimatedRadiographicMagnificationFactor (0018,1114)"
)
_SPACING_TAGS = "ImagerPixelSpacing (0018,1164) or PixelSpacing (0028,0030)"
_VIEW_TAGS = "ViewPosition (0018,5101) or PositionerPrimaryAngle (0018,1510)"
#: the geometry every radiograph needs: (value, DICOM tags, sidecar keys)
_REQUIRED = (
    ("sdd", _SDD_TAG, "sdd_mm"),
    ("pixel_spacing", _SPACING_TAGS, "pixel_spacing_mm"),
    ("angles", _VIEW_TAGS, "view or angle_deg"),
)
_LETTERS = {
    "R": (1.0, 0.0, 0.0),
    "L": (-1.0, 0.0, 0.0),
    "A": (0.0, 1.0, 0.0),
    "P": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "S": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
    "I": (0.0, 0.0, -1.0),
}
_DICOM_SUFFIXES = {".dcm", ".dicom"}


@dataclass
class Radiograph:
    """One radiograph as read: the image oriented as seen from the source, and its geometry.

    Attributes:
        path: the file.
        image: ``(H, W)`` float64, oriented as the bundle's DRRs (``scripts/drr/geometry.py``), bone bright.
        sdd: source-to-detector distance (mm).
        sod: source-to-isocentre distance (mm), ``None`` when the file does not say.
        pixel_spacing: ``(row, col)`` detector pixel size (mm) of ``image``.
        angles: ``(alpha, beta)`` degrees.
        file_shape: ``(rows, cols)`` of the file's pixel array.
        orientation: ``(transpose, flip_rows, flip_cols)`` applied to the file's pixels, in that order.
        principal_point: ``(row, col)`` in ``image`` where the ray through the isocentre hits, ``None``: the centre.
        world_to_system: 4x4 matrix from a CT's world (RAS mm) to the system frame, when recorded.
        sources: where each value came from (tag or sidecar key), for messages and records.
    """

    path: str
    image: np.ndarray
    sdd: float
    sod: float | None
    pixel_spacing: tuple[float, float]
    angles: tuple[float, float]
    file_shape: tuple[int, int]
    orientation: tuple[bool, bool, bool] = (False, False, False)
    principal_point: tuple[float, float] | None = None
    world_to_system: np.ndarray | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def to_image_px(self, rc: Sequence[float]) -> tuple[float, float]:
        """A file pixel position ``(row, col)`` in the oriented image."""
        return _orient_point(rc, self.file_shape, *self.orientation)

    def view(self, sod: float | None = None) -> RadiographView:
        """The geometry of the oriented image; ``sod`` when the file has none (or to override it)."""
        value = sod if sod is not None else self.sod
        if value is None:
            raise XRayInputError(f"{self.path}: no source-to-isocentre distance; give one of {_SOD_TAGS}.")
        try:
            return RadiographView(
                self.sdd, float(value), self.image.shape, self.pixel_spacing, self.angles, self.principal_point
            )
        except ValueError as e:
            raise XRayInputError(f"{self.path}: {e}") from None


# -- orientation ------------------------------------------------------------------------------------------------
def _orient(arr: np.ndarray, transpose: bool, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    if transpose:
        arr = arr.T
    if flip_rows:
        arr = arr[::-1, :]
    if flip_cols:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def _orient_point(
    rc: Sequence[float], shape: Sequence[int], transpose: bool, flip_rows: bool, flip_cols: bool
) -> tuple[float, float]:
    r, c = float(rc[0]), float(rc[1])
    h, w = int(shape[0]), int(shape[1])
    if transpose:
        r, c, h, w = c, r, w, h
    if flip_rows:
        r = h - 1 - r
    if flip_cols:
        c = w - 1 - c
    return r, c


def _direction(text: str) -> np.ndarray | None:
    vec = np.zeros(3)
    for ch in text.strip().upper():
        if ch not in _LETTERS:
            return None
        vec += _LETTERS[ch]
    n = np.linalg.norm(vec)
    return vec / n if n > 0 else None


def _orientation_for(letters: Sequence[str], angles: Sequence[float], where: str) -> tuple[bool, bool, bool]:
    """``(transpose, flip_rows, flip_cols)`` that turn an image of PatientOrientation ``letters`` (direction of
    increasing column, then of increasing row) into the bundle's orientation for a view at ``angles``."""
    text = "\\".join(str(x) for x in letters)
    dirs = [_direction(str(x)) for x in letters] if len(letters) == 2 else [None]
    if any(d is None for d in dirs):
        raise XRayInputError(
            f"{where}: PatientOrientation {text!r} is not two directions from L, R, A, P, H, F (e.g. L\\F); fix: "
            "correct the tag, or give patient_orientation in the sidecar JSON."
        )
    col_dir, row_dir = dirs
    ax = view_rotation(torch.tensor([list(angles)], dtype=torch.float64))[0].numpy()
    e_u, e_v = ax[:, 0], ax[:, 1]
    straight = abs(col_dir @ e_u) + abs(row_dir @ e_v)
    swapped = abs(row_dir @ e_u) + abs(col_dir @ e_v)
    transpose = swapped > straight
    if transpose:
        col_dir, row_dir = row_dir, col_dir
    if min(abs(col_dir @ e_u), abs(row_dir @ e_v)) < 0.5:
        raise XRayInputError(
            f"{where}: PatientOrientation {text!r} does not fit the view (alpha {angles[0]:g}, beta {angles[1]:g} "
            "degrees): its rows and columns do not run along the detector's axes; fix: check the view tags and "
            "PatientOrientation."
        )
    return bool(transpose), bool(row_dir @ e_v < 0), bool(col_dir @ e_u < 0)


def _orientation_letters(axis: np.ndarray) -> str:
    """The PatientOrientation letters of a direction (up to three, most significant first)."""
    names = (("R", "L"), ("A", "P"), ("H", "F"))
    order = np.argsort(-np.abs(axis))
    out = [names[i][0 if axis[i] > 0 else 1] for i in order if abs(axis[i]) > 0.2]
    return "".join(out)


# -- reading ----------------------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _angles_of_view(text: Any) -> tuple[float, float] | None:
    key = str(text).strip().upper() if text is not None else ""
    return VIEW_POSITIONS.get(key)


def _wrap(a: float) -> float:
    a = (a + 180.0) % 360.0 - 180.0
    return 180.0 if a == -180.0 else a


def _dicom_values(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Geometry values of a DICOM file, and the tag each came from."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as e:  # any reader failure is one line naming the file
        raise XRayInputError(f"{path}: cannot read it as DICOM ({type(e).__name__}: {e}).") from e
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    sdd = _number(ds.get("DistanceSourceToDetector"))
    if sdd is not None and sdd > 0:
        values["sdd"], sources["sdd"] = sdd, "DistanceSourceToDetector"
    for keyword in ("DistanceSourceToIsocenter", "DistanceSourceToPatient"):
        sod = _number(ds.get(keyword))
        if sod is not None and sod > 0:
            values["sod"], sources["sod"] = sod, keyword
            break
    else:
        mag = _number(ds.get("EstimatedRadiographicMagnificationFactor"))
        if mag is not None and mag > 1 and sdd:
            values["sod"], sources["sod"] = sdd / mag, "EstimatedRadiographicMagnificationFactor"
    imager = number_pair(ds.get("ImagerPixelSpacing"))
    plain = number_pair(ds.get("PixelSpacing"))
    if imager is not None:
        values["pixel_spacing"], sources["pixel_spacing"] = imager, "ImagerPixelSpacing"
    elif plain is not None:
        values["pixel_spacing"], sources["pixel_spacing"] = plain, "PixelSpacing"
        if str(ds.get("PixelSpacingCalibrationType", "") or "").strip():
            values["spacing_in_isocentre_plane"] = True
            sources["pixel_spacing"] = "PixelSpacing (calibrated in the patient)"
    view = _angles_of_view(ds.get("ViewPosition"))
    if view is not None:
        values["angles"], sources["angles"] = view, f"ViewPosition {str(ds.ViewPosition).strip()}"
    else:
        primary = _number(ds.get("PositionerPrimaryAngle"))
        if primary is not None:
            secondary = _number(ds.get("PositionerSecondaryAngle")) or 0.0
            values["angles"] = (_wrap(primary + 180.0), -secondary)
            sources["angles"] = "PositionerPrimaryAngle"
    orientation = ds.get("PatientOrientation")
    if orientation is not None and len(orientation) == 2 and all(str(x).strip() for x in orientation):
        values["patient_orientation"] = [str(x) for x in orientation]
    block = None
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        pass
    if block is not None and _WORLD_TO_SYSTEM_ELEMENT in block:
        m = np.asarray([float(x) for x in block[_WORLD_TO_SYSTEM_ELEMENT].value], dtype=np.float64)
        if m.size == 16 and np.all(np.isfinite(m)):
            values["world_to_system"] = m.reshape(4, 4)
    return values, sources


def _sidecar_values(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Geometry values of a sidecar JSON (bad values are refused naming the key)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise XRayInputError(f"{path}: cannot read the sidecar JSON ({e}); fix: write a JSON object.") from e
    if not isinstance(content, dict):
        raise XRayInputError(f"{path}: the sidecar must be a JSON object with keys such as sdd_mm, pixel_spacing_mm.")
    unknown = sorted(set(content) - set(SIDECAR_KEYS))
    if unknown:
        raise XRayInputError(f"{path}: unknown sidecar key(s) {', '.join(unknown)}; known: {', '.join(SIDECAR_KEYS)}.")
    values: dict[str, Any] = {}

    def bad(key: str, what: str) -> XRayInputError:
        return XRayInputError(f"{path}: {key}={content[key]!r} is not {what}.")

    for key, name in (("sdd_mm", "sdd"), ("sod_mm", "sod")):
        if key in content:
            v = _number(content[key])
            if v is None or v <= 0 or isinstance(content[key], bool):
                raise bad(key, "a positive distance in mm")
            values[name] = v
    if "pixel_spacing_mm" in content:
        sp = spacing_pair(content["pixel_spacing_mm"])
        if sp is None:
            raise bad("pixel_spacing_mm", "a positive pixel size in mm (a number or [row, col])")
        values["pixel_spacing"] = sp
    if "view" in content:
        view = _angles_of_view(content["view"])
        if view is None:
            raise bad("view", f"one of {', '.join(VIEW_POSITIONS)}")
        values["angles"] = view
    if "angle_deg" in content:
        try:
            values["angles"] = tuple(float(a) for a in as_angles([content["angle_deg"]]).reshape(-1, 2)[0])
        except (ValueError, TypeError):
            raise bad("angle_deg", "alpha or [alpha, beta] in degrees") from None
    if "patient_orientation" in content:
        po = content["patient_orientation"]
        if isinstance(po, str):
            po = po.split("\\")
        if not isinstance(po, list) or len(po) != 2:
            raise bad("patient_orientation", 'two directions such as ["L", "F"]')
        values["patient_orientation"] = [str(x) for x in po]
    if "principal_point_px" in content:
        pp = number_pair(content["principal_point_px"])
        if pp is None or np.asarray(content["principal_point_px"]).size != 2:
            raise bad("principal_point_px", "[row, col] in pixels")
        values["principal_point"] = pp
    if "invert" in content:
        if not isinstance(content["invert"], bool):
            raise bad("invert", "true or false")
        values["invert"] = content["invert"]
    if "world_to_system" in content:
        try:
            m = np.asarray(content["world_to_system"], dtype=np.float64).reshape(4, 4)
        except (TypeError, ValueError):
            raise bad("world_to_system", "a 4x4 matrix") from None
        values["world_to_system"] = m
    return values, dict.fromkeys(values, f"{path.name}")


def read_radiograph(path: str | os.PathLike, sidecar: str | os.PathLike | None = None) -> Radiograph:
    """Read a full radiograph and its geometry (see the module docstring for the tags and sidecar keys).

    Args:
        path: a DICOM file, or a PNG / TIFF image (any format :func:`scripts.io.xray.read_xray` reads) with a sidecar.
        sidecar: the sidecar JSON; default :func:`sidecar_path` of ``path`` when it exists (for DICOM its keys
            override the tags).

    Returns:
        the :class:`Radiograph`, its image oriented as seen from the source; its ``sod`` may be ``None``
        (:func:`radiograph_views` resolves it for the pair).

    Raises:
        XRayInputError: one line naming the file and the missing tags or sidecar keys, or what else is wrong.
    """
    p = Path(path)
    arr, _ = read_xray(p)  # rescale slope / intercept applied, MONOCHROME1 inverted
    is_dicom = p.suffix.lower() in _DICOM_SUFFIXES or _is_dicom(p)
    side = Path(sidecar) if sidecar is not None else sidecar_path(p)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if is_dicom:
        values, sources = _dicom_values(p)
    if side.is_file():
        extra, extra_sources = _sidecar_values(side)
        values.update(extra)
        sources.update(extra_sources)
    elif sidecar is not None:
        raise XRayInputError(f"{side}: sidecar JSON not found; fix: check the path.")
    elif not is_dicom:
        raise XRayInputError(
            f"{p}: no geometry: a {p.suffix or 'plain'} image needs a sidecar JSON {side.name} with sdd_mm, "
            "pixel_spacing_mm and view (or angle_deg), optionally sod_mm; or give a DICOM file with the geometry tags."
        )
    missing = [
        (f"{tags} (sidecar key {keys})" if is_dicom else keys) for name, tags, keys in _REQUIRED if name not in values
    ]
    if missing:
        where = "tags" if is_dicom else f"sidecar keys in {side.name}"
        raise XRayInputError(
            f"{p}: missing X-ray geometry ({where}): {'; '.join(missing)}; fix: add them"
            + (f" to the file or to a sidecar JSON {side.name}." if is_dicom else ".")
        )
    if values.get("invert"):
        arr = arr.max() + arr.min() - arr
    check_not_blank(arr, p)
    _check_not_clipped(arr, p)
    angles = tuple(float(a) for a in values["angles"])
    file_shape = (int(arr.shape[0]), int(arr.shape[1]))
    orientation = (False, False, False)
    if "patient_orientation" in values:
        orientation = _orientation_for(values["patient_orientation"], angles, str(p))
    spacing = tuple(values["pixel_spacing"])
    sdd = float(values["sdd"])
    sod = values.get("sod")
    if sod is not None and not sod < sdd:
        raise XRayInputError(
            f"{p}: source-to-isocentre distance {sod:g} mm ({sources.get('sod')}) is not below the source-to-detector "
            f"distance {sdd:g} mm ({sources.get('sdd')}); fix: check the distances."
        )
    if values.get("spacing_in_isocentre_plane"):
        if sod is None:
            raise XRayInputError(
                f"{p}: PixelSpacing is calibrated in the patient (PixelSpacingCalibrationType) but no source-to-"
                f"isocentre distance says where; fix: give {_SOD_TAGS}, or ImagerPixelSpacing (0018,1164)."
            )
        spacing = (spacing[0] * sdd / sod, spacing[1] * sdd / sod)
    if orientation[0]:
        spacing = spacing[::-1]
    pp = values.get("principal_point")
    if pp is not None:
        pp = _orient_point(pp, file_shape, *orientation)
    return Radiograph(
        path=str(p),
        image=_orient(arr, *orientation),
        sdd=sdd,
        sod=None if sod is None else float(sod),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        angles=angles,
        file_shape=file_shape,
        orientation=orientation,
        principal_point=pp,
        world_to_system=values.get("world_to_system"),
        sources=sources,
    )


def radiograph_views(radiographs: Sequence[Radiograph], sod: float | None = None) -> list[RadiographView]:
    """The views of a pair, each view's source-to-isocentre distance resolved.

    Args:
        radiographs: the two radiographs.
        sod: the source-to-isocentre distance (mm) of both views, overriding the files'.

    Returns:
        one :class:`~scripts.drr.windows.RadiographView` per radiograph: its own distance, else ``sod``, else the
        other view's (the views share the isocentre and, as in an EOS system or a C-arm, the source distance).

    Raises:
        XRayInputError: no view says the distance, naming the tags.
    """
    if sod is not None and (_number(sod) is None or sod <= 0):
        raise XRayInputError(f"sod_mm={sod!r}: give the source-to-isocentre distance as a positive number of mm.")
    known = [r.sod for r in radiographs if r.sod is not None]
    views = []
    for r in radiographs:
        value = sod if sod is not None else (r.sod if r.sod is not None else (known[0] if known else None))
        if value is None:
            names = " and ".join(Path(x.path).name for x in radiographs)
            raise XRayInputError(
                f"{names}: no source-to-isocentre distance in either file ({_SOD_TAGS}; sidecar key sod_mm); two "
                "image centres cannot give it (the rays meet or miss at every source distance alike); fix: add the "
                "tag or sidecar key, or give the case's sod_mm."
            )
        views.append(r.view(value))
    return views


#: a full radiograph with at least this share of its pixels at its highest (or lowest) value is clipped: what is left
#: is too little of the X-ray to read (a collimated or unexposed border rarely covers half of a radiograph).
SATURATED_FRACTION = 0.9


def _check_not_clipped(arr: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse a full radiograph whose pixels mostly share its highest or lowest value (e.g. a 16-bit image converted
    to 8 bits without scaling)."""
    for end, value in (("highest", float(arr.max())), ("lowest", float(arr.min()))):
        share = float((arr == value).mean())
        if share >= SATURATED_FRACTION:
            raise XRayInputError(
                f"{path}: {100 * share:.2f}% of the pixels are at the image's {end} value ({value:g}): it is clipped; "
                "fix: convert the radiograph with its range scaled (a 16-bit image cast to 8 bits without scaling "
                "clips), or give the original file."
            )


# -- windows ----------------------------------------------------------------------------------------------------
def _files(files: Any, key: str = "radiographs") -> list[str]:
    if isinstance(files, (str, os.PathLike)) or not isinstance(files, Sequence) or len(files) != 2:
        raise XRayInputError(
            f"{key}={files!r}: expected the two full radiographs of the case (view 1, view 2), e.g. "
            '"radiographs": ["ap.dcm", "lat.dcm"].'
        )
    return [str(f) for f in files]


def _centres(centre_px: Any) -> list[tuple[float, float]] | None:
    if centre_px is None:
        return None
    try:
        arr = np.asarray(centre_px, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (2, 2):
        raise XRayInputError(
            f"centre_px={centre_px!r}: give the vertebra's centre in each image as [[row, col], [row, col]] (pixels)."
        )
    return [(float(a), float(b)) for a, b in arr]


def _locate(radiographs, views, centre_px, centre_mm, tolerance_mm):
    names = [Path(r.path).name for r in radiographs]
    centres = _centres(centre_px)
    if centres is not None:
        for r, rc, name in zip(radiographs, centres, names):
            h, w = r.file_shape
            if not (0 <= rc[0] <= h - 1 and 0 <= rc[1] <= w - 1):
                raise XRayInputError(
                    f"{name}: the vertebra's centre (row {rc[0]:g}, col {rc[1]:g}) lies outside the image of {h} x "
                    f"{w} pixels (rows 0-{h - 1}, columns 0-{w - 1}); fix: give the centre in the file's pixels, "
                    "row first."
                )
        centres = [r.to_image_px(rc) for r, rc in zip(radiographs, centres)]
    try:
        return locate_centre(views, centres, centre_mm, tolerance_mm, names)
    except BundleInputError as e:
        raise XRayInputError(str(e)) from None


def cut_radiograph_windows(
    files: Sequence[str | os.PathLike],
    centre_px: Any = None,
    centre_mm: Any = None,
    roi_size: int = 128,
    spacing: float = 1.0,
    sdd: float = DEFAULT_SDD,
    sod: float = DEFAULT_SOD,
    views: Any = None,
    source_sod: float | None = None,
    tolerance_mm: float = DEFAULT_RAY_TOLERANCE_MM,
    name: str | None = None,
) -> tuple[MetaTensor, dict[str, Any]]:
    """The model's two windows of a case of full radiographs, and the geometry of the reconstruction.

    Args:
        files: the two radiographs (DICOM, or PNG / TIFF with sidecar JSON); their order is free (each is cut for
            the model view its beam line fits, :func:`scripts.drr.windows.pair_views`).
        centre_px: the vertebra's centre in each file, ``[[row, col], [row, col]]`` (file pixels, as stored).
        centre_mm: or the vertebra's centre in the system frame ``[x, y, z]`` (mm).
        roi_size: the model's window (and grid) size in pixels.
        spacing: the model's voxel size (mm).
        sdd: the model's source-to-detector distance (mm).
        sod: the model's source-to-isocentre distance (mm).
        views: the model's view angles, ``(2, 2)``; ``None``: AP and lateral.
        source_sod: the radiographs' source-to-isocentre distance (mm), overriding the files'.
        tolerance_mm: the farthest apart the rays through the two centres may pass.
        name: the case's name (``filename_or_obj`` of the windows).

    Returns:
        ``(windows, geometry)``: the ``(2, roi_size, roi_size)`` float32 windows in the model's view order (meta as
        :class:`~scripts.io.xray.LoadXRayPair`'s: ``angles``, ``pixel_spacing``, ``xray_files``, ``original_size``,
        plus ``radiograph_centre_mm``, ``radiograph_ray_gap_mm`` (NaN for a 3-D point), ``radiograph_angles``,
        ``radiograph_sdd``, ``radiograph_sod``, ``radiograph_outside_fraction`` and ``world_to_system`` (NaN
        when the files carry none)); ``geometry`` for :class:`~scripts.transforms.DimensionExpansiond`
        (``sdd``, ``sod``, ``detector_shape``, ``pixel_spacing``, ``angles``, ``isocentre``: the vertebra's
        centre) and ``affine``, the 4x4 system-frame affine of the reconstruction grid.

    Raises:
        XRayInputError: one line naming the file and the cause (missing tags or keys, centre outside an image,
            rays that miss by more than ``tolerance_mm``, views that are not the model's).
    """
    paths = _files(files)
    model_views = parse_angles(views if views is not None else DEFAULT_ANGLES)
    try:
        geometry = ConeBeamGeometry.for_crop(roi_size, spacing, sdd, sod)
    except ValueError as e:
        raise XRayInputError(f"the model's window geometry: {e}") from None
    radiographs = [read_radiograph(f) for f in paths]
    real_views = radiograph_views(radiographs, source_sod)
    centre, gap, _ = _locate(radiographs, real_views, centre_px, centre_mm, tolerance_mm)
    names = [Path(f).name for f in paths]
    try:
        order = pair_views([v.angles for v in real_views], model_views, names=names)
    except BundleInputError as e:
        raise XRayInputError(str(e)) from None
    windows, outside = [], []
    for k, i in enumerate(order):
        win, info = cut_window(radiographs[i].image, real_views[i], geometry, model_views[k], centre)
        windows.append(win)
        outside.append(info["outside_fraction"])
    if max(outside) > 0:  # one line per case, naming it
        parts = [f"{names[i]} {100 * outside[k]:.0f}%" for k, i in enumerate(order) if outside[k] > 0]
        log.warning(
            f"{name + ': ' if name else ''}the model's window lies partly outside the image ({', '.join(parts)}); "
            "filled with the nearest edge pixels."
        )
    for k, i in enumerate(order):
        check_not_blank(windows[k].numpy(), f"{names[i]} (window around the vertebra)")
    w2s = [r.world_to_system for r in radiographs]
    world_to_system = w2s[0] if w2s[0] is not None else w2s[1]
    if w2s[0] is not None and w2s[1] is not None and not np.allclose(w2s[0], w2s[1], atol=1e-3):
        raise XRayInputError(f"{names[0]} and {names[1]} record different world-to-system transforms.")
    affine = window_affine(roi_size, spacing, centre)
    spacing_px = np.asarray([geometry.pixel_spacing] * 2, dtype=np.float64)
    img_affine = torch.eye(4, dtype=torch.float64)
    img_affine[0, 0], img_affine[1, 1] = geometry.pixel_spacing
    meta = {
        "filename_or_obj": case_meta_name(name) if name is not None else paths[order[0]],
        "xray_files": [paths[i] for i in order],
        "angles": np.asarray(model_views, dtype=np.float64),
        "pixel_spacing": spacing_px,
        "original_size": np.asarray([radiographs[i].file_shape for i in order], dtype=np.int64),
        "radiograph_centre_mm": centre.numpy(),
        "radiograph_ray_gap_mm": float("nan") if gap is None else gap,
        "radiograph_angles": np.asarray([real_views[i].angles for i in order], dtype=np.float64),
        "radiograph_sdd": np.asarray([real_views[i].sdd for i in order], dtype=np.float64),
        "radiograph_sod": np.asarray([real_views[i].sod for i in order], dtype=np.float64),
        "radiograph_outside_fraction": np.asarray(outside, dtype=np.float64),
        "world_to_system": np.full((4, 4), np.nan) if world_to_system is None else np.asarray(world_to_system),
    }
    out = MetaTensor(torch.stack(windows).float().contiguous(), affine=img_affine, meta=meta)
    geo = {
        "sdd": float(geometry.sdd),
        "sod": float(geometry.sod),
        "detector_shape": np.asarray(geometry.detector_shape, dtype=np.int64),
        "pixel_spacing": np.asarray(geometry.pixel_spacing, dtype=np.float64),
        "angles": np.asarray(model_views, dtype=np.float64),
        "isocentre": centre.numpy(),
        "affine": affine.numpy(),
    }
    return out, geo


def check_radiograph_case(
    case: Mapping[str, Any], key: str = "radiographs", views: Any = None, tolerance_mm: float = DEFAULT_RAY_TOLERANCE_MM
) -> None:
    """Validate a case of full radiographs before a run: files, geometry, the vertebra's place, the views.

    Args:
        case: a datalist item with ``key`` (two files), ``centre_px`` or ``centre_mm``, optional ``sod_mm`` and
            ``angles`` (the model's views; default ``views``, else AP and lateral).
        key: the key of the two files.
        views: the model's views when the case has no ``angles``.
        tolerance_mm: the farthest apart the rays through the two centres may pass.

    Raises:
        XRayInputError: one line naming the cause.
    """
    paths = _files(case.get(key), key)
    model_views = parse_angles(case.get("angles") if case.get("angles") is not None else views)
    radiographs = [read_radiograph(f) for f in paths]
    real_views = radiograph_views(radiographs, case.get("sod_mm"))
    _locate(radiographs, real_views, case.get("centre_px"), case.get("centre_mm"), tolerance_mm)
    try:
        pair_views([v.angles for v in real_views], model_views, names=[Path(f).name for f in paths])
    except BundleInputError as e:
        raise XRayInputError(str(e)) from None


class LoadRadiographsd(MapTransform):
    """Cut the model's two windows from a case's full radiographs (:func:`cut_radiograph_windows`).

    ``data[key]`` holds the two files; ``data[centre_px_key]`` (``[[row, col], [row, col]]``) or
    ``data[centre_mm_key]`` (``[x, y, z]``, system frame) where the vertebra is, and ``data[sod_key]`` optionally
    the radiographs' source-to-isocentre distance. Writes ``data[output_key]`` (the ``(2, roi, roi)`` windows, as
    :class:`~scripts.io.xray.LoadXRayPaird` would), ``data[angles_key]`` (the model's views) and
    ``data[geometry_key]`` (the window geometry with the vertebra's centre as isocentre, which
    :class:`~scripts.transforms.DimensionExpansiond` reads as ``<key>_geometry``: the reconstruction grid is then
    centred on the vertebra, in the system frame).

    Args:
        keys: the key of the two radiographs (e.g. ``"radiographs"``).
        output_key: the key of the windows (``"xray"``).
        roi_size, spacing, sdd, sod, tolerance_mm: see :func:`cut_radiograph_windows`.
        views: the model's views when the case has none under ``angles_key``.
        angles_key: the key of the model's views (written back).
        geometry_key: the key of the geometry; default ``<output_key>_geometry``.
        centre_px_key, centre_mm_key, sod_key: the keys of the vertebra's place and of the source distance.
        name_key: the key of the case's name.
        allow_missing_keys: skip cases without ``keys`` (cases of pre-cut X-rays).
    """

    def __init__(
        self,
        keys: KeysCollection = "radiographs",
        output_key: str = "xray",
        roi_size: int = 128,
        spacing: float = 1.0,
        sdd: float = DEFAULT_SDD,
        sod: float = DEFAULT_SOD,
        views: Any = None,
        tolerance_mm: float = DEFAULT_RAY_TOLERANCE_MM,
        angles_key: str = "angles",
        geometry_key: str | None = None,
        centre_px_key: str = "centre_px",
        centre_mm_key: str = "centre_mm",
        sod_key: str = "sod_mm",
        name_key: str | None = "id",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.roi_size, self.spacing, self.sdd, self.sod = int(roi_size), float(spacing), float(sdd), float(sod)
        self.views = views
        self.tolerance_mm = float(tolerance_mm)
        self.angles_key = angles_key
        self.geometry_key = geometry_key or f"{output_key}_geometry"
        self.centre_px_key, self.centre_mm_key, self.sod_key = centre_px_key, centre_mm_key, sod_key
        self.name_key = name_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            views = d.get(self.angles_key)
            views = self.views if views is None else views
            windows, geometry = cut_radiograph_windows(
                d[key],
                centre_px=d.get(self.centre_px_key),
                centre_mm=d.get(self.centre_mm_key),
                roi_size=self.roi_size,
                spacing=self.spacing,
                sdd=self.sdd,
                sod=self.sod,
                views=views,
                source_sod=d.get(self.sod_key),
                tolerance_mm=self.tolerance_mm,
                name=d.get(self.name_key) if self.name_key else None,
            )
            d[self.output_key] = windows
            d[self.angles_key] = torch.as_tensor(windows.meta["angles"], dtype=torch.float32)
            d[self.geometry_key] = geometry
        return d


def system_to_world_affine(affine: Any, world_to_system: Any) -> np.ndarray:
    """An affine in the system frame turned into the CT's world frame (``inv(world_to_system) @ affine``)."""
    return np.linalg.inv(np.asarray(world_to_system, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)


# -- writing ----------------------------------------------------------------------------------------------------
def _view_position(angles: Sequence[float]) -> str:
    alpha, beta = float(angles[0]), float(angles[1])
    if abs(beta) > 1e-6:
        return ""
    for text in ("AP", "PA", "RL", "LL"):
        if abs(_wrap(alpha - VIEW_POSITIONS[text][0])) < 1e-6:
            return text
    return ""


def _view_angles(view: str | None, angles: Any) -> tuple[float, float]:
    if angles is not None:
        return tuple(float(a) for a in as_angles([angles]).reshape(-1, 2)[0])  # type: ignore[return-value]
    found = _angles_of_view(view)
    if found is None:
        raise ValueError(f"view={view!r}: give one of {', '.join(VIEW_POSITIONS)}, or angles=(alpha, beta).")
    return found


def _as_image(image: Any) -> np.ndarray:
    arr = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float64)
    arr = np.squeeze(arr)
    if arr.ndim != 2 or not np.all(np.isfinite(arr)):
        raise ValueError(f"expected one finite 2-D image, got shape {arr.shape}.")
    return arr


def write_radiograph_dicom(
    image: Any,
    path: str | os.PathLike,
    sdd: float,
    sod: float | None,
    pixel_spacing: float | Sequence[float],
    view: str | None = None,
    angles: Any = None,
    world_to_system: Any = None,
    photometric: str = "MONOCHROME2",
    spacing_tag: str = "ImagerPixelSpacing",
    patient_id: str = "anonymous",
) -> Path:
    """Write a radiograph as a DICOM DX image with its geometry tags.

    The image is as the bundle's DRRs are (seen from the source, bone bright, ``scripts/drr/geometry.py``); it is
    stored as 16-bit integers with RescaleSlope / RescaleIntercept that give back its values, with
    PatientOrientation describing its rows and columns, DistanceSourceToDetector, DistanceSourceToIsocenter and
    DistanceSourceToPatient (``sod``), EstimatedRadiographicMagnificationFactor (``sdd / sod``), ViewPosition (for
    AP, PA, RL, LL) and PositionerPrimaryAngle / PositionerSecondaryAngle (see the module docstring), and
    ``world_to_system`` in the private tag (:data:`PRIVATE_CREATOR`).

    Args:
        image: ``(H, W)`` image.
        path: the file to write.
        sdd: source-to-detector distance (mm).
        sod: source-to-isocentre distance (mm); ``None`` writes none of the distance tags but DistanceSourceToDetector.
        pixel_spacing: detector pixel size (mm), a number or ``(row, col)``.
        view: ``"AP"``, ``"PA"``, ``"RL"``, ``"LL"`` or ``"LAT"``; or ``angles``.
        angles: ``(alpha, beta)`` degrees (overrides ``view``).
        world_to_system: optional 4x4 matrix from the CT's world (RAS mm) to the system frame.
        photometric: ``"MONOCHROME2"`` or ``"MONOCHROME1"`` (stored inverted; reads back the same).
        spacing_tag: ``"ImagerPixelSpacing"``, ``"PixelSpacing"`` or ``"both"``.
        patient_id: PatientID and PatientName.

    Returns:
        the path written.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = _as_image(image)
    ang = _view_angles(view, angles)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric={photometric!r}: use MONOCHROME1 or MONOCHROME2.")
    if spacing_tag not in ("ImagerPixelSpacing", "PixelSpacing", "both"):
        raise ValueError(f"spacing_tag={spacing_tag!r}: use ImagerPixelSpacing, PixelSpacing or both.")
    sp = number_pair(pixel_spacing)
    if sp is None or min(sp) <= 0:
        raise ValueError(f"pixel_spacing={pixel_spacing!r}: give a positive size in mm.")
    lo, hi = float(arr.min()), float(arr.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.round((arr - lo) / slope).clip(0, 65535).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (65535 - stored).astype(np.uint16)
    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid()
    p = Path(path)
    ds = FileDataset(str(p), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope = f"{slope:.10g}"
    ds.RescaleIntercept = f"{lo:.10g}"
    ds.RescaleType = "US"
    ds.DistanceSourceToDetector = f"{float(sdd):.6g}"
    if sod is not None:
        ds.DistanceSourceToPatient = f"{float(sod):.6g}"
        ds.DistanceSourceToIsocenter = float(sod)
        ds.EstimatedRadiographicMagnificationFactor = f"{float(sdd) / float(sod):.6g}"
    if spacing_tag in ("ImagerPixelSpacing", "both"):
        ds.ImagerPixelSpacing = [f"{sp[0]:.6g}", f"{sp[1]:.6g}"]
    if spacing_tag in ("PixelSpacing", "both"):
        ds.PixelSpacing = [f"{sp[0]:.6g}", f"{sp[1]:.6g}"]
    ds.ViewPosition = _view_position(ang)
    ds.PositionerPrimaryAngle = f"{_wrap(ang[0] - 180.0):.6g}"
    ds.PositionerSecondaryAngle = f"{-ang[1]:.6g}"
    ax = view_rotation(torch.tensor([list(ang)], dtype=torch.float64))[0].numpy()
    ds.PatientOrientation = [_orientation_letters(ax[:, 0]), _orientation_letters(ax[:, 1])]
    if world_to_system is not None:
        m = np.asarray(world_to_system, dtype=np.float64).reshape(4, 4)
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(_WORLD_TO_SYSTEM_ELEMENT, "DS", [f"{x:.10g}" for x in m.reshape(-1)])
    ds.PixelData = stored.tobytes()
    p.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(p), enforce_file_format=True)
    return p


def write_radiograph_image(
    image: Any,
    path: str | os.PathLike,
    sdd: float,
    sod: float | None,
    pixel_spacing: float | Sequence[float],
    view: str | None = None,
    angles: Any = None,
    world_to_system: Any = None,
) -> tuple[Path, Path]:
    """Write a radiograph as PNG (16-bit, scaled to its range) or TIFF (float32) with its sidecar JSON.

    Args:
        image: ``(H, W)`` image, oriented as the bundle's DRRs.
        path: the ``.png`` or ``.tif`` / ``.tiff`` file.
        sdd, sod, pixel_spacing, view, angles, world_to_system: as :func:`write_radiograph_dicom`.

    Returns:
        the image and sidecar paths.
    """
    from PIL import Image

    arr = _as_image(image)
    ang = _view_angles(view, angles)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() == ".png":
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.round((arr - lo) / ((hi - lo) or 1.0) * 65535).astype(np.uint16)
        Image.fromarray(scaled).save(p)
    elif p.suffix.lower() in (".tif", ".tiff"):
        Image.fromarray(arr.astype(np.float32)).save(p)
    else:
        raise ValueError(f"{p}: write .png, .tif or .tiff (or DICOM with write_radiograph_dicom).")
    ax = view_rotation(torch.tensor([list(ang)], dtype=torch.float64))[0].numpy()
    sp = number_pair(pixel_spacing)
    side: dict[str, Any] = {"sdd_mm": float(sdd), "pixel_spacing_mm": list(sp or ()), "angle_deg": list(ang)}
    if sod is not None:
        side["sod_mm"] = float(sod)
    side["patient_orientation"] = [_orientation_letters(ax[:, 0]), _orientation_letters(ax[:, 1])]
    if world_to_system is not None:
        side["world_to_system"] = np.asarray(world_to_system, dtype=np.float64).reshape(4, 4).tolist()
    sidecar = sidecar_path(p)
    sidecar.write_text(json.dumps(side, indent=2))
    return p, sidecar


def write_projected_radiographs(
    hu: Any,
    affine: Any,
    out_dir: str | os.PathLike,
    isocentre: Sequence[float],
    geometry: ConeBeamGeometry | Mapping | None = None,
    angles: Any = None,
    names: Sequence[str] = ("ap", "lat"),
    *,
    projector: Any,
    fmt: str = "dcm",
) -> dict[str, Any]:
    """Project a CT onto full detectors and write the radiographs with their geometry (simulated radiograph files).

    The system frame is the CT's world frame moved to ``isocentre``: ``world_to_system`` is the translation by
    ``-isocentre`` (recorded in each file), so a point ``p`` of the CT is at ``p - isocentre`` in the system frame.

    Args:
        hu: ``(1, X, Y, Z)`` or ``(X, Y, Z)`` HU volume.
        affine: its 4x4 voxel-to-world (RAS mm) matrix.
        out_dir: the folder written.
        isocentre: the world point (mm) both views turn about.
        geometry: the full detector's system (``ConeBeamGeometry`` or dict); default 1200 / 800 mm, 256 x 256 pixels
            of 1 mm.
        angles: ``(2, 2)`` view angles; default AP and lateral.
        names: the files' names without extension.
        projector: ``callable(hu (1, X, Y, Z), affine, angles, isocentre) -> (V, H, W)``, e.g. a
            :class:`~scripts.drr.projector.DRRProjector` with ``geometry`` (given by the caller: file writing stays
            apart from the simulation).
        fmt: ``"dcm"`` (DICOM) or ``"png"`` / ``"tif"`` (with sidecar JSON).

    Returns:
        ``{"files": [...], "world_to_system": 4x4, "geometry": dict, "angles": (2, 2)}``.
    """
    if geometry is None:
        geo = ConeBeamGeometry(1200.0, 800.0, (256, 256), (1.0, 1.0))
    else:
        geo = ConeBeamGeometry.from_any(geometry)
    ang = np.asarray(DEFAULT_ANGLES if angles is None else as_angles(angles).numpy(), dtype=np.float64)
    vol = torch.as_tensor(np.asarray(hu.detach().cpu() if isinstance(hu, torch.Tensor) else hu), dtype=torch.float32)
    if vol.ndim == 3:
        vol = vol[None]
    iso = np.asarray(isocentre, dtype=np.float64).reshape(3)
    images = projector(vol, torch.as_tensor(np.asarray(affine, dtype=np.float64)), ang, iso)
    images = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float64)
    w2s = np.eye(4)
    w2s[:3, 3] = -iso
    out = Path(out_dir)
    files = []
    for img, a, n in zip(images, ang, names):
        if fmt == "dcm":
            files.append(
                str(
                    write_radiograph_dicom(
                        img, out / f"{n}.dcm", geo.sdd, geo.sod, geo.pixel_spacing, angles=a, world_to_system=w2s
                    )
                )
            )
        elif fmt in ("png", "tif", "tiff"):
            files.append(
                str(
                    write_radiograph_image(
                        img, out / f"{n}.{fmt}", geo.sdd, geo.sod, geo.pixel_spacing, angles=a, world_to_system=w2s
                    )[0]
                )
            )
        else:
            raise ValueError(f"fmt={fmt!r}: use dcm, png or tif.")
    return {"files": files, "world_to_system": w2s, "geometry": geo.to_dict(), "angles": ang}
