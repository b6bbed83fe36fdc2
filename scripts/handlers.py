# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Ignite handlers used by the bundle's workflows (attach with ``handler.attach(engine)``, as MONAI's)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import StatsHandler
from scripts.errors import BundleInputError, find_input_error, reports_input_errors
from scripts.networks.model_info import MODEL_INFO_KEYS, load_state_dict_file
from scripts.utils import atomic_path, file_sha256, remove_stale_temporaries, unwrap_module

__all__ = ["PretrainedWeights", "ResumableCheckpoint", "BestModelSaver", "VertebraMetricsTable", "ConciseStatsHandler"]


class PretrainedWeights:
    """Starts training from another model's weights (fine-tuning), keeping this run's model information.

    On ``Events.STARTED`` it loads every weight of ``path`` into ``network`` except the model-info buffers
    (HU mean and std, spacing, crop size; :mod:`scripts.networks.model_info`), which describe the data of
    *this* run. Attach it before :class:`ResumableCheckpoint`: a run that resumes then continues from its own
    checkpoint, not from the pretrained weights. Shapes must match (``check_model`` names any mismatch).

    Args:
        network: the network to initialise (a DDP wrapper is unwrapped).
        path: a ``model.pt`` (plain state dict, ``{"model": ...}`` or TorchScript); ``None`` or ``""`` does nothing.
    """

    def __init__(self, network: torch.nn.Module, path: str | Path | None = None) -> None:
        self.network = network
        self.path = Path(path) if path else None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        if self.path is not None:
            if not self.path.is_file():
                raise BundleInputError(f"pretrained weights {self.path} do not exist; check --pretrained.")
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        state = {k: v for k, v in load_state_dict_file(self.path).items() if k not in MODEL_INFO_KEYS}
        net = unwrap_module(self.network)
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in MODEL_INFO_KEYS]
        if missing or unexpected:
            raise BundleInputError(
                f"pretrained weights {self.path} do not fit the network (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); use weights of the same network_def and channels."
            )
        self.logger.info(f"initialised the network from {self.path}")


class ResumableCheckpoint:
    """Saves the whole training state after every epoch and resumes from it when training starts again.

    MONAI's ``CheckpointSaver`` writes checkpoints non-atomically (a process killed while saving leaves a
    truncated file) and needs a separate ``CheckpointLoader`` with a path known in advance. This handler
    writes one file, atomically (temporary name, then rename), and on ``Events.STARTED`` loads it if it
    exists, so a killed run that is started again with the same command loses at most one epoch. (ignite's
    ``Checkpoint`` with its atomic ``DiskSaver`` writes safely too, but MONAI's ``CheckpointLoader`` fails when
    its file does not exist, so one command could not both start a fresh run and resume a killed one.)
    Temporary files left by killed runs are removed when the run resumes or saves.

    A checkpoint whose network does not fit this run's (another width or ``network_def``) stops the run with
    one line (:class:`~scripts.errors.BundleInputError`) naming the file, the first tensor that differs and
    the ways out. A :class:`BestModelSaver` in ``save_dict`` checks the best value it is given against the
    model file on disk; when there is no checkpoint yet it still adopts the verified record beside the model.

    Args:
        save_dir: folder of the checkpoint file.
        save_dict: objects with ``state_dict``/``load_state_dict`` to save, e.g.
            ``{"model": net, "optimizer": opt, "lr_scheduler": sched}``.
        filename: checkpoint file name inside ``save_dir``.
        include_engine: also save the engine the handler is attached to, under ``"trainer"``, so that a resumed
            run continues at the right epoch (a config cannot name the trainer in its own handler list).
        resume: load the checkpoint at start when it exists (the ``resume`` setting of ``configs/train.json``).
        save_interval: save every this many epochs.
        map_location: passed to ``torch.load`` (default: CPU; the objects move tensors where they live).
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint_last.pt",
        resume: bool = True,
        save_interval: int = 1,
        map_location: str | torch.device | None = "cpu",
        include_engine: bool = True,
    ) -> None:
        if not save_dict:
            raise ValueError("ResumableCheckpoint needs at least one object in save_dict.")
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}.")
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.resume = resume
        self.save_interval = save_interval
        self.map_location = map_location
        self.include_engine = include_engine
        self.logger = logging.getLogger(__name__)
        self._tidied = False
        self._last_read: tuple[int, dict[str, Any]] | None = None

    def attach(self, engine: Engine) -> None:
        if self.include_engine:
            self.save_dict.setdefault("trainer", engine)
        if self.resume:
            self._check_networks()
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)

    def _read(self) -> dict[str, Any]:
        """The checkpoint's content; read once for the check when the workflow is built and the resume that follows
        (read again if the file changed in between)."""
        stamp = self.path.stat().st_mtime_ns
        if self._last_read is None or self._last_read[0] != stamp:
            self._last_read = (stamp, torch.load(self.path, map_location=self.map_location, weights_only=False))
        return self._last_read[1]

    @reports_input_errors
    def _check_networks(self) -> None:
        """Refuse, when the workflow is built (before any work), a checkpoint whose networks do not fit this run's."""
        if not self.path.is_file():
            return
        try:
            state = self._read()
        except Exception:  # unreadable: :meth:`load` says so when the run starts
            return
        for k, obj in self.save_dict.items():
            target = unwrap_module(obj)
            if isinstance(target, torch.nn.Module) and isinstance(state.get(k), Mapping):
                problem = _state_dict_misfit(state[k], target.state_dict())
                if problem:
                    raise self._misfit(k, problem)

    @staticmethod
    def _is_main_process() -> bool:
        return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
            torch.distributed.get_rank() == 0
        )

    def _tidy(self) -> None:
        """Remove the temporary checkpoint files of killed runs (once, on the main process)."""
        if not self._tidied and self._is_main_process():
            remove_stale_temporaries(self.path)
            self._tidied = True

    def save(self, engine: Engine) -> None:
        """Write the checkpoint atomically (only on rank 0 in distributed runs)."""
        if not self._is_main_process():
            return
        self._tidy()
        state = {k: unwrap_module(v).state_dict() for k, v in self.save_dict.items()}
        with atomic_path(self.path, durable=True) as tmp:
            torch.save(state, tmp)
        self.logger.info(f"epoch {engine.state.epoch}: checkpoint saved to {self.path}")

    def _misfit(self, key: str, error: str) -> BundleInputError:
        return BundleInputError(
            f"checkpoint {self.path} does not fit this run's {key}: {error}; it was saved by a run with another "
            f"network (width or network_def). Start afresh with --resume False, train into another --ckpt_dir, "
            f"or delete {self.path}."
        )

    @reports_input_errors
    def load(self, engine: Engine) -> None:
        """Restore every object from the checkpoint, keeping the engine's current ``max_epochs``.

        Raises:
            BundleInputError: when the checkpoint's network or optimizer does not fit this run's.
        """
        self._tidy()
        if not self.path.is_file():
            for obj in self.save_dict.values():  # a run killed before its first checkpoint keeps its best model
                if isinstance(obj, BestModelSaver):
                    obj.load_state_dict({})
            return
        try:
            state = self._read()
        except Exception as e:  # a checkpoint that cannot be read must not be silently ignored
            raise RuntimeError(
                f"cannot read checkpoint {self.path} ({e}); delete it to start training from scratch."
            ) from e
        missing = sorted(set(self.save_dict) - set(state))
        if missing:
            raise RuntimeError(f"checkpoint {self.path} lacks {missing}; delete it to start training from scratch.")
        max_epochs = engine.state.max_epochs
        stretched: list[tuple[Any, int]] = []  # schedules saved with another length than this run's
        for k, obj in self.save_dict.items():
            target = unwrap_module(obj)
            if isinstance(target, torch.nn.Module):
                problem = _state_dict_misfit(state[k], target.state_dict())
                if problem:
                    raise self._misfit(k, problem)
                changed = _contract_change(state[k], target.state_dict())
                if changed:
                    raise BundleInputError(
                        f"checkpoint {self.path} was trained on other data than this run's ({changed}): the dataset "
                        "or the run's settings (--spacing, --roi_size, configs) changed since it was saved. Resume "
                        "with the same --dataset_dir and configs as then, or start afresh in another --output_dir (or "
                        "with --resume False)."
                    )
            if isinstance(target, torch.optim.Optimizer):
                _warn_changed_learning_rate(state[k], target, self.path, self.logger)
            horizon = getattr(target, "t_total", None)  # a schedule's length (MONAI's WarmupCosineSchedule)
            if not isinstance(target, torch.optim.lr_scheduler.LambdaLR):
                horizon = None
            try:
                target.load_state_dict(state[k])
            except (RuntimeError, ValueError, KeyError) as e:
                if not isinstance(target, (torch.nn.Module, torch.optim.Optimizer)):
                    raise
                raise self._misfit(k, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e
            if horizon is not None and getattr(target, "t_total", horizon) != horizon:
                stretched.append((target, horizon))
        if max_epochs is not None and "trainer" in self.save_dict:
            if engine.state.epoch > max_epochs:
                raise BundleInputError(
                    f"checkpoint {self.path} is at epoch {engine.state.epoch}, beyond max_epochs={max_epochs}; "
                    "raise the epochs setting or delete the checkpoint."
                )
            engine.state.max_epochs = max_epochs
        for schedule, horizon in stretched:  # after every object: the optimizer's saved rate must not win
            self.logger.warning(
                f"{self.path}: its learning-rate schedule was built for {schedule.t_total} epochs, this run's "
                f"--epochs is {horizon}: the cosine now ends at epoch {horizon} (the warm-up as saved)"
            )
            schedule.t_total = horizon  # the saved length would run past its end and wrap round
            rates = [base * f(schedule.last_epoch) for base, f in zip(schedule.base_lrs, schedule.lr_lambdas)]
            rates = [max(getattr(schedule, "end_lr", 0.0), r) for r in rates]
            for group, rate in zip(schedule.optimizer.param_groups, rates):
                group["lr"] = rate  # this epoch's rate too, not the one saved with the old length
            schedule._last_lr = rates
        self._last_read = None  # the restored objects hold the state now
        self.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}")


#: the contract buffers of :func:`scripts.networks.attach_model_info` that training sets from its dataset
_DATA_BUFFERS = {"hu_mean": "HU mean", "hu_std": "HU standard deviation", "spacing_mm": "spacing", "roi_size": "crop"}


def _contract_change(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """How the data-derived contract of a saved network differs from this run's, in words, or ``None``."""
    changes = []
    for name, words in _DATA_BUFFERS.items():
        a, b = saved.get(name), current.get(name)
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.numel() == b.numel() == 1):
            continue
        x, y = float(a), float(b)
        if math.isfinite(x) and math.isfinite(y) and not math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-3):
            changes.append(f"{words} {x:g} then, {y:g} now")
    return "; ".join(changes) or None


def _warn_changed_learning_rate(saved: Mapping[str, Any], optimizer: Any, path: Any, logger: Any) -> None:
    """Warn when a resumed optimizer's learning rate differs from the one this run was given (the saved one wins)."""
    try:
        old = saved["param_groups"][0]
        new = optimizer.param_groups[0]
        before = float(old.get("initial_lr", old["lr"]))
        now = float(new.get("initial_lr", new["lr"]))
    except (KeyError, IndexError, TypeError, ValueError):
        return
    if not math.isclose(before, now, rel_tol=1e-6):
        logger.warning(
            f"resuming {path}: the optimiser and its schedule go on as saved (learning rate {before:g}); this run's "
            f"learning rate {now:g} is not applied. Start afresh in another --output_dir to change it."
        )


def _state_dict_misfit(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """The first difference between a saved network ``state_dict`` and the network's own, in words, or ``None``."""
    for name, value in saved.items():
        if name in current and isinstance(value, torch.Tensor) and isinstance(current[name], torch.Tensor):
            if tuple(value.shape) != tuple(current[name].shape):
                return (
                    f"tensor '{name}' has shape {tuple(value.shape)} in the checkpoint "
                    f"but {tuple(current[name].shape)} in the network"
                )
    unexpected = [n for n in saved if n not in current]
    missing = [n for n in current if n not in saved]
    if unexpected:
        return f"the checkpoint holds {len(unexpected)} tensors the network lacks (first '{unexpected[0]}')"
    if missing:
        return f"the network has {len(missing)} tensors the checkpoint lacks (first '{missing[0]}')"
    return None


class BestModelSaver:
    """Keeps the network with the best validation metric in one file, replaced only by a better one.

    Attach it to the evaluator of a training run. After each validation it compares the key metric
    (``engine.state.metrics[metric_name]``) with the best so far and, only if it is strictly better, writes
    the unwrapped network's ``state_dict`` (weights and the buffers of
    :func:`scripts.networks.attach_model_info`) to ``save_dir/filename``; an equal value changes nothing.

    Saving survives a process killed at any instant (``kill -9``): the model is written completely to a
    temporary file beside ``filename`` and hashed (SHA-256); then the record ``<filename>.best.json`` is
    replaced atomically (metric, mode, best value, epoch, the model's hash, and the same for the model it
    replaces, under ``"previous"``); last the model file takes its name by an atomic rename. Whenever the
    process stops, one entry of the record describes the model file on disk. Its ``state_dict`` (best value,
    epoch, hash) is saved by :class:`ResumableCheckpoint` (put it in ``save_dict``).

    On resume (:meth:`load_state_dict`) a best value is believed only if it describes the model file on disk:
    the hash of an entry of the record, or of the checkpoint's state, equals the file's, and the file's tensors
    fit the network. Any other claim (a record or checkpoint of a model that was never completely written, a
    record of an older bundle without a hash, a model file replaced by hand) is ignored with a warning, and
    the next validation replaces the model file. A resumed run therefore neither keeps a worse model under a
    better record nor replaces the best model it has written by a worse one; the evaluator's ``best_metric``
    is restored with it. Temporary files left by killed runs are removed on resume and at the first validation.

    MONAI's ``CheckpointSaver`` (through ignite's ``Checkpoint``) deletes the previous best file before it
    writes the new one and forgets the best value when a run resumes, hence this handler.

    Args:
        save_dir: folder of the model file.
        network: the network to save (a DDP wrapper is unwrapped).
        metric_name: the metric to compare (default: the evaluator's key metric).
        filename: name of the model file.
        mode: ``"max"`` (higher is better, e.g. Dice) or ``"min"``.
    """

    def __init__(
        self,
        save_dir: str | Path,
        network: torch.nn.Module,
        metric_name: str | None = None,
        filename: str = "model.pt",
        mode: str = "max",
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.path = Path(save_dir) / filename
        self.record = Path(save_dir) / f"{filename}.best.json"
        self.network = network
        self.metric_name = metric_name
        self.mode = mode
        self.best: float | None = None
        self.best_epoch: int = -1
        self.sha256: str | None = None
        self._engine: Engine | None = None
        self._tidied = False
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        self._engine = engine
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _tidy(self) -> None:
        """Remove the temporary model and record files of killed runs (once, on the main process)."""
        if not self._tidied and ResumableCheckpoint._is_main_process():
            remove_stale_temporaries(self.path)
            remove_stale_temporaries(self.record)
            self._tidied = True

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise KeyError(f"BestModelSaver: no metric {name!r} among {list(engine.state.metrics)}.")
        value = float(engine.state.metrics[name])
        self._tidy()
        if not self._better(value):
            return
        epoch, digest = int(engine.state.epoch), None
        if ResumableCheckpoint._is_main_process():
            digest = self._save(name, value, epoch)
            self.logger.info(f"epoch {epoch}: best {name} {value:.4f}, model saved to {self.path}")
        self.best, self.best_epoch, self.sha256 = value, epoch, digest

    def _save(self, name: str, value: float, epoch: int) -> str:
        """Write the model and its record so that a kill at any instant leaves a record describing the model.

        Returns:
            the SHA-256 hash of the new model file.
        """
        previous = None
        if self.best is not None and self.sha256 is not None:  # the model on disk until the rename below
            previous = {"best": self.best, "epoch": self.best_epoch, "sha256": self.sha256}
        with atomic_path(self.path, durable=True) as tmp:
            torch.save(unwrap_module(self.network).state_dict(), tmp)
            digest = file_sha256(tmp)
            record = {
                "metric": name,
                "mode": self.mode,
                "best": value,
                "epoch": epoch,
                "sha256": digest,
                "previous": previous,
            }
            with atomic_path(self.record, durable=True) as record_tmp:
                record_tmp.write_text(json.dumps(record, indent=2))
        return digest

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "mode": self.mode, "sha256": self.sha256}

    def _read_record(self) -> dict[str, Any] | None:
        if not self.record.is_file():
            return None
        try:
            record = json.loads(self.record.read_text())
        except (OSError, ValueError) as e:
            self.logger.warning(f"{self.record} cannot be read ({e}); it is ignored.")
            return None
        if not isinstance(record, dict):
            self.logger.warning(f"{self.record} holds no best-model record; it is ignored.")
            return None
        return record

    def _misfit(self, content: bytes) -> str | None:
        """Why the model file's tensors do not fit the network, or ``None`` when they do."""
        try:
            saved = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
        except Exception as e:  # any unreadable file is simply not this run's model
            return f"it cannot be read ({type(e).__name__})"
        if isinstance(saved, Mapping) and isinstance(saved.get("model"), Mapping):
            saved = saved["model"]
        if not isinstance(saved, Mapping):
            return "it holds no state dict"
        return _state_dict_misfit(saved, unwrap_module(self.network).state_dict())

    def _claims(self, state: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
        """The best values claimed by the record (newest entry, then the model it replaced) and the checkpoint."""
        claims: list[tuple[str, Mapping[str, Any]]] = []
        record = self._read_record()
        if record is not None:
            if record.get("mode", self.mode) != self.mode:
                self.logger.warning(f"{self.record} is for mode {record.get('mode')!r}, not {self.mode!r}; ignored.")
            else:
                claims.append(("record", record))
                if isinstance(record.get("previous"), Mapping):
                    claims.append(("previous", record["previous"]))
        if state.get("best") is not None and state.get("mode", self.mode) == self.mode:
            entry = {"best": state["best"], "epoch": state.get("best_epoch", -1), "sha256": state.get("sha256")}
            claims.append(("checkpoint", entry))
        return claims

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the best value, believing only a value that describes the model file on disk.

        Args:
            state: a :meth:`state_dict` (from a checkpoint), or ``{}`` when there is no checkpoint; the record
                beside the model file is read in both cases.
        """
        self._tidy()
        claims = self._claims(state)
        on_disk, problem = None, None
        if self.path.is_file():
            content = self.path.read_bytes()
            on_disk, problem = hashlib.sha256(content).hexdigest(), self._misfit(content)
        match = None
        if on_disk is not None and problem is None:
            for source, claim in claims:
                best = claim.get("best")
                finite = isinstance(best, (int, float)) and math.isfinite(float(best))
                if finite and claim.get("sha256") == on_disk:
                    match = (source, claim)
                    break
        names = {"record": str(self.record), "checkpoint": "the checkpoint"}
        ignored = [
            f"{names[src]} (best {c.get('best')} at epoch {c.get('epoch')}"
            + (", no model hash: written by an older version)" if not c.get("sha256") else ")")
            for src, c in claims
            if src != "previous" and (match is None or (src == "record" and match[0] != "record"))
        ]
        if match is None:
            self.best, self.best_epoch, self.sha256 = None, -1, None
        else:
            self.best, self.best_epoch, self.sha256 = float(match[1]["best"]), int(match[1].get("epoch", -1)), on_disk
        if ignored:
            if on_disk is None:
                why = f"{self.path} does not exist"
            elif problem:
                why = f"{self.path} does not fit the network ({problem})"
            else:
                why = (
                    f"the SHA-256 hash of {self.path} differs (the run stopped while saving, or the file was replaced)"
                )
            keep = (
                f"keeping the best {self.best:.4f} of epoch {self.best_epoch}, which {self.path} holds"
                if match
                else f"the next validation replaces {self.path}"
            )
            self.logger.warning(f"best-model claims of {' and '.join(ignored)} are ignored: {why}; {keep}.")
        elif match is not None:
            self.logger.info(f"best model {self.path}: {self.best:.4f} at epoch {self.best_epoch}.")
        if self._engine is not None and self.best is not None:  # the evaluator's own tracking, for its logs
            self._engine.state.best_metric = self.best
            self._engine.state.best_metric_epoch = self.best_epoch


#: what an evaluation's folder says about the run that wrote its tables (:class:`VertebraMetricsTable`)
EVALUATION_RECORD = "evaluation.json"


class VertebraMetricsTable:
    """Writes every per-vertebra metric into one table, and a summary with mean ± std, after an evaluation.

    Needed beside ``monai.handlers.MetricsSaver``, which writes one file per metric: the paired differences of
    :mod:`scripts.tools.experiments` and the README's per-vertebra results read one row per vertebra with every
    metric. ``MetricsSaver`` writes one ``<metric>_raw.csv`` per metric; this handler joins the same
    per-item values (``engine.state.metric_details``, filled by ``IgniteMetricHandler(save_details=True)``)
    into ``metrics_per_vertebra.csv`` with one row per vertebra (its ``id`` from the datalist) and one column
    per metric, and writes ``metrics_summary.csv`` (metric, mean, std, median, n, n_nan). Both files are
    written atomically; the summary is also logged.

    With ``record``, when the run starts (its data loaded, so a bad option has already stopped it) the tables of an
    earlier evaluation in ``save_dir`` are removed (this table and summary, ``MetricsSaver``'s ``metrics.csv``,
    ``val_*_raw.csv`` and ``val_*_summary.csv``) and ``evaluation.json`` records what this run evaluates
    (``record``: the model, dataset, split, ...): tables of two models never mix in one folder.

    Args:
        save_dir: output folder.
        metric_names: metrics to include, in column order (default: all in ``metric_details``).
        id_key: key of the batch holding each item's identifier.
        filename: name of the per-vertebra table.
        summary_filename: name of the summary table.
        record: what the run evaluates, written to ``evaluation.json``; ``None`` leaves the folder as it is.
    """

    def __init__(
        self,
        save_dir: str | Path,
        metric_names: Sequence[str] | None = None,
        id_key: str = "id",
        filename: str = "metrics_per_vertebra.csv",
        summary_filename: str = "metrics_summary.csv",
        record: Mapping[str, Any] | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.metric_names = list(metric_names) if metric_names is not None else None
        self.id_key = id_key
        self.filename = filename
        self.summary_filename = summary_filename
        self.record = None if record is None else dict(record)
        self.logger = logging.getLogger(__name__)
        self._ids: list[str] = []

    def _start(self, engine: Engine) -> None:
        """Remove the tables of an earlier evaluation in ``save_dir`` and record this one (``evaluation.json``)."""
        if self.record is None:
            return
        earlier = []
        if self.save_dir.is_dir():
            names = {self.filename, self.summary_filename, "metrics.csv", EVALUATION_RECORD}
            for p in self.save_dir.iterdir():
                metric_file = p.name.startswith("val_") and p.name.endswith(("_raw.csv", "_summary.csv"))
                if p.is_file() and (p.name in names or metric_file):
                    p.unlink()
                    earlier.append(p.name)
        if earlier:
            self.logger.info(f"removed {len(earlier)} tables of an earlier evaluation in {self.save_dir}")
        self.save_dir.mkdir(parents=True, exist_ok=True)
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.record.items()}
        with atomic_path(self.save_dir / EVALUATION_RECORD) as tmp:
            Path(tmp).write_text(json.dumps({**record, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, indent=2))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect_ids)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._ids = []

    def _collect_ids(self, engine: Engine) -> None:
        batch = engine.state.batch
        items = batch if isinstance(batch, list) else [batch]  # a list of dicts after MONAI's decollation
        for item in items:
            ids = item.get(self.id_key) if isinstance(item, Mapping) else None
            if ids is None:
                self._ids.append(f"item{len(self._ids)}")
            elif isinstance(ids, (list, tuple)):
                self._ids.extend(str(i) for i in ids)
            else:
                self._ids.append(str(ids))

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}) or {}
        names = self.metric_names or sorted(details)
        missing = [n for n in names if n not in details]
        if missing:
            raise KeyError(
                f"metrics {missing} have no per-item values; give their IgniteMetricHandler save_details=True."
            )
        columns = {n: np.asarray(torch.as_tensor(details[n]).float().reshape(len(self._ids), -1)[:, 0]) for n in names}
        rows = [[i] + [float(columns[n][k]) for n in names] for k, i in enumerate(self._ids)]
        with atomic_path(self.save_dir / self.filename) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([self.id_key] + names)
            writer.writerows(rows)
        summary = []
        for n in names:
            v = columns[n]
            finite = v[np.isfinite(v)]
            mean = float(finite.mean()) if finite.size else math.nan
            std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            med = float(np.median(finite)) if finite.size else math.nan
            summary.append([n, mean, std, med, int(finite.size), int(v.size - finite.size)])
        with atomic_path(self.save_dir / self.summary_filename) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["metric", "mean", "std", "median", "n", "n_not_finite"])
            writer.writerows(summary)
        text = ", ".join(f"{n} {m:.4g}" + (f" ± {s:.2g}" if math.isfinite(s) else "") for n, m, s, *_ in summary)
        self.logger.info(f"{len(rows)} vertebrae: {text}; tables in {self.save_dir}")


class ConciseStatsHandler(StatsHandler):
    """MONAI's ``StatsHandler``, except that an input error or an interruption (Ctrl-C) stopping the run is not logged
    with its traceback: the command line ends both in one line (:func:`scripts.errors.install_cli_excepthook`), and
    programs calling the bundle get the exception as it is. Any other error is logged as ``StatsHandler`` logs it.
    """

    def exception_raised(self, _engine: Engine, e: Exception) -> None:
        if isinstance(e, KeyboardInterrupt) or find_input_error(e) is not None:
            raise e
        super().exception_raised(_engine, e)
