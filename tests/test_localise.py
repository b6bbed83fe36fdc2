# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The vertebra finder: network shapes, heatmap peaks, triangulation, matching, level naming, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scripts.drr.windows import RadiographView
from scripts.errors import BundleInputError, XRayInputError
from scripts.finder import FinderDetectionMetric, FinderLoss, FinderTargetsd, render_targets
from scripts.localise import (
    LevelPin,
    ViewDetections,
    chain_steps,
    epipolar_profiles,
    localise_vertebrae,
    match_detections,
    match_epipolar,
    name_levels,
    parse_level_pin,
    triangulate,
)
from scripts.networks.finder import LEVELS, VertebraFinder, finder_input, heatmap_peaks, level_index, level_name

SHAPE = (160, 160)
VIEWS = [
    RadiographView(1200.0, 800.0, SHAPE, (2.0, 2.0), (0.0, 0.0)),
    RadiographView(1200.0, 800.0, SHAPE, (2.0, 2.0), (90.0, 0.0)),
]
# a spine of five vertebrae (system frame, mm): T12 .. L4, 30 mm apart, curving a little
SPINE = np.array([[2.0 * i - 4.0, -20.0 + 3.0 * i, 60.0 - 30.0 * i] for i in range(5)])
SPINE_LEVELS = [level_index(x) for x in ("T12", "L1", "L2", "L3", "L4")]


def _projected(points: np.ndarray) -> list[np.ndarray]:
    return [view.project(torch.as_tensor(points))[0].numpy() for view in VIEWS]


def test_levels_and_network_shapes():
    assert len(LEVELS) == 24 and level_name(level_index("l5")) == "L5" and level_index("C1") == 0
    with pytest.raises(ValueError, match="unknown vertebra level"):
        level_index("L6")
    net = VertebraFinder(features=(4, 4, 8, 8, 16, 4))
    out = net(finder_input(torch.rand(2, 1, 37, 50), [0, 1]))
    assert out.shape == (2, 2, 37, 50), "any size in, the same size out"
    with pytest.raises(ValueError, match="image and the view flag"):
        net(torch.rand(1, 1, 32, 32))


def test_peaks_of_a_synthetic_heatmap_land_on_the_centres():
    centres = np.array([[20.3, 30.6], [45.0, 33.2], [70.7, 37.9]])
    heat, levels = render_targets((100, 80), centres, [19, 20, 21])
    rc, scores = heatmap_peaks(heat[0] * torch.tensor([1.0]), threshold=0.3)
    order = np.argsort(rc[:, 0].numpy())
    np.testing.assert_allclose(rc.numpy()[order], centres, atol=0.3)
    assert (scores > 0.8).all()
    assert levels[1].sum() > 0 and set(levels[0][levels[1] > 0].unique().tolist()) == {19.0, 20.0, 21.0}
    empty, _ = heatmap_peaks(torch.zeros(10, 10))
    assert empty.shape == (0, 2)


def test_targets_loss_and_metric():
    item = FinderTargetsd("image")({"image": torch.zeros(1, 64, 64), "centres": [[20, 30], [40, 31]], "levels": [3, 4]})
    label = torch.cat([item["heatmap"], item["level_map"]])[None]
    perfect = torch.stack([torch.logit(label[0, 0].clamp(1e-4, 1 - 1e-4)), label[0, 1]])[None]
    loss = FinderLoss()
    assert float(loss(perfect, label)) < float(loss(torch.zeros_like(perfect), label))
    metric = FinderDetectionMetric()
    metric(perfect, label)
    assert float(metric.aggregate()) == pytest.approx(1.0)


def test_triangulation_round_trip():
    pa, pl = _projected(SPINE)
    points, gaps = triangulate(VIEWS, pa, pl)
    diag = np.arange(len(SPINE))
    np.testing.assert_allclose(points[diag, diag], SPINE, atol=1e-6)
    assert gaps[diag, diag].max() < 1e-6
    off = gaps[~np.eye(len(SPINE), dtype=bool)]
    assert off.min() > 20.0, "rays of different vertebrae miss each other by about their spacing"


def _dets(rc: np.ndarray, levels=None) -> ViewDetections:
    lv = np.zeros(len(rc)) if levels is None else np.asarray(levels, dtype=float)
    return ViewDetections(np.asarray(rc, dtype=float), np.full(len(rc), 0.9), lv)


def test_matching_is_one_to_one_and_rejects_inconsistent_pairs():
    pa, pl = _projected(SPINE)
    shuffled = pl[::-1].copy()
    stray = np.array([[pl[2, 0] + 9.0, pl[2, 1]]])  # 9 pixels lower: its ray passes about 12 mm from any AP ray
    pairs = match_detections(VIEWS, _dets(pa + 0.3), _dets(np.concatenate([shuffled, stray])), tolerance_mm=5.0)
    assert len(pairs) == len(SPINE)
    for i, j, centre, gap in pairs:
        assert j == len(SPINE) - 1 - i and gap < 5.0
        np.testing.assert_allclose(centre, SPINE[i], atol=1.0)
    alone = match_detections(VIEWS, _dets(pa[:1]), _dets(stray), tolerance_mm=5.0)
    assert alone == [], "a pair whose rays miss by more than the tolerance is not a vertebra"
    with pytest.raises(BundleInputError, match="positive distance"):
        match_detections(VIEWS, _dets(pa), _dets(pl), tolerance_mm=0.0)


def test_level_naming_from_evidence_and_from_a_pin():
    truth = np.array(SPINE_LEVELS)
    noisy = truth + np.array([0.8, -0.6, 0.4, -0.9, 1.3])
    np.testing.assert_array_equal(name_levels(noisy), truth)
    wrong = truth + 3.0  # evidence three levels off: the pin decides
    np.testing.assert_array_equal(name_levels(wrong, pinned=(4, level_index("L4"))), truth)
    # a vertebra missed in the chain: the long step counts two levels
    kept = np.delete(SPINE, 2, axis=0)
    steps = chain_steps(np.concatenate([SPINE[:1] + [0, 0, 30.0], kept]))
    np.testing.assert_array_equal(steps, [1, 1, 2, 1])
    named = name_levels(np.zeros(5), steps, pinned=(4, level_index("L4")))
    assert [level_name(i) for i in named] == ["T11", "T12", "L1", "L3", "L4"]


def test_level_pins():
    assert parse_level_pin("L5=ap:812,640") == LevelPin("L5", "ap", (812.0, 640.0))
    assert parse_level_pin(" t12 = lateral: 10.5, 7") == LevelPin("T12", "lateral", (10.5, 7.0))
    assert parse_level_pin("L5", centre_mm=[1, 2, 3]) == LevelPin("L5", centre_mm=(1.0, 2.0, 3.0))
    assert parse_level_pin(None) is None
    for bad, match in [("L5=pa:1,2", "LEVEL=VIEW:ROW,COL"), ("X9=ap:1,2", "unknown vertebra level"),
                       ("L5", "says no position")]:  # fmt: skip
        with pytest.raises(BundleInputError, match=match):
            parse_level_pin(bad)


class _StubFinder(torch.nn.Module):
    """Returns fixed heatmap peaks per view (finder pixels (row, col)) and a constant level evidence."""

    def __init__(self, peaks: dict[int, np.ndarray], evidence: float = 0.0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.peaks, self.evidence = peaks, evidence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = int(round(float(x[0, 1].mean())))
        heat, _ = render_targets(x.shape[-2:], self.peaks.get(view, np.zeros((0, 2))), [0] * len(self.peaks[view]))
        logits = torch.logit(heat[0].clamp(1e-4, 1 - 1e-4))
        return torch.stack([logits, torch.full_like(logits, self.evidence)])[None]


def test_localise_with_a_stub_finder_names_the_pinned_spine(caplog):
    pa, pl = _projected(SPINE)
    net = _StubFinder({0: pa, 1: pl}, evidence=5.0)  # pixels of 2 mm: the finder's own size
    images = [np.random.default_rng(0).random(SHAPE) for _ in VIEWS]
    found = localise_vertebrae(images, VIEWS, net, pin=f"L4=lateral:{pl[4, 0]:.2f},{pl[4, 1]:.2f}")
    assert [v.level for v in found] == ["T12", "L1", "L2", "L3", "L4"]
    np.testing.assert_allclose([v.centre_mm for v in found], SPINE, atol=1.0)
    assert all(v.ray_gap_mm < 1.0 and max(v.reprojection_mm.values()) < 1.0 for v in found)
    assert found[0].named_by == "pin" and 0.5 < found[0].scores["pair"] <= 1.0
    assert "levels named without a pin" not in caplog.text
    unpinned = localise_vertebrae(images, VIEWS, net)
    assert [v.level_index for v in unpinned] == list(range(3, 8)), "named from the evidence alone"
    assert "levels named without a pin" in caplog.text and "--level" in caplog.text, "unpinned names are warned of"
    with pytest.raises(BundleInputError, match="beside the spine found.*the finder missed this spine.*--centres"):
        localise_vertebrae(images, VIEWS, net, pin="L4=ap:5,5")
    beyond = pa[0] + 5.0 * (pa[0] - pa[1])  # on the spine's line, five steps above its top
    with pytest.raises(BundleInputError, match="beyond the vertebrae found"):
        localise_vertebrae(images, VIEWS, net, pin=f"T7=ap:{beyond[0]:.2f},{beyond[1]:.2f}")
    beside = (pa[1] + pa[2]) / 2 + np.array([0.0, 30.0])  # between L1 and L2, 60 mm to the side on the detector
    with pytest.raises(BundleInputError, match="beside the spine found"):
        localise_vertebrae(images, VIEWS, net, pin=f"L1=AP:{beside[0]:.2f},{beside[1]:.2f}")
    missed = _StubFinder({0: np.delete(pa, 2, axis=0), 1: np.delete(pl, 2, axis=0)})
    found = localise_vertebrae(images, VIEWS, missed, pin=f"L2=ap:{pa[2, 0]:.2f},{pa[2, 1]:.2f}")
    assert [v.level for v in found] == ["T12", "L1", "L3", "L4"], "a pinned vertebra that was missed still names"
    found = localise_vertebrae(images, VIEWS, missed, pin=LevelPin("L2", centre_mm=tuple(SPINE[2])))
    assert [v.level for v in found] == ["T12", "L1", "L3", "L4"]


def test_bad_inputs_end_in_one_line():
    pa, pl = _projected(SPINE)
    images = [np.zeros(SHAPE), np.zeros(SHAPE)]
    net = _StubFinder({0: pa, 1: pl})
    with pytest.raises(XRayInputError, match="two radiographs"):
        localise_vertebrae(images[:1], VIEWS[:1], net)
    same = [VIEWS[0], RadiographView(1200.0, 800.0, SHAPE, (2.0, 2.0), (10.0, 0.0))]
    with pytest.raises(XRayInputError, match="degrees apart"):
        localise_vertebrae(images, same, net)
    with pytest.raises(XRayInputError, match="lateral: no spine found"):
        localise_vertebrae(images, VIEWS, _StubFinder({0: pa, 1: np.zeros((0, 2))}))
    inconsistent = _StubFinder({0: pa[:2], 1: pl[3:]})
    with pytest.raises(XRayInputError, match="the other view shows none .* no consistent vertebra"):
        localise_vertebrae(images, VIEWS, inconsistent)
    with pytest.raises(XRayInputError, match="no pair of detections .* no consistent vertebra"):
        localise_vertebrae(images, VIEWS, inconsistent, matching="assignment")
    from scripts.spine import find_vertebrae

    with pytest.raises(XRayInputError, match="got the AP"):
        find_vertebrae("ap.dcm", None)
    for e in (XRayInputError, BundleInputError):
        assert issubclass(e, ValueError)


def test_training_pairs_of_a_synthetic_scan(tmp_path):
    """scripts.tools.finder_data: the projected centres land on their bone blocks, in every draw's geometry."""
    import json

    from scripts.tools.finder_data import build_datalist, draw_pair, rotation_matrix, simulate_pair

    hu = torch.full((1, 60, 56, 80), -1000.0)
    hu[0, 8:52, 6:50, :] = 20.0
    centres_vox = [(30, 26, 60), (30, 28, 40), (30, 30, 20)]
    for x, y, z in centres_vox:
        hu[0, x - 5 : x + 6, y - 4 : y + 5, z - 3 : z + 4] = 1500.0
    affine = torch.eye(4, dtype=torch.float64) * 2.0
    affine[3, 3] = 1.0
    affine[:3, 3] = torch.tensor([-60.0, -40.0, -80.0])
    world = [(affine[:3, :3] @ torch.tensor(c, dtype=torch.float64) + affine[:3, 3]).tolist() for c in centres_vox]
    vertebrae = [{"level": lv, "centre_mm_world": w} for lv, w in zip(("T11", "T12", "L1"), world)]
    from scripts.tools.finder_data import add_bowel_gas

    gassy, pockets = add_bowel_gas(hu, affine, vertebrae, np.random.default_rng(0))
    changed = gassy != hu
    assert pockets and changed.any() and (gassy[changed] == -1000.0).all() and (hu[changed] > -500).all()
    assert (hu == torch.where(changed, hu, gassy)).all(), "the scan given is not changed"
    draw = draw_pair(np.random.default_rng(3))
    assert 1000 <= draw["sdd"] <= 1500 and 200 <= draw["sdd"] - draw["sod"] <= 500
    rot = rotation_matrix(draw["rotation_deg"])
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert all(abs(a) <= b for a, b in zip(draw["rotation_deg"], (5.0, 5.0, 8.0)))
    tilts = [draw_pair(np.random.default_rng(s), (30.0, 0.0, 0.0))["rotation_deg"] for s in range(40)]
    assert all(abs(t[0]) <= 30.0 and t[1] == t[2] == 0.0 for t in tilts) and max(abs(t[0]) for t in tilts) > 20.0
    with pytest.raises(ValueError, match="rotation_deg"):
        draw_pair(np.random.default_rng(0), (-1.0, 5.0, 5.0))
    draw.update(photon_count=None, isocentre_offset_mm=[0.0, 0.0, 0.0])
    images, record = simulate_pair(hu, affine, vertebrae, draw, seed=0, detector_mm=200.0)
    assert images.shape == (2, 100, 100)
    for k, name in enumerate(("ap", "lateral")):
        for v in record["vertebrae"]:
            assert v[f"{name}_inside"]
            r, c = (int(round(x)) for x in v[f"{name}_rc"])
            assert images[k, r, c] >= 0.9 * images[k].max(), "the centre lands on its block"
    (tmp_path / "P" / "P_000.json").parent.mkdir()
    record["vertebrae"][0]["lateral_inside"] = False
    (tmp_path / "P" / "P_000.json").write_text(json.dumps(record))
    dl = build_datalist(tmp_path, {"P": "training"})
    assert [len(i["centres"]) for i in dl["training"]] == [3, 2], "only centres inside an image count for it"
    assert dl["training"][1]["levels"] == [level_index("T12"), level_index("L1")] and dl["training"][1]["view"] == 1


@pytest.mark.slow
def test_the_shipped_finder_on_the_validation_patients_radiographs(tmp_path):
    """The shipped finder on the validation patient's default simulated pair (needs data/body64 and ../shared)."""
    from pathlib import Path

    from scripts.localise import DEFAULT_FINDER_MODEL
    from scripts.tools.finder_eval import finder_eval

    root = Path(__file__).resolve().parents[1]
    needed = [root / "data/body64/datalist.json", root.parent / "shared/data/spine-ct/ts_s0308_seg.nii.gz"]
    if not all(p.is_file() for p in needed + [DEFAULT_FINDER_MODEL]):
        pytest.skip("needs data/body64, ../shared/data/spine-ct and models/finder/model.pt")
    report = finder_eval(split="validation", labels_dir=str(needed[1].parent), work=str(tmp_path))
    pinned = report["pooled"]["pinned"]["all"]
    assert pinned["recall"] >= 0.8 and pinned["precision"] >= 0.8
    assert pinned["level_accuracy_of_hits"] >= 0.8


def test_crowded_neighbours_keep_the_stronger():
    from scripts.localise import drop_crowded

    chain = [{"centre": c, "scores": [0.9, 0.9]} for c in SPINE]
    extra = {"centre": (SPINE[1] + SPINE[2]) / 2 + [0, 0, 3.0], "scores": [0.3, 0.4]}
    kept = drop_crowded(chain[:2] + [extra] + chain[2:])
    assert len(kept) == len(SPINE) and all(k is not extra for k in kept)
    assert len(drop_crowded(chain)) == len(SPINE), "an even chain keeps every vertebra"


def test_crowding_is_judged_against_the_steps_nearby():
    """A whole spine: steps grow from 15 mm (upper thoracic) to 35 mm (lumbar). Extra detections 12 mm below two
    lumbar vertebrae shorten the chain's overall median to 15 mm, against which 12 mm is not crowded; against the
    lumbar steps nearby it is, and both extras go, while every real vertebra stays."""
    from scripts.localise import drop_crowded

    steps = [15.0] * 8 + [20.0, 25.0, 30.0] + [35.0] * 5
    z = -np.concatenate([[0.0], np.cumsum(steps)])
    chain = [{"centre": np.array([0.0, 0.0, v]), "scores": [0.8, 0.8]} for v in z]
    extras = [{"centre": np.array([0.0, 0.0, z[k] - 12.0]), "scores": [0.3, 0.3]} for k in (13, 15)]
    mixed = chain[:14] + [extras[0]] + chain[14:16] + [extras[1]] + chain[16:]
    kept = drop_crowded(mixed)
    assert len(kept) == len(chain) and not any(k is e for k in kept for e in extras)
    assert len(drop_crowded(chain)) == len(chain), "steps that grow down the spine are not crowding"


@pytest.mark.parametrize(
    "steps", [[30, 60], [30, 60, 60, 30], [25, 25, 50, 50, 25], [35, 70, 35, 70], [15, 15, 15, 30, 15, 15, 30, 15]]
)
def test_missed_vertebrae_do_not_make_their_neighbours_look_crowded(steps):
    """Steps of two levels (a vertebra missed between) beside steps of one: every detection is a vertebra."""
    from scripts.localise import drop_crowded

    z = -np.concatenate([[0.0], np.cumsum(steps)])
    chain = [{"centre": np.array([0.0, 0.0, v]), "scores": [0.8, 0.8]} for v in z]
    assert len(drop_crowded(chain)) == len(chain)


def test_a_detection_between_two_vertebrae_is_dropped_beside_a_gap():
    from scripts.localise import drop_crowded

    steps = [30.0, 30.0, 12.0, 18.0, 30.0, 60.0, 30.0]  # 12 + 18: one extra inside a 30 mm step; 60: a missed one
    z = -np.concatenate([[0.0], np.cumsum(steps)])
    chain = [{"centre": np.array([0.0, 0.0, v]), "scores": [0.8, 0.8]} for v in z]
    chain[3]["scores"] = [0.3, 0.3]
    kept = drop_crowded(chain)
    assert len(kept) == len(chain) - 1 and all(k is not chain[3] for k in kept)


def test_epipolar_matching_finds_a_faint_spine_behind_stronger_distractors():
    pa, pl = _projected(SPINE)
    gas = SPINE + np.array([0.0, -75.0, 0.0])  # pockets 75 mm in front of each vertebra (anterior: -y)
    _, pg = _projected(gas)
    spine_heat, _ = render_targets(SHAPE, pl, [0] * len(pl))
    gas_heat, _ = render_targets(SHAPE, pg, [0] * len(pg))
    lateral = torch.maximum(0.3 * spine_heat[0], 0.9 * gas_heat[0])  # the spine answers weaker than the gas
    anchors = ViewDetections(pa, np.full(len(pa), 0.8), np.zeros(len(pa)))
    found = match_epipolar(VIEWS, anchors, lateral, (1.0, 1.0))
    assert [i for i, _, _ in found] == list(range(len(SPINE)))
    np.testing.assert_allclose(np.stack([c for _, c, _ in found]), SPINE, atol=1.0)
    assert all(0.25 < score <= 0.3 for _, _, score in found), "the spine's own heatmap height, not the gas's"
    # without the prior that the radiographs are centred on the spine, the stronger gas wins
    lost = match_epipolar(VIEWS, anchors, lateral, (1.0, 1.0), depth_sigma_mm=None)
    np.testing.assert_allclose(np.stack([c for _, c, _ in lost])[:, 1], gas[:, 1], atol=1.0)  # at the gas's depth
    # the profiles: the heatmap along each anchor's ray peaks where the ray meets the vertebra
    points, prof = epipolar_profiles(VIEWS, pa[:1], spine_heat[0], (1.0, 1.0))
    np.testing.assert_allclose(points[0, int(np.argmax(prof[0]))], SPINE[0], atol=1.0)


def test_localise_epipolar_with_a_stub_finder():
    pa, pl = _projected(SPINE)
    off_centre = np.array([[pa[2, 0], pa[2, 1] - 60.0]])  # a detection 80 mm beside the spine (bowel gas in AP)
    net = _StubFinder({0: np.concatenate([pa, off_centre]), 1: pl}, evidence=5.0)
    images = [np.random.default_rng(0).random(SHAPE) for _ in VIEWS]
    found = localise_vertebrae(images, VIEWS, net, matching="epipolar")
    np.testing.assert_allclose([v.centre_mm for v in found], SPINE, atol=1.0)
    assert all(v.ray_gap_mm == 0.0 and max(v.reprojection_mm.values()) < 1.0 for v in found)
    assert [v.level_index for v in found] == list(range(3, 8))
    with pytest.raises(BundleInputError, match="matching='closest'"):
        localise_vertebrae(images, VIEWS, net, matching="closest")


def test_segment_tilts_of_a_straight_and_a_leaning_chain():
    """scripts.tools.finder_data.segment_tilts: centres 30 mm apart down z, leaning 30 degrees toward +y, then 20
    degrees toward -x."""
    from scripts.tools.finder_data import segment_tilts

    t30, t20 = np.tan(np.radians(30.0)), np.tan(np.radians(20.0))
    centres = [[0.0, 0.0, 0.0], [0.0, 0.0, -30.0], [0.0, 30.0 * t30, -60.0], [-30.0 * t20, 30.0 * t30, -90.0]]
    np.testing.assert_allclose(segment_tilts(centres), [[0.0, 0.0], [30.0, 0.0], [0.0, -20.0]], atol=1e-9)
    assert segment_tilts([[1.0, 2.0, 3.0]]).shape == (0, 2)


def test_label_fit_tells_labels_on_the_bone_from_labels_beside_it():
    """scripts.tools.finder_data.label_fit: a label on a bone block holds bone only and has none next to it; the same
    label moved by half the block holds as little bone as its surroundings."""
    from scripts.tools.finder_data import label_fit

    hu = np.full((30, 30, 30), 40.0, np.float32)
    hu[10:20, 10:20, 10:20] = 400.0
    on = np.zeros((30, 30, 30), np.int16)
    on[10:20, 10:20, 10:20] = 20
    fit = label_fit(hu, on, shell_voxels=2)
    assert fit == {"median_hu_inside": 400.0, "bone_share_inside": 1.0, "bone_share_shell": 0.0}
    off = np.roll(on, 5, axis=1)
    fit = label_fit(hu, off, shell_voxels=2)
    assert fit["bone_share_inside"] == 0.5 and 0.1 < fit["bone_share_shell"] < 0.5


def test_a_prepared_datasets_manifest_gives_the_label_map_and_levels_of_any_convention(tmp_path):
    """finder_data.label_source: a patient with no ``<patient>_seg.nii.gz`` (VerSe ids) takes the label map and the
    level of each value that the prepared dataset's manifest records, whatever the map's numbering; its centres are
    the blocks' centroids, and simulated radiographs name them (simulate_patient)."""
    import csv
    import json

    import nibabel as nib
    from scripts.tools.finder_data import label_source, manifest_levels, patient_vertebrae, simulate_patient

    hu = np.full((60, 56, 80), -1000.0, dtype=np.float32)
    hu[8:52, 6:50, :] = 20.0
    labels = np.zeros(hu.shape, dtype=np.int16)
    for value, (x, y, z) in ((201, (30, 26, 55)), (202, (30, 28, 25))):  # values of no known convention
        labels[x - 5 : x + 6, y - 4 : y + 5, z - 3 : z + 4] = value
        hu[x - 5 : x + 6, y - 4 : y + 5, z - 3 : z + 4] = 1200.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-60.0, -40.0, -80.0]
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "p1_labels.nii.gz")
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "p1_body.nii.gz")
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["patient", "level", "label", "status", "source_mask"])
        w.writeheader()
        for level, value in (("T12", 201), ("L1", 202), ("L2", 203)):  # L2: recorded, not in this map
            w.writerow({"patient": "p1", "level": level, "label": value, "status": "ok",
                        "source_mask": str(tmp_path / "p1_labels.nii.gz")})  # fmt: skip
    assert manifest_levels(data, "p1")[1] == {201: "T12", 202: "L1", 203: "L2"}
    assert manifest_levels(data, "p2") is None and manifest_levels(tmp_path / "none", "p1") is None
    other = tmp_path / "verse_maps"  # a VerSe map of the same name elsewhere: the dataset's own map wins
    other.mkdir()
    nib.save(nib.Nifti1Image(np.zeros_like(labels), affine), other / "p1_seg.nii.gz")
    source = label_source("p1", other, data)
    assert source[0] == str(tmp_path / "p1_labels.nii.gz") and source[3][201] == "T12"
    found = patient_vertebrae(*source)
    assert [v["level"] for v in found] == ["T12", "L1"]
    np.testing.assert_allclose(found[0]["centre_mm_world"], affine[:3, :3] @ [30, 26, 55] + affine[:3, 3])
    with pytest.raises(FileNotFoundError, match="no label map .*p2_seg.nii.gz for p2"):
        label_source("p2", tmp_path / "no_verse_maps", data)
    nib.save(nib.Nifti1Image(labels, affine), other / "p2_seg.nii.gz")  # not in the manifest: the VerSe map
    assert label_source("p2", other, data) == (str(other / "p2_seg.nii.gz"), "verse", None, None)
    with open(data / "manifest.csv", "a", newline="") as f:  # per-structure masks: a folder, not a label map
        csv.writer(f).writerow(["p3", "L1", 1, "ok", str(tmp_path / "segmentations")])
    (tmp_path / "segmentations").mkdir()
    with pytest.raises(FileNotFoundError, match="is a folder"):
        label_source("p3", other, data)
    rad = simulate_patient(str(tmp_path / "p1_body.nii.gz"), source[0], tmp_path / "work", *source[1:])
    named = json.loads((rad / "centres.json").read_text())["vertebrae"]
    assert [v["level"] for v in named] == ["T12", "L1"]


def test_body_file_names_the_prepare_command_for_a_dataset_without_whole_scans(tmp_path):
    from scripts.errors import BundleInputError
    from scripts.tools.finder_data import body_file

    assert body_file(tmp_path, {"id": "P_L1", "body": "P/P_body.nii.gz"}) == str(tmp_path / "P/P_body.nii.gz")
    with pytest.raises(BundleInputError, match=r"P_L1 has no 'body' entry .* python -m scripts.prepare --out "):
        body_file(tmp_path, {"id": "P_L1", "patient": "P"})
