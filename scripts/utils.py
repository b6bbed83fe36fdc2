# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Small helpers shared by the command-line tools."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "file_sha256", "remove_stale_temporaries", "unwrap_module"]

logger = logging.getLogger(__name__)

_TMP_MARK = ".tmp-"
_active: set[Path] = set()  # temporary files this process is writing now (see remove_stale_temporaries)
_active_lock = threading.Lock()


def _split_name(path: Path) -> tuple[str, str]:
    """``x.nii.gz`` -> ``("x", ".nii.gz")``: the stem and all suffixes of a file name."""
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    return stem, suffixes


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a folder entry list) to the storage device, where the system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:  # e.g. folders cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    A reader never sees a half-written file, and a failure (or an interrupt) leaves nothing at ``path``.
    The temporary name keeps the original suffixes (``x.nii.gz`` -> ``.x.tmp-<pid>.nii.gz``) so that
    writers choosing a format from the file name still work. A process killed inside the block (``kill -9``)
    leaves its temporary file behind; :func:`remove_stale_temporaries` removes such files.

    Args:
        path: the final file path. Its parent folder is created if needed.
        durable: flush the file to the storage device before the rename and the folder after it, so that
            the new file also survives a power failure (slower; meant for checkpoints and models).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, suffixes = _split_name(path)
    tmp = path.with_name(f".{stem}{_TMP_MARK}{os.getpid()}{suffixes}")
    with _active_lock:
        _active.add(tmp.resolve())
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent, directory=True)
    finally:
        with _active_lock:
            _active.discard(tmp.resolve())
        if tmp.exists():
            tmp.unlink()


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not). Where this cannot be told safely, ``True``."""
    if pid <= 0 or os.name == "nt":  # on Windows os.kill would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: a process of another user
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that :func:`atomic_path` left beside ``path`` in processes that have ended.

    A temporary file is named ``.<stem>.tmp-<pid><suffixes>``. It is removed when process ``<pid>`` no longer
    runs, or when it is this process and no :func:`atomic_path` block of it is writing the file (a process id
    can be reused, e.g. in containers). Files of other running processes are left in place.

    Args:
        path: the final file path whose temporary files to look for.

    Returns:
        the removed files.
    """
    path = Path(path)
    stem, suffixes = _split_name(path)
    prefix = f".{stem}{_TMP_MARK}"
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        name = candidate.name
        if not (name.startswith(prefix) and name.endswith(suffixes)):
            continue
        pid_text = name[len(prefix) : len(name) - len(suffixes)] if suffixes else name[len(prefix) :]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            with _active_lock:
                if candidate.resolve() in _active:
                    continue
        elif _pid_alive(pid):
            continue
        try:
            candidate.unlink()
        except FileNotFoundError:
            continue
        removed.append(candidate)
        logger.info(f"removed {candidate}, left by process {pid} that stopped while writing {path.name}")
    return removed


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hash of a file's content, as 64 hexadecimal digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unwrap_module(obj: Any) -> Any:
    """The module inside a (Distributed)DataParallel wrapper (checkpoints hold the unwrapped network)."""
    import torch

    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj
