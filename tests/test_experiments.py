# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The experiment runner: variants trained and evaluated alike, tables of mean ± std per variant and patient."""

from __future__ import annotations

import csv
import json
import math

import pytest
from scripts.metrics import METRIC_NAMES
from scripts.tools import experiments
from tests.test_workflows import SMALL, dataset

__all__ = ["dataset"]  # the synthetic dataset fixture of test_workflows


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
    with pytest.raises(FileNotFoundError, match="scripts.prepare"):
        experiments.run_experiment("recipes", str(tmp_path), str(tmp_path / "out"))


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
    "name, variant", [(n, v) for n in ("methods", "modules", "losses", "recipes") for v in experiments.EXPERIMENTS[n]]
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
