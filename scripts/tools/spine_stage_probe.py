# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""A probe of a two-stage body X-ray design: a 2-D stage keeps the spine, a 3-D model of the spine alone reads it.

Usage::

    python -m scripts.tools.spine_stage_probe --dataset_dir data/body64 --model_3d runs/spine_only/models/model.pt \\
        --minutes 14 --draws 8 --out runs/spine_stage_probe

1. A pool of training windows: for each training vertebra and each of ``--draws`` seeded draws of the training's
   window shift and pose (``configs/body.json``), the whole-body X-ray (``DRRd`` of the patient's scan, 10^6
   photons, then the realism draws) and the spine-only X-ray of the same window (:class:`scripts.transforms.SpineDRRd`).
2. A 2-D MONAI ``BasicUNet`` maps each z-scored body view to its spine-only view (L1 loss, Adam 1e-3, batches of 8
   windows, random left-right flips) for ``--minutes`` of wall time; every 200 steps it is scored on the
   validation patient's real body windows (normalised cross-correlation with their true spine-only X-rays) and the
   best is kept.
3. The 3-D model trained on spine-only X-rays (``configs/lab/recipes/spine_only.json``) reconstructs each
   validation vertebra from its true spine-only views, from the 2-D stage's views, and from the 2-D stage's views of
   the vertebra seven places further (the swap test); Dice at -500 HU by MONAI's ``compute_dice``.

Writes ``<out>/stage2d.pt`` and ``<out>/report.json``. Not part of the pipeline: an experiment whose numbers are in
docs/body-xrays.md.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["spine_stage_probe"]

ROOT = Path(__file__).resolve().parents[2]
_VIEWS = [[0.0, 0.0], [90.0, 0.0]]


def _zscore(x: torch.Tensor) -> torch.Tensor:
    m = x.mean((-2, -1), keepdim=True)
    return (x - m) / x.std((-2, -1), keepdim=True).clamp_min(1e-6)


def _ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a - a.mean((-2, -1), keepdim=True)
    b = b - b.mean((-2, -1), keepdim=True)
    return float(((a * b).sum((-2, -1)) / (a.norm(dim=(-2, -1)) * b.norm(dim=(-2, -1)) + 1e-8)).mean())


def spine_stage_probe(
    dataset_dir: str = "data/body64",
    model_3d: str = "runs/spine_only/models/model.pt",
    minutes: float = 14.0,
    draws: int = 8,
    seed: int = 0,
    out: str = "runs/spine_stage_probe",
) -> dict[str, Any]:
    """Run the probe (see the module's docstring); returns the report."""
    import torch.nn.functional as F
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.metrics import compute_dice
    from monai.networks.nets import BasicUNet
    from monai.transforms import Compose
    from scripts.functional import item_seed
    from scripts.networks.model_info import load_state_dict_file
    from scripts.transforms import DimensionExpansiond, DRRd, SeededDRRd, SpineDRRd

    rng = np.random.RandomState(seed)
    torch.manual_seed(seed)
    configs = [str(ROOT / "configs" / c) for c in ("train.json", "cpu.json", "body.json")]
    parser = ConfigParser()
    parser.read_config(configs)
    parser["dataset_dir"] = dataset_dir
    parser["probe_training"] = "$@scripts.workflow.load_split(@dataset_dir, 'training', 'body')"
    parser["probe_validation"] = "$@scripts.workflow.load_split(@dataset_dir, 'validation', 'body')"
    spine = SpineDRRd(dataset_dir, angles=_VIEWS)
    body = DRRd("body", ref_key="gt", output_keys="p_b", angles=_VIEWS, photon_count=1e6)
    draw = Compose(
        parser.get_parsed_content("load_transforms")
        + parser.get_parsed_content("window_transforms")
        + parser.get_parsed_content("augment_transforms")
    )
    realism = Compose(parser.get_parsed_content("realism_transforms"))
    t0 = time.perf_counter()
    pool = []
    for k in range(int(draws)):
        for item in parser.get_parsed_content("probe_training"):
            draw.set_random_state(seed=item_seed(item["id"], 1000 * seed + k))
            body.set_random_state(seed=item_seed(item["id"], 1000 * seed + k + 1))
            d = spine(body(draw(dict(item))))
            x = realism.set_random_state(seed=item_seed(item["id"], 1000 * seed + k + 2))({"drr": d["p_b"]})["drr"]
            pool.append((torch.as_tensor(x).float(), d["drr"].as_tensor().float()))
    pool_s = time.perf_counter() - t0
    load = Compose(parser.get_parsed_content("load_transforms"))
    seeded = SeededDRRd("body", ref_key="gt", output_keys="p_b", angles=_VIEWS, photon_count=1e6)
    val = [spine(seeded(load(dict(it)))) for it in parser.get_parsed_content("probe_validation")]
    vx = torch.stack([v["p_b"].as_tensor() for v in val]).float()
    vy = torch.stack([v["drr"].as_tensor() for v in val]).float()
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(32, 32, 64, 128, 256, 32))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def stage(x: torch.Tensor) -> torch.Tensor:
        b, v, h, w = x.shape
        return net(_zscore(x).reshape(b * v, 1, h, w)).reshape(b, v, h, w)

    Path(out).mkdir(parents=True, exist_ok=True)
    weights = Path(out) / "stage2d.pt"
    baseline = _ncc(torch.stack([q[1] for q in pool]).mean(0).expand_as(vy), vy)
    curve, best, step, start = [], -1.0, 0, time.perf_counter()
    while time.perf_counter() - start < minutes * 60:
        idx = rng.randint(len(pool), size=8)
        x, y = torch.stack([pool[i][0] for i in idx]), torch.stack([pool[i][1] for i in idx])
        if rng.rand() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        loss = F.l1_loss(stage(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            net.eval()
            with torch.no_grad():
                score = _ncc(stage(vx), vy)
            net.train()
            curve.append({"step": step, "loss": round(float(loss.detach()), 4), "val_ncc": round(score, 4)})
            print(json.dumps(curve[-1]), flush=True)
            if score > best:
                best = score
                torch.save(net.state_dict(), weights)
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    p3 = ConfigParser()
    p3.read_config(configs + [str(ROOT / "configs" / "lab" / "recipes" / "spine_only.json")])
    p3["dataset_dir"] = dataset_dir
    model = p3.get_parsed_content("network")
    model.load_state_dict(load_state_dict_file(model_3d))
    model.eval()
    stats = p3.get_parsed_content("stats")
    threshold = (-500.0 - stats["gt_mean"]) / stats["gt_std"]
    expand = DimensionExpansiond("drr", mode="replicate", ref_key="gt")

    def dice(a: torch.Tensor, b: torch.Tensor) -> float:
        ma, mb = ((v > threshold).float()[None, None] for v in (a, b))
        return float(compute_dice(ma, mb, include_background=True, ignore_empty=False))

    rows = []
    with torch.no_grad():
        predicted = stage(vx)
        inputs = []
        for v, p2 in zip(val, predicted):
            geo = {"drr_geometry": v["drr_geometry"], "gt": v["gt"]}
            true = expand({"drr": v["drr"], **geo})["image"]
            pred = expand({"drr": MetaTensor(p2, meta=dict(v["drr"].meta)), **geo})["image"]
            inputs.append((true, pred, (v["gt"][0] - stats["gt_mean"]) / stats["gt_std"], v["id"]))
        for i, (true, pred, gt, vid) in enumerate(inputs):
            other = inputs[(i + 7) % len(inputs)][1]
            rec = model(torch.stack([true, pred, other]))[:, 0]
            rows.append(
                {"id": vid, **{k: dice(r, gt) for k, r in zip(("true_spine", "stage_own", "stage_swapped"), rec)}}
            )
    means = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("true_spine", "stage_own", "stage_swapped")}
    report = {
        "dataset_dir": dataset_dir, "model_3d": model_3d, "draws": draws, "pool": len(pool),
        "pool_seconds": round(pool_s, 1), "steps": step, "minutes": minutes, "val_ncc_best": round(best, 4),
        "val_ncc_mean_spine_baseline": round(baseline, 4), "curve": curve, "mean_dice": means, "vertebrae": rows,
    }  # fmt: skip
    (Path(out) / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"val_ncc_best": report["val_ncc_best"], "baseline": report["val_ncc_mean_spine_baseline"],
                      "mean_dice": means}))  # fmt: skip
    return report


def _main(**kwargs: Any) -> None:
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    spine_stage_probe(**kwargs)


if __name__ == "__main__":
    import fire

    os.chdir(ROOT)
    fire.Fire(_main)
