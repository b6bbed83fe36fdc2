# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""EAR vertebra reconstruction bundle: data preparation, X-ray simulation, network, losses and metrics."""
