# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""DeepDRR backend: the camera mapping (plain numpy) and the error when DeepDRR or CUDA is missing."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from scripts.drr.deepdrr_backend import deepdrr_camera
from scripts.drr.geometry import ConeBeamGeometry
from scripts.drr.projector import DRRProjector


def test_camera_mapping_reproduces_our_projection():
    geo = ConeBeamGeometry(detector_shape=(40, 60), pixel_spacing=(1.2, 1.5))
    angles = [[0, 0], [90, 0], [30, -12]]
    iso = (10.0, -5.0, 20.0)
    cam = deepdrr_camera(geo, angles, iso)
    assert cam["sensor_size"] == (60, 40) and cam["pixel_size"] == (1.5, 1.2)
    # DeepDRR's CameraIntrinsicTransform.from_sizes: f = sdd / pixel size, principal point at sensor_size / 2
    k = cam["intrinsic"]
    np.testing.assert_allclose(k, [[1020 / 1.5, 0, 30.0], [0, 1020 / 1.2, 20.0], [0, 0, 1]])
    pts = np.random.default_rng(0).uniform(-60, 60, (50, 3)) + np.asarray(iso)
    ours = geo.project_points(pts, angles, iso).numpy()
    for v, ext in enumerate(cam["extrinsics"]):
        assert np.allclose(ext[:3, :3] @ ext[:3, :3].T, np.eye(3))  # rigid
        cam_pts = pts @ ext[:3, :3].T + ext[:3, 3]
        assert (cam_pts[:, 2] > 0).all()  # in front of the source
        idx = cam_pts @ k.T
        idx = idx[:, :2] / idx[:, 2:]
        # DeepDRR index of a pixel centre = our index + 0.5
        np.testing.assert_allclose(idx - 0.5, ours[v], atol=1e-6)
    # the source is the camera centre: 700 mm from the isocentre, anterior for the AP view
    src = -cam["extrinsics"][0][:3, :3].T @ cam["extrinsics"][0][:3, 3]
    np.testing.assert_allclose(src, np.asarray(iso) + [0, 700, 0], atol=1e-9)


@pytest.mark.skipif(
    importlib.util.find_spec("deepdrr") is not None and torch.cuda.is_available(), reason="DeepDRR can run here"
)
def test_clear_error_without_deepdrr_or_cuda():
    with pytest.raises(RuntimeError, match="requirements-deepdrr.txt") as err:
        DRRProjector(backend="deepdrr")
    assert "CUDA" in str(err.value) or "deepdrr" in str(err.value)
