"""Write the demo benchmarks and calibration sets as VLMEvalKit TSVs.

    python scripts/vlmeval_demo_data.py [FOLDER]   # default: $LMUData, else ~/LMUData

Then ``LMUData=FOLDER python -m lmms_prune_plugin.harnesses.vlmeval --model lmms_prune_demo
--prune criterion=math,budget=4 --data PruneDemo_Math PruneDemo_Nonmath --judge exact_matching``.
Files already there with the same content are kept; other content is an error, never replaced.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lmms_prune_plugin.harnesses.vlmeval_data import write_demo_tsvs


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print(__doc__, file=sys.stderr)
        return 2
    folder = args[0] if args else os.environ.get("LMUData") or str(Path.home() / "LMUData")
    try:
        paths = write_demo_tsvs(folder)
    except ValueError as err:
        print(f"vlmeval_demo_data: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
