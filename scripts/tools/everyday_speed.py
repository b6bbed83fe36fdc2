# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Speed of the everyday path, each figure against a peer measured in the same run
(``python -m scripts.tools.benchmark all``).

- ``vertebra``: one vertebra from two X-ray files to HU volume and mesh in a warm process, stage by stage,
  with the components the inference config builds (``configs/inference.json`` + ``configs/cpu.json`` and
  ``models/cpu/model.pt`` by default): read (``LoadXRayPaird``), expansion (``DimensionExpansiond``),
  collate, network, HU conversion (``ModelZScoreToHUd``), mesh (``SaveMeshd``: marching cubes, checks, STL,
  PLY, JSON), write (``SaveImaged`` and ``PublishCaseOutputsd``), and the preview (``SavePreviewd``),
  which is reported on its own. Peer: the same case through the config's ``evaluator`` (the MONAI engine,
  preview included) in the same process.
- ``spine`` and ``radiographs`` are in :mod:`scripts.tools.benchmark` (they import :mod:`scripts.spine`, whose
  chain of imports leaves no floor for this module in between).
- ``imports``: the import time of each component on top of ``import torch, monai``, each in a fresh
  interpreter. Peer: ``import torch, monai`` itself.
- ``drr``: :func:`scripts.tools.drr_speed.drr_benchmark` (this projector against DiffDRR).
- ``paper_inference``: ``python -m monai.bundle run`` of ``configs/inference.json`` (128^3, ``models/model.pt``)
  on one pair, broken down from inside a fresh process (:func:`profile_bundle_run`). Peer: the wall time of
  the plain ``python -m monai.bundle run`` command.

The X-ray inputs are simulated here (polychromatic, 60 kV, 10^6 photons per pixel, seeded noise, written as
16-bit PNGs as ``python -m scripts.simulate`` writes them) from the ground-truth crops of a prepared dataset
(``data/spine64``, ``data/example64``; ``data/spine128`` at 128^3) when one is there, else from synthetic
vertebra-like phantoms. A spine of more vertebrae than the dataset's largest patient reuses crops, each
placed 26 mm below the previous one.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "SPINE_LEVELS",
    "benchmark_crops",
    "write_xray_pairs",
    "vertebra_benchmark",
    "confidence_benchmark",
    "import_benchmark",
    "profile_bundle_run",
    "profile_main",
    "paper_inference_benchmark",
    "COMPONENTS",
]

#: the 17 thoracic and lumbar levels of the whole-spine benchmark
SPINE_LEVELS = [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
#: the components whose import cost is measured
COMPONENTS = ("scripts.transforms", "scripts.losses", "scripts.metrics", "scripts.networks", "scripts.io.xray")
_ROOT = Path(__file__).resolve().parents[2]
_STEP_MM = 26.0  # spacing of the stacked crops of a synthetic spine


def _median_ms(values: Sequence[float]) -> float:
    return round(statistics.median(values) * 1000.0, 2)


def _phantom(roi: int, index: int) -> np.ndarray:
    """A vertebra-like HU volume (body cylinder, arch ring, spinous process) in air, slightly varied by index."""
    g = (np.arange(roi, dtype=np.float32) + 0.5) / roi - 0.5
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    r = 0.17 + 0.01 * (index % 3)
    vol = np.full((roi,) * 3, -1000.0, dtype=np.float32)
    body = (x**2 + (y - 0.1) ** 2 < r**2) & (np.abs(z) < 0.16)
    ring = np.abs(np.sqrt(x**2 + (y + 0.17) ** 2) - 0.12) < 0.035
    arch = ring & (y < -0.1) & (np.abs(z) < 0.08)
    process = (np.abs(x) < 0.03) & (y < -0.25) & (y > -0.42) & (np.abs(z) < 0.06)
    vol[body] = 250.0
    vol[arch | process] = 600.0
    return vol


def benchmark_crops(n: int, roi: int, spacing: float, data: Sequence[str] | None = None) -> tuple[list[dict], str]:
    """``n`` ground-truth HU crops (``roi``^3 at ``spacing`` mm) with ids, levels and affines.

    Crops come from the first prepared dataset of ``data`` whose crops have this size (the patient with the
    most vertebrae first, then the others), reused where there are fewer than ``n``; else synthetic
    phantoms. Crop ``i`` is named after ``SPINE_LEVELS[i]`` (cycled) and placed ``i`` x 26 mm below crop 0.

    Returns:
        (``[{"hu": (roi^3) float32, "affine": 4x4, "id", "patient", "level"}]``, where they came from).
    """
    import nibabel as nib
    from scripts.drr.geometry import grid_affine

    if data is None:
        data = ["data/spine64", "data/example64"] if roi <= 64 else ["data/spine128", "data/example"]
    arrays, source = [], ""
    for folder in data:
        dl = _ROOT / folder / "datalist.json"
        if not dl.is_file():
            continue
        content = json.loads(dl.read_text())
        items = [it for s in ("training", "validation", "test") for it in content.get(s) or []]
        counts: dict[str, int] = {}
        for it in items:
            counts[it["patient"]] = counts.get(it["patient"], 0) + 1
        items.sort(key=lambda it: (-counts[it["patient"]], it["patient"]))
        for it in items[:n]:
            img = nib.load(dl.parent / it["gt"])
            if tuple(img.shape[:3]) != (roi,) * 3:
                break
            arrays.append(np.asarray(img.dataobj, dtype=np.float32).reshape((roi,) * 3))
        if len(arrays) == min(n, len(items)) and arrays:
            source = f"{folder} ({len(arrays)} ground-truth crops)"
            break
        arrays = []
    if not arrays:
        arrays = [_phantom(roi, i) for i in range(min(n, 3))]
        source = f"synthetic phantoms ({len(arrays)})"
    crops = []
    for i in range(n):
        level = SPINE_LEVELS[i % len(SPINE_LEVELS)]
        affine = grid_affine((roi,) * 3, spacing, (0.0, 0.0, -_STEP_MM * i)).numpy()
        crops.append({"hu": arrays[i % len(arrays)], "affine": affine, "id": f"bench_{level}", "patient": "bench"})
        crops[-1]["level"] = level
    return crops, source


def write_xray_pairs(crops: Sequence[dict], folder: str | os.PathLike, seed: int = 0) -> Path:
    """Simulate an AP + lateral pair of each crop as ``scripts.simulate`` does and write a datalist.

    Returns:
        the datalist (a JSON list of ``{"xray", "angles", "id", "patient", "level", "affine", "shape"}``).
    """
    from scripts.drr.geometry import ConeBeamGeometry
    from scripts.drr.projector import DRRProjector
    from scripts.io.xray import write_png16

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    gen = torch.Generator().manual_seed(seed)
    for crop in crops:
        roi = crop["hu"].shape[0]
        spacing = float(np.linalg.norm(crop["affine"][:3, :3], axis=0).mean())
        projector = DRRProjector(ConeBeamGeometry.for_crop(roi, spacing), "poly", "60kV", 1e6)
        with torch.no_grad():
            pair = projector(torch.from_numpy(crop["hu"])[None], crop["affine"], [[0, 0], [90, 0]], generator=gen)
        files = []
        for v, name in enumerate(("ap", "lat")):
            path = out / f"{crop['id']}_{name}.png"
            write_png16(pair[v].numpy(), path, 10.0)
            files.append(path.name)
        items.append(
            {
                "xray": files,
                "angles": [[0.0, 0.0], [90.0, 0.0]],
                "id": crop["id"],
                "patient": crop["patient"],
                "level": crop["level"],
                "affine": np.asarray(crop["affine"]).tolist(),
                "shape": [roi] * 3,
            }
        )
    path = out / "datalist.json"
    path.write_text(json.dumps(items, indent=1))
    return path


def _model_overrides(model: str | None, channels: Sequence[int] | None, roi: int) -> dict[str, Any]:
    """Config overrides that select the model: ``model`` a ``model.pt`` (its folder becomes ``ckpt_dir``), ``None``
    (the config's), or ``"none"``: random weights of widths ``channels`` at ``roi``^3, with made-up statistics
    (for tiny test runs)."""
    if model is None:
        return {}
    if model != "none":
        return {"ckpt_dir": str(Path(model).resolve().parent)}
    spacing = 2.0 * 64 / roi
    overrides: dict[str, Any] = {"load_pretrain": False, "roi_size": roi, "spacing": spacing}
    if channels is not None:
        overrides["channels"] = [int(c) for c in channels]
    overrides["network"] = (
        "$@scripts.networks.attach_model_info(@network_def, {'gt_mean': -800.0, 'gt_std': 300.0}, "
        f"{spacing}, {roi}).to(@device)"
    )
    return overrides


def _config_paths(configs: Sequence[str]) -> list[str]:
    """Config files as given, or relative to the bundle root."""
    return [c if Path(c).is_file() else str(_ROOT / c) for c in configs]


def _inference_workflow(
    configs: Sequence[str], model: str | None, channels: Sequence[int] | None, roi: int, **overrides: Any
) -> Any:
    """The bundle's inference workflow of ``configs`` on the CPU (``monai.bundle.create_workflow``), initialised,
    with the trained weights loaded by the config's own ``checkpointloader`` (see :func:`_model_overrides`) and
    the network in eval mode, as the evaluator runs it."""
    from monai.bundle import create_workflow

    overrides = {**_model_overrides(model, channels, roi), **overrides, "device": "$torch.device('cpu')"}
    workflow = create_workflow(config_file=_config_paths(configs), workflow_type="infer", **overrides)
    get = workflow.parser.get_parsed_content
    if get("load_pretrain"):
        get("checkpointloader")(get("evaluator"))
    get("network").eval()
    return workflow


class _Stages:
    """Seconds per stage of repeated runs: ``with stages("name"):`` blocks; the medians per stage."""

    def __init__(self) -> None:
        self.runs: list[dict[str, float]] = []

    def new_run(self) -> None:
        self.runs.append({})

    def __call__(self, name: str) -> _Stages:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        run = self.runs[-1]
        run[self._name] = run.get(self._name, 0.0) + time.perf_counter() - self._t0

    def medians_ms(self) -> dict[str, float]:
        names = list(dict.fromkeys(k for run in self.runs for k in run))
        return {k: _median_ms([run.get(k, 0.0) for run in self.runs]) for k in names}

    def totals(self, exclude: Sequence[str] = ()) -> list[float]:
        return [sum(v for k, v in run.items() if k not in exclude) for run in self.runs]


#: stage of each transform of the inference config
_STAGE_OF = {
    "LoadXRayPaird": "read",
    "DimensionExpansiond": "expansion",
    "ModelZScoreToHUd": "hu",
    "SaveImaged": "write",
    "SaveMeshd": "mesh",
    "SavePreviewd": "preview",
    "PublishCaseOutputsd": "write",
}


def _one_case(folder: Path, roi: int) -> tuple[dict[str, Any], str]:
    """One simulated X-ray pair written as PNGs into ``folder``, as an inference case, and where it came from."""
    crops, source = benchmark_crops(1, roi, 2.0 * 64 / roi)
    datalist = write_xray_pairs(crops, folder / "xrays")
    case = json.loads(datalist.read_text())[0]
    case = {"xray": [str(datalist.parent / f) for f in case["xray"]], "angles": case["angles"], "id": case["id"]}
    return case, source


def vertebra_benchmark(
    configs: Sequence[str] = ("configs/inference.json", "configs/cpu.json"),
    model: str | None = None,
    roi: int = 64,
    channels: Sequence[int] | None = None,
    repeat: int = 7,
    warmup: int = 2,
    engine: bool = True,
) -> dict:
    """One vertebra from two X-ray files to HU volume and mesh, stage by stage, in a warm process.

    Args:
        configs: inference config files.
        model: ``model.pt`` to use (default the config's ``ckpt_dir``); ``"none"``: random weights (tiny runs).
        roi: crop size (must be the model's).
        channels: widths for ``model="none"``.
        repeat: timed runs (medians reported).
        warmup: untimed runs first.
        engine: also run the config's ``evaluator`` (the peer) on the same case.

    Returns:
        ``stages_ms`` (median per stage), ``total_ms`` (median of the per-run sums without the preview; the
        goal's figure), ``total_with_preview_ms``, and with ``engine`` the evaluator's ``engine_ms`` and the
        ratio of the two.
    """
    from monai.data import decollate_batch, list_data_collate
    from monai.transforms import apply_transform

    with tempfile.TemporaryDirectory() as tmp:
        case, source = _one_case(Path(tmp), roi)
        # every override before the first parse: setting a config item later rebuilds all components
        wf = _inference_workflow(configs, model, channels, roi, output_dir=str(Path(tmp) / "outputs"), cases=[case])
        get = wf.parser.get_parsed_content
        network, device, inferer = get("network"), get("device"), get("inferer")
        steps = list(get("preprocessing").transforms)
        post = list(get("postprocessing").transforms)
        stages = _Stages()
        for i in range(warmup + repeat):
            if i == warmup:
                stages.runs.clear()
            stages.new_run()
            d: Any = dict(case)
            for t in steps:
                with stages(_STAGE_OF.get(type(t).__name__, type(t).__name__)):
                    d = apply_transform(t, d)
            with stages("collate"):
                batch = list_data_collate([d])
            with stages("network"), torch.inference_mode():
                pred = inferer(batch["image"].to(device), network)
            with stages("collate"):
                item = decollate_batch({**batch, "pred": pred})[0]
            for t in post:
                with stages(_STAGE_OF.get(type(t).__name__, type(t).__name__)):
                    item = apply_transform(t, item)
        result: dict[str, Any] = {
            "input": f"one simulated AP + lateral pair (PNG) of {source}",
            "configs": list(configs),
            "checkpoint": get("model_file") if get("load_pretrain") else None,
            "roi_size": int(get("roi_size")),
            "spacing_mm": float(get("spacing")),
            "repeat": repeat,
            "stages_ms": stages.medians_ms(),
            "total_ms": _median_ms(stages.totals(exclude=("preview",))),
            "total_with_preview_ms": _median_ms(stages.totals()),
            "mesh": {k: item["pred_mesh"][k] for k in ("vertices", "faces", "watertight", "components")},
        }
        if engine:  # the same network object, with its loaded weights
            evaluator = get("evaluator")
            times = []
            for i in range(warmup + repeat):
                t0 = time.perf_counter()
                evaluator.run()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            result["engine_ms"] = _median_ms(times)
            result["ratio_pipeline_with_preview_to_engine"] = round(
                result["total_with_preview_ms"] / result["engine_ms"], 3
            )
    return result


def confidence_benchmark(
    configs: Sequence[str] = ("configs/inference.json", "configs/cpu.json"),
    model: str | None = None,
    roi: int = 64,
    channels: Sequence[int] | None = None,
    repeat: int = 7,
    warmup: int = 2,
) -> dict:
    """One vertebra through the inference workflow (``evaluator.run()``: X-ray files to HU volume, uncertainty,
    mesh, preview and report) with confidence (TTA, the default) against the same without it
    (``confidence: false``), interleaved in one warm process; the goal is a ratio of at most 2."""
    from scripts.tools.timing import interleaved_seconds

    with tempfile.TemporaryDirectory() as tmp:
        case, source = _one_case(Path(tmp), roi)
        runs = {}
        for name, on in (("with_confidence", True), ("without_confidence", False)):
            wf = _inference_workflow(
                configs, model, channels, roi, output_dir=str(Path(tmp) / name), cases=[case], confidence=on
            )
            runs[name] = wf.parser.get_parsed_content("evaluator").run
        times = interleaved_seconds(runs, repeat, warmup)
    result: dict[str, Any] = {
        "input": f"one simulated AP + lateral pair (PNG) of {source}",
        "configs": list(configs),
        "repeat": repeat,
    }
    for name, t in times.items():
        result[name] = {"median_ms": _median_ms(t), "min_ms": round(min(t) * 1000.0, 2)}
    result["ratio"] = {
        k: round(result["with_confidence"][k] / result["without_confidence"][k], 3) for k in ("median_ms", "min_ms")
    }
    return result


_IMPORT_SNIPPET = (
    "import json, time; t0 = time.perf_counter(); import torch, monai; t1 = time.perf_counter(); {stmt}; "
    "t2 = time.perf_counter(); print(json.dumps([t1 - t0, t2 - t1]))"
)


def import_benchmark(components: Sequence[str] = COMPONENTS, repeat: int = 5) -> dict:
    """Seconds to import each component after ``import torch, monai``, each in a fresh interpreter.

    Rounds interleave the components; each process reports the time of ``import torch, monai`` (the peer,
    the same in every process) and of the component after it. Medians over ``repeat`` rounds.
    """
    base: list[float] = []
    extra: dict[str, list[float]] = {c: [] for c in components}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])}
    for _ in range(repeat):
        for comp in components:
            code = _IMPORT_SNIPPET.format(stmt=f"import {comp}")
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=_ROOT, env=env)
            if res.returncode != 0:
                raise RuntimeError(f"import {comp} failed: {res.stderr[-2000:]}")
            t_base, t_comp = json.loads(res.stdout.strip().splitlines()[-1])
            base.append(t_base)
            extra[comp].append(t_comp)
    base_ms = _median_ms(base)
    result: dict[str, Any] = {"repeat": repeat, "torch_monai_ms": base_ms, "components": {}}
    for comp, t in extra.items():
        ms = _median_ms(t)
        result["components"][comp] = {"ms": ms, "ratio_to_torch_monai": round(ms / base_ms, 3)}
    return result


def profile_bundle_run(
    configs: Sequence[str], overrides: dict[str, Any], start: tuple[float, float] | None = None
) -> dict:
    """Run ``python -m monai.bundle run`` in this process, the way ``monai.bundle.scripts.run`` does, and time
    each phase: imports, config parsing (``ConfigWorkflow``), ``initialize`` (network, model check,
    handlers), the checkpoint load, and per transform of the preprocessing and postprocessing, the network,
    and the engine's own rest. Meant for a fresh process (see :func:`paper_inference_benchmark`).

    Args:
        configs: config files.
        overrides: config overrides (``xrays``, ``output_dir``, ...).
        start: ``(time.time(), time.perf_counter())`` taken at the process's first line, before any import;
            the imports are timed from there.
    """
    start = start or (time.time(), time.perf_counter())
    marks = {"driver_start": start[0]}
    t0 = start[1]
    import monai.bundle
    from monai.bundle import ConfigWorkflow

    times: dict[str, float] = {"imports": time.perf_counter() - t0}

    # as `python -m monai.bundle run` sees it (the inference config's finalize step looks at argv[0])
    sys.argv = [str(Path(monai.bundle.__file__).parent / "__main__.py")]
    t0 = time.perf_counter()
    workflow = ConfigWorkflow(config_file=list(configs), workflow_type="infer", **overrides)
    times["config_parse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    workflow_module = workflow.parser.get_parsed_content("scripts").workflow  # the bundle's packages, as configs use
    times["imports"] += time.perf_counter() - t0
    stage_times: dict[str, float] = {}

    def timed_function(module: Any, name: str, stage: str) -> None:
        fn = getattr(module, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            s0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                stage_times[stage] = stage_times.get(stage, 0.0) + time.perf_counter() - s0

        setattr(module, name, wrapper)

    timed_function(workflow_module, "check_model", "initialize.check_model")
    timed_function(workflow_module, "inference_cases", "initialize.cases")
    t0 = time.perf_counter()
    workflow.initialize()
    times["initialize"] = time.perf_counter() - t0
    times.update({k: stage_times.pop(k) for k in list(stage_times)})
    times["initialize.rest"] = times["initialize"] - times.get("initialize.check_model", 0.0)
    times["initialize.rest"] -= times.get("initialize.cases", 0.0)
    parser = workflow.parser

    def timed(obj: Any, stage: str) -> None:
        cls = type(obj)
        call = cls.__call__

        def timed_call(self: Any, *a: Any, **k: Any) -> Any:
            s0 = time.perf_counter()
            try:
                return call(self, *a, **k)
            finally:
                stage_times[stage] = stage_times.get(stage, 0.0) + time.perf_counter() - s0

        obj.__class__ = type(cls.__name__, (cls,), {"__call__": timed_call})

    for t in parser.get_parsed_content("preprocessing").transforms:
        timed(t, _STAGE_OF.get(type(t).__name__, type(t).__name__))
    for t in parser.get_parsed_content("postprocessing").transforms:
        timed(t, _STAGE_OF.get(type(t).__name__, type(t).__name__))
    timed(parser.get_parsed_content("checkpointloader"), "checkpoint_load")
    net = parser.get_parsed_content("network")
    net.register_forward_pre_hook(lambda *_: stage_times.__setitem__("_net0", time.perf_counter()))
    net.register_forward_hook(
        lambda *_: stage_times.__setitem__(
            "network", stage_times.get("network", 0.0) + time.perf_counter() - stage_times["_net0"]
        )
    )
    t0 = time.perf_counter()
    workflow.run()
    times["run"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    workflow.finalize()
    times["finalize"] = time.perf_counter() - t0
    stage_times.pop("_net0", None)
    times.update({f"run.{k}": v for k, v in stage_times.items()})
    times["run.engine_rest"] = times["run"] - sum(stage_times.values())
    return {"marks": marks, "seconds": times}


def _simulate_pair(roi: int, folder: Path) -> list[str]:
    crops, _ = benchmark_crops(1, roi, 2.0 * 64 / roi if roi <= 64 else 1.0)
    datalist = write_xray_pairs(crops, folder)
    return [str(folder / f) for f in json.loads(datalist.read_text())[0]["xray"]]


def paper_inference_benchmark(
    configs: Sequence[str] = ("configs/inference.json",), roi: int = 128, repeat: int = 1
) -> dict:
    """Where the time of one paper-sized inference run goes (see :func:`profile_bundle_run`).

    Each round runs the plain command ``python -m monai.bundle run`` (the peer: its wall time) and the
    instrumented driver, each in a fresh process, on the same simulated pair. ``process_start`` is the time
    from launching the driver to its first line (interpreter start).
    """
    runs: list[dict[str, float]] = []
    plain: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        xrays = _simulate_pair(roi, Path(tmp) / "xrays")
        overrides = {"xrays": xrays, "case_id": "bench", "output_dir": str(Path(tmp) / "outputs")}
        cfg = str([str(_ROOT / c) for c in configs])
        for _ in range(repeat):
            cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", cfg]
            cmd += ["--xrays", str(xrays), "--case_id", "bench", "--output_dir", str(Path(tmp) / "outputs")]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT)
            plain.append(time.perf_counter() - t0)
            if res.returncode != 0:
                raise RuntimeError(f"bundle run failed: {res.stderr[-2000:]}")
            args = json.dumps({"configs": [str(_ROOT / c) for c in configs], "overrides": overrides})
            start = time.time()
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", _DRIVER, args], capture_output=True, text=True, cwd=_ROOT)
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(f"profiled bundle run failed: {res.stderr[-2000:]}")
            out = json.loads(res.stdout.strip().splitlines()[-1])
            secs = {"process_start": out["marks"]["driver_start"] - start, **out["seconds"]}
            secs["wall"] = wall
            secs["exit"] = (
                wall
                - secs["process_start"]
                - sum(secs[k] for k in ("imports", "config_parse", "initialize", "run", "finalize"))
            )
            runs.append(secs)
    names = list(runs[0])
    result = {
        "configs": list(configs),
        "roi_size": roi,
        "repeat": repeat,
        "seconds": {k: round(statistics.median(r[k] for r in runs), 3) for k in names},
        "plain_command_wall_s": round(statistics.median(plain), 3),
    }
    result["ratio_profiled_to_plain"] = round(result["seconds"]["wall"] / result["plain_command_wall_s"], 3)
    return result


def profile_main(argv: Sequence[str], start: tuple[float, float] | None = None) -> None:
    """The profiled run of :func:`paper_inference_benchmark`: ``argv[0]`` is ``{"configs", "overrides"}`` (JSON);
    prints the report of :func:`profile_bundle_run` as the last line (JSON)."""
    spec = json.loads(argv[0])
    print(json.dumps(profile_bundle_run(spec["configs"], spec["overrides"], start)))


#: the profiled process: its clock starts at the first line, before any import
_DRIVER = (
    "import time; s = (time.time(), time.perf_counter()); import sys; "
    "from scripts.tools.everyday_speed import profile_main; profile_main(sys.argv[1:], s)"
)
