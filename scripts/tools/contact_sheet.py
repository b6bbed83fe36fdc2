# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Contact sheet of AP and lateral DRRs of prepared vertebrae (isolated and in context).

Usage::

    python -m scripts.tools.contact_sheet --data data/example --out docs/images/drr_contact_sheet.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from monai.transforms import LoadImage
from scripts.transforms.drr import DRR
from scripts.utils import atomic_path

__all__ = ["contact_sheet"]


def contact_sheet(
    data: str = "data/example",
    out: str = "docs/images/drr_contact_sheet.png",
    levels: str | list | tuple = "T1,T4,T7,T10,T12,L1",
    photon_count: float = 1e6,
    seed: int = 0,
) -> str:
    """Render AP and lateral DRRs (60 kV, default geometry) of some vertebrae into one PNG.

    Args:
        data: prepared dataset folder.
        out: output PNG.
        levels: vertebra levels to show (comma-separated or a list); missing ones are skipped.
        photon_count: photons per pixel.
        seed: noise seed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(data)
    dl = json.loads((root / "datalist.json").read_text())
    items = {it["level"]: it for split in ("training", "validation", "test") for it in dl.get(split, [])}
    wanted = [s.strip() for s in levels.split(",")] if isinstance(levels, str) else list(levels)
    rows = [items[lv] for lv in wanted if lv in items]
    if not rows:
        raise ValueError(f"none of the levels {wanted} is in {root / 'datalist.json'} (has {sorted(items)}).")
    drr = DRR((0, 90), photon_count=photon_count)
    load = LoadImage(image_only=True, ensure_channel_first=True)
    cols = ["AP, isolated", "lateral, isolated", "AP, in context", "lateral, in context"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for r, item in enumerate(rows):
        for c, key in enumerate(("gt", "ct")):
            drr.set_random_state(seed + r)
            img = drr(load(str(root / item[key]))).numpy()
            for v in range(2):
                ax = axes[r, 2 * c + v]
                ax.imshow(img[v], cmap="gray", vmin=0.0, vmax=float(np.percentile(img, 99.8)))
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(cols[2 * c + v], fontsize=9)
                if c == 0 and v == 0:
                    ax.set_ylabel(item["id"], fontsize=8)
    fig.suptitle(
        "DRRs, 60 kV / 3.5 mm Al, 1e6 photons; row 0 superior; AP: patient's right on the left; "
        "lateral: anterior on the left",
        fontsize=7,
    )
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    print(out)
    return out


if __name__ == "__main__":
    import sys

    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)
    # a misspelt option stops before the work
    check_cli_flags(contact_sheet, sys.argv[1:], "python -m scripts.tools.contact_sheet")

    fire.Fire(contact_sheet)
