# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Data preparation: reading scans and label maps, label conventions, sources, per-vertebra crops, splits.

The command-line tool is ``python -m scripts.prepare``. Import from the modules (importing the package loads none
of them): :mod:`scripts.data.io` (reading and writing volumes), :mod:`scripts.data.labels` (vertebra labels and
levels), :mod:`scripts.data.sources` (datasets and the example), :mod:`scripts.data.crop` (per-vertebra crops),
:mod:`scripts.data.intensity` (HU calibration), :mod:`scripts.data.orientation` (anatomy checks),
:mod:`scripts.data.split` (patient splits) and :mod:`scripts.data.errors`.
"""
