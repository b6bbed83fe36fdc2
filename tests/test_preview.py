# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Preview pictures: orientation of the views and the written PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image
from scripts.io.preview import SavePreviewd, orthogonal_views


def test_orthogonal_views_radiological_orientation():
    v = np.zeros((5, 6, 7), np.float32)  # X (left->right), Y (posterior->anterior), Z (inferior->superior)
    v[4, 3, 6] = 1.0  # patient's far right, centre slice in Y, top (superior) slice
    v[2, 5, 3] = 2.0  # centre in X and Z, most anterior
    views = orthogonal_views(v[None])
    assert views["coronal"].shape == (7, 5) and views["sagittal"].shape == (7, 6) and views["axial"].shape == (6, 5)
    # coronal: superior up (row 0), patient's right on the image's left (column 0)
    assert views["coronal"][0, 0] == 1.0
    # sagittal through x = 2: anterior on the left, at the centre height
    assert views["sagittal"][3, 0] == 2.0
    # axial through z = 3: anterior up, at the centre column
    assert views["axial"][0, 2] == 2.0
    # MIPs collapse one axis: the AP MIP sees both points
    assert views["mip_ap"][0, 0] == 1.0 and views["mip_ap"][3, 2] == 2.0
    assert views["mip_lateral"][0, 2] == 1.0 and views["mip_axial"][0, 2] == 2.0


def _volume(name: str) -> MetaTensor:
    v = torch.full((1, 16, 16, 16), -1024.0)
    v[:, 4:12, 6:10, 3:13] = 800.0
    return MetaTensor(v, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])), meta={"filename_or_obj": name})


@pytest.mark.parametrize("with_label", [False, True])
def test_save_previewd_writes_png(tmp_path, with_label):
    xr = MetaTensor(torch.rand(2, 20, 20), meta={"angles": np.array([[0.0, 0.0], [90.0, 0.0]])})
    data = {"pred": _volume("/in/P1_T12.nii.gz"), "xray": xr}
    if with_label:
        data["label"] = _volume("gt")
    out = SavePreviewd("pred", label_key="label", output_dir=tmp_path)(data)
    path = tmp_path / "P1_T12" / "P1_T12_preview.png"
    assert out["pred_preview"] == str(path)
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert (w, h) == (900, 300 * (5 if with_label else 3) + 40)  # rows: inputs, 2 prediction, 2 truth
    assert pixels.std() > 10  # not blank
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["P1_T12_preview.png"]


def test_bad_xray_shape():
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        SavePreviewd("pred", output_dir="unused")({"pred": _volume("a"), "xray": torch.zeros(3, 4, 4)})


@pytest.mark.parametrize("confidence", [None, 0.0])
def test_the_title_wraps_a_long_flag_with_or_without_a_confidence(tmp_path, monkeypatch, confidence):
    import scripts.io.preview as preview

    titles = []
    real = preview.preview_figure
    monkeypatch.setattr(preview, "preview_figure", lambda *a, **k: titles.append(a[4]) or real(*a, **k))
    flag = "input unlike the model's X-rays: " + "the views look like X-rays through a body " * 4
    flag += "; use the body model"
    data = {"pred": _volume("/in/P1_T12.nii.gz"), "flag": flag}
    if confidence is not None:
        data["confidence"] = confidence
    SavePreviewd("pred", output_dir=str(tmp_path))(data)
    lines = titles[0].split("\n")[1:]
    assert len(lines) >= 2 and all(len(line) <= preview.TITLE_WIDTH for line in lines)
    assert " ".join(lines).endswith("use the body model")
    assert lines[0].startswith("confidence 0.00: input unlike" if confidence is not None else "input unlike")
