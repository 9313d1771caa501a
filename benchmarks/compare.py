"""Do two runs agree? Every ratio of two ``results.json`` side by side, with its interval.

Usage::

    python -m benchmarks.compare benchmarks/results/results.json benchmarks/results/run2/results.json \\
        --out benchmarks/results/stability.md

Two runs agree on a ratio when their 95% intervals overlap (on the clock that judges it: CPU
time; wall time is listed beside). Exits with 1 when a ratio's intervals are disjoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .report import _table, ci, ratio_list
from .stats import overlap, verdict

CLOCK = "cpu"


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per ratio: both runs' estimates (both clocks), the verdicts, and whether they agree."""
    rb = {r["key"]: r for r in ratio_list(b)}
    rows = []
    for r in ratio_list(a):
        other = rb.get(r["key"])
        if other is None:
            continue
        row = {"key": r["key"], "a": r["est"], "b": other["est"], "pct": r.get("pct", False)}
        row["agree"] = {c: overlap(r["est"][c], other["est"][c]) for c in ("cpu", "wall")}
        if "limit" in r:
            row["verdicts"] = [
                verdict(x[CLOCK], r["limit"], at_most=r["at_most"])
                for x in (r["est"], other["est"])
            ]
        rows.append(row)
    return {
        "runs": [{k: x[k] for k in ("date", "mode", "wall_s")} for x in (a, b)],
        "rows": rows,
        "agree": all(r["agree"][CLOCK] for r in rows),
        "agree_wall": all(r["agree"]["wall"] for r in rows),
    }


def render(cmp: dict[str, Any]) -> str:
    (a, b) = cmp["runs"]
    lines = [
        "# Stability: two runs of the benchmarks",
        "",
        f"- Run 1: {a['date']} ({a['mode']}, {a['wall_s']:.0f} s); run 2: {b['date']} ({b['mode']}, {b['wall_s']:.0f} s)",
        "- Each ratio: median of per-round ratios [95% bootstrap interval]. The runs agree on a "
        "ratio when the intervals overlap.",
        f"- Agreement on CPU time (the clock the targets are judged on): "
        f"**{'all ratios agree' if cmp['agree'] else 'some ratios disagree'}**; on wall time: "
        f"{'all agree' if cmp['agree_wall'] else 'some disagree'}.",
        "",
    ]

    def fmt(e: dict[str, Any], pct: bool) -> str:
        return ci(e, pct=pct)

    rows = []
    for r in cmp["rows"]:
        v = r.get("verdicts")
        rows.append(
            [
                r["key"],
                fmt(r["a"][CLOCK], r["pct"]),
                fmt(r["b"][CLOCK], r["pct"]),
                "yes" if r["agree"][CLOCK] else "**no**",
                " / ".join(v) if v else "-",
                fmt(r["a"]["wall"], r["pct"]),
                fmt(r["b"]["wall"], r["pct"]),
                "yes" if r["agree"]["wall"] else "**no**",
            ]
        )
    lines += _table(
        [
            "ratio",
            "run 1, CPU",
            "run 2, CPU",
            "agree",
            "verdicts (run 1 / run 2)",
            "run 1, wall",
            "run 2, wall",
            "agree (wall)",
        ],
        rows,
    )
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--json", type=Path, help="also write the comparison as JSON here")
    args = parser.parse_args(argv)
    cmp = compare(*(json.loads(p.read_text()) for p in (args.first, args.second)))
    text = render(cmp)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(cmp, indent=2) + "\n")
    return 0 if cmp["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
