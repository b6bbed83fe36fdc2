# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Tools around the pipeline, not part of it: benchmarks (``python -m scripts.tools.benchmark``), experiments
(``python -m scripts.tools.experiments``), tables and figures. Nothing in ``scripts`` outside this package
imports it."""
