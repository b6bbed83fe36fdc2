# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Small helpers shared by the command-line tools."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "unwrap_module"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    A reader never sees a half-written file, and a failure (or an interrupt) leaves nothing at ``path``.
    The temporary name keeps the original suffixes (``x.nii.gz`` -> ``.x.tmp-<pid>.nii.gz``) so that
    writers choosing a format from the file name still work.

    Args:
        path: the final file path. Its parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    tmp = path.with_name(f".{stem}.tmp-{os.getpid()}{suffixes}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def unwrap_module(obj: Any) -> Any:
    """The module inside a (Distributed)DataParallel wrapper (checkpoints hold the unwrapped network)."""
    import torch

    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj
