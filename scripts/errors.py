# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The bundle's error for bad input, and the one place that reports it.

Every expected bad input (a file, a shape, a label, an angle, a config value) raises
:class:`BundleInputError` (or a subclass) whose message is one line: what is wrong and how to fix it.
When such an error happens inside a bundle run, MONAI wraps it in a long traceback that ends with
"Failed to evaluate ConfigExpression"; :func:`reports_input_errors` logs the one line at ERROR level
before the traceback so that a user sees the cause first. Nothing process-wide (``sys.excepthook``) is
changed: the bundle also runs inside other programs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["BundleInputError", "reports_input_errors"]

logger = logging.getLogger("scripts")

F = TypeVar("F", bound=Callable[..., Any])


class BundleInputError(ValueError):
    """A bad input to the bundle. ``str(error)`` is one line naming the cause and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def reports_input_errors(func: F) -> F:
    """Decorator: log a :class:`BundleInputError` raised by ``func`` at ERROR level (once), then re-raise it.

    Used on the functions that bundle configs call, so that the cause is the first thing a user reads.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BundleInputError as e:
            if not getattr(e, "_ear_reported", False):
                logger.error(f"{type(e).__name__}: {e}")
                e._ear_reported = True  # type: ignore[attr-defined]
            raise

    return wrapper  # type: ignore[return-value]
