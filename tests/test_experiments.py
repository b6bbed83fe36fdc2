# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The experiment runner: variants trained and evaluated alike, tables of mean ± std per variant and patient."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scripts.metrics import METRIC_NAMES
from scripts.tools import experiments
from tests.test_workflows import SMALL


def _fake_variant(root, variant, rows):
    folder = root / variant / "eval_validation"
    folder.mkdir(parents=True)
    with open(folder / "metrics_per_vertebra.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id"] + [f"val_{n}" for n in METRIC_NAMES])
        for vid, value in rows:
            writer.writerow([vid] + [value] * len(METRIC_NAMES))
    (root / variant / "done.json").write_text(json.dumps({"variant": variant, "epochs": 1, "train_s": 60.0}))


def test_summarise_means_per_variant_and_patient(tmp_path):
    _fake_variant(tmp_path, "a", [("ts_s0561_L1", 0.8), ("ts_s0561_L2", 0.9), ("verse081_T12", 0.7)])
    _fake_variant(tmp_path, "b", [("ts_s0561_L1", 0.5), ("ts_s0561_L2", 0.5), ("verse081_T12", float("nan"))])
    md = experiments.summarise(tmp_path, ["a", "b"])
    with open(tmp_path / "summary.csv") as f:
        rows = {(r["variant"], r["group"]): r for r in csv.DictReader(f)}
    assert float(rows[("a", "all")]["dice_mean"]) == pytest.approx(0.8)
    assert float(rows[("a", "all")]["dice_std"]) == pytest.approx(0.1)
    assert float(rows[("a", "ts_s0561")]["dice_mean"]) == pytest.approx(0.85), "patient = id without its level"
    assert rows[("b", "all")]["n"] == "3" and float(rows[("b", "all")]["dice_mean"]) == 0.5, "NaN left out"
    assert rows[("b", "all")]["dice_n"] == "2", "and counted out"
    assert "| b | all | 3 | 0.500 ± 0.000 (n=2) |" in md.read_text()
    assert math.isnan(float(rows[("a", "verse081")]["dice_std"]))
    text = md.read_text()
    assert "| a | all | 3 | 0.800 ± 0.100 |" in text
    assert (tmp_path / "runs.csv").is_file() and (tmp_path / "per_vertebra.csv").is_file()


def test_table_of_any_evaluations(tmp_path):
    _fake_variant(tmp_path / "runs", "old", [("colonog0532_L1", 0.7), ("colonog0532_L2", 0.8)])
    _fake_variant(tmp_path / "runs", "new", [("colonog0532_L1", 0.9), ("colonog0532_L2", 0.9)])
    evals = f"old={tmp_path / 'runs/old/eval_validation'},new={tmp_path / 'runs/new/eval_validation'}"
    experiments.main("table", out=str(tmp_path / "cmp"), evals=evals)
    text = (tmp_path / "cmp" / "summary.md").read_text()
    assert "| old | all | 2 | 0.750 ± 0.071 |" in text and "| new | colonog0532 | 2 | 0.900 ± 0.000 |" in text


def test_unknown_experiment_and_variant(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment"):
        experiments.run_experiment("nothing", str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="unknown variants"):
        experiments.run_experiment("recipes", str(tmp_path), str(tmp_path / "out"), variants=["pose", "x"])
    with pytest.raises(ValueError, match="scripts.prepare"):
        experiments.run_experiment("recipes", str(tmp_path), str(tmp_path / "out"))
    # splits the variants need are checked before the first one trains
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"id": "a"}], "validation": [{"id": "b"}]}))
    with pytest.raises(ValueError, match=r"has no items in 'valid'; the variants train on 'training'"):
        experiments.run_experiment("recipes", str(tmp_path), str(tmp_path / "out"), split="valid")
    # a misspelt option would reach every bundle run as an unused override (every variant at the default budget)
    with pytest.raises(ValueError, match=r"--epoch is neither an option nor a key .*; did you mean --epochs\?"):
        experiments.run_experiment("recipes", str(tmp_path), str(tmp_path / "out"), extra={"epoch": "3"})
    # keys of the configs pass, nested ones by their first part
    assert experiments._check_overrides([["configs/train.json"]], {"learning_rate": "1e-3", "validate#x": "0"}) is None
    assert not (tmp_path / "out").exists()


# slow: its checks are in test_modules_runner_writes_every_table_and_figure (two variants, then a rerun)
@pytest.mark.slow
def test_run_trains_evaluates_and_skips_finished_variants(dataset, tmp_path, capsys):
    small = {k: json.dumps(v) for k, v in SMALL.items()}
    args = dict(epochs=1, variants=["pose"], extra={**small, "warmup_epochs": "1"})
    out = experiments.run_experiment("recipes", str(dataset), str(tmp_path / "out"), **args)
    with open(out / "per_vertebra.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["id"]) for r in rows] == [("pose", "P2_T3")], "the validation vertebra, once"
    assert 0.0 <= float(rows[0]["dice"]) <= 1.0
    assert (out / "pose" / "models" / "model.pt").is_file()
    experiments.run_experiment("recipes", str(dataset), str(tmp_path / "out"), **args)
    assert "done before, skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, variant",
    [(n, v) for n in ("methods", "modules", "losses", "recipes", "angles") for v in experiments.EXPERIMENTS[n]],
)
def test_every_variant_builds_its_network_and_loss(name, variant):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    files = ["configs/train.json", "configs/cpu.json", *experiments.EXPERIMENTS[name][variant]]
    parser.read_config([str(experiments.ROOT / f) for f in files])
    parser["stats"] = {"gt_mean": -1000.0, "gt_std": 200.0}  # no dataset needed to build them
    net = parser.get_parsed_content("network_def")
    loss = parser.get_parsed_content("loss")
    assert sum(p.numel() for p in net.parameters()) > 0 and loss.weights["recon"] == 1.0
    if name == "modules":
        flags = {k: parser.get(f"network_def#{k}") for k in ("use_abs", "use_fem", "use_eam")}
        expected = {
            "baseline": (0, 0, 0),
            "abs": (1, 0, 0),
            "abs_fem": (1, 1, 0),
            "ear": (1, 1, 1),
            "no_fem": (1, 0, 1),
        }
        assert tuple(int(v) for v in flags.values()) == expected[variant]
    if name == "losses":
        order = ["rec", "rec_edge", "rec_edge_freq", "ear"].index(variant)
        assert [loss.weights[k] > 0 for k in ("edge", "freq", "proj")] == [order >= 1, order >= 2, order >= 3]
    if name == "angles":  # view 2 lateral, view 1 at the named angle from it, back-projected
        views = np.asarray(parser.get_parsed_content("views"))
        assert views[1].tolist() == [90.0, 0.0] and views[0, 0] == 90.0 - int(variant[3:])
        assert parser.get_parsed_content("expansion_mode") == "backproject"


def _rows(diffs_by_patient: dict[str, list[float]]) -> list[dict]:
    """per_vertebra rows of a reference ``ear`` (dice 0.8) and a variant ``a`` (0.8 + the given differences)."""
    rows = []
    for p, diffs in diffs_by_patient.items():
        for i, d in enumerate(diffs):
            vid = f"{p}_L{i + 1}"
            rows.append({"variant": "ear", "id": vid, "patient": p, "dice": "0.8"})
            rows.append({"variant": "a", "id": vid, "patient": p, "dice": str(0.8 + d)})
    return rows


def test_paired_differences_bootstrap_over_patients():
    rows = _rows({"P1": [0.01, 0.03], "P2": [0.05], "P3": [-0.01, 0.00, 0.01]})
    (d,) = experiments.paired_differences(rows, "ear", metrics=["dice"], n_boot=500)
    assert (d["variant"], d["n"], d["patients"]) == ("a", 6, 3)
    assert d["mean_diff"] == pytest.approx(0.015)
    # patients resampled whole: the interval lies within the range of the patients' own mean differences
    assert -0.0 - 1e-9 <= d["ci_low"] <= d["mean_diff"] <= d["ci_high"] <= 0.05 + 1e-9
    assert d["per_patient"] == "P1: +0.0200; P2: +0.0500; P3: +0.0000"
    assert d["method"].startswith("95% bootstrap over 3 patients")


def test_paired_differences_with_two_patients_are_descriptive():
    rows = _rows({"P1": [0.02, 0.04], "P2": [-0.01]})
    rows.append({"variant": "a", "id": "P9_L1", "patient": "P9", "dice": "0.9"})  # no reference: not paired
    (d,) = experiments.paired_differences(rows, "ear", metrics=["dice"])
    assert d["n"] == 3 and d["mean_diff"] == pytest.approx(0.05 / 3)
    assert math.isnan(d["ci_low"]) and math.isnan(d["ci_high"])
    assert d["method"].startswith("descriptive only")


def test_modules_runner_writes_every_table_and_figure(dataset, tmp_path, capsys, monkeypatch):
    """One epoch of EAR and EAR without FEM: tables with every column, paired differences, all three figures; a
    rerun skips the finished variants."""
    small = {k: json.dumps(v) for k, v in SMALL.items()}
    args = dict(epochs=1, variants=["ear", "no_fem"], extra={**small, "warmup_epochs": "1"})
    out = experiments.run_experiment("modules", str(dataset), str(tmp_path / "out"), **args)
    with open(out / "per_vertebra.csv") as f:
        rows = list(csv.DictReader(f))
    pairs = sorted((r["variant"], r["id"]) for r in rows)
    assert pairs == [("ear", "P2_T3"), ("no_fem", "P2_T3")], "the validation vertebra, once per variant"
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert all((out / v / "models" / "model.pt").is_file() for v in ("ear", "no_fem"))
    with open(out / "summary.csv") as f:
        header = next(csv.reader(f))
    assert {f"{n}_{s}" for n in METRIC_NAMES for s in ("mean", "std", "n")} <= set(header)
    with open(out / "paired.csv") as f:
        paired = list(csv.DictReader(f))
    assert {(r["variant"], r["reference"]) for r in paired} == {("no_fem", "ear")}
    assert {r["metric"] for r in paired} == {n for n, _ in experiments.TABLE_METRICS}
    assert all(r["method"].startswith(("descriptive only", "no vertebra")) for r in paired), "one validation patient"
    md = (out / "summary.md").read_text()
    assert "Paired per-vertebra difference to ear" in md and "| no_fem | dice |" in md
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["edge_attention_P2_T3.png", "fem_difference_P2_T3.png", "surface_P2_T3.png"]
    assert all((out / "figures" / f).stat().st_size > 10_000 for f in figures)
    assert (out / "figures" / "ear_P2_T3_hu.nii.gz").is_file() and (out / "figures" / "P2_T3_gt_hu.nii.gz").is_file()
    capsys.readouterr()
    monkeypatch.setattr(experiments, "make_figures", lambda *a, **k: [])  # drawn above
    experiments.run_experiment("modules", str(dataset), str(tmp_path / "out"), **args)
    assert capsys.readouterr().out.count("done before, skipped") == 2


# slow: covered by test_modules_runner_writes_every_table_and_figure (bundle runs, figures),
# test_angles_runner_tables_without_training (angle table, plot, reference to deg90) and
# test_an_angle_variant_trains_and_evaluates (an angles overlay trains and evaluates)
@pytest.mark.slow
def test_angles_runner_writes_the_angle_table_and_plot(dataset, tmp_path):
    small = {k: json.dumps(v) for k, v in SMALL.items()}
    out = experiments.run_experiment(
        "angles", str(dataset), str(tmp_path / "out"), epochs=1, variants=["deg140", "deg90"], extra=small
    )
    with open(out / "angles.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["angle_deg"]) for r in rows] == [90, 140], "sorted by angle"
    with open(out / "paired.csv") as f:
        paired = list(csv.DictReader(f))
    assert {(r["variant"], r["reference"]) for r in paired} == {("deg140", "deg90")}, "compared with orthogonal views"
    assert set(rows[0]) == {"angle_deg"} | {f"{m}_{s}" for m in ("dice", "psnr", "assd") for s in ("mean", "std")}
    assert (out / "angles.png").stat().st_size > 10_000
    assert (out / "figures" / "surface_P2_T3.png").is_file()


def test_angles_runner_tables_without_training(tmp_path, monkeypatch):
    """The angles experiment's own steps, the bundle runs replaced by their results: the angle table and plot, and
    paired differences taken to orthogonal views."""
    dice = {"deg140": 0.6, "deg90": 0.8}
    calls = []

    def bundle(configs, overrides, log):
        calls.append((configs[-1], "eval" if "configs/evaluate.json" in configs else "train"))
        if "configs/evaluate.json" in configs:
            variant = Path(overrides["output_dir"]).parent.name
            folder = Path(overrides["output_dir"])
            folder.mkdir(parents=True)
            with open(folder / "metrics_per_vertebra.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["id"] + [f"val_{n}" for n in METRIC_NAMES])
                writer.writerow(["P2_T3"] + [dice[variant]] * len(METRIC_NAMES))
        return 1.0

    monkeypatch.setattr(experiments, "_bundle", bundle)
    monkeypatch.setattr(experiments, "make_figures", lambda *a, **k: [])
    (tmp_path / "data").mkdir()
    lists = {"training": [{"id": "P1_T2"}], "validation": [{"id": "P2_T3"}]}
    (tmp_path / "data" / "datalist.json").write_text(json.dumps(lists))
    out = experiments.run_experiment("angles", str(tmp_path / "data"), str(tmp_path / "out"), epochs=1,
                                     variants=["deg140", "deg90"])  # fmt: skip
    assert calls == [(f"configs/lab/angles/{v}.json", step) for v in ("deg140", "deg90") for step in ("train", "eval")]
    with open(out / "angles.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["angle_deg"]) for r in rows] == [90, 140], "sorted by angle"
    assert [float(r["dice_mean"]) for r in rows] == [0.8, 0.6]
    assert set(rows[0]) == {"angle_deg"} | {f"{m}_{s}" for m in ("dice", "psnr", "assd") for s in ("mean", "std")}
    with open(out / "paired.csv") as f:
        paired = list(csv.DictReader(f))
    assert {(r["variant"], r["reference"]) for r in paired} == {("deg140", "deg90")}, "compared with orthogonal views"
    assert (out / "angles.png").stat().st_size > 10_000


def test_an_angle_variant_trains_and_evaluates(dataset, tmp_path):
    """An angles overlay (an oblique view, back-projection) through training and evaluation, in this process."""
    from scripts.networks import read_model_info
    from tests.conftest import bundle_workflow

    overlay = experiments.EXPERIMENTS["angles"]["deg140"][0].removeprefix("configs/")
    ckpt = tmp_path / "models"
    common = dict(dataset_dir=str(dataset), ckpt_dir=str(ckpt), **SMALL)
    train = bundle_workflow(["train.json", "cpu.json", overlay], "train", output_dir=str(tmp_path / "runs"), epochs=1,
                            warmup_epochs=1, **common)  # fmt: skip
    train.initialize()
    train.run()
    info = read_model_info(ckpt / "model.pt")
    assert info["views"] == [[-50.0, 0.0], [90.0, 0.0]] and info["expansion_mode"] == "backproject"
    evaluate = bundle_workflow(["train.json", "evaluate.json", "cpu.json", overlay], "eval",
                               output_dir=str(tmp_path / "eval"), **common)  # fmt: skip
    evaluate.initialize()
    evaluate.run()
    with open(tmp_path / "eval" / "metrics_per_vertebra.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["P3_T4"] and 0.0 <= float(rows[0]["val_dice"]) <= 1.0
