# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""MONAI transforms of the bundle (array and dictionary versions), importable from configs as
``scripts.transforms.<Name>``."""
