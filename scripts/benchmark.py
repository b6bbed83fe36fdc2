# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""``python -m scripts.benchmark ...``: the bundle's benchmarks, which live with the lab tools.

A launcher for :mod:`scripts.tools.benchmark` (e.g. ``python -m scripts.benchmark all``). It runs that module as
``__main__`` instead of importing it, so the bundle's runtime package does not depend on the tools.
"""

from __future__ import annotations

import runpy

if __name__ == "__main__":
    runpy.run_module("scripts.tools.benchmark", run_name="__main__", alter_sys=True)
