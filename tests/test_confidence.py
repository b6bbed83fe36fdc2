# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""TTA confidence: exact shift inverses, batched passes, mask agreement, isotonic calibration, the reduction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scripts.confidence import (
    ConfidenceCalibration,
    TTAConfidenced,
    TTAInferer,
    mask_agreement,
    perturb_input,
    shift_volume,
)


def test_shift_round_trip_and_direction():
    x = torch.zeros(1, 1, 9, 9, 9)
    x[0, 0, 4, 4, 4] = 1.0
    moved = shift_volume(x, (2, -1, 0))
    assert moved[0, 0, 6, 3, 4] == 1.0 and float(moved.sum()) == 1.0
    assert torch.equal(shift_volume(moved, (-2, 1, 0)), x)


class _Probe(torch.nn.Module):
    """Sums the views and counts its calls and batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        return x.sum(dim=1, keepdim=True)


def test_tta_inferer_batches_and_undoes_shifts():
    x = torch.zeros(2, 2, 12, 12, 12)
    x[:, :, 5:7, 5:7, 5:7] = 1.0
    net = _Probe()
    out = TTAInferer([{"shift": (2, 0, 1)}, {"shift": (0, -3, 0)}], batch_size=3)(x, net)
    assert out.shape == (2, 3, 12, 12, 12)
    assert net.batches == [3, 3], "six inputs (two items, three copies each) in batches of three"
    for k in range(3):  # shifted predictions moved back onto the input's grid
        assert torch.equal(out[:, k], out[:, 0])
    assert TTAInferer([])(x, _Probe()).shape == (2, 1, 12, 12, 12), "no perturbations: plain inference"
    with pytest.raises(ValueError, match="unknown TTA perturbation"):
        TTAInferer([{"flip": 1}])


def test_perturb_input_rotates_only_the_chosen_view_and_keeps_zscores():
    g = torch.linspace(-1, 1, 16)
    x = torch.stack([g.view(16, 1, 1).expand(16, 16, 16), g.view(1, 16, 1).expand(16, 16, 16)])[None]
    out = perturb_input(x, rotate_deg=(0.0, 10.0), gamma=(1.5, 1.0))
    assert not torch.allclose(out[0, 1], x[0, 1]), "the lateral view turned"
    assert out[0, 0].mean().abs() < 1e-5 and out[0, 0].std() == pytest.approx(1.0, abs=1e-4), "z-scored again"
    assert torch.equal(perturb_input(x), x)


def test_mask_agreement():
    masks = torch.zeros(1, 3, 4, 4, 4, dtype=torch.bool)
    masks[0, 0, :2] = True  # 32 voxels
    masks[0, 1, :2] = True  # identical: Dice 1
    masks[0, 2, :1] = True  # half: Dice 2 * 16 / 48
    assert float(mask_agreement(masks)[0]) == pytest.approx((1.0 + 32 / 48) / 2)
    assert float(mask_agreement(torch.zeros(1, 2, 3, 3, 3, dtype=torch.bool))[0]) == 1.0


def test_isotonic_calibration_is_monotone_and_round_trips():
    agreement = [0.2, 0.3, 0.5, 0.6, 0.8, 0.9]
    dice = [0.3, 0.2, 0.5, 0.7, 0.65, 0.9]  # two violators pooled
    cal = ConfidenceCalibration.fit(agreement, dice, fitted_on="test")
    assert np.all(np.diff(cal.y) >= 0)
    np.testing.assert_allclose(cal([0.25, 0.7, 0.9]), [0.25, 0.675, 0.9])
    assert cal(1.0) == pytest.approx(0.9), "flat above the last knot"
    assert cal(0.0) == 0.0 and cal(0.125) == pytest.approx(0.125), "linear down to (0, 0) below the first knot"
    again = ConfidenceCalibration.from_dict(cal.to_dict())
    np.testing.assert_allclose(again(np.linspace(0, 1, 11)), cal(np.linspace(0, 1, 11)), atol=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        ConfidenceCalibration.fit([0.5], [0.5])


def test_tta_confidenced_reduces_and_flags():
    stack = torch.full((3, 8, 8, 8), -1000.0)
    stack[:, 2:6, 2:6, 2:6] = 300.0
    stack[2, 2:4, 2:6, 2:6] = -1000.0  # one perturbed prediction lost half the bone
    cal = {"x": [0.5, 1.0], "y": [0.2, 0.9]}
    out = TTAConfidenced("pred", threshold=-500.0, calibration=cal, flag_below=0.8)({"pred": MetaTensor(stack)})
    assert out["pred"].shape == (1, 8, 8, 8) and torch.equal(out["pred"][0], stack[0])
    assert out["uncertainty"].shape == (1, 8, 8, 8)
    assert float(out["uncertainty"][0, 3, 3, 3]) == pytest.approx(float(torch.tensor([300.0, 300.0, -1000.0]).std()))
    assert float(out["uncertainty"][0, 5, 5, 5]) == 0.0
    assert out["tta_agreement"] == pytest.approx((1.0 + 2 * 32 / 96) / 2)
    assert out["confidence"] == pytest.approx(0.2 + 0.7 * (out["tta_agreement"] - 0.5) / 0.5)
    assert out["flag"] == "low confidence" and out["confidence_calibrated"] is True
    single = TTAConfidenced("pred", threshold=-500.0)({"pred": stack[:1]})
    assert "confidence" not in single, "TTA off: nothing to report"


def test_study_fits_on_validation_and_scores_test():
    from scripts.tools.confidence_study import fit_and_score

    rng = np.random.default_rng(0)
    rows = []
    for split in ("validation", "test"):
        for cond, kind in (("clean", "clean"), ("window20", "window"), ("view20", "view")):
            for i in range(12):
                dice = float(np.clip(rng.uniform(0.3, 0.95), 0, 1))
                agreement = 0.5 + 0.5 * dice + float(rng.normal(0, 0.02))  # tracks the Dice
                rows.append({"split": split, "condition": cond, "type": kind, "id": f"v{i}", "dice": dice})
                rows[-1]["agreement"] = agreement
    cal, summary, reliability = fit_and_score(rows, held_out="view", low_dice=0.75)
    assert "view" not in cal.fitted_on and "24 vertebra-conditions" in cal.fitted_on
    pooled = next(s for s in summary if s["group"] == "all (pooled)")
    assert pooled["n"] == 36 and pooled["spearman"] > 0.9 and pooled["roc_auc"] > 0.95
    assert next(s for s in summary if s["group"] == "held out: view")["n"] == 12
    assert sum(r["n"] for r in reliability) == 36
    binned = [r for r in reliability if r["n"] > 0]
    assert all(abs(r["mean_confidence"] - r["mean_dice"]) < 0.1 for r in binned), "calibrated: bins on the diagonal"


def test_a_window_far_off_the_vertebra_lowers_the_shipped_models_confidence(example64, tmp_path):
    """The example's T7 with the CPU model: a window centred 20 mm off the vertebra gets a lower Dice and a lower
    calibrated confidence than the window on it (measured: Dice 0.892 -> 0.798, confidence 0.834 -> 0.770)."""
    import csv

    from tests.conftest import ROOT, bundle_workflow

    folder, _ = example64
    rows = {}
    for name, error in (("clean", 0.0), ("off", 20.0)):
        out = tmp_path / name
        wf = bundle_workflow(
            ["train.json", "cpu.json", "evaluate.json"], "eval", dataset_dir=str(folder),
            ckpt_dir=str(ROOT / "models" / "cpu"), output_dir=str(out), window_error_mm=error,
        )  # fmt: skip
        wf.initialize()
        wf.run()
        with open(out / "metrics_per_vertebra.csv") as f:
            rows[name] = next(csv.DictReader(f))
    clean, off = rows["clean"], rows["off"]
    assert float(off["val_dice"]) < float(clean["val_dice"]) - 0.03
    assert float(off["val_confidence"]) < float(clean["val_confidence"]) - 0.03
    assert 0.7 < float(clean["val_confidence"]) <= 1.0, "calibrated: an estimate of the Dice, not the agreement"


def test_confidence_feature_signals_on_phantoms():
    """scripts.tools.confidence_features: a ball's projections against its expanded views, NCC and row profiles."""
    from scripts.functional import normalised_cross_correlation
    from scripts.networks import stack_views, volume_from_views
    from scripts.tools.confidence_features import row_profile_consistency, view_centring, volume_projections

    n = 32
    g = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"))
    ball = (((g - torch.tensor([12.0, 18.0, 20.0]).view(3, 1, 1, 1)) ** 2).sum(0) <= 25).float()[None, None]
    views = volume_projections(ball)
    assert views.shape == (1, 2, n, n)
    # the projections are the means along the beam axes: replicated back and read again, they are unchanged
    np.testing.assert_allclose(stack_views(volume_from_views(views[:, 0], views[:, 1], n, n)), views, atol=1e-6)
    assert float(views[0, 0].sum() * n) == pytest.approx(float(ball.sum()))  # the AP line integrals hold the ball
    ncc = normalised_cross_correlation(views, views)
    np.testing.assert_allclose(ncc, 1.0, atol=1e-5)
    np.testing.assert_allclose(normalised_cross_correlation(views, -views), -1.0, atol=1e-5)
    assert float(normalised_cross_correlation(views, torch.ones_like(views)).abs().max()) == 0.0
    # one ball's two views share their row profiles; views of balls at different heights do not
    assert float(row_profile_consistency(views)[0]) == pytest.approx(1.0, abs=1e-6)
    other = volume_projections(torch.roll(ball, 10, dims=4))
    mixed = torch.stack([views[:, 0], other[:, 1]], dim=1)
    assert float(row_profile_consistency(mixed)[0]) < 0.0
    # a ball half a voxel from the grid's centre gives views as near their centres; moved 6 voxels along z, 6.5 rows
    centred = volume_projections(torch.roll(ball, (4, -2, -4), dims=(2, 3, 4)))  # centre (16, 16, 16) of 0..31: 15.5
    assert float(view_centring(centred)[0]) == pytest.approx(-0.5 * 2**0.5, abs=1e-4)
    moved = volume_projections(torch.roll(ball, (4, -2, 2), dims=(2, 3, 4)))
    assert float(view_centring(moved)[0]) == pytest.approx(-((6.5**2 + 0.5**2) ** 0.5), abs=1e-4)


def test_calibration_with_the_window_centring_weighs_it_by_least_squares():
    rng = np.random.default_rng(1)
    agreement = rng.uniform(0.5, 1.0, 40)
    centring = rng.uniform(0.0, 0.4, 40)
    dice = 0.5 * agreement + 0.25 * centring  # the centring weighs half the agreement
    cal = ConfidenceCalibration.fit(agreement, dice, fitted_on="test", centring=centring)
    assert cal.uses_centring and cal.centring_weight == pytest.approx(0.5)
    np.testing.assert_allclose(cal(agreement, centring), dice, atol=0.02)
    assert cal(0.8, 0.0) < cal(0.8, 0.3), "the same agreement with less evidence of a centred vertebra"
    again = ConfidenceCalibration.from_dict(cal.to_dict())
    assert again.centring_weight == pytest.approx(0.5)
    np.testing.assert_allclose(again(agreement, centring), cal(agreement, centring), atol=1e-3)
    from scripts.errors import BundleInputError

    with pytest.raises(BundleInputError, match="window centring"):
        cal(0.8)
    falling = ConfidenceCalibration.fit(agreement, 0.5 * agreement - 0.25 * centring, centring=centring)
    assert falling.centring_weight is None and not falling.uses_centring, "a centring that falls is no evidence"
    assert "centring_weight" not in ConfidenceCalibration.fit(agreement, dice).to_dict()


def test_tta_confidenced_reads_the_window_centring_of_the_input():
    from scripts.errors import BundleInputError

    stack = torch.full((3, 8, 8, 8), -1000.0)
    stack[:, 2:6, 2:6, 2:6] = 300.0
    cal = {"x": [0.5, 1.5], "y": [0.2, 0.9], "centring_weight": 1.0}
    without = TTAConfidenced("pred", threshold=-500.0, calibration=cal)
    assert without({"pred": stack[:1]})["pred"].shape[0] == 1, "TTA off (--confidence False): nothing to reduce"
    with pytest.raises(BundleInputError, match="window centring"):
        without({"pred": MetaTensor(stack), "image": torch.zeros(2, 8, 8, 8)})
    seen = []

    def centring(image):
        seen.append(tuple(image.shape))
        return 0.25

    reduce = TTAConfidenced("pred", threshold=-500.0, calibration=cal, centring=centring)
    out = reduce({"pred": MetaTensor(stack), "image": torch.zeros(2, 8, 8, 8)})
    assert seen == [(2, 8, 8, 8)] and out["window_centring"] == 0.25 and out["tta_agreement"] == 1.0
    assert out["confidence"] == pytest.approx(0.2 + 0.7 * (1.25 - 0.5))
    plain = TTAConfidenced("pred", threshold=-500.0)({"pred": MetaTensor(stack)})
    assert "window_centring" not in plain


class _BlobFinder(torch.nn.Module):
    """A stand-in for the finder: a heatmap logit of +20 on the finder pixels within 0.75 px of a point
    ``offsets[view flag]`` = (rows, cols) finder pixels from the image's centre (the four pixels about it on an even
    grid), -20 elsewhere; records each view flag."""

    def __init__(self, offsets: dict[int, tuple[float, float]]) -> None:
        super().__init__()
        self.offsets = offsets
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.flags: list[int] = []

    def forward(self, x):
        h, w = x.shape[-2:]
        flag = int(x[0, 1, 0, 0])
        self.flags.append(flag)
        dr, dc = self.offsets[flag]
        r = torch.arange(h, dtype=torch.float32)[:, None] - ((h - 1) / 2 + dr)
        c = torch.arange(w, dtype=torch.float32)[None, :] - ((w - 1) / 2 + dc)
        logit = torch.where(r**2 + c**2 <= 0.5625, 20.0, -20.0)
        return torch.stack([logit, torch.zeros_like(logit)])[None]


def test_window_centring_reads_the_heatmap_within_its_radius_at_the_finders_scale():
    from scripts.errors import BundleInputError
    from scripts.localise import WindowCentring
    from scripts.networks.finder import FINDER_MAGNIFICATION, FINDER_PIXEL_MM

    image = torch.randn(2, 64, 64, 64)
    # 2 mm voxels read at the finder's scale: one finder pixel is 2 mm / magnification 1.5 = 1.33 mm inside
    inside = FINDER_PIXEL_MM / FINDER_MAGNIFICATION
    assert np.hypot(3.5, 0.5) * inside > 4.0 > np.hypot(2.5, 0.5) * inside
    # AP: its pixels 2.1-3.4 mm below the centre (within 4 mm); lateral: 4.7 mm or more to the side (beyond)
    finder = _BlobFinder({0: (2.0, 0.0), 1: (0.0, 4.0)})
    centring = WindowCentring(2.0, finder=finder, radius_mm=4.0)
    assert centring.view_scores(image) == pytest.approx([1.0, 0.0], abs=1e-6), "AP first, lateral second"
    assert finder.flags == [0, 1], "each view with its view flag"
    assert centring(image[None]) == pytest.approx(0.5, abs=1e-6), "the mean of the two views; a batch of one"
    wide = WindowCentring(2.0, finder=_BlobFinder({0: (4.0, 0.0), 1: (0.0, 4.0)}), radius_mm=6.0)
    assert wide(image) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(BundleInputError, match="expanded pair"):
        centring(torch.zeros(3, 8, 8, 8))


def test_the_finders_magnification_is_that_of_the_simulated_radiographs_and_inside_its_training_range():
    import inspect

    from scripts.networks.finder import FINDER_MAGNIFICATION
    from scripts.simulate import simulate_radiographs
    from scripts.tools.finder_data import draw_pair

    p = inspect.signature(simulate_radiographs).parameters
    assert p["sdd"].default / p["sod"].default == pytest.approx(FINDER_MAGNIFICATION)
    rng = np.random.default_rng(0)
    drawn = [d["sdd"] / d["sod"] for d in (draw_pair(rng) for _ in range(500))]
    assert min(drawn) < FINDER_MAGNIFICATION < max(drawn)


def test_configs_compute_the_window_centring_when_the_calibration_uses_it():
    from scripts.localise import WindowCentring
    from scripts.workflow import window_centring

    uses = {"x": [0.5, 1.0], "y": [0.2, 0.9], "centring_weight": 0.8}
    assert window_centring(None, True, {"x": [0.5], "y": [0.5]}, 2.0) is None
    assert window_centring(None, False, uses, 2.0) is None, "no confidence, no centring"
    assert window_centring(False, True, {"x": [0.5], "y": [0.5]}, 2.0) is None
    made = window_centring(None, True, uses, 2.0)
    assert isinstance(made, WindowCentring) and made.spacing_mm == 2.0
    assert isinstance(window_centring(True, True, None, 1.0), WindowCentring), "forced on, e.g. to calibrate"
    from scripts.errors import BundleInputError

    with pytest.raises(BundleInputError, match="True, False or null"):
        window_centring("no", True, uses, 2.0)
    with pytest.raises(BundleInputError, match="--confidence False"):
        window_centring(False, True, uses, 2.0)
    with pytest.raises(BundleInputError, match="an AP and a lateral view"):
        window_centring(True, True, None, 2.0, views=[[0, 0], [60, 0]])
    with pytest.raises(BundleInputError, match="'replicate'"):
        window_centring(True, True, None, 2.0, expansion_mode="backproject")
    assert window_centring(None, True, uses, 2.0, views=[[180, 0], [270, 0]]) is not None, "PA and the other lateral"
    from scripts.workflow import confidence_columns

    assert confidence_columns(False, made) == []
    assert confidence_columns(True, None) == ["confidence", "tta_agreement"]
    assert confidence_columns(True, made) == ["confidence", "tta_agreement", "window_centring"]


def _disc_views(background: str, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Two 64 x 64 views of a disc of radius 16 (value 1): on an empty detector, or on a body's ramp (2 to 3)."""
    r, c = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disc = (((r - 31.5) ** 2 + (c - 31.5) ** 2) <= 16.0**2).float()
    base = torch.zeros(64, 64) if background == "empty" else 2.0 + c / 63.0
    views = torch.stack([base + disc, base + disc.T])
    return views + noise * torch.randn(views.shape, generator=torch.Generator().manual_seed(seed))


def test_background_share_of_an_isolated_and_a_surrounded_phantom():
    from scripts.confidence import ISOLATED_BACKGROUND_SHARE, input_type_of, view_background_share
    from scripts.networks.views import volume_from_views

    # the share outside the disc, between the disc as drawn (0.804) and the disc grown by the 5-wide box filter's
    # half-diagonal (radius 16 + 2 sqrt 2: 0.728)
    grown = 1.0 - math.pi * (16.0 + 2.0 * math.sqrt(2.0)) ** 2 / 64**2
    outside = 1.0 - math.pi * 16.0**2 / 64**2
    isolated = view_background_share(_disc_views("empty"))
    assert all(grown <= v <= outside for v in isolated)
    assert view_background_share(_disc_views("empty"), smooth=1) == pytest.approx([outside, outside], abs=0.005)
    # photon noise (3 % of the disc's value) leaves the background a background: the views are smoothed first
    assert min(view_background_share(_disc_views("empty", noise=0.03))) > grown - 0.03
    assert view_background_share(_disc_views("empty", noise=0.03), smooth=1)[0] < 0.5, "unsmoothed, noise spreads it"
    # on the ramp only the columns within 5 % of the range above the lowest are "empty"
    assert max(view_background_share(_disc_views("ramp"))) < 0.15
    # the network's input: each view replicated along its beam reads as its view
    ap, lateral = _disc_views("empty")
    volume = volume_from_views(ap[None], lateral[None], 64, 64)[0]
    kind, share = input_type_of(volume)
    assert kind == "isolated" and share >= grown and share >= ISOLATED_BACKGROUND_SHARE
    ap, lateral = _disc_views("ramp")
    assert input_type_of(volume_from_views(ap[None], lateral[None], 64, 64)[0])[0] == "surrounded"
    # bone dark on a bright empty detector (a forgotten --invert), a view without contrast, a NaN pixel
    assert input_type_of(-_disc_views("empty"))[0] == "inverted"
    assert input_type_of(torch.stack([_disc_views("empty")[0], torch.full((64, 64), 3.0)]))[0] == "blank"
    with_nan = _disc_views("empty")
    with_nan[0, 5, 5] = float("nan")
    assert input_type_of(with_nan) == (
        "isolated",
        pytest.approx(view_background_share(_disc_views("empty"))[0], abs=0.01),
    )


def test_tta_confidenced_zeroes_the_confidence_of_views_unlike_the_models():
    from scripts.errors import BundleInputError
    from scripts.networks.views import volume_from_views

    stack = torch.full((5, 8, 8, 8), -1000.0)
    stack[:, 2:6, 2:6, 2:6] = 500.0
    cal = ConfidenceCalibration([0.5, 1.0], [0.5, 0.9])
    views = {k: volume_from_views(*[v[None] for v in _disc_views(k)], 64, 64)[0] for k in ("empty", "ramp")}
    reduce = TTAConfidenced("pred", threshold=-500.0, calibration=cal, flag_below=0.3, expected_input="isolated")
    same = reduce({"pred": MetaTensor(stack), "image": views["empty"]})
    assert same["confidence"] == pytest.approx(0.9) and same["flag"] == "" and same["input_type"] == "isolated"
    other = reduce({"pred": MetaTensor(stack), "image": views["ramp"]})
    assert other["confidence"] == 0.0 and other["tta_agreement"] == pytest.approx(1.0)
    assert other["input_type"] == "surrounded" and other["input_background_share"] < 0.15
    assert other["flag"].startswith("input unlike the model's X-rays")
    # what to do, for both ways in: the bundle runner's configs and scripts.spine radiographs' option
    fix = "(add configs/body_model.json to --config_file; scripts.spine radiographs: --reconstruction_model body)"
    assert fix in other["flag"]
    assert other["confidence_calibrated"] is False and same["confidence_calibrated"] is True
    body = TTAConfidenced("pred", threshold=-500.0, calibration=cal, expected_input="surrounded")
    flagged = body({"pred": MetaTensor(stack), "image": views["empty"]})
    assert flagged["confidence"] == 0.0 and "without configs/body_model.json" in flagged["flag"]
    inverted = volume_from_views(*[-v[None] for v in _disc_views("empty")], 64, 64)[0]
    assert "--invert True" in reduce({"pred": MetaTensor(stack), "image": inverted})["flag"]
    # TTA off: no confidence, but the check still flags the case
    single = reduce({"pred": MetaTensor(stack[:1]), "image": views["ramp"]})
    assert "confidence" not in single and single["flag"].startswith("input unlike")
    # no check without an expected type; a wrong type or a missing input is named
    plain = TTAConfidenced("pred", threshold=-500.0, calibration=cal)(
        {"pred": MetaTensor(stack), "image": views["ramp"]}
    )
    assert plain["confidence"] == pytest.approx(0.9) and "input_type" not in plain
    with pytest.raises(BundleInputError, match="expected_input 'body'"):
        TTAConfidenced("pred", threshold=-500.0, expected_input="body")
    with pytest.raises(BundleInputError, match="input type check reads"):
        reduce({"pred": MetaTensor(stack)})


def test_configs_check_the_input_type_the_model_records(tmp_path):
    from scripts import workflow
    from scripts.errors import BundleInputError
    from scripts.networks import EAR, attach_model_info

    def model(source):
        net = attach_model_info(
            EAR(channels=(4, 8, 16, 32, 64)),
            {"gt_mean": 0.0, "gt_std": 1.0},
            2.0,
            32,
            [[0.0, 0.0], [90.0, 0.0]],
            "replicate",
            {"drr_source": source} if source else {},
        )
        path = tmp_path / f"{source}.pt"
        torch.save(net.state_dict(), path)
        return path

    assert workflow.expected_input(True, model("gt")) == "isolated"
    assert workflow.expected_input(True, model("body")) == workflow.expected_input(True, model("ct")) == "surrounded"
    assert workflow.expected_input(False, model("gt")) is None
    assert workflow.expected_input(True, model("gt"), expansion_mode="backproject") is None
    assert workflow.expected_input(True, model(None)) is None
    with pytest.raises(BundleInputError, match="--input_check is True or False"):
        workflow.expected_input("yes", model("gt"))
    assert workflow.confidence_columns(True, None, "isolated")[-1] == "input_background_share"
    assert workflow.confidence_columns(False, None, "isolated") == ["input_background_share"]


def test_the_study_needs_a_validation_and_a_test_split_before_it_runs(tmp_path):
    import json

    from scripts.tools.confidence_study import confidence_study

    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"id": "a"}], "validation": [{"id": "b"}]}))
    with pytest.raises(ValueError, match="has no split 'test'"):
        confidence_study(dataset_dir=str(tmp_path), out=str(tmp_path / "study"))
    assert not list(tmp_path.glob("study*")), "nothing is written"
