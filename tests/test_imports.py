# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Importing the bundle's MONAI components costs nothing beyond MONAI: heavy optional libraries are imported
where they are used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import sys
import monai.transforms, monai.metrics, monai.losses, monai.networks.nets, monai.handlers
before = set(sys.modules)
import scripts.losses, scripts.transforms, scripts.metrics, scripts.networks, scripts.handlers
new = sorted({m.split('.')[0] for m in set(sys.modules) - before} - {'scripts'})
print(','.join(new))
"""


def test_components_import_nothing_beyond_monai():
    res = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    extra = [m for m in (res.stdout.strip().splitlines() or [""])[-1].split(",") if m]
    assert not extra, f"importing the components also imported {extra}"
