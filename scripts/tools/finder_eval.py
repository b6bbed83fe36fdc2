# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Measure the vertebra finder on simulated full radiographs of whole scans (the numbers of
docs/spine-radiographs.md).

Usage::

    python -m scripts.tools.finder_eval --split test --out docs/results/finder_test.json \\
        --figure docs/images/finder_colonog0532.png

For every patient of the split (``data/body64/datalist.json``) the raw label map (``--labels_dir``) is resampled
onto the prepared body scan's grid (:func:`scripts.tools.finder_data.labels_on_grid`) and the pair is simulated
exactly as ``python -m scripts.simulate radiographs --ct <patient>_body.nii.gz --labels <labels> --out DIR`` does
with its default settings (430 mm detector of 2 mm pixels, source-detector 1200 mm, source-isocentre 800 mm,
60 kV, 10^6 photons, seed 0, isocentre at the labelled vertebrae's mean centre). The finder
(:func:`scripts.spine.find_vertebrae`) then reads ``ap.dcm`` and ``lateral.dcm``, once without and once with a
pinned level (the lowest vertebra between C1 and L5 the split holds complete, at its true centre in the AP file,
``"L5=ap:row,col"``).

Counted: every labelled vertebra whose centre lies inside both images (``centres.json``, ``inside_both``),
including those the scan cuts (their centre is the mean of the voxels the scan holds); ``complete`` rows count only
the vertebrae the prepared split holds (not cut). One to one (``linear_sum_assignment`` on the 3-D distance), a
reported vertebra within ``--hit_mm`` (10 mm) of a true centre is a hit: recall = hits / true, precision = hits /
reported; 3-D error over the hits (mean, 95th percentile); level accuracy = hits named right / hits, and / true
(a miss counts wrong). A run that stops with an input error counts as nothing found; a pin that lies near no
vertebra found counts as every level wrong.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scripts.tools.finder_data import body_file, match_centres, simulate_patient

__all__ = ["simulate_patient", "score_case", "finder_eval", "draw_detections", "draw_heatmaps"]

ROOT = Path(__file__).resolve().parents[2]


def score_case(
    found: list[dict], truth: list[dict], complete: set[str], hit_mm: float = 10.0
) -> tuple[dict[str, Any], list[dict]]:
    """Recall, precision, 3-D error and level accuracy of one case's report against its true centres.

    Args:
        found: the finder's vertebrae (``centre_mm``, ``level``).
        truth: ``centres.json`` vertebrae inside both images (``centre_mm_system``, ``level``).
        complete: the levels the prepared split holds complete.
        hit_mm: the farthest a hit may lie from its true centre.

    Returns:
        ``(counts, rows)``: counts for pooling, and one row per true vertebra.
    """
    match = match_centres([v["centre_mm_system"] for v in truth], [v["centre_mm"] for v in found], hit_mm)
    rows = []
    for i, v in enumerate(truth):
        j, dist = match.get(i, (None, None))
        rows.append(
            {
                "level": v["level"],
                "complete": v["level"] in complete,
                "found": j is not None,
                "error_mm": None if j is None else round(dist, 2),
                "named": None if j is None else found[j]["level"],
                "named_right": bool(j is not None and found[j]["level"] == v["level"]),
            }
        )
    counts = {"true": len(truth), "reported": len(found), "hits": len(match)}
    return counts, rows


def _summary(rows: list[dict], reported: int) -> dict[str, Any]:
    hits = [r for r in rows if r["found"]]
    errors = np.array([r["error_mm"] for r in hits], dtype=np.float64)
    n_hits = len(hits)
    right = sum(r["named_right"] for r in hits)
    return {
        "true": len(rows),
        "reported": reported,
        "hits": n_hits,
        "recall": round(n_hits / len(rows), 4) if rows else None,
        "precision": round(n_hits / reported, 4) if reported else None,
        "error_mm_mean": round(float(errors.mean()), 2) if n_hits else None,
        "error_mm_p95": round(float(np.percentile(errors, 95)), 2) if n_hits else None,
        "level_accuracy_of_hits": round(right / n_hits, 4) if n_hits else None,
        "level_accuracy_of_true": round(right / len(rows), 4) if rows else None,
    }


def draw_detections(rad_dir: Path, result: dict, truth: list[dict], path: str | os.PathLike, title: str) -> None:
    """The two radiographs with the true centres (circles) and the finder's vertebrae (crosses, named)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scripts.io.radiograph import read_radiograph

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.6))
    for ax, name in zip(axes, ("ap", "lateral")):
        rad = read_radiograph(rad_dir / f"{name}.dcm")
        ax.imshow(rad.image, cmap="gray")
        t = np.array([v[f"{name}_rc"] for v in truth]).reshape(-1, 2)
        ax.scatter(t[:, 1], t[:, 0], s=60, facecolors="none", edgecolors="lime", linewidths=1.2, label="true centre")
        for v in result["vertebrae"]:
            r, c = v["rc"][name]
            ax.plot(c, r, "r+", ms=9, mew=1.5)
            ax.text(c + 6, r + 2, v["level"] or "?", color="yellow", fontsize=7)
        ax.set_title(f"{name} ({rad.image.shape[0]} x {rad.image.shape[1]}, 2 mm pixels)", fontsize=9)
        ax.axis("off")
    axes[0].legend(loc="lower left", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=80)
    plt.close(fig)


def draw_heatmaps(
    patients: Sequence[str], work: str = "runs/finder_eval", model: str | None = None, path: str = "heatmaps.png"
) -> None:
    """Each patient's simulated pair (under ``work``, from :func:`finder_eval`) beside the finder's heatmaps, with the
    true centres (circles) and every heatmap peak of 0.05 or more (crosses).

    Usage: ``python -m scripts.tools.finder_eval draw_heatmaps "['colonog0532','colonog0694','ts_s0308']" --path
    docs/images/finder_heatmaps.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scripts.io.radiograph import read_radiograph
    from scripts.localise import finder_maps, load_finder
    from scripts.networks.finder import heatmap_peaks

    net = load_finder(model)
    fig, axes = plt.subplots(2, 2 * len(patients), figsize=(8 * len(patients), 8.5), squeeze=False)
    for k, patient in enumerate(patients):
        rad = Path(work) / patient / "rad"
        centres = json.loads((rad / "centres.json").read_text())["vertebrae"]
        for v, name in enumerate(("ap", "lateral")):
            image = read_radiograph(rad / f"{name}.dcm")
            true = np.array([c[f"{name}_rc"] for c in centres]).reshape(-1, 2)
            heat, _, _ = finder_maps(net, image.image, image.pixel_spacing, v)
            rc, _ = heatmap_peaks(heat, 0.05, 3)
            ax = axes[v, 2 * k]
            ax.imshow(image.image, cmap="gray")
            ax.plot(true[:, 1], true[:, 0], "go", mfc="none")
            ax.plot(rc[:, 1], rc[:, 0], "r+")
            ax.set_title(f"{patient} {name}: heatmap max {float(heat.max()):.2f}")
            axes[v, 2 * k + 1].imshow(heat, vmin=0, vmax=0.5)
    fig.tight_layout()
    fig.savefig(str(path), dpi=40)
    plt.close(fig)


def finder_eval(
    split: str = "test",
    data: str = "data/body64",
    labels_dir: str = "../shared/data/spine-ct",
    model: str | None = None,
    work: str = "runs/finder_eval",
    out: str | None = None,
    figure: str | None = None,
    hit_mm: float = 10.0,
    threshold: float | None = None,
    tolerance_mm: float | None = None,
    matching: str | None = None,
) -> dict[str, Any]:
    """Measure the finder on one split's simulated radiographs (see the module docstring).

    Args:
        split: ``test`` or ``validation`` (or ``training``) of ``data``.
        data: the prepared dataset.
        labels_dir: the raw label maps.
        model: the finder's weights (default the shipped ``models/finder/model.pt``).
        work: where the simulated radiographs go (reused when there).
        out: the JSON report (default: printed only).
        figure: a PNG of the first patient's detections.
        hit_mm: the hit distance.
        threshold: the finder's heatmap threshold (default :data:`scripts.localise.DEFAULT_THRESHOLD`).
        tolerance_mm: the largest ray miss of a pair (default :data:`scripts.localise.DEFAULT_MATCH_TOLERANCE_MM`).
        matching: ``"epipolar"``, ``"assignment"`` or ``"chain"`` (default :data:`scripts.localise.DEFAULT_MATCHING`).

    Returns:
        the report.
    """
    import torch
    from scripts.errors import BundleInputError
    from scripts.io.radiograph import read_radiograph
    from scripts.localise import DEFAULT_MATCH_TOLERANCE_MM, DEFAULT_THRESHOLD, load_finder
    from scripts.networks.finder import LEVELS
    from scripts.spine import file_px, find_vertebrae
    from scripts.tools.finder_data import label_source

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    tolerance_mm = DEFAULT_MATCH_TOLERANCE_MM if tolerance_mm is None else float(tolerance_mm)
    import scripts.localise as localise

    matching = localise.DEFAULT_MATCHING if matching is None else str(matching)
    options = {"threshold": threshold, "tolerance_mm": tolerance_mm, "matching": matching}
    dl = json.loads((Path(data) / "datalist.json").read_text())
    patients: dict[str, dict] = {}
    for item in dl[split]:
        p = patients.setdefault(item["patient"], {"body": body_file(data, item), "levels": []})
        p["levels"].append(item["level"])
    net = load_finder(model)
    report: dict[str, Any] = {"patients": {}, "rows": []}
    pooled: dict[str, list] = {"unpinned": [], "pinned": []}
    reported = {"unpinned": 0, "pinned": 0}
    seconds = []
    for k, (patient, info) in enumerate(patients.items()):
        label_path, convention, class_map, levels = label_source(patient, labels_dir, data)
        rad = simulate_patient(info["body"], label_path, Path(work) / patient, convention, class_map, levels)
        truth = [v for v in json.loads((rad / "centres.json").read_text())["vertebrae"] if v["inside_both"]]
        complete = set(info["levels"])
        lowest = [v for v in truth if v["level"] in complete and v["level"] in LEVELS][-1]  # S1 is not a level
        r, c = file_px(read_radiograph(rad / "ap.dcm"), lowest["ap_rc"])
        pin = f"{lowest['level']}=ap:{r:.1f},{c:.1f}"
        entry: dict[str, Any] = {"pin": pin, "true_levels": [v["level"] for v in truth]}
        for mode, level in (("unpinned", None), ("pinned", pin)):
            start = time.perf_counter()
            error = None
            try:
                result = find_vertebrae(rad / "ap.dcm", rad / "lateral.dcm", net, level=level, **options)
            except BundleInputError as e:  # counted: nothing found, or (pin far from every vertebra) nothing named
                error = str(e)
                result = {"vertebrae": []}
                if mode == "pinned" and "level pin" in error:
                    result = find_vertebrae(rad / "ap.dcm", rad / "lateral.dcm", net, **options)
                    for v in result["vertebrae"]:
                        v["level"] = None
            seconds.append(time.perf_counter() - start)
            counts, rows = score_case(result["vertebrae"], truth, complete, hit_mm)
            for row in rows:
                row.update(patient=patient, mode=mode)
            pooled[mode] += rows
            reported[mode] += counts["reported"]
            entry[mode] = {
                "all": _summary(rows, counts["reported"]),
                "complete": _summary([x for x in rows if x["complete"]], counts["reported"]),
                "found_levels": [v["level"] for v in result["vertebrae"]],
                "ray_gap_mm": [v["ray_gap_mm"] for v in result["vertebrae"]],
                "error": error,
            }
            report["rows"] += rows
            if figure and k == 0 and mode == "pinned":
                draw_detections(rad, result, truth, figure, f"{patient}: finder (crosses, pinned {pin.split('=')[0]})"
                                f" and true centres (circles)")  # fmt: skip
        report["patients"][patient] = entry
    report["pooled"] = {
        mode: {
            "all": _summary(pooled[mode], reported[mode]),
            "complete": _summary([x for x in pooled[mode] if x["complete"]], reported[mode]),
        }
        for mode in pooled
    }
    report["settings"] = {
        "split": split,
        "hit_mm": hit_mm,
        "tolerance_mm": tolerance_mm,
        "threshold": threshold,
        "matching": matching,
        "model": str(model or "models/finder/model.pt"),
        "simulation": "python -m scripts.simulate radiographs defaults (seed 0)",
        "command": "python -m scripts.tools.finder_eval " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)",
        "finder_seconds_per_pair_mean": round(float(np.mean(seconds)), 3) if seconds else None,
    }
    if out:
        from scripts.utils import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"pooled": report["pooled"], "settings": report["settings"]}, indent=1))
    return report


if __name__ == "__main__":
    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)  # a bad input ends in its one line, not a traceback

    if sys.argv[1:2] == ["draw_heatmaps"]:
        check_cli_flags(draw_heatmaps, sys.argv[2:], "python -m scripts.tools.finder_eval draw_heatmaps")
        fire.Fire(draw_heatmaps, command=sys.argv[2:], serialize=lambda result: None)
    else:
        check_cli_flags(finder_eval, sys.argv[1:], "python -m scripts.tools.finder_eval")
        fire.Fire(finder_eval, serialize=lambda result: None)
