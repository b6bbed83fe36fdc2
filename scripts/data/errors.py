# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The error raised for bad input data: one line naming the file, what is wrong and how to fix it."""

from __future__ import annotations

import os

from scripts.errors import BundleInputError

__all__ = ["DataError"]


class DataError(BundleInputError):
    """Bad input data. ``str(error)`` is one line: ``<file>: <problem>; <fix>``.

    Args:
        path: the file or folder at fault (``None`` when no single file is).
        problem: what is wrong.
        fix: what the user can do about it.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        text = f"{problem}; {fix}" if self.path is None else f"{self.path}: {problem}; {fix}"
        super().__init__(text)

    def __reduce__(self) -> tuple[type, tuple[str | None, str, str]]:
        """Pickle and copy by the three arguments (``args`` holds only the joined text)."""
        return type(self), (self.path, self.problem, self.fix)

    def __str__(self) -> str:
        return str(self.args[0])
