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
