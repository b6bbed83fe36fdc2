# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

BUNDLE_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    """The bundle's root folder."""
    return BUNDLE_ROOT
