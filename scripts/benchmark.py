# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Speed and memory benchmarks, printed (and optionally written) as JSON.

Usage::

    python -m scripts.benchmark drr --out bench_drr.json
    python -m scripts.benchmark network --out bench_network.json
    python -m scripts.benchmark epoch --out bench_epoch.json

Every benchmark measures this bundle's component and a peer (DiffDRR, MONAI's BasicUNet) in the same
process and run, and reports their ratio, so numbers from different machines are comparable.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from scripts.utils import atomic_path

__all__ = ["PeakMemory", "time_call", "machine_info", "write_report"]


def _rss_bytes() -> int:
    """Resident set size of this process, read from /proc (Linux); 0 where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """Context manager measuring the peak memory used inside its block, in MiB.

    On CUDA devices this is ``torch.cuda.max_memory_allocated`` above the allocation at entry. On CPU,
    PyTorch has no allocator statistics, so a background thread samples the process's resident set size
    every ``interval`` seconds and the peak above the value at entry is reported (a sampling estimate:
    allocations shorter than ``interval`` can be missed).

    Args:
        device: the device whose memory is measured.
        interval: sampling interval in seconds for the CPU estimate.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.001) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0
        self._peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_mib = max(peak - self._base, 0) / 2**20


def time_call(fn: Callable[[], Any], warmup: int = 2, repeat: int = 5, device: torch.device | str = "cpu") -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeat`` timed ones.

    Returns:
        dict with ``median_ms``, ``min_ms`` and ``repeat``.
    """
    device = torch.device(device)

    def _sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "repeat": repeat}


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What the numbers were measured on."""
    device = torch.device(device)
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_report(report: dict, out: str | None = None) -> dict:
    """Print ``report`` as JSON and, if ``out`` is given, also write it there (atomically)."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(text + "\n")
    return report


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
    forward + backward + Adam), peak memory, parameter count and ratios (see scripts/networks/speed.py).
    ``--baselines``: also PSR, SIT, E2E and BX2S, with the widths of their configs/baselines overlays.

    Example: ``python -m scripts.benchmark network --sizes 64,128 --out bench_network.json``.
    """
    from scripts.networks.speed import network_benchmark

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
    (see scripts/drr/speed.py).

    Example: ``python -m scripts.benchmark drr --out bench_drr.json``.
    """
    from scripts.drr.speed import drr_benchmark

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

    Example: ``python -m scripts.benchmark epoch --dataset_dir data/example64 --out bench_epoch.json``.
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
            cmd += ["--epochs", str(epochs), "--val_interval", str(epochs + 1), "--resume", "false"]
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


# Benchmark commands: name -> function. Each returns the report dict it printed.
COMMANDS: dict[str, Callable[..., dict]] = {}
COMMANDS["network"] = network
COMMANDS["drr"] = drr
COMMANDS["epoch"] = epoch

if __name__ == "__main__":
    import fire

    fire.Fire(COMMANDS, serialize=lambda _: None)  # the commands print their JSON report themselves
