# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""``python -m scripts.monailabel APP_DIR``: write the MONAI Label app folder of the bundle (``APP_DIR/main.py``).

Then ``monailabel start_server --app APP_DIR --studies XRAYS`` serves the infer task ``ear``
(docs/monailabel.md). ``APP_DIR`` must lie outside the bundle: MONAI Label writes into it.
"""

from __future__ import annotations

import sys

from scripts.errors import BundleInputError
from scripts.monailabel.service import write_app_dir

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Write ``APP_DIR/main.py`` and print its path; 1 with a one-line error for a bad ``APP_DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m scripts.monailabel APP_DIR  (writes APP_DIR/main.py for MONAI Label)", file=sys.stderr)
        return 2
    try:
        print(write_app_dir(args[0]))
    except BundleInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
