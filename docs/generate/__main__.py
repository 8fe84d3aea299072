"""``python docs/generate [--check]`` (or ``python -m docs.generate`` from the repository root)."""

import sys
from pathlib import Path

if __package__:
    from .cli import main
else:  # run as a directory: sys.path[0] is this one, whose module names (dags, facts, …) must not shadow others
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    from generate.cli import main

sys.exit(main())
