# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The READMEs and the docs pages name only configs, modules and images that exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = ["README.md", "docs/README.md"]
# the model card's topic pages (docs/*.md); docs/monailabel.md has its own test in test_monailabel.py
DOCS = READMES + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if p.name != "README.md")


@pytest.mark.parametrize("doc", DOCS)
def test_named_files_exist(bundle_root, doc):
    text = (bundle_root / doc).read_text()
    configs = set(re.findall(r"configs/[\w/.-]+\.json", text))
    if doc in READMES:
        assert configs, "the README names configs"
    for path in sorted(configs):
        assert (bundle_root / path).is_file(), f"{doc} names {path}, which does not exist"
    for image in re.findall(r"\]\(((?:docs/)?images/[\w.-]+\.png)\)", text):
        path = image if image.startswith("docs/") else f"docs/{image}"
        assert (bundle_root / path).is_file(), f"{doc} shows {image}, which does not exist"


@pytest.mark.parametrize("doc", DOCS)
def test_named_modules_import(bundle_root, doc):
    text = (bundle_root / doc).read_text()
    modules = set(re.findall(r"python -m (scripts(?:\.\w+)+)", text))
    if doc in READMES:
        assert modules, "the README names commands"
    for name in sorted(modules):
        importlib.import_module(name)
