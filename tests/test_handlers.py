# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""ResumableCheckpoint: atomic per-epoch saves and resumption."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from scripts.errors import BundleInputError
from scripts.handlers import ResumableCheckpoint


def _trainer(max_epochs: int, ckpt_dir, seen_epochs: list[int]) -> tuple[SupervisedTrainer, torch.nn.Module]:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    data = [{"image": torch.randn(4, 3), "label": torch.randn(4, 1)} for _ in range(2)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=torch.nn.MSELoss(),
    )
    ResumableCheckpoint(ckpt_dir, {"model": net, "optimizer": opt}).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: seen_epochs.append(e.state.epoch))
    return trainer, net


def test_resume_continues_from_saved_epoch(tmp_path):
    first: list[int] = []
    trainer, net = _trainer(2, tmp_path, first)
    trainer.run()
    assert first == [1, 2]
    assert (tmp_path / "checkpoint_last.pt").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "no temporary file may remain"
    saved = {k: v.clone() for k, v in net.state_dict().items()}

    second: list[int] = []
    trainer2, net2 = _trainer(4, tmp_path, second)
    trainer2.run()
    assert second == [3, 4], "a restarted run must continue after the last saved epoch"
    assert trainer2.state.epoch == 4
    assert not torch.equal(net2.state_dict()["weight"], saved["weight"])


def test_unreadable_checkpoint_is_reported(tmp_path):
    (tmp_path / "checkpoint_last.pt").write_bytes(b"not a checkpoint")
    trainer, _ = _trainer(1, tmp_path, [])
    with pytest.raises(RuntimeError, match="delete it to start training from scratch"):
        trainer.run()


def test_checkpoint_beyond_max_epochs_is_reported(tmp_path):
    trainer, _ = _trainer(3, tmp_path, [])
    trainer.run()
    trainer2, _ = _trainer(2, tmp_path, [])
    with pytest.raises(BundleInputError, match="beyond max_epochs"):
        trainer2.run()


def test_pretrained_weights_start_training_and_keep_this_runs_model_info(tmp_path):
    from ignite.engine import Engine
    from scripts.errors import BundleInputError
    from scripts.handlers import PretrainedWeights
    from scripts.networks.model_info import attach_model_info, read_model_info

    source = attach_model_info(torch.nn.Linear(3, 1), {"gt_mean": -900.0, "gt_std": 150.0}, 2.0, 64)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    net = attach_model_info(torch.nn.Linear(3, 1), {"gt_mean": -1000.0, "gt_std": 170.0}, 1.0, 128)
    engine = Engine(lambda e, b: None)
    PretrainedWeights(net, tmp_path / "model.pt").attach(engine)
    engine.run([0], max_epochs=1)
    torch.testing.assert_close(net.weight, source.weight)
    info = read_model_info(net)
    assert {k: info[k] for k in ("gt_mean", "gt_std", "spacing", "roi_size")} == {
        "gt_mean": -1000.0,
        "gt_std": 170.0,
        "spacing": 1.0,
        "roi_size": 128,
    }

    PretrainedWeights(net, None).attach(Engine(lambda e, b: None))  # no pretrained weights: nothing to do
    with pytest.raises(BundleInputError, match="--pretrained"):
        PretrainedWeights(net, tmp_path / "absent.pt").attach(Engine(lambda e, b: None))
    other = torch.nn.Linear(4, 1)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="size mismatch"):
        PretrainedWeights(net, tmp_path / "other.pt")(Engine(lambda e, b: None))


def test_resuming_on_other_data_is_refused_and_another_learning_rate_is_warned_of(tmp_path, caplog):
    """The checkpoint's network holds the HU statistics of the data it was trained on: a run whose dataset gives other
    ones would train against one target scale and save the other; a changed learning rate is not applied."""
    from scripts.networks.model_info import attach_model_info

    def run(mean: float, lr: float, epochs: int) -> SupervisedTrainer:
        torch.manual_seed(0)
        net = attach_model_info(torch.nn.Linear(3, 1), {"gt_mean": mean, "gt_std": 200.0}, 2.0, 64)
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        data = [{"image": torch.randn(4, 3), "label": torch.randn(4, 1)}]
        trainer = SupervisedTrainer(
            device=torch.device("cpu"), max_epochs=epochs, train_data_loader=data, network=net, optimizer=opt,
            loss_function=torch.nn.MSELoss(),
        )  # fmt: skip
        ResumableCheckpoint(tmp_path, {"model": net, "optimizer": opt}).attach(trainer)
        return trainer

    run(-994.0, 0.1, 1).run()
    with pytest.raises(BundleInputError, match="trained on other data than this run's .HU mean -994 then, -900 now"):
        run(-900.0, 0.1, 2).run()
    with caplog.at_level("WARNING"):
        run(-994.0, 0.01, 2).run()
    assert "learning rate 0.1); this run's learning rate 0.01 is not applied" in caplog.text


def test_resuming_with_more_epochs_stretches_the_cosine_schedule(tmp_path, caplog):
    """A run resumed with a larger ``--epochs`` keeps decaying to the new end; with the saved length the cosine ran
    past its end and wrapped round (learning rate 0, then the full rate again)."""
    from monai.optimizers import WarmupCosineSchedule

    def run(epochs: int, lrs: list[float], scheduler_first: bool = False) -> SupervisedTrainer:
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        sched = WarmupCosineSchedule(opt, warmup_steps=1, t_total=epochs, warmup_multiplier=0.5)
        data = [{"image": torch.randn(4, 3), "label": torch.randn(4, 1)}]
        trainer = SupervisedTrainer(
            device=torch.device("cpu"), max_epochs=epochs, train_data_loader=data, network=net, optimizer=opt,
            loss_function=torch.nn.MSELoss(),
        )  # fmt: skip
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: lrs.append(opt.param_groups[0]["lr"]))
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
        objects = {"model": net, "optimizer": opt, "lr_scheduler": sched}
        if scheduler_first:  # the optimizer, restored after the schedule, must not bring back its saved rate
            objects = {"lr_scheduler": sched, "model": net, "optimizer": opt}
        ResumableCheckpoint(tmp_path / "ckpt", objects).attach(trainer)
        return trainer

    first: list[float] = []
    run(4, first).run()
    assert first == pytest.approx([0.5, 1.0, 0.75, 0.25])  # warm-up, then the cosine to 0 at epoch 4
    second: list[float] = []
    with caplog.at_level("WARNING"):
        run(8, second).run()
    assert "schedule was built for 4 epochs, this run's --epochs is 8: the cosine now ends at epoch 8" in caplog.text
    # the cosine over 8 epochs: 0.5 * (1 + cos(pi * (step - 1) / 7)) at steps 4..7 (epochs 5..8), down to the new end
    expected = [0.5 * (1 + math.cos(math.pi * (step - 1) / 7)) for step in (4, 5, 6, 7)]
    assert second == pytest.approx(expected)
    import shutil

    shutil.rmtree(tmp_path / "ckpt")
    run(4, []).run()
    third: list[float] = []
    run(8, third, scheduler_first=True).run()
    assert third == pytest.approx(expected)


def test_concise_stats_handler_leaves_input_errors_and_interruptions_to_the_command_line(caplog):
    """An input error or Ctrl-C stopping a run is raised without MONAI's logged traceback; other errors keep it."""
    from scripts.handlers import ConciseStatsHandler

    handler = ConciseStatsHandler(iteration_log=False, epoch_log=False)
    handler.logger = logging.getLogger("scripts.tests.stats")  # MONAI's own logger does not propagate to pytest
    for error in (KeyboardInterrupt(), RuntimeError("failed in a transform")):
        caplog.clear()
        with caplog.at_level("ERROR"), pytest.raises(type(error)):
            handler.exception_raised(None, error)
        assert ("Exception:" in caplog.text) is isinstance(error, RuntimeError)
    wrapped = RuntimeError("Failed to evaluate the config")
    wrapped.__cause__ = BundleInputError("--epochs 0: give a whole number of epochs, 1 or more.")
    caplog.clear()
    with caplog.at_level("ERROR"), pytest.raises(RuntimeError):
        handler.exception_raised(None, wrapped)
    assert "Exception:" not in caplog.text


@pytest.mark.parametrize("config", ["configs/train.json", "configs/finder_train.json"])
def test_the_training_schedule_trains_from_the_first_epoch_and_decays_in_short_runs(config):
    """The warm-up starts above 0 (MONAI's default starts at 0: a 1-epoch run learnt nothing) and takes at most
    half the run, so a run shorter than ``warmup_epochs`` still reaches the cosine decay."""
    from monai.bundle import ConfigParser
    from tests.conftest import ROOT

    def rates(epochs: int) -> list[float]:
        parser = ConfigParser()
        parser.read_config(str(ROOT / config))
        parser.update({"epochs": epochs, "learning_rate": 1.0, "weight_decay": 0.0, "warmup_epochs": 10})
        parser["optimizer#params"] = "$[torch.nn.Parameter(torch.zeros(1))]"
        sched = parser.get_parsed_content("lr_scheduler")
        out = []
        for _ in range(epochs):
            out.append(sched.optimizer.param_groups[0]["lr"])
            sched.optimizer.step()
            sched.step()
        return out

    assert rates(1) == pytest.approx([1.0])
    assert rates(2) == pytest.approx([0.5, 1.0])
    long = rates(60)
    warmup = 10  # min(warmup_epochs, epochs // 2)
    assert long[0] == pytest.approx(1 / (warmup + 1)) and long[warmup] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(long[warmup:], long[warmup + 1 :])) and long[-1] < 0.01
