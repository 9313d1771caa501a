"""Do two runs agree? Every ratio of two ``results.json`` side by side, with its interval.

Usage::

    python -m benchmarks.compare benchmarks/results/run1/results.json benchmarks/results/results.json \\
        --out benchmarks/results/stability.md --json benchmarks/results/stability.json

Two runs agree on a ratio when their distance is within their intervals' half-widths that face
each other, added in quadrature (:func:`benchmarks.stats.agree`: a test of "no difference" at
about the intervals' 95%, where overlapping intervals would be one at about 99.5%), and, for a
targeted ratio, when one run's verdict is not met where the other's is missed. Judged on CPU
time, the clock of the targets; wall time is listed beside. A ratio without an interval in
either run (fewer than 6 rounds) is listed as such and judges nothing. Exits with 1 when the
runs disagree, and refuses two runs that do not hold the same ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .report import _table, ci, ratio_list
from .stats import MET, MISSED, agree, verdict

CLOCK = "cpu"
CLOCKS = ("cpu", "wall")


def _contradict(verdicts: list[str]) -> bool:
    return set(verdicts) == {MET, MISSED}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per ratio: both runs' estimates (both clocks), the verdicts, and whether they agree."""
    ra, rb = ({r["key"]: r for r in ratio_list(x)} for x in (a, b))
    if ra.keys() != rb.keys():
        only = sorted(ra.keys() ^ rb.keys())
        raise ValueError(f"the two runs do not hold the same ratios; only in one of them: {only}")
    rows = []
    for key, r in ra.items():
        other = rb[key]
        row = {"key": key, "a": r["est"], "b": other["est"], "pct": r.get("pct", False)}
        row["agree"] = {c: agree(r["est"][c], other["est"][c]) for c in CLOCKS}
        if "limit" in r:
            row["verdicts"] = {
                c: [
                    verdict(x[c], r["limit"], at_most=r["at_most"])
                    for x in (r["est"], other["est"])
                ]
                for c in CLOCKS
            }
            for c in CLOCKS:
                if _contradict(row["verdicts"][c]):
                    row["agree"][c] = False
        rows.append(row)

    def every(c: str) -> bool:
        return all(r["agree"][c] is not False for r in rows)

    return {
        "runs": [{k: x.get(k) for k in ("date", "mode", "wall_s", "seed")} for x in (a, b)],
        "rows": rows,
        "agree": every(CLOCK),
        "agree_wall": every("wall"),
        "disagree": {c: [r["key"] for r in rows if r["agree"][c] is False] for c in CLOCKS},
        "no_interval": [r["key"] for r in rows if r["agree"][CLOCK] is None],
    }


def _yes(ok: bool | None) -> str:
    return "no interval" if ok is None else "yes" if ok else "**no**"


def render(cmp: dict[str, Any]) -> str:
    (a, b) = cmp["runs"]
    n = len(cmp["rows"])
    lines = [
        "# Stability: two runs of the benchmarks",
        "",
        f"- Run 1: {a['date']} ({a['mode']}, {a['wall_s']:.0f} s, seed {a.get('seed')}); "
        f"run 2: {b['date']} ({b['mode']}, {b['wall_s']:.0f} s, seed {b.get('seed')})",
        "- Each ratio: estimate [95% interval] (benchmarks/stats.py). The runs agree on a ratio "
        "when their distance is within the facing half-widths added in quadrature, and their "
        "verdicts are not met in one run and missed in the other.",
        f"- CPU time (the clock the targets are judged on): "
        f"**{n - len(cmp['disagree']['cpu']) - len(cmp['no_interval'])} of {n} agree**"
        + (f", disagree: {', '.join(cmp['disagree']['cpu'])}" if cmp["disagree"]["cpu"] else "")
        + (f"; without an interval: {', '.join(cmp['no_interval'])}" if cmp["no_interval"] else "")
        + ".",
        "- Wall time: "
        + (
            f"disagree: {', '.join(cmp['disagree']['wall'])}."
            if cmp["disagree"]["wall"]
            else "no ratio disagrees."
        ),
        "",
    ]
    rows = []
    for r in cmp["rows"]:
        v = r.get("verdicts")
        rows.append(
            [
                r["key"],
                ci(r["a"][CLOCK], pct=r["pct"]),
                ci(r["b"][CLOCK], pct=r["pct"]),
                _yes(r["agree"][CLOCK]),
                " / ".join(v[CLOCK]) if v else "-",
                ci(r["a"]["wall"], pct=r["pct"]),
                ci(r["b"]["wall"], pct=r["pct"]),
                _yes(r["agree"]["wall"]),
                " / ".join(v["wall"]) if v else "-",
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
            "verdicts on wall time",
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
    try:
        cmp = compare(*(json.loads(p.read_text()) for p in (args.first, args.second)))
    except ValueError as err:
        parser.error(str(err))
    text = render(cmp)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(cmp, indent=2) + "\n")
    return 0 if cmp["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
