# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The bundle's error for bad input, and how it is reported.

Every expected bad input (a file, a shape, a label, an angle, a config value, a command-line option) raises
:class:`BundleInputError` (or a subclass) whose message is one line: what is wrong and how to fix it.

Inside Python (``ConfigWorkflow``, ``monai.bundle.load``, MONAI Label, tests) the error is raised as usual:
the functions that the bundle configs call (:func:`reports_input_errors`) also log the one line at ERROR
level, because MONAI wraps the error in a long traceback that ends with "Failed to evaluate ConfigExpression".

On the command line (``python -m monai.bundle run ...``), :func:`install_cli_excepthook` (called by the
configs' first items) replaces the traceback of an input error with its one line on stderr and exit status 1;
any other error (a bug) keeps its full traceback. Set the environment variable ``EAR_DEBUG=1``
(:data:`DEBUG_ENV`) to see the full traceback of input errors too.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

__all__ = [
    "BundleInputError",
    "XRayInputError",
    "DEBUG_ENV",
    "reports_input_errors",
    "find_input_error",
    "running_bundle_cli",
    "install_cli_excepthook",
    "check_cli_flags",
    "unknown_override",
    "command_options",
]

logger = logging.getLogger("scripts")

F = TypeVar("F", bound=Callable[..., Any])

#: environment variable that, set to anything but ``""`` or ``"0"``, shows the full traceback of input errors
DEBUG_ENV = "EAR_DEBUG"


class BundleInputError(ValueError):
    """A bad input to the bundle. ``str(error)`` is one line naming the cause and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class XRayInputError(BundleInputError):
    """A bad X-ray input: the message names the file or value and says how to fix it."""


def _hook_installed() -> bool:
    return bool(getattr(sys.excepthook, "_ear_cli", False))


def reports_input_errors(func: F) -> F:
    """Decorator: log a :class:`BundleInputError` raised by ``func`` at ERROR level (once), then re-raise it.

    Used on the functions that bundle configs call, so that the cause is the first thing a user reads.
    On the command line, where :func:`install_cli_excepthook` prints the one line at exit instead of the
    traceback, nothing is logged (the line would appear twice).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BundleInputError as e:
            if not getattr(e, "_ear_reported", False) and not _hook_installed():
                logger.error(f"{type(e).__name__}: {e}")
                e._ear_reported = True  # type: ignore[attr-defined]
            raise

    return wrapper  # type: ignore[return-value]


def _in_chain(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first error of type ``kind`` in ``error`` and the chain of its causes and contexts, or ``None``."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        todo += [e.__cause__, e.__context__]
    return None


def find_input_error(error: BaseException | None) -> BundleInputError | None:
    """The first :class:`BundleInputError` in ``error`` and the chain of its causes and contexts, or ``None``.

    MONAI re-raises an error of a config expression as ``RuntimeError("Failed to evaluate ...")`` from it, and
    ignite and the data loaders wrap errors of transforms the same way: the input error is found anywhere in
    ``__cause__`` / ``__context__``.
    """
    return _in_chain(error, BundleInputError)  # type: ignore[return-value]


def running_bundle_cli(argv: Sequence[str] | None = None) -> bool:
    """Whether this process is ``python -m monai.bundle ...`` (not ``ConfigWorkflow`` or ``monai.bundle.load``
    called from another program).

    Args:
        argv: the command line to look at (default ``sys.argv``); without it the ``__main__`` module's spec
            is also looked at.
    """
    args = list(sys.argv if argv is None else argv)
    if args and str(args[0]).replace("\\", "/").endswith("monai/bundle/__main__.py"):
        return True
    if argv is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        return getattr(spec, "name", None) == "monai.bundle.__main__"
    return False


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _interrupted(error: BaseException | None) -> bool:
    """Whether ``error`` or an error in the chain of its causes and contexts is a ``KeyboardInterrupt``."""
    return _in_chain(error, KeyboardInterrupt) is not None


def _cli_excepthook(
    previous: Callable[[type[BaseException], BaseException, TracebackType | None], Any],
) -> Callable[[type[BaseException], BaseException, TracebackType | None], None]:
    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if not _debug() and _interrupted(value):
            sys.stderr.write(
                "ERROR: interrupted (Ctrl-C); a training run resumes from its last saved epoch when the same command "
                "runs again, an evaluation or inference starts over (its tables or outputs are incomplete) "
                f"({DEBUG_ENV}=1 shows the traceback)\n"
            )
            sys.stderr.flush()
            return
        cause = None if _debug() else find_input_error(value)
        if cause is None:
            previous(kind, value, tb)
            return
        sys.stderr.write(f"ERROR: {type(cause).__name__}: {cause} ({DEBUG_ENV}=1 shows the traceback)\n")
        sys.stderr.flush()

    hook._ear_cli = True  # type: ignore[attr-defined]
    return hook


def install_cli_excepthook(argv: Sequence[str] | None = None, always: bool = False) -> bool:
    """On the command line, end an input error with its one line instead of MONAI's traceback.

    Installs a ``sys.excepthook`` when this process runs ``python -m monai.bundle`` (:func:`running_bundle_cli`),
    and only then: Python callers of the bundle still get the exception. An uncaught exception with a
    :class:`BundleInputError` in its chain (:func:`find_input_error`) prints ``ERROR: <type>: <message>`` on
    stderr, and an interruption (Ctrl-C) one line saying that a training run resumes; Python then exits with
    status 1. Other exceptions keep their traceback (the hook installed before
    prints them), and so do input errors when the environment variable ``EAR_DEBUG`` is set (:data:`DEBUG_ENV`).
    Installing twice changes nothing.

    Args:
        argv: the command line (default ``sys.argv``), see :func:`running_bundle_cli`.
        always: install it whatever the command line: for the bundle's own command-line tools
            (``python -m scripts.tools.<tool>``), which call it under ``if __name__ == "__main__"``.

    Returns:
        whether the hook is installed.
    """
    if _hook_installed():
        return True
    if not always and not running_bundle_cli(argv):
        return False
    sys.excepthook = _cli_excepthook(sys.excepthook)
    return True


def check_cli_flags(
    component: Callable[..., Any] | dict[str, Callable[..., Any]], argv: Sequence[str], prog: str
) -> None:
    """Refuse a command-line option that the function a ``fire.Fire`` call runs does not take, before it runs.

    python-fire hands an unknown ``--option`` to the value the function returns, so a misspelt option stops the
    command only after its work (a 20-minute training, a written model file) or, where the function has a default,
    is ignored. The options before ``--`` are compared with the function's parameters (``-`` read as ``_``,
    ``--noX`` as ``--X False``, a one-letter ``--o`` as the one parameter starting with it, as fire reads them); a
    function with ``**kwargs`` takes any. ``--help`` and ``-h`` pass.

    Args:
        component: the function, or a dict of subcommands (the first word of ``argv`` picks one; an unknown word is
            left to fire's own message).
        argv: the command line after the program (``sys.argv[1:]``, or what is given to ``fire.Fire(command=...)``).
        prog: the command, named in the message (e.g. ``"python -m scripts.tools.spine_stage"``).

    Raises:
        BundleInputError: one line naming the unknown option, the closest known one and the command's options.
    """
    import difflib
    import inspect

    args = list(argv)
    if "--" in args:
        args = args[: args.index("--")]
    if isinstance(component, dict):
        words = [a for a in args if not a.startswith("-")]
        if not words or words[0] not in component:
            return
        prog, component = f"{prog} {words[0]}", component[words[0]]
    try:
        params = inspect.signature(component).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = command_options(component)
    for arg in args:
        if not arg.startswith("--") or arg in ("--help", "--") or len(arg) < 3:
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_")
        if name in known or (name.startswith("no") and name[2:] in known):
            continue
        if len(name) == 1 and sum(k.startswith(name) for k in known) == 1:  # fire's one-letter shortcut
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean --{close[0]}? " if close else ""
        raise BundleInputError(
            f"{prog}: unknown option --{name}; {hint}its options: {', '.join('--' + n for n in known)}."
        )


def unknown_override(
    overrides: Sequence[str], keys: Sequence[str], options: Sequence[str] = ()
) -> tuple[str, str] | None:
    """The first config override that no config defines, with a hint: ``(key, "did you mean --a or --b?")``.

    MONAI's bundle runner adds an unknown ``--key value`` to the config and goes on, so a misspelt option of a tool
    that passes the rest of its command line to the configs (``**overrides``) would be ignored. An override counts
    by its first part (``validate#dataset#cache_rate`` by ``validate``). The hint names the closest of the tool's own
    ``options`` and the configs' ``keys`` (empty when none is close).

    Returns:
        ``None`` when every override is a key of the configs.
    """
    import difflib

    for key in overrides:
        if key.split("#")[0] not in keys:
            close = difflib.get_close_matches(key, list(dict.fromkeys([*options, *keys])), n=2)
            return key, f"did you mean {' or '.join('--' + c for c in close)}?" if close else ""
    return None


def command_options(fn: Callable[..., Any]) -> list[str]:
    """The named parameters of a command-line function, its ``--options`` (``*args`` and ``**kwargs`` left out)."""
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in inspect.signature(fn).parameters.items() if p.kind in kinds]
