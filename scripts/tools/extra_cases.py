# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Two more test patients, from the public repository the shared spine CTs come from.

Usage::

    git clone https://github.com/liukuan5625/Swin-X2S data/Swin-X2S && git -C data/Swin-X2S checkout 9f45808c6
    python -m scripts.tools.extra_cases --repo data/Swin-X2S --out data/extra-ct
    python -m scripts.prepare --source docs/spine-ct-sources-extended.csv --out data/body64_x --spacing 2 --roi 64 \\
        --split "verse081=training,ts_s0308=validation"

Each case of :data:`CASES` (a CT and its ground-truth label map, VerSe ids, as the repository's figure folders hold
them) is written as ``<out>/<patient>_ct.nii.gz`` and ``<out>/<patient>_seg.nii.gz``, turned as the shared copies
are: the source stores every volume mirrored front to back, so the array's second axis is flipped with the affine
kept. The label map takes the CT's affine: the source's two differ by float rounding (up to 0.004 mm), which
``scripts.prepare`` would refuse. A label map whose grid differs more is refused here.
``docs/spine-ct-sources-extended.csv`` finds the files in ``data/extra-ct`` (paths relative to ``docs/``); with
another ``--out``, edit its last two rows.

Both are CT colonography scans of CTSpine1K (CC BY-NC-SA 4.0): test patients only, never training data for weights
that the bundle ships (``docs/data.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CASES", "write_case", "extra_cases"]

#: patient -> (CT, label map), paths inside the repository at commit 9f45808c60983002af677cc8341c8050d731e092
CASES: dict[str, tuple[str, str]] = {
    "colonog0646": (
        "visualization/vis_result/models/CTSpine1K/1.3.6.1.4.1.9328.50.4.0646.nii.gz",
        "visualization/vis_result/models/CTSpine1K/unet/1.3.6.1.4.1.9328.50.4.0646_label.nii.gz",
    ),
    "colonog0510": (
        "visualization/vis_result/subsets/FIG3/1.3.6.1.4.1.9328.50.4.0510.nii.gz",
        "visualization/vis_result/subsets/FIG3/CTSpine1K/1.3.6.1.4.1.9328.50.4.0510_label.nii.gz",
    ),
}


def write_case(ct: str | Path, labels: str | Path, out: str | Path, patient: str, tolerance: float = 0.01) -> None:
    """Write one case's CT and label map under ``out``, the array's second axis flipped, the CT's affine on both.

    Args:
        ct: the source CT (NIfTI).
        labels: its label map (NIfTI, VerSe ids), on the same grid.
        out: the folder for ``<patient>_ct.nii.gz`` and ``<patient>_seg.nii.gz`` (each written atomically).
        patient: the patient id of the file names.
        tolerance: the largest difference allowed between any two entries of the two 4 x 4 affines (mm for the
            translation; the spacing and direction entries are mm per voxel).

    Raises:
        ValueError: the two grids differ in shape, or their affines by more than ``tolerance``.
    """
    import nibabel as nib
    from scripts.utils import atomic_path

    ct_img, lab_img = nib.load(str(ct)), nib.load(str(labels))
    gap = float(np.abs(ct_img.affine - lab_img.affine).max())
    if ct_img.shape != lab_img.shape or gap > tolerance:
        raise ValueError(
            f"{labels} does not lie on {ct}'s grid (shapes {lab_img.shape} and {ct_img.shape}, affine entries up to "
            f"{gap:.4g} apart, tolerance {tolerance}); check the repository's commit (9f45808c6)."
        )
    volume = np.asarray(ct_img.dataobj)[:, ::-1].copy()
    label_map = np.asarray(lab_img.dataobj)[:, ::-1].astype(np.uint8)
    Path(out).mkdir(parents=True, exist_ok=True)
    for data, name in ((volume, "ct"), (label_map, "seg")):
        with atomic_path(Path(out) / f"{patient}_{name}.nii.gz") as tmp:
            nib.save(nib.Nifti1Image(data, ct_img.affine, ct_img.header if name == "ct" else None), str(tmp))


def extra_cases(repo: str, out: str = "data/extra-ct") -> list[str]:
    """Write every case of :data:`CASES` from a clone of liukuan5625/Swin-X2S.

    Args:
        repo: the clone's folder, checked out at commit 9f45808c6.
        out: the folder for the cases' files.

    Returns:
        the patient ids written.

    Raises:
        FileNotFoundError: a file of :data:`CASES` is not in ``repo``, before anything is written.
    """
    missing = [p for pair in CASES.values() for p in pair if not (Path(repo) / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{repo} lacks {missing[0]} ({len(missing)} files missing): git clone "
            f"https://github.com/liukuan5625/Swin-X2S {repo} and check out commit 9f45808c6."
        )
    for patient, (ct, labels) in CASES.items():
        write_case(Path(repo) / ct, Path(repo) / labels, out, patient)
        print(f"{patient}: {out}/{patient}_ct.nii.gz, {out}/{patient}_seg.nii.gz")
    return list(CASES)


if __name__ == "__main__":
    import sys

    import fire
    from scripts.errors import check_cli_flags, install_cli_excepthook

    install_cli_excepthook(always=True)  # a bad input ends in its one line, not a traceback

    # a misspelt option stops here, before the work
    check_cli_flags(extra_cases, sys.argv[1:], "python -m scripts.tools.extra_cases")
    fire.Fire(extra_cases, serialize=lambda result: None)
