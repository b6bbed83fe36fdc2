# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Saving a training run that can be killed at any instant, and resuming it.

The best model file and its record: a process stopped or ``kill -9``-ed between any two writes resumes with a
best value that describes the ``model.pt`` on disk, never ends with a worse model than the best one it had
written, and leaves no temporary files. A checkpoint of another network stops the resumed run with one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from scripts.errors import BundleInputError
from scripts.handlers import BestModelSaver, ResumableCheckpoint
from tests.test_workflows import SMALL, _chain, _workflow

ROOT = Path(__file__).resolve().parents[1]

#: validation Dice per epoch of the run that is stopped in epoch 2, and of the run that resumes it
FIRST = {1: 0.5, 2: 0.7, 3: 0.9, 4: 0.9}
RESUMED = {1: 0.5, 2: 0.55, 3: 0.6, 4: 0.6}


class _Evaluator:
    """The part of an ignite engine that :class:`BestModelSaver` reads."""

    def __init__(self) -> None:
        self.state = type("S", (), {"metrics": {}, "epoch": 0, "key_metric_name": "val_dice"})()


def _validate(saver: BestModelSaver, net: torch.nn.Module, epoch: int, dice: float) -> None:
    """One validation: the network's weights are its epoch number, so ``model.pt`` tells which epoch it holds."""
    with torch.no_grad():
        net.weight.fill_(float(epoch))
    evaluator = _Evaluator()
    evaluator.state.epoch, evaluator.state.metrics = epoch, {"val_dice": dice}
    saver(evaluator)


def _train(ckpt: Path, dice: dict[int, float], epochs: int) -> BestModelSaver:
    """A training run as ``configs/train.json`` wires it: validation then checkpoint after each epoch."""
    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(ckpt, net)
    trainer = Engine(lambda engine, batch: None)
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: _validate(saver, net, e.state.epoch, dice[e.state.epoch])
    )
    ResumableCheckpoint(ckpt, {"model": net, "best_model": saver}).attach(trainer)
    trainer.run([0], max_epochs=epochs)
    return saver


def _model_epoch(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["weight"][0, 0])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def _assert_final_state(ckpt: Path, best_written_epoch: int) -> None:
    """After the resumed run: model.pt is at least as good as any model written, and its record describes it."""
    record = json.loads((ckpt / "model.pt.best.json").read_text())
    epoch = _model_epoch(ckpt / "model.pt")
    # the resumed run reaches 0.6 (epoch 3; epoch 4 only equals it); the stopped run had written 0.5 or 0.7
    said = f"model.pt holds epoch {epoch}, its record {record['best']} at epoch {record['epoch']}"
    assert epoch == (2 if best_written_epoch == 2 else 3), said
    assert (record["epoch"], record["best"]) == (epoch, RESUMED[epoch] if epoch == 3 else FIRST[epoch]), said
    assert record.get("sha256") == _sha256(ckpt / "model.pt"), "the record names the hash of model.pt"
    assert not _temporaries(ckpt), "no temporary file of the stopped process remains"


@pytest.fixture
def saver_log(monkeypatch) -> list[logging.LogRecord]:
    """Records of ``scripts.handlers`` (also when an earlier bundle run configured logging)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("scripts.handlers")
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _warnings(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------------------------------- best model


def test_equal_value_changes_nothing(tmp_path):
    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path, net)
    _validate(saver, net, 1, 0.7)
    files = {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "model.pt", tmp_path / "model.pt.best.json")
    }
    state = saver.state_dict()
    _validate(saver, net, 2, 0.7)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == files
    assert saver.state_dict() == state
    _validate(saver, net, 3, 0.71)
    assert _model_epoch(tmp_path / "model.pt") == 3


def test_record_holds_the_model_hash_and_the_model_it_replaced(tmp_path):
    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path, net)
    _validate(saver, net, 1, 0.5)
    first = _sha256(tmp_path / "model.pt")
    _validate(saver, net, 2, 0.7)
    record = json.loads((tmp_path / "model.pt.best.json").read_text())
    assert record["sha256"] == _sha256(tmp_path / "model.pt") == saver.state_dict()["sha256"]
    assert (record["best"], record["epoch"], record["metric"], record["mode"]) == (0.7, 2, "val_dice", "max")
    assert record["previous"] == {"best": 0.5, "epoch": 1, "sha256": first}


def test_record_of_a_model_never_written_is_ignored(tmp_path, saver_log):
    """The state issue 21 found: model.pt of epoch 1 under a record (and checkpoint) saying 0.4756 at epoch 2."""
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    claim = {"metric": "val_dice", "best": 0.4756, "epoch": 2, "mode": "max"}
    (tmp_path / "model.pt.best.json").write_text(json.dumps(claim))
    resumed = BestModelSaver(tmp_path, net)
    resumed.load_state_dict({"best": 0.4756, "best_epoch": 2, "mode": "max"})
    assert resumed.best is None, "a best value that does not describe model.pt is not believed"
    assert any("model.pt.best.json" in w and "ignored" in w for w in _warnings(saver_log)), _warnings(saver_log)
    _validate(resumed, net, 3, 0.3)
    assert _model_epoch(tmp_path / "model.pt") == 3, "the next validation replaces the unverified model"
    assert json.loads((tmp_path / "model.pt.best.json").read_text())["sha256"] == _sha256(tmp_path / "model.pt")


def test_record_of_another_file_is_ignored(tmp_path, saver_log):
    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path, net)
    _validate(saver, net, 1, 0.8)
    with torch.no_grad():
        net.weight.fill_(7.0)
    torch.save(net.state_dict(), tmp_path / "model.pt")  # replaced by hand
    resumed = BestModelSaver(tmp_path, net)
    resumed.load_state_dict(saver.state_dict())
    assert resumed.best is None
    assert any("hash" in w and "ignored" in w for w in _warnings(saver_log)), _warnings(saver_log)


def test_checkpoint_claim_without_its_model_is_not_trusted(tmp_path, saver_log):
    """A checkpoint whose best model was never completely written (or was deleted) does not block saving."""
    net = torch.nn.Linear(2, 1)
    resumed = BestModelSaver(tmp_path, net)
    resumed.load_state_dict({"best": 0.8, "best_epoch": 4, "mode": "max", "sha256": "0" * 64})
    assert resumed.best is None
    assert any("checkpoint" in w and "does not exist" in w for w in _warnings(saver_log)), _warnings(saver_log)
    _validate(resumed, net, 5, 0.6)
    assert _model_epoch(tmp_path / "model.pt") == 5


def test_verified_state_round_trips_through_the_checkpoint(tmp_path):
    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path, net)
    _validate(saver, net, 4, 0.8)
    engine = type("E", (), {"state": type("S", (), {"epoch": 4, "max_epochs": None})()})()
    ResumableCheckpoint(tmp_path, {"best_model": saver}, include_engine=False).save(engine)
    (tmp_path / "model.pt.best.json").unlink()  # the checkpoint's hash alone identifies model.pt
    other = BestModelSaver(tmp_path, torch.nn.Linear(2, 1))
    ResumableCheckpoint(tmp_path, {"best_model": other}, include_engine=False).load(engine)
    assert (other.best, other.best_epoch, other.sha256) == (0.8, 4, _sha256(tmp_path / "model.pt"))


def test_model_of_another_network_is_replaced(tmp_path, saver_log):
    """A verified record of a model that does not fit this run's network (e.g. after deleting the checkpoint to
    train another width) is not this run's best."""
    wide = torch.nn.Linear(2, 3)
    saver = BestModelSaver(tmp_path, wide)
    saver(
        type(
            "E",
            (),
            {"state": type("S", (), {"metrics": {"val_dice": 0.9}, "epoch": 1, "key_metric_name": "val_dice"})()},
        )()
    )
    narrow = torch.nn.Linear(2, 1)
    resumed = BestModelSaver(tmp_path, narrow)
    resumed.load_state_dict({})
    assert resumed.best is None
    assert any("does not fit the network" in w for w in _warnings(saver_log)), _warnings(saver_log)


class _Stop(BaseException):
    """Stands for the process ending at a chosen write."""


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("name", ["model.pt", "model.pt.best.json"])
def test_stop_at_each_write_then_resume(tmp_path, monkeypatch, name, when):
    """Stop in epoch 2 just before or after ``model.pt`` or its record takes its name, then resume from the
    checkpoint of epoch 1 with worse validation values."""
    real_replace, written = os.replace, {}

    def replace(src, dst):
        if Path(dst).name == name and when == "before":
            raise _Stop
        real_replace(src, dst)
        if Path(dst).name == "model.pt":
            written["epoch"] = _model_epoch(Path(dst))
        if Path(dst).name == name:
            raise _Stop

    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path, net)
    _validate(saver, net, 1, FIRST[1])
    checkpoint, written["epoch"] = saver.state_dict(), _model_epoch(tmp_path / "model.pt")
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Stop):
        _validate(saver, net, 2, FIRST[2])
    monkeypatch.setattr(os, "replace", real_replace)

    resumed = BestModelSaver(tmp_path, net)
    resumed.load_state_dict(checkpoint)
    assert resumed.best == FIRST[_model_epoch(tmp_path / "model.pt")], "the resumed best value describes model.pt"
    for epoch in (2, 3, 4):
        _validate(resumed, net, epoch, RESUMED[epoch])
    _assert_final_state(tmp_path, written["epoch"])


# ------------------------------------------------------------------------------------------- real kill -9


def _child(ckpt: Path, target: str, when: str) -> None:
    """Train as :func:`_train` does, and kill this process with SIGKILL in epoch 2 at the chosen write.

    ``when``: ``"start"`` (the validation of epoch 2 begins), ``"during"`` (``torch.save`` has written half
    of the temporary file of ``target``), ``"before"`` or ``"after"`` (``target`` takes its name).
    """
    torch.set_num_threads(1)  # no OpenMP thread pool inherited through fork
    epoch = {"now": 0}
    real_replace, real_save = os.replace, torch.save

    def kill() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst) -> None:
        hit = epoch["now"] == 2 and Path(dst).name == target
        if hit and when == "before":
            kill()
        real_replace(src, dst)
        if hit and when == "after":
            kill()

    def save(obj, f, *args, **kwargs) -> None:
        temporary = "." + target.split(".")[0] + ".tmp-"
        if epoch["now"] == 2 and when == "during" and Path(f).name.startswith(temporary):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            with open(f, "wb") as out:
                out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            kill()
        real_save(obj, f, *args, **kwargs)

    def validate(saver: BestModelSaver, net: torch.nn.Module, e: int, dice: float) -> None:
        epoch["now"] = e
        if e == 2 and when == "start":
            kill()
        _validate_once(saver, net, e, dice)

    global _validate
    _validate_once, _validate = _validate, validate
    os.replace, torch.save = replace, save
    _train(ckpt, FIRST, 4)
    os._exit(0)  # not reached: the kill comes first


def _killed_run(ckpt: Path, target: str, when: str) -> int:
    """Run training in a new process that is ``kill -9``-ed in epoch 2 at the chosen write; the epoch of
    ``model.pt`` it left."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(ckpt, target, when))
    proc.start()
    proc.join(timeout=120)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the training process did not reach its kill")
    assert proc.exitcode == -signal.SIGKILL
    return _model_epoch(ckpt / "model.pt")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")
@pytest.mark.parametrize(
    "target, when",
    [
        ("model.pt", "start"),  # killed before the model is written
        ("model.pt", "during"),  # killed while torch.save writes the model's temporary file
        ("model.pt.best.json", "after"),  # the record is written, model.pt has not taken its name
        ("model.pt", "after"),  # model and record written, the epoch's checkpoint not
        ("checkpoint_last.pt", "during"),  # killed while the checkpoint is written
    ],
)
def test_kill_at_each_write_then_resume(tmp_path, target, when):
    written = _killed_run(tmp_path, target, when)
    assert (tmp_path / "checkpoint_last.pt").is_file()
    trainer = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)["trainer"]
    assert trainer["iteration"] == trainer["epoch_length"], "the checkpoint of epoch 1 is the last one"
    if when in ("start", "during"):
        assert _temporaries(tmp_path) or when == "start", "the kill leaves a temporary file"
    _train(tmp_path, RESUMED, 4)
    _assert_final_state(tmp_path, written)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")
def test_kill_at_random_instants_then_resume(tmp_path):
    """Kill a process that saves a larger model over and over at random instants: every resume believes only
    the model on disk."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        ready = multiprocessing.get_context("fork").Event()
        proc = multiprocessing.get_context("fork").Process(target=_save_forever, args=(tmp_path, ready))
        proc.start()
        assert ready.wait(60)
        time.sleep(float(torch.rand(1, generator=generator)) * 0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        resumed = BestModelSaver(tmp_path, torch.nn.Linear(512, 512))
        resumed.load_state_dict({})
        if (tmp_path / "model.pt").is_file():
            assert resumed.best == resumed.best_epoch == _model_epoch(tmp_path / "model.pt")
            assert resumed.sha256 == _sha256(tmp_path / "model.pt")
        assert not _temporaries(tmp_path)


def _save_forever(ckpt: Path, ready) -> None:
    """Resume the best model of ``ckpt`` and save a better one, epoch after epoch, until killed."""
    torch.set_num_threads(1)  # no OpenMP thread pool inherited through fork
    net = torch.nn.Linear(512, 512)
    saver = BestModelSaver(ckpt, net)
    saver.load_state_dict({})
    ready.set()
    for epoch in range(1 + max(saver.best_epoch, 0), 1_000_000):
        _validate(saver, net, epoch, float(epoch))


# ------------------------------------------------------------------------------------------ stale temporaries


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    from scripts.utils import atomic_path, remove_stale_temporaries

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        names = {
            f".model.tmp-{dead}.pt": False,
            f".model.tmp-{live.pid}.pt": True,  # a process that is writing now
            f".vol.tmp-{os.getpid()}.nii.gz": False,  # this process, no write under way
            f".other.tmp-{dead}.pt": True,  # another file's
            ".model.tmp-x.pt": True,
            f".vol.tmp-{dead}.nii.gz": False,
        }
        for n in names:
            (tmp_path / n).write_bytes(b"")
        with atomic_path(tmp_path / "model.pt") as writing:
            writing.write_bytes(b"x")
            removed = remove_stale_temporaries(tmp_path / "model.pt")
            assert writing.exists(), "a write of this process under way is kept"
        removed += remove_stale_temporaries(tmp_path / "vol.nii.gz")
        assert sorted(p.name for p in removed) == sorted(n for n, keep in names.items() if not keep)
        assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == sorted(
            n for n, keep in names.items() if keep
        )
    finally:
        live.kill()
        live.wait()


def test_resume_removes_temporaries_of_killed_runs(tmp_path):
    dead = _dead_pid()
    for n in (f".model.tmp-{dead}.pt", f".model.tmp-{dead}.pt.best.json", f".checkpoint_last.tmp-{dead}.pt"):
        (tmp_path / n).write_bytes(b"")
    _train(tmp_path, FIRST, 1)
    assert not _temporaries(tmp_path)


# --------------------------------------------------------------------------------- checkpoint of another network


def _checkpoint_of(net: torch.nn.Module, folder: Path) -> ResumableCheckpoint:
    handler = ResumableCheckpoint(folder, {"model": net}, include_engine=False)
    handler.save(type("E", (), {"state": type("S", (), {"epoch": 1})()})())
    return handler


def _resume_into(net: torch.nn.Module, folder: Path) -> BundleInputError:
    engine = type("E", (), {"state": type("S", (), {"epoch": 1, "max_epochs": 5})()})()
    with pytest.raises(BundleInputError) as err:
        ResumableCheckpoint(folder, {"model": net}, include_engine=False).load(engine)
    return err.value


def test_checkpoint_of_another_width_stops_in_one_line(tmp_path):
    _checkpoint_of(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)), tmp_path)
    message = str(_resume_into(torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 1)), tmp_path))
    assert "\n" not in message
    assert str(tmp_path / "checkpoint_last.pt") in message
    assert "'0.weight'" in message and "(4, 3)" in message and "(5, 3)" in message
    options = re.findall(r"--(\w+)", message)
    assert options == ["resume", "ckpt_dir"], message
    train = json.loads((ROOT / "configs" / "train.json").read_text())
    assert all(o in train for o in options), "the fix names options of configs/train.json"
    assert "--resume False" in message and "delete" in message


def test_checkpoint_of_another_network_stops_in_one_line(tmp_path):
    _checkpoint_of(torch.nn.Sequential(torch.nn.Linear(3, 4)), tmp_path)
    message = str(
        _resume_into(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)), tmp_path)
    )
    assert "\n" not in message and "'2.weight'" in message and "--resume False" in message


def test_resuming_the_bundle_with_another_width_stops_in_one_line(dataset, tmp_path):
    """``configs/train.json`` resumed with other ``channels``: the cause, not hundreds of ``size mismatch`` lines."""
    common = dict(dataset_dir=str(dataset), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"))
    first = _workflow(["train.json"], "train", epochs=1, warmup_epochs=1, **common, **SMALL)
    first.initialize()
    first.run()
    wider = {**SMALL, "channels": [c * 2 for c in SMALL["channels"]]}
    second = _workflow(["train.json"], "train", epochs=2, warmup_epochs=1, **common, **wider)
    second.initialize()
    with pytest.raises(Exception) as err:
        second.run()
    errors = [e for e in _chain(err.value) if isinstance(e, BundleInputError)]
    assert errors, f"{type(err.value).__name__}: {str(err.value)[:500]}"
    assert "--resume False" in str(errors[0]) and "\n" not in str(errors[0])
    assert "checkpoint_last.pt" in str(errors[0]) and "size mismatch" not in str(errors[0])
