"""Every command-line entry point of the bundle answers ``--help`` with its usage, not a traceback."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

#: every module of ``scripts`` that runs as ``python -m``
ENTRY_POINTS = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__main__")
    for p in (ROOT / "scripts").rglob("*.py")
    if 'if __name__ == "__main__":' in p.read_text()
)


def test_entry_points_found():
    assert {"scripts.prepare", "scripts.spine", "scripts.tools.spine_eval", "scripts.monailabel"} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help(module, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    monkeypatch.setenv("PAGER", "cat")
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after: the tools install their own
    cwd, threads = os.getcwd(), torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as stop:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        os.chdir(cwd)  # some tools run from the bundle's root
        torch.set_num_threads(threads)  # and some set the threads of the process
    # python-fire exits with 2 after the help of a command whose positional arguments are missing
    assert stop.value.code in (0, 2, None), f"{module} --help exited with {stop.value.code}"
    out = capsys.readouterr()
    text = (out.out + out.err).lower()
    assert "usage" in text or "synopsis" in text, f"{module} --help printed no usage:\n{text[:500]}"
    assert "traceback" not in text


@pytest.mark.parametrize(
    "module, command",
    [
        ("scripts.spine", "radiographs"),
        ("scripts.simulate", "radiographs"),
        ("scripts.tools.spine_stage", "combine"),
        ("scripts.tools.spine_stage", "stack"),
        ("scripts.tools.spine_stage", "views"),
    ],
)
def test_help_of_subcommands(module, command, monkeypatch, capsys):
    """``--help`` after a subcommand shows that command's usage (``scripts.spine radiographs`` passes unknown options
    to its configs, so it took ``--help`` for one)."""
    extra = ["--ap", "missing.dcm"] if module == "scripts.spine" else []  # help, not a run that reads them
    monkeypatch.setattr(sys, "argv", [module, command, *extra, "--help"])
    monkeypatch.setenv("PAGER", "cat")
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    cwd, threads = os.getcwd(), torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as stop:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    assert stop.value.code in (0, 2, None)
    out = capsys.readouterr()
    text = (out.out + out.err).lower()
    assert "synopsis" in text and "error:" not in text and "traceback" not in text


def test_misspelt_options_stop_before_the_work():
    """An option the command's function does not take stops it at once, naming the closest one; the options of the
    function, ``--noX`` of a switch, ``--help`` and anything after ``--`` pass; a function with ``**kwargs`` takes
    any option."""
    from scripts.errors import BundleInputError, check_cli_flags

    def train(dataset_dir: str = "data", minutes: float = 19.0, joint_views: bool = True) -> None:
        """A stand-in."""

    def open_ended(ct: str, **overrides) -> None:
        """Takes any option."""

    with pytest.raises(BundleInputError, match=r"^tool train: unknown option --minuts; did you mean --minutes\? its"):
        check_cli_flags({"train": train}, ["train", "--minuts", "1"], "tool")
    with pytest.raises(BundleInputError, match=r"unknown option --dataset; did you mean --dataset_dir\?"):
        check_cli_flags(train, ["--dataset=x"], "tool")
    with pytest.raises(BundleInputError, match=r"unknown option --colour; its options: --dataset_dir, --minutes"):
        check_cli_flags(train, ["--colour", "red"], "tool")
    for fine in (["--minutes", "2", "--dataset-dir", "d"], ["--nojoint_views"], ["--help"], ["--", "--anything"],
                 ["--d", "data"]):  # fmt: skip
        check_cli_flags(train, fine, "tool")
    check_cli_flags(open_ended, ["--ct", "a", "--ckpt_dir", "b"], "tool")
    check_cli_flags({"train": train}, ["unknown", "--minuts"], "tool")  # an unknown command: fire says so


def test_a_misspelt_option_ends_the_command_in_one_line(tmp_path):
    import subprocess

    res = subprocess.run(
        [sys.executable, "-m", "scripts.tools.spine_stage", "train", "--minuts", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "ERROR: BundleInputError: python -m scripts.tools.spine_stage train: unknown option --minuts"
    )


#: the words before the options of the tools whose commands are subcommands or a positional name
_FIRST_WORDS = {"scripts.tools.benchmark": ["all"], "scripts.tools.spine_stage": ["views"],
                "scripts.tools.experiments": ["recipes"], "scripts.tools.finder_eval": ["draw_heatmaps"],
                "scripts.tools.figures": ["surface"]}  # fmt: skip


def _fired(module: str) -> bool:
    path = ROOT / Path(*module.split("."))
    return "fire.Fire" in (path / "__main__.py" if path.is_dir() else path.with_suffix(".py")).read_text()


#: convert_model writes any further ``--key value`` into the model's record (``**record``), by design
_ANY_OPTION = {"scripts.convert_model"}


@pytest.mark.parametrize("module", [m for m in ENTRY_POINTS if _fired(m) and m not in _ANY_OPTION])
def test_every_fire_entry_point_refuses_a_misspelt_option_first(module, monkeypatch, capsys):
    """Run as ``python -m``, each tool run by python-fire stops on an unknown option before its work, naming it
    (fire alone hands it to the result, after the work; a tool that passes ``**overrides`` on checks them itself)."""
    from scripts.errors import BundleInputError

    monkeypatch.setattr(sys, "argv", [module, *_FIRST_WORDS.get(module, []), "--zz_typo", "1"])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    cwd, threads = os.getcwd(), torch.get_num_threads()
    try:
        with pytest.raises((SystemExit, BundleInputError, ValueError)) as stop:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    text = str(stop.value) + str(getattr(stop.value, "code", "")) + capsys.readouterr().err
    assert "--zz_typo" in text and ("unknown option" in text or "is neither" in text or "not a key" in text), text


def test_every_fire_entry_point_checks_its_options():
    """Each ``python -m`` tool run by python-fire calls :func:`scripts.errors.check_cli_flags` (the test above
    runs each)."""

    def source(module: str) -> str:
        path = ROOT / Path(*module.split("."))
        return (path / "__main__.py" if path.is_dir() else path.with_suffix(".py")).read_text()

    fired = [m for m in ENTRY_POINTS if "fire.Fire" in source(m)]
    assert {"scripts.prepare", "scripts.tools.benchmark", "scripts.tools.spine_stage"} <= set(fired)
    unchecked = [m for m in fired if "check_cli_flags" not in source(m)]
    assert not unchecked, f"these tools run a misspelt option's command first: {unchecked}"


def test_prepare_refuses_a_misspelt_option_before_preparing(tmp_path, capsys):
    """``--spacng 2`` used to prepare the whole example at the defaults (1 mm, 128^3) before fire complained."""
    from scripts.prepare import main

    assert main(["--source", "example", "--out", str(tmp_path / "p"), "--spacng", "2"]) == 2
    assert "unknown option --spacng; did you mean --spacing?" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_unknown_override_names_the_closest_option_or_key():
    from scripts.errors import unknown_override

    keys = ["epochs", "learning_rate", "validate"]
    assert unknown_override(["epochs", "validate#dataset#cache_rate"], keys) is None  # nested: by its first part
    assert unknown_override(["epoch"], keys, ["epochs", "out"]) == ("epoch", "did you mean --epochs?")  # once
    assert unknown_override(["lat"], keys, ["lateral"]) == ("lat", "did you mean --lateral?")
    assert unknown_override(["zz"], keys) == ("zz", "")
