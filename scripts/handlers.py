# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Ignite handlers used by the bundle's workflows (attach with ``handler.attach(engine)``, as MONAI's)."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from scripts.errors import BundleInputError
from scripts.networks.model_info import MODEL_INFO_KEYS, load_state_dict_file
from scripts.utils import atomic_path, unwrap_module

__all__ = ["PretrainedWeights", "ResumableCheckpoint", "BestModelSaver", "VertebraMetricsTable"]


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

    Args:
        save_dir: folder of the checkpoint file.
        save_dict: objects with ``state_dict``/``load_state_dict`` to save, e.g.
            ``{"model": net, "optimizer": opt, "lr_scheduler": sched}``.
        filename: checkpoint file name inside ``save_dir``.
        include_engine: also save the engine the handler is attached to, under ``"trainer"``, so that a resumed
            run continues at the right epoch (a config cannot name the trainer in its own handler list).
        resume: load the checkpoint at start when it exists.
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

    def attach(self, engine: Engine) -> None:
        if self.include_engine:
            self.save_dict.setdefault("trainer", engine)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)

    @staticmethod
    def _is_main_process() -> bool:
        return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
            torch.distributed.get_rank() == 0
        )

    def save(self, engine: Engine) -> None:
        """Write the checkpoint atomically (only on rank 0 in distributed runs)."""
        if not self._is_main_process():
            return
        state = {k: unwrap_module(v).state_dict() for k, v in self.save_dict.items()}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        self.logger.info(f"epoch {engine.state.epoch}: checkpoint saved to {self.path}")

    def load(self, engine: Engine) -> None:
        """Restore every object from the checkpoint, keeping the engine's current ``max_epochs``."""
        if not self.path.is_file():
            return
        try:
            state = torch.load(self.path, map_location=self.map_location, weights_only=False)
        except Exception as e:  # a checkpoint that cannot be read must not be silently ignored
            raise RuntimeError(
                f"cannot read checkpoint {self.path} ({e}); delete it to start training from scratch."
            ) from e
        missing = sorted(set(self.save_dict) - set(state))
        if missing:
            raise RuntimeError(f"checkpoint {self.path} lacks {missing}; delete it to start training from scratch.")
        max_epochs = engine.state.max_epochs
        for k, obj in self.save_dict.items():
            unwrap_module(obj).load_state_dict(state[k])
        if max_epochs is not None and "trainer" in self.save_dict:
            if engine.state.epoch > max_epochs:
                raise ValueError(
                    f"checkpoint {self.path} is at epoch {engine.state.epoch}, beyond max_epochs={max_epochs}; "
                    "raise the epochs setting or delete the checkpoint."
                )
            engine.state.max_epochs = max_epochs
        self.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}")


class BestModelSaver:
    """Keeps the network with the best validation metric in one file, replaced only by a better one.

    Attach it to the evaluator of a training run. After each validation it compares the key metric
    (``engine.state.metrics[metric_name]``) with the best so far and, only if it is better, writes the
    unwrapped network's ``state_dict`` (weights and the buffers of
    :func:`scripts.networks.attach_model_info`) to ``save_dir/filename`` atomically: the old file stays in
    place until the new one is complete. Its ``state_dict`` (best value and epoch) is saved by
    :class:`ResumableCheckpoint` (put it in ``save_dict``), so a resumed run keeps the best model and does
    not overwrite it with a worse one; the evaluator's ``best_metric`` is restored with it. The best value
    is also written beside the model (``<filename>.best.json``: metric, value, epoch) just before the model
    itself, so that a run killed between saving the model and saving its checkpoint still knows it.

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
        self._engine: Engine | None = None
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

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise KeyError(f"BestModelSaver: no metric {name!r} among {list(engine.state.metrics)}.")
        value = float(engine.state.metrics[name])
        if not self._better(value):
            return
        self.best, self.best_epoch = value, int(engine.state.epoch)
        if ResumableCheckpoint._is_main_process():
            record = {"metric": name, "best": value, "epoch": self.best_epoch, "mode": self.mode}
            with atomic_path(self.record) as tmp:  # first: a kill before the model leaves only a stricter bar
                tmp.write_text(json.dumps(record, indent=2))
            with atomic_path(self.path) as tmp:
                torch.save(unwrap_module(self.network).state_dict(), tmp)
            self.logger.info(f"epoch {self.best_epoch}: best {name} {value:.4f}, model saved to {self.path}")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "mode": self.mode}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = None if state.get("best") is None else float(state["best"])
        self.best_epoch = int(state.get("best_epoch", -1))
        if self.record.is_file():  # saved after the checkpoint it is restored from: the later, better value
            record = json.loads(self.record.read_text())
            if self.best is None or self._better(float(record["best"])):
                self.best, self.best_epoch = float(record["best"]), int(record["epoch"])
        if self._engine is not None and self.best is not None:  # the evaluator's own tracking, for its logs
            self._engine.state.best_metric = self.best
            self._engine.state.best_metric_epoch = self.best_epoch


class VertebraMetricsTable:
    """Writes every per-vertebra metric into one table, and a summary with mean ± std, after an evaluation.

    ``monai.handlers.MetricsSaver`` writes one ``<metric>_raw.csv`` per metric; this handler joins the same
    per-item values (``engine.state.metric_details``, filled by ``IgniteMetricHandler(save_details=True)``)
    into ``metrics_per_vertebra.csv`` with one row per vertebra (its ``id`` from the datalist) and one column
    per metric, and writes ``metrics_summary.csv`` (metric, mean, std, median, n, n_nan). Both files are
    written atomically; the summary is also logged.

    Args:
        save_dir: output folder.
        metric_names: metrics to include, in column order (default: all in ``metric_details``).
        id_key: key of the batch holding each item's identifier.
        filename: name of the per-vertebra table.
        summary_filename: name of the summary table.
    """

    def __init__(
        self,
        save_dir: str | Path,
        metric_names: Sequence[str] | None = None,
        id_key: str = "id",
        filename: str = "metrics_per_vertebra.csv",
        summary_filename: str = "metrics_summary.csv",
    ) -> None:
        self.save_dir = Path(save_dir)
        self.metric_names = list(metric_names) if metric_names is not None else None
        self.id_key = id_key
        self.filename = filename
        self.summary_filename = summary_filename
        self.logger = logging.getLogger(__name__)
        self._ids: list[str] = []

    def attach(self, engine: Engine) -> None:
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
