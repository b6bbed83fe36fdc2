# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""``python -m scripts.benchmark all`` at tiny sizes: every part runs and reports finite figures and ratios.

Timings are never asserted (they depend on the machine and its load), only the report's shape.
"""

from __future__ import annotations

import json
import math

import pytest
from scripts.tools.benchmark import GOALS, _goals, everyday

pytest.importorskip("diffdrr")  # the DRR part's peer


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "all.json"
    rep = everyday(
        size=32, model="none", channels="4,8,16,32,64", repeat=1, spine_vertebrae=3, batch_size=2, spine_repeat=1,
        train_channels="4,8,16,32,64", train_repeat=1, drr_size=32, drr_repeat=1, import_repeat=1,
        components="scripts.io", paper=False, out=str(out),
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(rep))
    return rep


def test_report_has_every_part_with_finite_figures(report):
    assert report["machine"]["torch"] and _finite(report["load_average_1min"]["start"])
    assert {"vertebra", "spine", "train_step", "imports", "drr", "goals"} <= set(report)
    v = report["vertebra"]
    assert {"read", "expansion", "network", "hu", "mesh", "write", "preview"} <= set(v["stages_ms"])
    assert all(_finite(x) for x in v["stages_ms"].values())
    assert _finite(v["total_ms"]) and v["total_ms"] <= v["total_with_preview_ms"]
    assert _finite(v["ratio_pipeline_with_preview_to_engine"])
    s = report["spine"]
    assert s["vertebrae"] == 3 and s["batched"]["batch_size"] == 2 and s["one_by_one"]["batch_size"] == 1
    assert {"network", "assemble", "render"} <= set(s["batched"]["stages_ms"])
    assert _finite(s["ratio_batched_to_one_by_one"])
    assert all(_finite(x) for x in report["train_step"]["ratio_ear_to_unet"].values())
    imp = report["imports"]
    assert _finite(imp["torch_monai_ms"]) and _finite(imp["components"]["scripts.io"]["ratio_to_torch_monai"])
    assert all(_finite(x) for x in report["drr"]["speedup"].values())
    assert _finite(report["drr"]["ncc_mono_vs_diffdrr_trilinear"])


def test_goals_are_judged_from_the_report(report):
    assert set(report["goals"]) == set(GOALS)
    for goal in report["goals"].values():
        assert _finite(goal["value"]) and isinstance(goal["met"], bool)
    assert _goals({"vertebra": {"total_ms": 900.0}})["vertebra_s"] == {
        "what": GOALS["vertebra_s"][0], "value": 0.9, "target": 1.0, "kind": "max", "met": True,
    }  # fmt: skip
    assert not _goals({"drr": {"speedup": {"ours_poly_vs_diffdrr_trilinear": 4.0}}})["drr_speedup"]["met"]
