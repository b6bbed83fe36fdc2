# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""A preview picture per case: the two input X-rays, three orthogonal slices and three maximum intensity
projections (MIPs) of the reconstructed volume, the voxel-wise uncertainty of the reconstruction (its three
slices, when inference ran with confidence), and the same as the reconstruction for the ground truth when there
is one.

Display conventions (RAS volumes, see the bundle's data conventions), radiological: coronal and sagittal
planes are shown with superior up; coronal and axial with the patient's right on the image's left;
sagittal with anterior on the left; axial with anterior up. MIPs follow the plane they project onto
(AP MIP = along the antero-posterior axis, shown like the coronal slice; lateral MIP = along left-right,
like the sagittal slice; axial MIP = along inferior-superior, like the axial slice).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.folder_layout import FolderLayout
from monai.transforms import MapTransform
from scripts.utils import atomic_path

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn: importing the transforms stays light
    from matplotlib.figure import Figure

__all__ = ["orthogonal_views", "preview_figure", "radiograph_figure", "SavePreviewd"]

_PLANES = ("coronal", "sagittal", "axial")


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _display(plane: np.ndarray) -> np.ndarray:
    """(a, b) plane of a RAS volume -> display rows = b from high to low, columns = a from high to low."""
    return np.flip(plane, (0, 1)).T


def orthogonal_views(volume: Any) -> dict[str, np.ndarray]:
    """Central slices and MIPs of a RAS volume, oriented for display (see the module docstring).

    Args:
        volume: ``(X, Y, Z)`` or ``(1, X, Y, Z)`` array or tensor.

    Returns:
        ``{"coronal", "sagittal", "axial", "mip_ap", "mip_lateral", "mip_axial"}`` -> 2-D arrays
        (coronal / AP MIP: ``(Z, X)``, sagittal / lateral MIP: ``(Z, Y)``, axial: ``(Y, X)``).
    """
    v = _np(volume)
    if v.ndim == 4 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 3:
        raise ValueError(f"expected a 3-D volume (X, Y, Z) or (1, X, Y, Z), got shape {v.shape}.")
    x, y, z = (n // 2 for n in v.shape)
    # MIPs for display: a numpy max over one axis; scripts.transforms.projection holds the MIP transform and the
    # batched torch projections of the loss (a layer above this one)
    return {
        "coronal": _display(v[:, y, :]),
        "sagittal": _display(v[x, :, :]),
        "axial": _display(v[:, :, z]),
        "mip_ap": _display(v.max(axis=1)),
        "mip_lateral": _display(v.max(axis=0)),
        "mip_axial": _display(v.max(axis=2)),
    }


def _spacing(volume: Any) -> np.ndarray:
    if isinstance(volume, MetaTensor):
        aff = _np(volume.affine).astype(np.float64)
        return np.linalg.norm(aff[:3, :3], axis=0)
    return np.ones(3)


#: the most characters per line of a preview's title (a 9-inch figure at font size 10)
TITLE_WIDTH = 110


# The figure is drawn on an explicit Agg canvas (no pyplot): no window, no global backend switch, and
# safe in worker threads.


def preview_figure(
    volume: Any,
    xrays: Any = None,
    label: Any = None,
    window: Sequence[float] = (-1024.0, 1500.0),
    title: str = "",
    uncertainty: Any = None,
) -> Figure:
    """Build the preview figure (Agg canvas, no pyplot state).

    Args:
        volume: predicted volume in HU, ``(X, Y, Z)`` or ``(1, X, Y, Z)``; a ``MetaTensor`` gives the
            spacing used for the aspect ratio.
        xrays: the two input images ``(2, H, W)`` (``None``: no X-ray row).
        label: ground-truth volume in HU on the same grid (``None``: no ground-truth rows).
        window: display window in HU for slices and MIPs.
        title: figure title.
        uncertainty: voxel-wise uncertainty (HU, same grid as ``volume``; ``None``: no uncertainty row), shown
            on a heat scale from 0 to its 99th percentile.
    """
    rows: list[tuple[str, list[tuple[str, np.ndarray | None, float, str]]]] = []
    if xrays is not None:
        xr = _np(xrays)
        if xr.ndim != 3 or xr.shape[0] != 2:
            raise ValueError(f"expected the two X-ray images as (2, H, W), got shape {xr.shape}.")
        rows.append(("input", [(f"X-ray view {i + 1}", xr[i], 1.0, "xray") for i in range(2)]))
    sp = _spacing(volume)
    # aspect = row spacing / column spacing of each displayed plane
    aspect = {"coronal": sp[2] / sp[0], "sagittal": sp[2] / sp[1], "axial": sp[1] / sp[0]}
    for name, vol in (("prediction", volume), ("ground truth", label)):
        if vol is None:
            continue
        views = orthogonal_views(vol)
        rows.append((name, [(f"{p} slice", views[p], aspect[p], "hu") for p in _PLANES]))
        mips = (("AP MIP", "mip_ap", "coronal"), ("lateral MIP", "mip_lateral", "sagittal"))
        mips += (("axial MIP", "mip_axial", "axial"),)
        rows.append((name, [(t, views[k], aspect[p], "hu") for t, k, p in mips]))
        if name == "prediction" and uncertainty is not None:
            spread = orthogonal_views(uncertainty)
            rows.append(("uncertainty (HU)", [(f"{p} slice", spread[p], aspect[p], "spread") for p in _PLANES]))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = title.count("\n") + 1 if title else 0
    height = 3.0 * len(rows) + 0.2 + 0.2 * lines  # inches: the panels, then room for the title's lines
    fig = Figure(figsize=(9.0, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (row_name, panels) in enumerate(rows):
        for c in range(3):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(panels):
                continue
            text, img, asp, kind = panels[c]
            if kind == "xray":
                lo, hi = np.percentile(img, (0.5, 99.5))
                ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
            elif kind == "spread":
                top = float(np.percentile(_np(uncertainty), 99.0)) if uncertainty is not None else 1.0
                shown = ax.imshow(img, cmap="magma", vmin=0.0, vmax=max(top, 1e-6), aspect=asp)
                if c == len(panels) - 1:  # one scale for the row: one colour bar (each costs a layout pass)
                    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            else:
                ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=asp)
            ax.set_title(f"{row_name}: {text}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    # keep the panels below the (possibly two-line) title: tight_layout alone lets the first row's titles run into it
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - (0.1 + 0.2 * lines) / height))
    return fig


class SavePreviewd(MapTransform):
    """Save a preview PNG per case (see :func:`preview_figure`), written atomically.

    File: ``<output_dir>/<name>/<name>_<postfix>.png`` as ``SaveImaged`` names files, ``name`` from the
    volume's ``filename_or_obj`` meta data (``separate_folder=False`` drops the folder). The path is
    stored in ``data[f"{key}_preview"]``.

    Args:
        keys: the predicted volume key(s) (HU, channel-first ``MetaTensor``).
        xray_key: key of the two input images ``(2, H, W)``; skipped when absent.
        label_key: key of the ground truth in HU; skipped when ``None`` or absent.
        uncertainty_key: key of the voxel-wise uncertainty (:class:`scripts.confidence.TTAConfidenced`); skipped
            when absent. The title gives the confidence (``confidence_key``) when there is one and any flag
            (``flag_key``), wrapped.
        output_dir: output folder.
        output_postfix: name postfix.
        window: display window in HU.
        separate_folder: one sub-folder per case.
        dpi: resolution of the PNG.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        xray_key: str | None = "xray",
        label_key: str | None = None,
        uncertainty_key: str | None = "uncertainty",
        confidence_key: str = "confidence",
        flag_key: str = "flag",
        output_dir: str | os.PathLike = "./eval",
        output_postfix: str = "preview",
        window: Sequence[float] = (-1024.0, 1500.0),
        separate_folder: bool = True,
        dpi: int = 100,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.xray_key = xray_key
        self.label_key = label_key
        self.uncertainty_key = uncertainty_key
        self.confidence_key = confidence_key
        self.flag_key = flag_key
        self.layout = FolderLayout(output_dir, postfix=output_postfix, extension=".png", parent=separate_folder)
        self.window = tuple(window)
        self.dpi = dpi

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        xrays = d.get(self.xray_key) if self.xray_key else None
        label = d.get(self.label_key) if self.label_key else None
        spread = d.get(self.uncertainty_key) if self.uncertainty_key else None
        for key in self.key_iterator(d):
            vol = d[key]
            name = vol.meta.get("filename_or_obj", str(key)) if isinstance(vol, MetaTensor) else str(key)
            title = os.path.basename(str(name))
            angles = getattr(xrays, "meta", {}).get("angles") if isinstance(xrays, MetaTensor) else None
            if angles is not None:
                a = _np(angles).reshape(2, 2)
                title += f"  (views: alpha/beta {a[0, 0]:g}/{a[0, 1]:g} and {a[1, 0]:g}/{a[1, 1]:g} deg)"
            status = [f"confidence {float(d[self.confidence_key]):.2f}"] if self.confidence_key in d else []
            if d.get(self.flag_key):
                status.append(str(d[self.flag_key]))
            if status:  # a long flag (the input type check's flag says what to do) wraps onto more lines
                title += "\n" + textwrap.fill(": ".join(status), width=TITLE_WIDTH)
            fig = preview_figure(vol, xrays, label, self.window, title, uncertainty=spread)
            path = os.fspath(self.layout.filename(subject=str(name)))
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=self.dpi)
            d[f"{key}_preview"] = path
        return d


def radiograph_figure(
    images: Sequence[np.ndarray], names: Sequence[str], vertebrae: Sequence[Mapping[str, Any]], title: str = ""
) -> Figure:
    """Two radiographs with each vertebra found: its centre, its name and its reconstruction's outline.

    Args:
        images: the radiographs ``(H, W)`` as oriented by :func:`scripts.io.radiograph.read_radiograph` (bone
            bright).
        names: the views' names (e.g. ``["ap", "lateral"]``).
        vertebrae: per vertebra ``{"level": name, "rc": {view: (row, col)}, "outline": {view: (N, 2) projected
            bone points (row, col)}}``; ``outline`` is optional (a vertebra without a reconstruction).
        title: the figure's title.
    """
    from matplotlib.figure import Figure
    from scipy import ndimage

    fig = Figure(figsize=(6.0 * len(images), 7.5), dpi=110)
    axes = fig.subplots(1, len(images), squeeze=False)[0]
    colours = [f"C{k % 10}" for k in range(len(vertebrae))]
    for ax, image, name in zip(axes, images, names):
        img = np.asarray(image, dtype=np.float64)
        lo, hi = np.percentile(img, [1, 99.5])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        h, w = img.shape
        for vert, colour in zip(vertebrae, colours):
            pts = np.asarray((vert.get("outline") or {}).get(name, np.zeros((0, 2))), dtype=np.float64).reshape(-1, 2)
            if len(pts):
                # the outline: where the projected bone points fall, on a raster of the image's pixels
                occ = np.zeros((h, w), dtype=np.float32)
                r = np.clip(np.rint(pts[:, 0]).astype(int), 0, h - 1)
                c = np.clip(np.rint(pts[:, 1]).astype(int), 0, w - 1)
                occ[r, c] = 1.0
                # close the gaps between the points (the projected voxels can be sparser than the pixels)
                occ = ndimage.binary_fill_holes(ndimage.binary_closing(occ > 0, iterations=2)).astype(np.float32)
                if occ.sum() > 2:
                    ax.contour(occ, levels=[0.5], colors=[colour], linewidths=0.8)
            rc = vert.get("rc", {}).get(name)
            if rc is not None:
                ax.plot(rc[1], rc[0], "+", color=colour, markersize=9, markeredgewidth=1.5)
                ax.text(rc[1] + 0.04 * w, rc[0], str(vert.get("level", "")), color=colour, fontsize=8, va="center")
        ax.set_title(name)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
