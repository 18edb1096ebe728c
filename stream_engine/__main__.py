"""`python -m stream_engine …` = the `stream-engine` console script (used to spawn children)."""

from __future__ import annotations

import sys

from stream_engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
