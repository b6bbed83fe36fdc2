# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Speed and memory of EAR against MONAI's BasicUNet of the same widths (``python -m scripts.tools.benchmark network``),
and optionally against the baselines of the paper's comparison (``--baselines``: PSR, SIT, E2E, BX2S, built as
``configs/lab/baselines/*.json`` build them, trained with :class:`scripts.losses.EARLoss` like EAR).

Both networks are timed in the same process, interleaved call by call so that load from other processes
affects both alike: inference (eval mode, ``torch.inference_mode``, batch 1) and one training step
(train mode, batch 2, forward + loss + backward + Adam step; EAR with :class:`scripts.losses.EARLoss`,
the U-Net with an L1 loss). Peak memory is measured for one call of each in a fresh spawned process
(so that memory cached by the allocator after another measurement does not hide it) with
:class:`scripts.tools.timing.PeakMemory`.
"""

from __future__ import annotations

import multiprocessing
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["build_networks", "network_benchmark", "train_step_benchmark"]


#: baseline networks of ``--baselines``: name -> how ``configs/lab/baselines/<name>.json`` sets the widths
BASELINES = {
    "psr": "scripts.networks.PSR(channels=channels, spatial_size=size)",
    "sit": "scripts.networks.SIT(channels=[2 * c for c in channels], spatial_size=size)",
    "e2e": "scripts.networks.E2E(channels=channels)",
    "bx2s": "scripts.networks.BX2S(channels=channels, edge_output=True)",
}


def build_networks(
    channels: Sequence[int], seed: int = 0, baselines: bool = False, size: int = 128
) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """``{"ear": (EAR, EARLoss), "basic_unet": (BasicUNet, L1Loss)}`` with the same widths.

    Args:
        channels: the five widths (``@channels`` of the configs).
        seed: seed of the weight initialisation.
        baselines: also build the :data:`BASELINES` (each with ``EARLoss``), as their config overlays do.
        size: grid size of the baselines that depend on it (PSR, SIT).
    """
    from monai.networks.nets import BasicUNet
    from scripts.losses import EARLoss
    from scripts.networks.baselines import E2E, PSR, SIT
    from scripts.networks.bx2s import BX2S
    from scripts.networks.ear import EAR

    c = [int(v) for v in channels]
    torch.manual_seed(seed)
    ear = EAR(in_channels=2, out_channels=1, channels=c)
    unet = BasicUNet(spatial_dims=3, in_channels=2, out_channels=1, features=(*c, c[0]))
    nets: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {
        "ear": (ear, EARLoss()),
        "basic_unet": (unet, torch.nn.L1Loss()),
    }
    if baselines:
        nets["psr"] = (PSR(channels=c, spatial_size=size), EARLoss())
        nets["sit"] = (SIT(channels=[2 * v for v in c], spatial_size=size), EARLoss())
        nets["e2e"] = (E2E(channels=c), EARLoss())
        nets["bx2s"] = (BX2S(channels=c, edge_output=True), EARLoss())
    return nets


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


def _peak_memory_mib(
    name: str, mode: str, size: int, channels: Sequence[int], threads: int, baselines: bool = False
) -> float:
    """Peak memory (MiB) of the first call of ``name`` in ``mode``; run in a fresh process."""
    from scripts.tools.timing import PeakMemory

    torch.set_num_threads(threads)
    net, loss_fn = build_networks(channels, baselines=baselines, size=size)[name]
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
    baselines: bool = False,
) -> dict:
    """Measure EAR and BasicUNet (and, with ``baselines``, the :data:`BASELINES`); return the report (see the
    module docstring). With ``baselines``, each size's entry also holds the parameter counts of all networks
    (PSR's and SIT's depend on the size) and each network's time ratio to EAR (``ratio_to_ear``)."""
    from scripts.tools.timing import machine_info, time_call

    threads = torch.get_num_threads()
    nets = build_networks(channels, baselines=baselines, size=int(sizes[0]) if len(sizes) else 128)
    report: dict = {
        "benchmark": "network",
        "machine": machine_info("cpu"),
        "channels": [int(c) for c in channels],
        "peer": "monai.networks.nets.BasicUNet(features=channels + (channels[0],))",
        "losses": {name: "torch.nn.L1Loss" if name == "basic_unet" else "scripts.losses.EARLoss" for name in nets},
        "params": {
            name: sum(p.numel() for p in net.parameters())
            for name, (net, _) in nets.items()
            if name not in ("psr", "sit")  # these depend on the size: see each size's "params"
        },
        "sizes": {},
    }
    if baselines:
        report["baselines"] = dict(BASELINES)
    report["ratios_params"] = report["params"]["ear"] / report["params"]["basic_unet"]
    ctx = multiprocessing.get_context("spawn")
    for size in sizes:
        entry: dict = {}
        if baselines:
            nets = build_networks(channels, baselines=True, size=int(size))
            entry["params"] = {name: sum(p.numel() for p in net.parameters()) for name, (net, _) in nets.items()}
        for mode, batch, repeat in (("inference", 1, infer_repeat), ("train_step", 2, train_repeat)):
            fns = {name: _step_fn(net, loss, mode, size) for name, (net, loss) in nets.items()}
            for fn in fns.values():
                for _ in range(warmup):
                    fn()
            times: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(repeat):  # interleaved: EAR, U-Net, (baselines,) EAR, U-Net, ...
                for name, fn in fns.items():
                    times[name].append(time_call(fn, warmup=0, repeat=1)["median_ms"])
            result: dict = {"batch": batch, "repeat": repeat}
            for name, t in times.items():
                result[name] = {"median_ms": statistics.median(t), "min_ms": min(t)}
            if memory:
                for name in fns:
                    with ctx.Pool(1) as pool:
                        mib = pool.apply(_peak_memory_mib, (name, mode, size, list(channels), threads, baselines))
                    result[name]["peak_mib"] = mib
            result["ratio_ear_to_unet"] = {
                "median_ms": result["ear"]["median_ms"] / result["basic_unet"]["median_ms"],
                "min_ms": result["ear"]["min_ms"] / result["basic_unet"]["min_ms"],
            }
            if memory and result["basic_unet"]["peak_mib"] > 0:
                result["ratio_ear_to_unet"]["peak_mib"] = result["ear"]["peak_mib"] / result["basic_unet"]["peak_mib"]
            if baselines:
                result["ratio_to_ear"] = {
                    name: {
                        "median_ms": result[name]["median_ms"] / result["ear"]["median_ms"],
                        "min_ms": result[name]["min_ms"] / result["ear"]["min_ms"],
                    }
                    for name in fns
                    if name != "ear"
                }
            entry[mode] = result
        report["sizes"][str(size)] = entry
    return report


def train_step_benchmark(
    size: int = 64, channels: Sequence[int] = (8, 16, 32, 64, 128), repeat: int = 5, warmup: int = 1
) -> dict:
    """EAR training step (``EARLoss``) against ``BasicUNet`` of the same widths (L1), batch 2, interleaved."""
    from scripts.tools.timing import interleaved_seconds

    nets = build_networks(channels)
    fns = {name: _step_fn(net, loss, "train", size) for name, (net, loss) in nets.items()}
    times = interleaved_seconds(fns, repeat, warmup)
    result: dict[str, Any] = {
        "size": size,
        "channels": [int(c) for c in channels],
        "batch": 2,
        "repeat": repeat,
        "params": {name: sum(p.numel() for p in net.parameters()) for name, (net, _) in nets.items()},
    }
    for name, t in times.items():
        result[name] = {"median_ms": round(statistics.median(t) * 1000.0, 2), "min_ms": round(min(t) * 1000.0, 2)}
    result["ratio_ear_to_unet"] = {
        k: round(result["ear"][k] / result["basic_unet"][k], 3) for k in ("median_ms", "min_ms")
    }
    return result
