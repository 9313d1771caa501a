"""Healing on the packaged demo model: unpruned / pruned / healed accuracy per domain and budget.

Runs ``lmms-prune sweep --heal`` (math criterion, top-k, every budget) on the held-out
``prune_demo_math`` and ``prune_demo_nonmath`` tasks, whole tasks through lmms-eval, healing on
the ``prune_train`` stream; then writes a table (Markdown and JSON) and a plot::

    python scripts/heal_demo.py                       # budgets 2,4,6,8; about 25 min on 2 cores
    python scripts/heal_demo.py --budgets 4 --steps 300

"Recovered" is the share of the accuracy pruning lost that healing won back:
(healed - pruned) / (unpruned - pruned).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

TASKS = {"math": "prune_demo_math", "non-math": "prune_demo_nonmath"}


def accuracy(row: dict, task: str) -> float:
    return 100 * row["metrics"][task]["exact_match,none"]


def table(rows: list[dict]) -> list[dict]:
    """One entry per budget: removed layers, per-domain accuracies and recovery, minutes."""
    base = next(r for r in rows if r["budget"] == 0)
    out = []
    for b in sorted({r["budget"] for r in rows if r["budget"]}):
        pruned = next(r for r in rows if r["budget"] == b and "healing" not in r)
        healed = next(r for r in rows if r["budget"] == b and "healing" in r)
        entry = {"budget": b, "removed": pruned["removed"],
                 "minutes": round(healed["healing"]["seconds"] / 60, 2),
                 "loss_first": healed["healing"]["loss_first"],
                 "loss_last": healed["healing"]["loss_last"]}  # fmt: skip
        for name, task in TASKS.items():
            u, p, h = accuracy(base, task), accuracy(pruned, task), accuracy(healed, task)
            entry[name] = {"unpruned": u, "pruned": p, "healed": h,
                           "recovered": (h - p) / (u - p) if u > p else None}  # fmt: skip
        out.append(entry)
    return out


def markdown(entries: list[dict]) -> str:
    head = "| budget | removed | " + " | ".join(
        f"{d} unpruned / pruned / healed | {d} recovered" for d in TASKS
    )
    lines = [head + " | healing (min) |", "|" + "---|" * (3 + 2 * len(TASKS))]
    for e in entries:
        cells = [str(e["budget"]), str(e["removed"])]
        for d in TASKS:
            x = e[d]
            cells.append(f"{x['unpruned']:.1f} / {x['pruned']:.1f} / **{x['healed']:.1f}**")
            cells.append(
                "n/a (nothing lost)" if x["recovered"] is None else f"{100 * x['recovered']:.0f}%"
            )
        cells.append(f"{e['minutes']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(entries: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(10, 4), sharey=True)
    budgets = [e["budget"] for e in entries]
    for ax, d in zip(axes, TASKS, strict=True):
        ax.axhline(entries[0][d]["unpruned"], color="grey", ls="--", label="unpruned")
        ax.plot(budgets, [e[d]["pruned"] for e in entries], "o-", color="tab:red", label="pruned")
        ax.plot(budgets, [e[d]["healed"] for e in entries], "s-", color="tab:green", label="healed")
        ax.set_title(f"prune_demo {d}")
        ax.set_xlabel("decoder layers removed (of 12; math + top-k)")
        ax.set_xticks(budgets)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("exact match (%)")
    axes[0].legend()
    fig.suptitle("Demo model: accuracy before and after healing (LoRA, self-distillation)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", default="2,4,6,8")
    p.add_argument("--steps", default="1000")
    p.add_argument("--data_limit", default="2048")
    p.add_argument("--out", default="benchmarks/results/heal_demo")
    p.add_argument("--png", default="docs/healing.png")
    p.add_argument("--resume", action="store_true", help="keep rows already in the sweep file")
    a = p.parse_args(argv)
    from lmms_prune_plugin.tools.cli import main as cli

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sweep = out / "sweep.jsonl"
    if sweep.exists() and not a.resume:
        sweep.unlink()
    start = time.perf_counter()
    args = ["sweep", "--criteria", "math", "--budgets", f"0,{a.budgets}", "--heal",
            "--steps", a.steps, "--data_limit", a.data_limit, "--out", str(sweep)]  # fmt: skip
    if cli(args) != 0:
        return 1
    from lmms_prune_plugin.tools.sweep import read_rows

    entries = table(read_rows(sweep))
    md = markdown(entries)
    meta = {"command": "lmms-prune " + " ".join(args), "wall_minutes": round((time.perf_counter() - start) / 60, 1),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "budgets": entries}, indent=2) + "\n"
    )
    (out / "results.md").write_text(md)
    plot(entries, Path(a.png))
    print(md)
    print(
        f"wrote {out / 'results.json'}, {out / 'results.md'} and {a.png}; {meta['wall_minutes']} min in all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
