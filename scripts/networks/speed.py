# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Speed and memory of EAR against MONAI's BasicUNet of the same widths (``python -m scripts.benchmark network``).

Both networks are timed in the same process, interleaved call by call so that load from other processes
affects both alike: inference (eval mode, ``torch.inference_mode``, batch 1) and one training step
(train mode, batch 2, forward + loss + backward + Adam step; EAR with :class:`scripts.losses.EARLoss`,
the U-Net with an L1 loss). Peak memory is measured for one call of each in a fresh spawned process
(so that memory cached by the allocator after another measurement does not hide it) with
:class:`scripts.benchmark.PeakMemory`.
"""

from __future__ import annotations

import multiprocessing
import statistics
from collections.abc import Callable, Sequence

import torch

__all__ = ["build_networks", "network_benchmark"]


def build_networks(channels: Sequence[int], seed: int = 0) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """``{"ear": (EAR, EARLoss), "basic_unet": (BasicUNet, L1Loss)}`` with the same widths."""
    from monai.networks.nets import BasicUNet

    from scripts.losses import EARLoss
    from scripts.networks.ear import EAR

    c = [int(v) for v in channels]
    torch.manual_seed(seed)
    ear = EAR(in_channels=2, out_channels=1, channels=c)
    unet = BasicUNet(spatial_dims=3, in_channels=2, out_channels=1, features=(*c, c[0]))
    return {"ear": (ear, EARLoss()), "basic_unet": (unet, torch.nn.L1Loss())}


def _step_fn(net: torch.nn.Module, loss_fn: torch.nn.Module, mode: str, size: int) -> Callable[[], None]:
    """A closure running one inference call or one training step at ``size``^3."""
    if mode == "inference":
        net.eval()
        x = torch.randn(1, 2, size, size, size)

        def infer() -> None:
            with torch.inference_mode():
                net(x)

        return infer
    net.train()
    x, y = torch.randn(2, 2, size, size, size), torch.randn(2, 1, size, size, size)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    return train


def _peak_memory_mib(name: str, mode: str, size: int, channels: Sequence[int], threads: int) -> float:
    """Peak memory (MiB) of the first call of ``name`` in ``mode``; run in a fresh process."""
    from scripts.benchmark import PeakMemory

    torch.set_num_threads(threads)
    net, loss_fn = build_networks(channels)[name]
    fn = _step_fn(net, loss_fn, mode, size)
    with PeakMemory("cpu") as mem:
        fn()
    return mem.peak_mib


def network_benchmark(
    sizes: Sequence[int] = (64, 128),
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    infer_repeat: int = 5,
    train_repeat: int = 3,
    warmup: int = 1,
    memory: bool = True,
) -> dict:
    """Measure EAR and BasicUNet; return the report (see the module docstring)."""
    from scripts.benchmark import machine_info, time_call

    threads = torch.get_num_threads()
    nets = build_networks(channels)
    report: dict = {
        "benchmark": "network",
        "machine": machine_info("cpu"),
        "channels": [int(c) for c in channels],
        "peer": "monai.networks.nets.BasicUNet(features=channels + (channels[0],))",
        "losses": {"ear": "scripts.losses.EARLoss", "basic_unet": "torch.nn.L1Loss"},
        "params": {name: sum(p.numel() for p in net.parameters()) for name, (net, _) in nets.items()},
        "sizes": {},
    }
    report["ratios_params"] = report["params"]["ear"] / report["params"]["basic_unet"]
    ctx = multiprocessing.get_context("spawn")
    for size in sizes:
        entry: dict = {}
        for mode, batch, repeat in (("inference", 1, infer_repeat), ("train_step", 2, train_repeat)):
            fns = {name: _step_fn(net, loss, mode, size) for name, (net, loss) in nets.items()}
            for fn in fns.values():
                for _ in range(warmup):
                    fn()
            times: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(repeat):  # interleaved: EAR, U-Net, EAR, U-Net, ...
                for name, fn in fns.items():
                    times[name].append(time_call(fn, warmup=0, repeat=1)["median_ms"])
            result: dict = {"batch": batch, "repeat": repeat}
            for name, t in times.items():
                result[name] = {"median_ms": statistics.median(t), "min_ms": min(t)}
            if memory:
                for name in fns:
                    with ctx.Pool(1) as pool:
                        mib = pool.apply(_peak_memory_mib, (name, mode, size, list(channels), threads))
                    result[name]["peak_mib"] = mib
            result["ratio_ear_to_unet"] = {
                "median_ms": result["ear"]["median_ms"] / result["basic_unet"]["median_ms"],
                "min_ms": result["ear"]["min_ms"] / result["basic_unet"]["min_ms"],
            }
            if memory and result["basic_unet"]["peak_mib"] > 0:
                result["ratio_ear_to_unet"]["peak_mib"] = result["ear"]["peak_mib"] / result["basic_unet"]["peak_mib"]
            entry[mode] = result
        report["sizes"][str(size)] = entry
    return report
