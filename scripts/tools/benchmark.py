# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Speed and memory benchmarks, printed (and optionally written) as JSON.

Usage::

    python -m scripts.tools.benchmark drr --out bench_drr.json
    python -m scripts.tools.benchmark network --out bench_network.json
    python -m scripts.tools.benchmark epoch --out bench_epoch.json
    python -m scripts.tools.benchmark all --out docs/benchmarks/all.json

Every benchmark measures this bundle's component and a peer (DiffDRR, MONAI's BasicUNet) in the same
process and run, and reports their ratio, so numbers from different machines are comparable.
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scripts.tools.timing import machine_info, write_report

__all__ = [
    "drr",
    "network",
    "epoch",
    "spine_benchmark",
    "radiographs_benchmark",
    "everyday",
    "markdown_summary",
    "main",
]


def _flag(value: Any) -> bool:
    """A boolean option as fire passes it (``True``, or the text ``"true"``/``"false"`` written lowercase)."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"expected True or False, got {value!r}.")
        return value.lower() == "true"
    return bool(value)


def _int_list(value: Any) -> list[int]:
    """``64``, ``"64,128"`` or ``(64, 128)`` (as fire passes them) as a list of ints."""
    if isinstance(value, (int, float)):
        return [int(value)]
    if isinstance(value, str):
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    return [int(v) for v in value]


def network(
    sizes: Any = (64, 128),
    channels: Any = (16, 32, 64, 128, 256),
    infer_repeat: int = 5,
    train_repeat: int = 3,
    warmup: int = 1,
    memory: bool = True,
    out: str | None = None,
    baselines: bool = False,
) -> dict:
    """EAR vs MONAI BasicUNet of the same widths on CPU: inference latency (batch 1), training step (batch 2,
    forward + backward + Adam), peak memory, parameter count and ratios (see scripts/tools/network_speed.py).
    ``--baselines``: also PSR, SIT, E2E and BX2S, with the widths of their configs/lab/baselines overlays.

    Example: ``python -m scripts.tools.benchmark network --sizes 64,128 --out bench_network.json``.
    """
    from scripts.tools.network_speed import network_benchmark

    report = network_benchmark(
        _int_list(sizes), _int_list(channels), infer_repeat, train_repeat, warmup, memory, baselines=_flag(baselines)
    )
    return write_report(report, out)


def drr(
    size: int = 128,
    detector: int = 128,
    samples_per_voxel: int = 1,
    repeat: int = 5,
    warmup: int = 2,
    out: str | None = None,
) -> dict:
    """DRR projector (polychromatic with noise, monochromatic) vs DiffDRR (Siddon, trilinear at the same
    sampling density) on the same rays: ms per AP + lateral pair, peak memory, speed ratios
    (see scripts/tools/drr_speed.py).

    Example: ``python -m scripts.tools.benchmark drr --out bench_drr.json``.
    """
    from scripts.tools.drr_speed import drr_benchmark

    return write_report(drr_benchmark(size, detector, samples_per_voxel, repeat, warmup), out)


_EPOCH_LINE = re.compile(r"SupervisedTrainer - INFO - Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")

#: training set-ups compared by :func:`epoch`: name -> (processes, extra command-line overrides)
EPOCH_VARIANTS: dict[str, tuple[int, list[str]]] = {
    "default": (1, []),
    "workers0": (1, ["--num_workers", "0"]),
    "workers1": (1, ["--num_workers", "1"]),
    "torchrun2": (2, []),
}


def _epoch_times(log: str) -> list[float]:
    return [int(h) * 3600 + int(m) * 60 + float(s) for _, h, m, s in _EPOCH_LINE.findall(log)]


def epoch(
    configs: Any = "configs/train.json,configs/cpu.json",
    dataset_dir: str | None = None,
    epochs: int = 3,
    variants: Any = "default,workers0,torchrun2",
    timeout: float = 1800.0,
    out: str | None = None,
) -> dict:
    """Seconds per training epoch of a bundle config, single process against ``torchrun`` (2 processes).

    Each variant (:data:`EPOCH_VARIANTS`) trains ``epochs`` epochs from scratch without validation in a
    fresh process with temporary checkpoint and log folders; the report holds every epoch's time and the
    median of the epochs after the first (the first fills the caches), and each variant's ratio to
    ``torchrun2``, the two-process run with one thread per process.

    Example: ``python -m scripts.tools.benchmark epoch --dataset_dir data/example64 --out bench_epoch.json``.
    """
    import subprocess
    import sys
    import tempfile

    files = configs.split(",") if isinstance(configs, str) else list(configs)
    names = variants.split(",") if isinstance(variants, str) else list(variants)
    unknown = [n for n in names if n not in EPOCH_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {sorted(EPOCH_VARIANTS)}.")
    results: dict[str, dict] = {}
    for name in names:
        procs, extra = EPOCH_VARIANTS[name]
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(files)]
            if procs > 1:
                cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "-m"] + cmd[2:]
                cmd[-1] = str(files + ["configs/multi_gpu_train.json"])
            cmd += ["--epochs", str(epochs), "--val_interval", "0", "--resume", "False"]  # 0: no validation
            cmd += ["--ckpt_dir", f"{tmp}/models", "--output_dir", f"{tmp}/runs"] + extra
            if dataset_dir:
                cmd += ["--dataset_dir", str(dataset_dir)]
            start = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            wall = time.perf_counter() - start
        times = _epoch_times(res.stdout + res.stderr)
        if res.returncode != 0 or len(times) < epochs:
            raise RuntimeError(f"variant {name!r} failed: {(res.stdout + res.stderr)[-2000:]}")
        results[name] = {
            "processes": procs,
            "overrides": extra,
            "epoch_s": times[:epochs],
            "median_epoch_s": statistics.median(times[1:epochs]) if epochs > 1 else times[0],
            "wall_s": wall,
        }
    if "torchrun2" in results:
        ref = results["torchrun2"]["median_epoch_s"]
        for r in results.values():
            r["ratio_to_torchrun2"] = r["median_epoch_s"] / ref
    report = {"benchmark": "epoch", "configs": files, "dataset_dir": dataset_dir, "machine": machine_info()}
    return write_report({**report, "results": results}, out)


#: the goals of ``all``: name -> (what, where in the report, target, "max" (at most) or "min" (at least))
GOALS: dict[str, tuple[str, tuple[str, ...], float, str]] = {
    "vertebra_s": ("one vertebra, X-ray files to HU volume + mesh, warm (s)", ("vertebra", "total_ms"), 1.0, "max"),
    "spine_s": ("whole spine, batched (s)", ("spine", "batched", "total_ms"), 10.0, "max"),
    "radiographs_s": ("two full radiographs to every output of the spine, finder included (s)",
                      ("radiographs", "finder", "total_ms"), 30.0, "max"),
    "drr_speedup": ("DRR pair, poly vs DiffDRR trilinear (x)",
                    ("drr", "speedup", "ours_poly_vs_diffdrr_trilinear"), 10.0, "min"),
    "drr_speedup_mono": ("DRR pair, mono (DiffDRR's physics) vs DiffDRR trilinear (x)",
                         ("drr", "speedup", "ours_mono_vs_diffdrr_trilinear"), 10.0, "min"),
    "drr_ncc": ("DRR, mono vs DiffDRR trilinear (NCC)", ("drr", "ncc_mono_vs_diffdrr_trilinear"), 0.99, "min"),
    "train_step_ratio": ("EAR / BasicUNet training step (x)", ("train_step", "ratio_ear_to_unet", "median_ms"), 1.5,
                         "max"),
    "confidence_ratio": ("inference with confidence / without, one vertebra (x)",
                         ("confidence", "ratio", "median_ms"), 2.0, "max"),
    "body_windows_ratio": ("body X-ray windows of a training batch / training step (x)",
                           ("body_windows", "ratio_to_train_step", "median_ms"), 1.0, "max"),
}  # fmt: skip


#: the parts of ``python -m scripts.tools.benchmark all``, in order
EVERYDAY_PARTS = (
    "vertebra,confidence,spine,radiographs,train_step,imports,drr,drr_isolated,body_windows,paper_inference"
)


def _goals(report: dict) -> dict:
    goals = {}
    for name, (what, path, target, kind) in GOALS.items():
        value: Any = report
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            continue
        value = float(value) / (1000.0 if path[-1] == "total_ms" else 1.0)  # ms -> s
        met = value <= target if kind == "max" else value >= target
        goals[name] = {"what": what, "value": round(value, 4), "target": target, "kind": kind, "met": bool(met)}
    return goals


def body_window_benchmark(
    size: int = 64,
    spacing: float = 2.0,
    batch: int = 2,
    channels: Sequence[int] = (8, 16, 32, 64, 128),
    repeat: int = 7,
    warmup: int = 1,
) -> dict:
    """The body X-ray windows of one training batch against the network's own training step, interleaved.

    The whole example CT (LIDC-IDRI-0001, a chest) resampled to ``spacing`` mm is the scan; the windows are
    centred on the ``batch`` largest vertebrae of its label map, ``size`` pixels each, at the geometry of a
    ``size``^3 crop (``ConeBeamGeometry.for_crop``), polychromatic with noise, as training simulates them
    (``scripts.transforms.DRR`` with a reference grid, which samples only the slab the rays cross). The peer is
    one training step of EAR (``EARLoss``, batch ``batch``, ``channels``) at ``size``^3
    (:func:`scripts.tools.network_speed.train_step_benchmark`'s step), timed in the same rounds.
    """
    import numpy as np
    import torch
    from monai.data import MetaTensor
    from scripts.data.crop import to_ras_isotropic
    from scripts.data.io import load_volume
    from scripts.data.sources import fetch_example
    from scripts.drr.geometry import grid_affine
    from scripts.tools.network_speed import _step_fn, build_networks
    from scripts.tools.timing import interleaved_seconds
    from scripts.transforms.drr import DRR

    case = fetch_example()
    ct = to_ras_isotropic(load_volume(case.ct, "CT"), spacing)
    lab = np.asarray(to_ras_isotropic(load_volume(case.mask, "labels"), spacing, is_label=True)[0]).astype(np.int64)
    values, counts = np.unique(lab[lab > 0], return_counts=True)
    aff = np.asarray(ct.affine, dtype=np.float64)
    centres = [
        aff[:3, :3] @ np.argwhere(lab == v).mean(0) + aff[:3, 3] for v in values[np.argsort(counts)[::-1][:batch]]
    ]
    refs = [MetaTensor(torch.zeros(1, size, size, size), affine=grid_affine((size,) * 3, spacing, c)) for c in centres]
    scan = MetaTensor(torch.as_tensor(np.asarray(ct), dtype=torch.float32), affine=torch.as_tensor(aff))
    drr = DRR(angles=[[0.0, 0.0], [90.0, 0.0]], physics="poly", photon_count=1e6)
    net, loss = build_networks(channels)["ear"]
    fns = {
        "body_windows": lambda: [drr(scan, reference=r) for r in refs],
        "train_step": _step_fn(net, loss, "train", size),
    }
    times = interleaved_seconds(fns, repeat, warmup)
    result: dict = {
        "benchmark": "body_windows",
        "scan": f"example CT at {spacing:g} mm, {tuple(int(n) for n in ct.shape[1:])} voxels",
        "windows": f"{len(refs)} pairs (AP, lateral) x {size}x{size} pixels, poly 60 kV, 1e6 photons",
        "network": f"EAR {list(channels)}, batch {batch}, {size}^3",
        "repeat": repeat,
    }
    for name, t in times.items():
        result[name] = {"median_ms": round(statistics.median(t) * 1000.0, 2), "min_ms": round(min(t) * 1000.0, 2)}
    result["ratio_to_train_step"] = {
        k: round(result["body_windows"][k] / result["train_step"][k], 3) for k in ("median_ms", "min_ms")
    }
    return result


def spine_benchmark(
    configs: Sequence[str] = ("configs/inference.json", "configs/cpu.json"),
    model: str | None = None,
    roi: int = 64,
    channels: Sequence[int] | None = None,
    vertebrae: int = 17,
    batch_size: int = 8,
    repeat: int = 3,
    warmup: int = 1,
) -> dict:
    """A whole spine with :func:`scripts.spine.reconstruct` in a warm process: batched against one by one.

    Each timed run builds the bundle's inference workflow (config, network, weights, the check of every pair),
    reconstructs, meshes and assembles all ``vertebrae`` and writes every output (per vertebra HU volume,
    meshes, label map, HU map, rendering, report). Runs alternate between ``batch_size`` and 1 vertebra per
    network call (the peer).

    Returns:
        per batch size: ``total_ms`` (median wall per spine), ``stages_ms`` (median per stage); and the ratio.
    """
    from scripts.spine import reconstruct
    from scripts.tools import everyday_speed as es

    crops, source = es.benchmark_crops(vertebrae, roi, 2.0 * 64 / roi)
    with tempfile.TemporaryDirectory() as tmp:
        datalist = es.write_xray_pairs(crops, Path(tmp) / "xrays")
        overrides = es._model_overrides(model, channels, roi)
        sizes = {"batched": int(batch_size), "one_by_one": 1}
        stages = {name: es._Stages() for name in sizes}
        walls: dict[str, list[float]] = {name: [] for name in sizes}
        report = None
        for i in range(warmup + repeat):
            for name, bs in sizes.items():
                timings: dict[str, float] = {}
                t0 = time.perf_counter()
                report = reconstruct(str(datalist), str(Path(tmp) / f"out_{name}"), es._config_paths(configs), bs,
                                     timings=timings, device="cpu", formats=("stl", "ply"), **overrides)  # fmt: skip
                wall = time.perf_counter() - t0
                if i >= warmup:
                    walls[name].append(wall)
                    stages[name].runs.append(timings)
        result: dict[str, Any] = {
            "input": f"{vertebrae} simulated AP + lateral pairs (PNG) of {source}, named {es.SPINE_LEVELS[0]}-"
            f"{es.SPINE_LEVELS[min(vertebrae, len(es.SPINE_LEVELS)) - 1]}",
            "vertebrae": vertebrae,
            "repeat": repeat,
        }
        for name, bs in sizes.items():
            result[name] = {
                "batch_size": bs,
                "total_ms": es._median_ms(walls[name]),
                "stages_ms": stages[name].medians_ms(),
            }
        result["ratio_batched_to_one_by_one"] = round(
            result["batched"]["total_ms"] / result["one_by_one"]["total_ms"], 3
        )
        rep = report["bench"] if report else {}
        result["grid_shape"] = rep.get("grid", {}).get("shape")
        result["watertight_meshes"] = sum(
            1 for v in rep.get("vertebrae", {}).values() if v.get("mesh") and v["mesh"]["watertight"]
        )
    return result


def radiographs_benchmark(
    configs: Sequence[str] = ("configs/inference.json", "configs/cpu.json"),
    model: str | None = None,
    roi: int = 64,
    channels: Sequence[int] | None = None,
    vertebrae: int = 17,
    batch_size: int = 8,
    repeat: int = 3,
    warmup: int = 1,
    detector_mm: float = 600.0,
) -> dict:
    """Two full radiograph files to every output of a whole spine (:func:`scripts.spine.radiographs`), warm.

    The case: the embedded example's chest CT (18 labelled vertebrae, C5-L3) projected by ``python -m
    scripts.simulate radiographs`` onto a ``detector_mm`` square detector (600 mm, as a long-format system: every
    labelled vertebra lies inside both images; 2 mm pixels, polychromatic 60 kV, 10^6 photons). Each timed run reads
    both DICOM files, finds and names the vertebrae with the shipped finder, reconstructs them (batched, with the
    confidence) and writes every mesh, the label and HU maps, the renderings, the radiograph preview and the report.
    Peer: the same job given the true centres of the ``vertebrae`` lowest labelled vertebrae (C6-L3 for 17), no
    finder.

    Returns:
        per mode (``finder``, ``given_centres``): ``total_ms`` (median wall), ``stages_ms``, ``vertebrae``; the ratio.
    """
    import json as _json
    import subprocess

    from scripts.data.sources import fetch_example
    from scripts.spine import radiographs
    from scripts.tools.everyday_speed import _config_paths, _median_ms, _model_overrides, _Stages

    case = fetch_example()
    with tempfile.TemporaryDirectory() as tmp:
        rad = Path(tmp) / "rad"
        # the case is made once, untimed, by the simulation's own command
        subprocess.run(
            [sys.executable, "-m", "scripts.simulate", "radiographs", "--ct", case.ct, "--labels", str(case.mask),
             "--out", str(rad), "--detector_mm", str(detector_mm)],
            check=True, capture_output=True, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        truth = [v for v in _json.loads((rad / "centres.json").read_text())["vertebrae"] if v["inside_both"]]
        given = Path(tmp) / "given.json"
        given.write_text(_json.dumps(truth[-int(vertebrae) :]))
        modes = {"finder": {}, "given_centres": {"centres": str(given)}}
        overrides = _model_overrides(model, channels, roi)
        stages = {name: _Stages() for name in modes}
        walls: dict[str, list[float]] = {name: [] for name in modes}
        found: dict[str, list[str]] = {}
        for i in range(warmup + repeat):
            for name, kw in modes.items():
                timings: dict[str, float] = {}
                t0 = time.perf_counter()
                report = radiographs(
                    str(rad / "ap.dcm"), str(rad / "lateral.dcm"), out=str(Path(tmp) / f"out_{name}"), patient="bench",
                    config_file=_config_paths(configs), batch_size=batch_size, device="cpu", timings=timings,
                    **kw, **overrides,
                )  # fmt: skip
                wall = time.perf_counter() - t0
                found[name] = list(report["vertebrae"])
                if i >= warmup:
                    walls[name].append(wall)
                    stages[name].runs.append(timings)
    result: dict[str, Any] = {
        "input": f"the example's chest CT projected onto a {detector_mm:g} mm detector (AP and lateral DICOM, 2 mm "
        f"pixels): {len(truth)} labelled vertebrae inside both images; given centres: the lowest {vertebrae}",
        "repeat": repeat,
        "configs": [str(c) for c in configs],
    }
    for name in modes:
        result[name] = {
            "total_ms": _median_ms(walls[name]),
            "stages_ms": stages[name].medians_ms(),
            "vertebrae": len(found[name]),
            "levels": found[name],
        }
    result["ratio_finder_to_given_centres"] = round(
        result["finder"]["total_ms"] / result["given_centres"]["total_ms"], 3
    )
    return result


def everyday(
    size: int = 64,
    configs: Any = "configs/inference.json,configs/cpu.json",
    model: str | None = None,
    channels: Any = None,
    repeat: int = 7,
    spine_vertebrae: int = 17,
    batch_size: int = 8,
    spine_repeat: int = 3,
    train_channels: Any = (8, 16, 32, 64, 128),
    train_repeat: int = 5,
    drr_size: int = 128,
    drr_repeat: int = 9,
    import_repeat: int = 5,
    components: Any = None,
    paper: Any = True,
    paper_repeat: int = 1,
    parts: Any = EVERYDAY_PARTS,
    radiograph_configs: Any = None,
    out: str | None = None,
) -> dict:
    """The everyday path, each figure against a peer of the same run (see scripts/tools/everyday_speed.py): one
    vertebra (stage by stage), a whole spine in batches, the training step, the import cost of the components,
    the DRR pair (of a crop in context, and of an isolated vertebra as training projects it), the body X-ray windows
    of a training batch against the training step, and where a paper-sized inference run spends its time; with
    the goals met or missed.

    ``--model none --channels 4,8,16,32,64 --size 32`` runs tiny random-weight networks (for tests).

    ``--radiograph_configs`` are the inference configs of the ``radiographs`` part (default the body model's, as
    ``python -m scripts.spine radiographs`` uses them); ``--configs`` those of every other part.

    Example: ``python -m scripts.tools.benchmark all --out docs/benchmarks/all.json``.
    """
    import os

    from scripts.tools import everyday_speed as ev

    files = [f for f in configs.split(",") if f] if isinstance(configs, str) else list(configs)
    chans = None if channels is None else _int_list(channels)
    wanted = [p for p in parts.split(",") if p] if isinstance(parts, str) else list(parts)
    if not _flag(paper):
        wanted = [p for p in wanted if p != "paper_inference"]
    report: dict[str, Any] = {
        "benchmark": "all",
        "machine": machine_info("cpu"),
        "load_average_1min": {"start": round(os.getloadavg()[0], 2)},
    }
    timings = {}
    for part in wanted:
        t0 = time.perf_counter()
        if part == "vertebra":
            report[part] = ev.vertebra_benchmark(files, model, size, chans, repeat)
        elif part == "confidence":
            report[part] = ev.confidence_benchmark(files, model, size, chans, repeat)
        elif part == "spine":
            report[part] = spine_benchmark(files, model, size, chans, spine_vertebrae, batch_size, spine_repeat)
        elif part == "radiographs":
            # the body model by default, as scripts.spine radiographs reconstructs full radiographs
            from scripts.spine import RADIOGRAPH_MODELS

            rad = RADIOGRAPH_MODELS["body"] if radiograph_configs is None else radiograph_configs
            rad_files = [f for f in rad.split(",") if f] if isinstance(rad, str) else list(rad)
            report[part] = radiographs_benchmark(
                rad_files, model, size, chans, spine_vertebrae, batch_size, spine_repeat
            )
        elif part == "train_step":
            from scripts.tools.network_speed import train_step_benchmark

            report[part] = train_step_benchmark(size, _int_list(train_channels), train_repeat)
        elif part == "imports":
            comps = ev.COMPONENTS if components is None else [c for c in str(components).split(",") if c]
            report[part] = ev.import_benchmark(comps, import_repeat)
        elif part in ("drr", "drr_isolated"):
            from scripts.tools.drr_speed import drr_benchmark

            source = "ct" if part == "drr" else "gt"
            report[part] = drr_benchmark(drr_size, drr_size, 1, drr_repeat, 2, source=source)
            report[part].pop("machine", None)
        elif part == "body_windows":
            report[part] = body_window_benchmark(size, channels=_int_list(train_channels), repeat=train_repeat)
        elif part == "paper_inference":
            report[part] = ev.paper_inference_benchmark(repeat=paper_repeat)
        else:
            raise ValueError(f"unknown part {part!r}; choose from vertebra, confidence, spine, radiographs, "
                             "train_step, imports, drr, drr_isolated, body_windows, paper_inference")  # fmt: skip
        timings[part] = round(time.perf_counter() - t0, 1)
        report["load_average_1min"][f"after_{part}"] = round(os.getloadavg()[0], 2)
    report["benchmark_seconds"] = timings
    report["goals"] = _goals(report)
    write_report(report, out)
    print(markdown_summary(report), file=sys.stderr)
    return report


def markdown_summary(report: dict) -> str:
    """The goals of an ``all`` report as a markdown table (value, target, met), for the docs."""
    lines = ["| goal | measured | target | met |", "|---|---|---|---|"]
    for goal in report.get("goals", {}).values():
        sign = "<=" if goal["kind"] == "max" else ">="
        met = "yes" if goal["met"] else "no"
        lines.append(f"| {goal['what']} | {goal['value']:g} | {sign} {goal['target']:g} | {met} |")
    return "\n".join(lines)


# Benchmark commands: name -> function. Each returns the report dict it printed.
COMMANDS: dict[str, Callable[..., dict]] = {}
COMMANDS["network"] = network
COMMANDS["drr"] = drr
COMMANDS["epoch"] = epoch
COMMANDS["all"] = everyday


def main() -> None:
    """The command line: ``python -m scripts.tools.benchmark <command> [--option value ...]``."""
    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)
    check_cli_flags(COMMANDS, sys.argv[1:], "python -m scripts.benchmark")  # a misspelt option stops before the work
    fire.Fire(COMMANDS, serialize=lambda _: None)  # the commands print their JSON report themselves


if __name__ == "__main__":
    main()
