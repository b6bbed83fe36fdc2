# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Ignite handlers used by the bundle's workflows (attach with ``handler.attach(engine)``, as MONAI's)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from scripts.utils import atomic_path

__all__ = ["ResumableCheckpoint"]


def _unwrap(obj: Any) -> Any:
    """The module inside a (Distributed)DataParallel wrapper, so checkpoints load without the wrapper."""
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


class ResumableCheckpoint:
    """Saves the whole training state after every epoch and resumes from it when training starts again.

    MONAI's ``CheckpointSaver`` writes checkpoints non-atomically (a process killed while saving leaves a
    truncated file) and needs a separate ``CheckpointLoader`` with a path known in advance. This handler
    writes one file, atomically (temporary name, then rename), and on ``Events.STARTED`` loads it if it
    exists, so a killed run that is started again with the same command loses at most one epoch.

    Args:
        save_dir: folder of the checkpoint file.
        save_dict: objects with ``state_dict``/``load_state_dict`` to save, e.g.
            ``{"model": net, "optimizer": opt, "lr_scheduler": sched, "trainer": trainer}``. Include the
            trainer to resume at the right epoch.
        filename: checkpoint file name inside ``save_dir``.
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
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
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
        state = {k: _unwrap(v).state_dict() for k, v in self.save_dict.items()}
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
            _unwrap(obj).load_state_dict(state[k])
        if max_epochs is not None and "trainer" in self.save_dict:
            if engine.state.epoch > max_epochs:
                raise ValueError(
                    f"checkpoint {self.path} is at epoch {engine.state.epoch}, beyond max_epochs={max_epochs}; "
                    "raise the epochs setting or delete the checkpoint."
                )
            engine.state.max_epochs = max_epochs
        self.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}")
