# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The bundle's metadata and layout satisfy MONAI's bundle tools."""

from __future__ import annotations

import json
import subprocess
import sys

import monai
import numpy
import torch


def test_verify_metadata_against_kept_schema(bundle_root):
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "verify_metadata",
        "--meta_file",
        str(bundle_root / "configs" / "metadata.json"),
        "--filepath",
        str(bundle_root / "configs" / "schema" / "metadata.schema.json"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=bundle_root, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "metadata is verified with no error" in res.stdout + res.stderr


def test_metadata_versions_match_installed(bundle_root):
    meta = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"], "the current version needs a changelog entry"
    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == numpy.__version__
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 2
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 1


def test_layout(bundle_root):
    for name in ["LICENSE", "README.md", "large_files.yml", "configs/logging.conf", "docs/README.md"]:
        assert (bundle_root / name).is_file(), name
    assert "Apache License" in (bundle_root / "LICENSE").read_text()
    card = (bundle_root / "docs" / "README.md").read_text()
    for section in ["Model Description", "Data", "Preprocessing", "Performance", "MONAI Bundle Commands"]:
        assert f"## {section}" in card


def test_download_large_files_reads_the_list(bundle_root):
    """`monai.bundle download_large_files` parses large_files.yml (it needs PyYAML, a pinned requirement)."""
    cmd = [sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle_root)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=bundle_root, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_large_files_list_every_weight_file_with_its_hash(bundle_root):
    import hashlib

    import yaml

    listed = {e["path"]: e for e in yaml.safe_load((bundle_root / "large_files.yml").read_text())["large_files"]}
    shipped = [p for name in ("model.pt", "model.ts") for p in (bundle_root / "models").rglob(name)]
    weights = {str(p.relative_to(bundle_root)) for p in shipped}  # checkpoint_last.pt of a local run is not shipped
    assert set(listed) == weights, "every shipped weight file is listed, and only those"
    for path, entry in listed.items():
        assert entry["hash_type"] == "sha256"
        assert hashlib.sha256((bundle_root / path).read_bytes()).hexdigest() == entry["hash_val"], path
