# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Plot the training curves of a run from its TensorBoard logs.

Usage::

    python -m scripts.io.plot_training --log_dir runs/train --out runs/train/curves.png

Draws the training loss (per iteration, with a per-epoch mean) and every validation metric logged per
epoch (``val_*``), one panel each, and writes a PNG (atomically).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scripts.utils import atomic_path  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

__all__ = ["read_scalars", "plot_training", "plot_scalars", "main"]


def read_scalars(log_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All scalar series of the TensorBoard event files in ``log_dir``: ``{tag: (steps, values)}``."""
    log_dir = Path(log_dir)
    files = sorted(log_dir.glob("events.out.tfevents*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files in {log_dir}; give the training's output_dir.")
    series: dict[str, dict[int, float]] = {}
    for f in files:  # a resumed run writes a new file; later files win for repeated steps
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for e in acc.Scalars(tag):
                series.setdefault(tag, {})[e.step] = e.value
    return {t: (np.array(sorted(v)), np.array([v[k] for k in sorted(v)])) for t, v in series.items()}


def plot_training(log_dir: str | Path, out: str | Path, loss_tag: str = "train_loss") -> Path:
    """Write the curves of ``log_dir`` to the PNG ``out``."""
    return plot_scalars(read_scalars(log_dir), out, loss_tag)


def plot_scalars(
    scalars: dict[str, tuple[np.ndarray, np.ndarray]],
    out: str | Path,
    loss_tag: str = "train_loss",
    loss_x: str = "iteration",
    metric_x: str = "epoch",
) -> Path:
    """Write series ``{tag: (steps, values)}`` to the PNG ``out``: the loss (``loss_tag``, with a running mean)
    first, then one panel per other tag; ``loss_x`` and ``metric_x`` label their horizontal axes."""
    scalars = {k: (np.asarray(v[0]), np.asarray(v[1], dtype=float)) for k, v in scalars.items()}
    metrics = sorted(t for t in scalars if t != loss_tag)
    n = 1 + len(metrics)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    ax = axes.flat[0]
    if loss_tag in scalars:
        steps, values = scalars[loss_tag]
        ax.plot(steps, values, lw=0.6, alpha=0.4, label=loss_x)
        k = max(1, len(values) // 50)
        if k > 1 and len(values) > k:
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
        ax.set_xlabel(loss_x)
        ax.legend(fontsize=8)
    ax.set_title(loss_tag)
    for ax, tag in zip(list(axes.flat)[1:], metrics):
        steps, values = scalars[tag]
        ax.plot(steps, values, marker=".", lw=1)
        ax.set_title(tag)
        ax.set_xlabel(metric_x)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


def main(log_dir: str = "runs/train", out: str | None = None) -> str:
    """Plot the curves of the run in ``log_dir`` (default output: ``<log_dir>/curves.png``)."""
    try:
        path = plot_training(log_dir, out or Path(log_dir) / "curves.png")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"wrote {path}")
    return str(path)


if __name__ == "__main__":
    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)
    # a misspelt option stops before the work
    check_cli_flags(main, sys.argv[1:], "python -m scripts.io.plot_training")

    fire.Fire(main, serialize=lambda _: None)
