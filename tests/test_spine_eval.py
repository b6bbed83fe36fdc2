# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The end-to-end scoring of scripts.tools.spine_eval: masks against known overlaps, and the one-to-one matching."""

from __future__ import annotations

import numpy as np
import pytest
from scripts.tools.spine_eval import _match, score_reconstruction


def test_score_of_two_offset_cubes():
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[5:15, 5:15, 5:15] = True
    b[7:17, 5:15, 5:15] = True  # moved 2 voxels: overlap 8 of 10 along x
    dice, hd95 = score_reconstruction(a, b, (1.5, 1.5, 1.5))
    assert dice == pytest.approx(0.8)
    assert hd95 == pytest.approx(3.0)  # 2 voxels of 1.5 mm
    assert score_reconstruction(a, a, (1.0, 1.0, 1.0)) == (1.0, 0.0)
    dice, hd95 = score_reconstruction(np.zeros_like(a), a, (1.0, 1.0, 1.0))
    assert dice == 0.0 and hd95 is None, "a missed vertebra: Dice 0, no HD95"


def test_match_is_one_to_one_within_the_hit_distance():
    truth = [{"level": lv, "centre_mm_world": [0.0, 0.0, z]} for lv, z in (("L1", 0.0), ("L2", -30.0), ("L3", -60.0))]
    reported = [
        {"level": "T12", "centre_world_mm": [1.0, 0.0, -2.0]},  # named wrong, placed at L1
        {"level": "L1", "centre_world_mm": [0.0, 2.0, -5.0]},  # a second report near L1
        {"level": "L2", "centre_world_mm": [0.0, 0.0, -45.0]},  # 15 mm from L2 and L3: no hit
    ]
    got = _match(reported, truth, 10.0)
    assert set(got) == {"L1"} and got["L1"]["level"] == "T12"
    assert _match([], truth, 10.0) == {}
