# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Make the clutter bank of :class:`scripts.transforms.RandClutterTransplantd`: the body around each training window.

Usage::

    python -m scripts.tools.clutter_bank --dataset_dir data/body64 --draws 16

For every vertebra of the split (default ``training``) and each of ``--draws`` seeded draws of the training's
window shift and pose (the configs' ``window_transforms`` and ``augment_transforms``), the window is projected
three times without noise, with the same geometry: the whole scan (``p_b``), the isolated vertebra (``p_v``) and
the vertebra's volume as water (``p_w``, ``min(HU, 0)``). The bank holds ``c = p_b - p_v + p_w``: the body around
the window with its own vertebra replaced by water. Written (atomically) to ``--out``, default
``<dataset_dir>/clutter_bank.pt``: a ``torch.save`` dict with ``clutter`` ``(N, V, H, W)`` float16, ``ids``,
``levels``, ``views``, ``roi_size``, ``spacing``, ``spectrum`` and ``physics``.

Only the split's vertebrae are used: make the bank from the training split, so validation and test patients
never enter training through it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

__all__ = ["clutter_bank"]

ROOT = Path(__file__).resolve().parents[2]


def clutter_bank(
    dataset_dir: str = "data/body64",
    configs: Sequence[str] = ("configs/train.json", "configs/cpu.json", "configs/body.json"),
    split: str = "training",
    draws: int = 16,
    seed: int = 0,
    out: str | None = None,
) -> Path:
    """Write the clutter bank (see the module's docstring) and return its path."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose, CopyItemsd, ThresholdIntensityd
    from scripts.functional import item_seed
    from scripts.transforms import DRRd
    from scripts.utils import atomic_path

    if int(draws) < 1:
        raise ValueError(f"draws must be at least 1, got {draws}.")
    parser = ConfigParser()
    parser.read_config([str(ROOT / c) for c in configs])
    parser["dataset_dir"] = dataset_dir
    parser["drr_source"] = "body"
    parser["bank_items"] = f"$@scripts.workflow.load_split(@dataset_dir, {split!r}, 'body')"
    items = parser.get_parsed_content("bank_items")
    if not items:
        raise ValueError(f"the {split!r} split of {dataset_dir} has no vertebrae.")
    views = parser.get_parsed_content("views")
    project = DRRd(
        keys=["body", "gt", "water"],
        ref_key="gt",
        output_keys=["p_b", "p_v", "p_w"],
        angles=views,
        physics=parser.get_parsed_content("physics"),
        spectrum=parser.get_parsed_content("spectrum"),
        photon_count=None,
    )
    transform = Compose(
        parser.get_parsed_content("load_transforms")
        + parser.get_parsed_content("window_transforms")
        + parser.get_parsed_content("augment_transforms")
        + [CopyItemsd(keys="gt", names="water")]
        + [ThresholdIntensityd(keys="water", threshold=0.0, above=False, cval=0.0), project]
    )
    clutter, ids, levels = [], [], []
    for item in tqdm(items, desc="clutter bank", unit="vertebra"):
        for k in range(int(draws)):
            transform.set_random_state(seed=item_seed(item["id"], seed * 1000 + k))
            d = transform(dict(item))
            c = d["p_b"].as_tensor() - d["p_v"].as_tensor() + d["p_w"].as_tensor()
            clutter.append(c.to(torch.float16))
            ids.append(str(item["id"]))
            levels.append(str(item.get("level", "")))
    bank = {
        "clutter": torch.stack(clutter),
        "ids": ids,
        "levels": levels,
        "views": [list(map(float, v)) for v in views],
        "roi_size": parser.get_parsed_content("roi_size"),
        "spacing": parser.get_parsed_content("spacing"),
        "spectrum": parser.get_parsed_content("spectrum"),
        "physics": parser.get_parsed_content("physics"),
        "split": split,
        "draws": int(draws),
    }
    path = Path(out) if out else Path(dataset_dir) / "clutter_bank.pt"
    with atomic_path(path) as tmp:
        torch.save(bank, tmp)
    print(f"wrote {path}: {len(ids)} windows of {len(items)} vertebrae, shape {tuple(bank['clutter'].shape)}")
    return path


if __name__ == "__main__":
    import sys

    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)  # a bad input ends in its one line, not a traceback

    os.chdir(ROOT)
    # a misspelt option stops here, before the work
    check_cli_flags(clutter_bank, sys.argv[1:], "python -m scripts.tools.clutter_bank")
    fire.Fire(clutter_bank, serialize=lambda result: None)
