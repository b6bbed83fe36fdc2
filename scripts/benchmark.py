# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Entry point of ``python -m scripts.benchmark`` (the benchmarks are in :mod:`scripts.tools.benchmark`)."""

if __name__ == "__main__":
    from scripts.tools.benchmark import main

    main()
