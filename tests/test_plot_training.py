# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Training curves from TensorBoard logs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scripts.io.plot_training import main, plot_training, read_scalars
from torch.utils.tensorboard import SummaryWriter


def _log(tmp_path):
    w = SummaryWriter(log_dir=str(tmp_path))
    for i in range(1, 13):
        w.add_scalar("train_loss", 1.0 / i, i)
    for e in range(1, 4):
        w.add_scalar("val_dice", 0.2 * e, e)
    w.close()


def test_read_and_plot(tmp_path):
    _log(tmp_path)
    scalars = read_scalars(tmp_path)
    steps, values = scalars["train_loss"]
    np.testing.assert_array_equal(steps, np.arange(1, 13))
    np.testing.assert_allclose(values, 1.0 / np.arange(1, 13), rtol=1e-6)
    np.testing.assert_allclose(scalars["val_dice"][1], [0.2, 0.4, 0.6], rtol=1e-6)
    out = plot_training(tmp_path, tmp_path / "curves.png")
    assert Image.open(out).size[0] > 400


def test_missing_logs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(str(tmp_path / "none"))
    assert "no TensorBoard event files" in capsys.readouterr().err


def test_plot_scalars_draws_one_panel_per_series(tmp_path):
    from scripts.io.plot_training import plot_scalars

    one = plot_scalars({"loss": ([200], [0.5]), "val_dice": ([0, 200], [0.7, 0.71])}, tmp_path / "a.png", "loss")
    three = plot_scalars(
        {"loss": ([200, 400], [0.5, 0.4]), "val_dice": ([0, 200], [0.7, 0.71]), "val_ncc": ([0, 200], [0.9, 0.8])},
        tmp_path / "b.png", "loss", loss_x="step", metric_x="step",
    )  # fmt: skip
    assert Image.open(three).size[0] > Image.open(one).size[0], "a third panel widens the figure"
