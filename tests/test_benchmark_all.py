# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""``python -m scripts.tools.benchmark all`` at tiny sizes: every part runs and reports finite figures and ratios.

Timings are never asserted (they depend on the machine and its load), only the report's shape.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from scripts.tools.benchmark import EVERYDAY_PARTS, GOALS, _goals, everyday

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
        # the radiographs part projects the example onto a full detector and runs the shipped finder: a benchmark run
        parts=[p for p in EVERYDAY_PARTS.split(",") if p != "radiographs"],
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(rep))
    return rep


def test_report_has_every_part_with_finite_figures(report):
    assert report["machine"]["torch"] and _finite(report["load_average_1min"]["start"])
    assert {"vertebra", "spine", "train_step", "imports", "drr", "drr_isolated", "goals"} <= set(report)
    v = report["vertebra"]
    assert {"read", "expansion", "network", "hu", "mesh", "write", "preview"} <= set(v["stages_ms"])
    assert all(_finite(x) for x in v["stages_ms"].values())
    assert _finite(v["total_ms"]) and v["total_ms"] <= v["total_with_preview_ms"]
    assert _finite(v["ratio_pipeline_with_preview_to_engine"])
    c = report["confidence"]
    assert _finite(c["ratio"]["median_ms"]) and {"with_confidence", "without_confidence"} <= set(c)
    s = report["spine"]
    assert s["vertebrae"] == 3 and s["batched"]["batch_size"] == 2 and s["one_by_one"]["batch_size"] == 1
    assert {"network", "assemble", "render"} <= set(s["batched"]["stages_ms"])
    assert _finite(s["ratio_batched_to_one_by_one"])
    assert all(_finite(x) for x in report["train_step"]["ratio_ear_to_unet"].values())
    imp = report["imports"]
    assert _finite(imp["torch_monai_ms"]) and _finite(imp["components"]["scripts.io"]["ratio_to_torch_monai"])
    for part in ("drr", "drr_isolated"):
        assert all(_finite(x) for x in report[part]["speedup"].values())
        assert _finite(report[part]["ncc_mono_vs_diffdrr_trilinear"])


def test_goals_are_judged_from_the_report(report):
    assert set(report["goals"]) == set(GOALS) - {"radiographs_s"}, "every goal of the parts run"
    for goal in report["goals"].values():
        assert _finite(goal["value"]) and isinstance(goal["met"], bool)
    assert _goals({"vertebra": {"total_ms": 900.0}})["vertebra_s"] == {
        "what": GOALS["vertebra_s"][0], "value": 0.9, "target": 1.0, "kind": "max", "met": True,
    }  # fmt: skip
    assert not _goals({"drr": {"speedup": {"ours_poly_vs_diffdrr_trilinear": 4.0}}})["drr_speedup"]["met"]


# ---- the projector's shortcuts for isolated vertebrae (what the DRR parts measure) keep the images ----------


def _isolated(n: int = 24) -> torch.Tensor:
    """Background -1024 HU (no density: no material) around soft tissue and bone, away from the borders."""
    hu = torch.full((1, 1, n, n, n), -1024.0)
    hu[0, 0, 6:15, 8:18, 5:20] = 200.0
    hu[0, 0, 9:12, 10:14, 7:11] = 900.0
    return hu


@pytest.mark.parametrize("physics", ["poly", "mono"])
@pytest.mark.parametrize("samples_per_voxel", [1, 2])
def test_skipped_empty_slices_and_materials_do_not_change_the_images(monkeypatch, physics, samples_per_voxel):
    from scripts.drr import projector
    from scripts.drr.geometry import ConeBeamGeometry, grid_affine
    from scripts.drr.physics import material_densities, polychromatic_image

    hu = torch.cat([_isolated(), _isolated().flip(2)])
    affine, geo = grid_affine((24,) * 3, 2.0), ConeBeamGeometry(detector_shape=(20, 18), pixel_spacing=(3.0, 3.2))
    angles = [[0, 0], [90, 0], [30, 10], [180, 80]]
    proj = projector.DRRProjector(geo, physics, photon_count=None, samples_per_voxel=samples_per_voxel)
    fast = proj(hu, affine, angles)
    monkeypatch.setattr(projector, "_occupied_slices", lambda stack, block=8: (0, stack.shape[0]))
    torch.testing.assert_close(proj(hu, affine, angles), fast, rtol=1e-5, atol=1e-5)
    if physics == "poly":  # air is absent and skipped: the same as integrating all three materials
        mats = material_densities(hu[:, 0], 1)
        assert mats[:, 0].abs().max() == 0
        lint = projector.line_integrals(mats, affine, geo, angles, samples_per_voxel=samples_per_voxel)
        ref = polychromatic_image(lint, "60kV", None, False, channel_dim=2, length_scale=0.1)
        torch.testing.assert_close(ref, fast, rtol=1e-5, atol=1e-5)
    blank = torch.full((1, 1, 24, 24, 24), -1024.0)
    assert proj(blank, affine, angles).abs().max() < 1e-6
