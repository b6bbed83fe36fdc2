# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Per-case outputs: naming by case, and publishing a case's files from a staging folder.

A case named ``<name>`` has its files in ``<output_dir>/<name>/``. The writers (``SaveImaged``, ``SaveMeshd``,
``SavePreviewd``) write them into ``<staging_dir>/<name>/``; :class:`PublishCaseOutputsd` then moves them
into place file by file. Names are checked first (:func:`check_case_names`): two cases of one run never
share a folder, no name leads out of the output folder, and every file name fits the file system.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import weakref
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

from monai.config import KeysCollection
from monai.data import FolderLayout, MetaTensor
from monai.transforms import MapTransform
from scripts.errors import BundleInputError
from scripts.utils import atomic_path

__all__ = [
    "REPORT_KEYS",
    "CaseNamed",
    "SaveCaseReportd",
    "PublishCaseOutputsd",
    "case_meta_name",
    "case_folder_name",
    "check_case_names",
    "run_staging_dir",
    "MANIFEST_NAME",
    "CASE_FILE_EXTRA_BYTES",
]

#: the file in a case folder that lists the files the last publishing of the case wrote there.
MANIFEST_NAME = ".published.json"

#: the most bytes a file name in a case folder adds to the case name: the longest the bundle writes,
#: ``.<name>_uncertainty.tmp-<pid>.nii.gz`` (a temporary name of an atomic write), adds 32; the rest is margin.
CASE_FILE_EXTRA_BYTES = 40
_NAME_MAX, _PATH_MAX = 255, 4096  # when the file system does not say (os.pathconf)

_LAYOUT = FolderLayout("", extension="", parent=True, makedirs=False)
_HOST = re.sub(r"[^A-Za-z0-9_-]+", "_", socket.gethostname()) or "host"


def run_staging_dir(output_dir: str | os.PathLike) -> str:
    """The staging folder of this process's run: ``<output_dir>/.partial/<host>-<pid>``.

    Each run writes into a folder of its own, so concurrent runs into one output folder never see each other's
    files; :class:`PublishCaseOutputsd` removes those of finished processes of this host.
    """
    return str(Path(output_dir) / ".partial" / f"{_HOST}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists (another user's); else cannot tell: keep its folder
        return True
    return True


def _remove_dead_runs(staging_dir: Path) -> None:
    """Remove sibling run folders (:func:`run_staging_dir`) of this host whose process has ended."""
    pattern = re.compile(rf"{re.escape(_HOST)}-(\d+)")
    try:
        siblings = list(staging_dir.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        m = pattern.fullmatch(sibling.name)
        if m and sibling != staging_dir and sibling.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


def case_meta_name(name: Any) -> str:
    """The ``filename_or_obj`` value under which the writers name a case's folder and files exactly ``name``.

    MONAI's writers take ``filename_or_obj`` for an input file and drop its extension (what follows the last
    dot), so a name with a dot gets a ``.nii.gz`` suffix for them to drop.
    """
    name = str(name)
    return f"{name}.nii.gz" if "." in name else name


def case_folder_name(name: Any) -> str:
    """The folder (and file prefix) the writers use for a case named ``name`` (see :func:`case_meta_name`)."""
    return Path(_LAYOUT.filename(subject=case_meta_name(name))).parent.name


def _path_limits(folder: str | os.PathLike | None) -> tuple[int, int]:
    """``(NAME_MAX, PATH_MAX)`` in bytes of the file system of ``folder`` (its nearest existing parent)."""
    limits = [_NAME_MAX, _PATH_MAX]
    if folder is None:
        return limits[0], limits[1]
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    for i, key in enumerate(("PC_NAME_MAX", "PC_PATH_MAX")):
        try:
            value = os.pathconf(probe, key)
        except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or no answer
            continue
        if value and value > 0:
            limits[i] = int(value)
    return limits[0], limits[1]


def _short(name: str, n: int = 40) -> str:
    return repr(name) if len(name) <= n else repr(name[:n]) + f"... ({len(name)} characters)"


def check_case_names(
    names: Iterable[Any],
    what: str = "case id",
    output_dir: str | os.PathLike | None = None,
    extra_bytes: int = CASE_FILE_EXTRA_BYTES,
) -> list[str]:
    """Check that every case gets its own output folder named exactly after it; return the folder names.

    A name must be able to name a folder inside the output folder and the files in it
    (``<name>/<name>_hu.nii.gz``, ...): no path separator, no leading ``.``, and short enough that
    the longest file name of the case (the name plus ``extra_bytes``) fits the file system's limit per file
    name (``NAME_MAX``, usually 255 bytes), and, with ``output_dir``, that the longest path the run writes
    (in its staging folder, :func:`run_staging_dir`) fits ``PATH_MAX``.

    Args:
        names: the case names of one run, in order.
        what: what the names are called in the message (e.g. ``"case id"``).
        output_dir: the run's output folder, whose file system's limits apply (``None``: 255 and 4096 bytes,
            and no check of the whole path).
        extra_bytes: the most bytes a file name of a case adds to the name (:data:`CASE_FILE_EXTRA_BYTES`).

    Raises:
        BundleInputError: a name that is empty, hidden (starts with ``.``), holds a path separator or is too
            long, or two names that give the same folder (compared without case, as on case-insensitive file
            systems).
    """
    name_max, path_max = _path_limits(output_dir)
    staging = Path(run_staging_dir(Path(output_dir).absolute())) if output_dir is not None else None
    folders: list[str] = []
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        name = str(name)
        folder = case_folder_name(name) if name else ""
        if not name or name.startswith(".") or "/" in name or "\\" in name or folder != name:
            raise BundleInputError(
                f"{what} {_short(name)} (case {i + 1}) cannot name an output folder; fix: use a plain name without "
                "'/', '\\' or a leading '.', e.g. P1_T4."
            )
        size = len(os.fsencode(name))
        if size + extra_bytes > name_max:
            raise BundleInputError(
                f"{what} {_short(name)} (case {i + 1}) is {size} bytes long: its output files (the name plus up to "
                f"{extra_bytes} bytes) would pass the file system's limit of {name_max} bytes per file name; fix: "
                f"use a name of at most {name_max - extra_bytes} bytes, e.g. P1_T4."
            )
        if staging is not None:
            longest = len(os.fsencode(str(staging / name / ("x" * (size + extra_bytes)))))
            if longest >= path_max:
                raise BundleInputError(
                    f"{what} {_short(name)} (case {i + 1}): its output paths in {output_dir} would be {longest} "
                    f"bytes long, past the file system's limit of {path_max}; fix: use a shorter name or a "
                    "shorter output folder path."
                )
        key = folder.casefold()
        if key in seen:
            raise BundleInputError(
                f"cases {seen[key] + 1} and {i + 1} have the same {what} {name!r}: their outputs would overwrite "
                f"each other in one folder; fix: give every case its own {what}."
            )
        seen[key] = i
        folders.append(folder)
    return folders


class CaseNamed(MapTransform):
    """Set ``meta["filename_or_obj"]`` of ``keys`` to the item's case name (default its ``id``).

    MONAI's writers (``SaveImaged``) and the bundle's ``SaveMeshd`` / ``SavePreviewd`` name their files after
    ``filename_or_obj``; a prediction made from a simulated X-ray would otherwise be named after the CT crop it
    was simulated from (e.g. ``..._gt``). The value is :func:`case_meta_name` of the name, so a name with a
    dot keeps its full text in the file names.

    Args:
        keys: MetaTensor entries to rename.
        name_key: item entry holding the case name.
        allow_missing_keys: skip missing keys.
    """

    def __init__(self, keys: KeysCollection, name_key: str = "id", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.name_key = name_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.name_key not in d:
            raise KeyError(f"CaseNamed: the item has no '{self.name_key}' entry to name its outputs by.")
        for key in self.key_iterator(d):
            if isinstance(d[key], MetaTensor):
                d[key].meta["filename_or_obj"] = case_meta_name(d[self.name_key])
        return d


#: the entries of an item that carry its confidence (:class:`scripts.confidence.TTAConfidenced`), copied into the
#: case and spine reports.
REPORT_KEYS = (
    "confidence",
    "confidence_calibrated",
    "tta_agreement",
    "window_centring",
    "flag",
    "input_type",
    "input_background_share",
)


class SaveCaseReportd(MapTransform):
    """Write a case's report, ``<output_dir>/<name>/<name>_report.json``, atomically.

    The report holds the case name, the reconstruction's confidence (``confidence``: an estimate of its Dice in
    [0, 1]; ``confidence_calibrated``: whether the model's calibration mapped it, else it is the raw TTA
    agreement; ``tta_agreement``; ``window_centring``, for models whose calibration uses it (the finder's evidence of
    a vertebra at the window's centre); ``flag``: ``"low confidence"`` below the threshold, the input type mismatch
    when the views are not of the type the model was trained on, else ``""``; ``input_type`` and
    ``input_background_share``: the views' type and share of empty detector), the mesh report of
    :class:`scripts.io.mesh.SaveMeshd` when present, and ``extra`` entries (e.g. the model's X-ray source). A flagged
    case is also logged as a warning. Entries the item lacks are written as ``null``.

    Args:
        keys: the predicted volume (names the case by its ``filename_or_obj``).
        output_dir: output (staging) folder.
        fields: item entries to copy into the report.
        mesh_key: item entry of the mesh report (default ``<key>_mesh``).
        extra: constant entries added to every report.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        fields: Iterable[str] = REPORT_KEYS,
        mesh_key: str | None = None,
        extra: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.layout = FolderLayout(output_dir, postfix="report", extension=".json", parent=True)
        self.fields = list(fields)
        self.mesh_key = mesh_key
        self.extra = dict(extra or {})
        self.logger = logging.getLogger(__name__)

    @staticmethod
    def _plain(v: Any) -> Any:
        if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            vol = d[key]
            name = str(vol.meta.get("filename_or_obj", key)) if isinstance(vol, MetaTensor) else str(key)
            report: dict[str, Any] = {"case": os.path.basename(name)}
            report.update({f: self._plain(d.get(f)) for f in self.fields})
            mesh = d.get(self.mesh_key or f"{key}_mesh")
            if isinstance(mesh, Mapping):
                report["mesh"] = {k: v for k, v in mesh.items() if k != "files"}
            report.update(self.extra)
            if report.get("flag"):
                conf = report.get("confidence")
                self.logger.warning(
                    "%s%s: %s; check this reconstruction before use",
                    report["case"],
                    "" if conf is None else f" (confidence {float(conf):.2f})",
                    report["flag"],
                )
            path = os.fspath(self.layout.filename(subject=name))
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
            d[f"{key}_report"] = path
        return d


def _remove_staged(staging_dir: Path, folders: tuple[str, ...] | None, parent: bool = False) -> None:
    """Remove the staging folders of ``folders`` (``None``: all of them), then ``staging_dir`` when it is empty
    (and, with ``parent``, its parent folder when that is empty too)."""
    if folders is None:
        shutil.rmtree(staging_dir, ignore_errors=True)
    for folder in folders or ():
        shutil.rmtree(staging_dir / folder, ignore_errors=True)
    for folder in (staging_dir, staging_dir.parent) if parent else (staging_dir,):
        try:
            folder.rmdir()  # only when empty: other runs' files stay
        except FileNotFoundError:
            continue
        except OSError:
            break


def _read_manifest(folder: Path) -> set[str]:
    """The files (relative paths) listed by the manifest of an earlier publishing in ``folder``."""
    try:
        files = json.loads((folder / MANIFEST_NAME).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    out = set()
    for f in files if isinstance(files, list) else []:
        p = Path(str(f))
        if not p.is_absolute() and ".." not in p.parts and p.name != MANIFEST_NAME:
            out.add(p.as_posix())
    return out


class PublishCaseOutputsd(MapTransform):
    """Move a case's files from a staging folder into its output folder, one ``os.replace`` per file.

    The writers of a case (``SaveImaged``, ``SaveMeshd``, ``SavePreviewd`` with ``separate_folder=True``)
    write into ``<staging_dir>/<name>/``; this transform, placed after them, moves each file to
    ``<output_dir>/<name>/``:

    - a case whose writing fails half-way never reaches ``output_dir``;
    - a rerun replaces only the case's own files: each file is replaced in one rename (the earlier version
      stays until the new one is in place), reports (``.json``) last; files of the earlier publishing that
      this one did not write (listed in the folder's :data:`MANIFEST_NAME`) are removed after that; any
      other file in the folder is left alone;
    - the staging folders of the run's cases are removed when the transform is created (leftovers of a
      killed run are never published) and again when it is released or the process ends (a failed case
      leaves nothing in ``staging_dir``); ``staging_dir`` is removed once empty. With ``case_names`` these
      are the folders of those cases, so concurrent runs with other cases can share ``staging_dir``;
      without, the whole ``staging_dir`` is the run's: give each run its own, :func:`run_staging_dir`
      (the folders of ended runs of this host beside it are removed too).

    ``staging_dir`` must be inside ``output_dir`` (one file system, so each rename is atomic).

    Args:
        keys: the key whose ``filename_or_obj`` names the case (as for the writers), e.g. ``"pred"``.
        staging_dir: where the writers write.
        output_dir: where finished cases go.
        case_names: the names of the cases of the run (checked with :func:`check_case_names`), or ``None``
            (the whole ``staging_dir`` belongs to the run).
        allow_missing_keys: skip missing keys.

    Raises:
        BundleInputError: ``staging_dir`` is not inside ``output_dir``, or ``case_names`` share a folder.
    """

    def __init__(
        self,
        keys: KeysCollection,
        staging_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        case_names: Iterable[Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.staging_dir, self.output_dir = Path(staging_dir), Path(output_dir)
        staging, output = self.staging_dir.resolve(), self.output_dir.resolve()
        if output not in staging.parents:
            raise BundleInputError(
                f"staging_dir {self.staging_dir} is not inside the output folder {self.output_dir}; fix: use a "
                f"folder inside it, e.g. {self.output_dir / '.partial'}."
            )
        self._layout = FolderLayout(self.staging_dir, extension="", parent=True, makedirs=False)
        folders = tuple(check_case_names(case_names)) if case_names is not None else None
        self._parent = output in staging.parent.parents  # a run folder of run_staging_dir: tidy its parent too
        if self._parent:
            _remove_dead_runs(self.staging_dir)
        _remove_staged(self.staging_dir, folders, self._parent)  # leftovers of a killed run
        self._finalizer = weakref.finalize(self, _remove_staged, self.staging_dir, folders, self._parent)

    def clear_staging(self) -> None:
        """Remove the run's staging folders now (it also happens when the transform is released)."""
        self._finalizer()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            name = d[key].meta.get("filename_or_obj", str(key)) if isinstance(d[key], MetaTensor) else str(key)
            src = Path(self._layout.filename(subject=str(name))).parent
            if not src.is_dir():
                raise FileNotFoundError(f"no outputs of case {name!r} in {self.staging_dir}; put the writers first.")
            self._publish(src, self.output_dir / src.name)
        _remove_staged(self.staging_dir, (), self._parent)
        return d

    @staticmethod
    def _publish(src: Path, dst: Path) -> None:
        """Move every file of ``src`` into ``dst`` (reports last), drop obsolete own files, write the manifest."""
        files = sorted(
            (p.relative_to(src).as_posix() for p in src.rglob("*") if not p.is_dir() and p.name != MANIFEST_NAME),
            key=lambda f: (f.endswith(".json"), f),
        )
        dst.mkdir(parents=True, exist_ok=True)
        earlier = _read_manifest(dst)
        for f in files:
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src / f, dst / f)
        for f in sorted(earlier - set(files)):
            try:
                (dst / f).unlink(missing_ok=True)
            except OSError:  # replaced by a folder of the user's: theirs now
                pass
        with atomic_path(dst / MANIFEST_NAME) as tmp:  # a temporary name of this process: no race between runs
            tmp.write_text(json.dumps({"case": dst.name, "files": files}, indent=1) + "\n")
        shutil.rmtree(src, ignore_errors=True)
