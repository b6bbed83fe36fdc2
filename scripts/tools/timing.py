# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Timing and memory helpers shared by the benchmarks: wall time of a call, peak memory, machine description."""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from scripts.utils import atomic_path

__all__ = ["PeakMemory", "time_call", "interleaved_seconds", "machine_info", "write_report"]


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


def interleaved_seconds(fns: dict[str, Callable[[], Any]], repeat: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each function over ``repeat`` rounds, the functions taking turns within a round (so that all
    see the same machine load), after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


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
