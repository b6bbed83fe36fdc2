# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Figures of reconstructions: surface-distance heat maps of several methods' reconstructions of one vertebra
(the paper's Figs. 6-7), EAR's edge attention in three planes (Fig. 9), and the difference FEM makes (Fig. 10).

Usage::

    python -m scripts.tools.figures surface --gt crop_gt.nii.gz \
        --preds "EAR=ear_hu.nii.gz,PSR=psr_hu.nii.gz" --out fig.png

Each reconstruction's bone surface (marching cubes at -500 HU, world mm by the volume's affine) is coloured
by its distance to the ground truth's surface (mm, one colour scale for every panel), seen from the front,
the left and above, one row per method (the paper's Figs. 6-7).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scripts.utils import atomic_path

__all__ = [
    "surface_distances",
    "surface_figure",
    "VIEWS",
    "edge_attention",
    "planes_figure",
    "edge_attention_figure",
    "fem_difference_figure",
]

#: view name -> (elevation, azimuth) of matplotlib's 3-D axes, for RAS world coordinates
VIEWS: dict[str, tuple[float, float]] = {"anterior": (0.0, 90.0), "left": (0.0, 180.0), "superior": (90.0, -90.0)}


def _load(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3]), img.affine


def surface_distances(
    pred_hu: np.ndarray, gt_hu: np.ndarray, affine: np.ndarray, level: float = -500.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The prediction's bone surface and each vertex's distance (mm) to the ground truth's surface.

    Args:
        pred_hu: predicted volume (X, Y, Z) in HU.
        gt_hu: ground truth on the same grid.
        affine: voxel-to-world matrix of both.
        level: bone threshold in HU.

    Returns:
        ``(vertices (N, 3) in world mm, faces (M, 3), distance per vertex (N,) in mm)``.
    """
    from scipy.ndimage import distance_transform_edt, map_coordinates
    from skimage.measure import marching_cubes

    if pred_hu.shape != gt_hu.shape:
        raise ValueError(f"prediction {pred_hu.shape} and ground truth {gt_hu.shape} must share one grid.")
    gt = gt_hu > level
    if not (pred_hu > level).any() or not gt.any():
        raise ValueError("both volumes need voxels above the bone level to have a surface.")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    # signed distance to the boundary between bone and background voxels, which lies half a voxel from the
    # voxel centres on either side (where marching cubes puts a surface): 0 half-way between them
    half = 0.5 * float(spacing.mean())
    outside = distance_transform_edt(~gt, sampling=spacing) - half
    inside = distance_transform_edt(gt, sampling=spacing) - half
    signed = np.where(gt, -inside, outside)
    verts, faces, _, _ = marching_cubes(np.pad(pred_hu, 1, constant_values=-1024.0), level=level)
    verts -= 1.0
    d = np.abs(map_coordinates(signed, verts.T, order=1, mode="nearest"))
    world = verts @ affine[:3, :3].T + affine[:3, 3]
    return world, faces, d


def surface_figure(
    preds: Mapping[str, str | os.PathLike],
    gt: str | os.PathLike,
    out: str | os.PathLike,
    views: Sequence[str] = ("anterior", "left", "superior"),
    vmax_mm: float | None = None,
    level: float = -500.0,
) -> Path:
    """Draw the surface-distance heat maps of several reconstructions of one vertebra into a PNG.

    Args:
        preds: method name -> reconstructed volume (NIfTI, HU, on the ground truth's grid).
        gt: ground-truth volume (NIfTI, HU).
        out: PNG path (written atomically).
        views: names of :data:`VIEWS`, one column each.
        vmax_mm: top of the colour scale (default: the 99th percentile of all distances).
        level: bone threshold in HU.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    unknown = [v for v in views if v not in VIEWS]
    if unknown or not preds:
        raise ValueError(f"give at least one prediction and views among {list(VIEWS)}; got {list(views)}.")
    gt_hu, affine = _load(gt)
    surfaces = {}
    for name, path in preds.items():
        pred_hu, pred_affine = _load(path)
        if not np.allclose(pred_affine, affine, atol=1e-3):
            raise ValueError(f"{path} is not on the ground truth's grid ({gt}); reconstruct the same crop.")
        if not (gt_hu > level).any():
            raise ValueError(f"the ground truth {gt} has no voxel above {level} HU: no surface to compare with.")
        # a reconstruction without bone (e.g. an untrained model) gets an empty panel that says so
        surfaces[name] = surface_distances(pred_hu, gt_hu, affine, level) if (pred_hu > level).any() else None
    found = [s for s in surfaces.values() if s is not None]
    top = vmax_mm or (float(np.percentile(np.concatenate([s[2] for s in found]), 99)) if found else 1.0)
    top = max(top, 1e-3)
    cmap = matplotlib.colormaps["jet"]
    fig = Figure(figsize=(3.0 * len(views) + 0.8, 3.0 * len(surfaces)), dpi=100)
    FigureCanvasAgg(fig)
    # one zoom for all panels: the surfaces' extent
    every = np.concatenate([s[0] for s in found]) if found else np.zeros((1, 3))
    low, high = every.min(axis=0), every.max(axis=0)
    centre, half = (low + high) / 2, max(0.55 * float((high - low).max()), 1.0)
    for r, (name, surface) in enumerate(surfaces.items()):
        if surface is None:
            ax = fig.add_subplot(len(surfaces), 1, r + 1)
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{name}: no voxel above {level:g} HU, no surface", ha="center", va="center")
            continue
        verts, faces, d = surface
        colours = cmap(np.clip(d[faces].mean(axis=1) / top, 0.0, 1.0))
        for c, view in enumerate(views):
            ax = fig.add_subplot(len(surfaces), len(views), r * len(views) + c + 1, projection="3d")
            ax.add_collection3d(Poly3DCollection(verts[faces], facecolors=colours, edgecolor="none"))
            for setter, k in ((ax.set_xlim, 0), (ax.set_ylim, 1), (ax.set_zlim, 2)):
                setter(centre[k] - half, centre[k] + half)
            ax.view_init(*VIEWS[view])
            # matplotlib's default camera leaves the cube at about half the panel; zoom so the bone fills it
            ax.set_box_aspect((1, 1, 1), zoom=1.4)
            ax.set_axis_off()
            ax.set_title(f"{name}, {view}" if c else f"{name}: mean {d.mean():.2f} mm, {view}", fontsize=8)
    norm = matplotlib.colors.Normalize(0.0, top)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=fig.axes, shrink=0.6)
    bar.set_label("distance to the true surface (mm)")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return Path(out)


def edge_attention(network: Any, image: torch.Tensor) -> torch.Tensor:
    """EAR's edge attention map ``A_e`` for one input, at the input's size.

    Runs the network once with a forward hook on its edge attention module (``network.eam``) and returns the
    sigmoid of the edge logits, upsampled (trilinear) to the input's spatial size, as EAR uses it.

    Args:
        network: an :class:`~scripts.networks.EAR` with ``use_eam=True``.
        image: ``(C, X, Y, Z)`` or ``(B, C, X, Y, Z)`` network input.

    Returns:
        ``(X, Y, Z)`` attention in [0, 1] (the first item of a batch).
    """
    eam = getattr(network, "eam", None)
    if eam is None:
        raise ValueError("edge attention needs an EAR network with use_eam=True.")
    x = image if image.ndim == 5 else image[None]
    caught: list[torch.Tensor] = []
    handle = eam.register_forward_hook(lambda _m, _i, out: caught.append(out.detach()))
    try:
        with torch.no_grad():
            network.eval()(x)
    finally:
        handle.remove()
    logits = torch.nn.functional.interpolate(caught[0], size=x.shape[2:], mode="trilinear", align_corners=False)
    return torch.sigmoid(logits)[0, 0]


def planes_figure(
    rows: Mapping[str, Any],
    out: str | os.PathLike,
    cmaps: Mapping[str, str] | str = "gray",
    limits: Mapping[str, tuple[float, float]] | None = None,
    title: str = "",
) -> Path:
    """One row per volume, its central coronal, sagittal and axial slices (as the previews show them).

    Args:
        rows: row name -> ``(X, Y, Z)`` volume (array or tensor, RAS grid).
        out: PNG path (written atomically).
        cmaps: a colour map for every row, or one per row name.
        limits: row name -> ``(vmin, vmax)``; default: the row's own range.
        title: figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scripts.io.preview import orthogonal_views

    planes = ("coronal", "sagittal", "axial")
    fig = Figure(figsize=(3.0 * len(planes) + 1.0, 2.8 * len(rows) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    for r, (name, volume) in enumerate(rows.items()):
        views = orthogonal_views(volume)
        cmap = cmaps if isinstance(cmaps, str) else cmaps.get(name, "gray")
        lo, hi = (limits or {}).get(name, (None, None))
        for c, plane in enumerate(planes):
            ax = fig.add_subplot(len(rows), len(planes), r * len(planes) + c + 1)
            shown = ax.imshow(views[plane], cmap=cmap, vmin=lo, vmax=hi)
            ax.set_axis_off()
            ax.set_title(f"{name}, {plane}", fontsize=8)
        fig.colorbar(shown, ax=fig.axes[-len(planes) :], shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out)


def edge_attention_figure(attention: Any, gt_hu: Any, out: str | os.PathLike, title: str = "") -> Path:
    """EAR's edge attention in three planes under the ground truth's slices (the paper's Fig. 9)."""
    return planes_figure(
        {"ground truth (HU)": gt_hu, "edge attention A_e": attention},
        out,
        cmaps={"ground truth (HU)": "gray", "edge attention A_e": "inferno"},
        limits={"ground truth (HU)": (-1024.0, 1500.0), "edge attention A_e": (0.0, 1.0)},
        title=title,
    )


def fem_difference_figure(
    ear_hu: Any, no_fem_hu: Any, gt_hu: Any, out: str | os.PathLike, limit_hu: float = 300.0, title: str = ""
) -> Path:
    """What FEM changes (the paper's Fig. 10): EAR minus EAR without FEM, and where that brings it closer to
    the truth (``|no FEM - truth| - |EAR - truth|``, positive where FEM helps), in HU, three planes each."""
    ear, no_fem, gt = (np.asarray(_as_np(v), dtype=np.float32) for v in (ear_hu, no_fem_hu, gt_hu))
    if not ear.shape == no_fem.shape == gt.shape:
        raise ValueError(f"the volumes must share one grid, got {ear.shape}, {no_fem.shape} and {gt.shape}.")
    rows = {
        "ground truth (HU)": gt,
        "EAR - no FEM (HU)": ear - no_fem,
        "error reduction by FEM (HU)": np.abs(no_fem - gt) - np.abs(ear - gt),
    }
    diverging = (-limit_hu, limit_hu)
    return planes_figure(
        rows,
        out,
        cmaps={"ground truth (HU)": "gray", "EAR - no FEM (HU)": "coolwarm", "error reduction by FEM (HU)": "RdBu"},
        limits={
            "ground truth (HU)": (-1024.0, 1500.0),
            "EAR - no FEM (HU)": diverging,
            "error reduction by FEM (HU)": diverging,
        },
        title=title,
    )


def _as_np(v: Any) -> np.ndarray:
    v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    return v[0] if v.ndim == 4 and v.shape[0] == 1 else v


def main(command: str, gt: str, preds: str, out: str, vmax_mm: float | None = None) -> None:
    """``python -m scripts.tools.figures surface --gt GT.nii.gz --preds "A=a.nii.gz,B=b.nii.gz" --out fig.png``."""
    if command != "surface":
        raise ValueError(f"unknown figure {command!r}; choose 'surface'.")
    pairs = dict(p.split("=", 1) for p in preds.split(",") if p)
    print(surface_figure(pairs, gt, out, vmax_mm=vmax_mm))


if __name__ == "__main__":
    import sys

    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)
    # a misspelt option stops before the work
    check_cli_flags(main, sys.argv[1:], "python -m scripts.tools.figures")

    fire.Fire(main)
