# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The READMEs name only configs, modules and images that exist."""

from __future__ import annotations

import importlib
import re

import pytest

DOCS = ["README.md", "docs/README.md"]


@pytest.mark.parametrize("doc", DOCS)
def test_named_files_exist(bundle_root, doc):
    text = (bundle_root / doc).read_text()
    configs = set(re.findall(r"configs/[\w/.-]+\.json", text))
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
    assert modules, "the README names commands"
    for name in sorted(modules):
        importlib.import_module(name)
