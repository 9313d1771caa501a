"""Matplotlib PNGs: per-layer similarity profiles and accuracy against budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def layer_profiles(
    similarity: Mapping[str, Sequence[float]],
    removed: Mapping[str, Sequence[int]],
    out: str | Path,
    title: str = "",
) -> Path:
    """Similarity per layer for each domain, with the layers each criterion removes marked."""
    fig, (ax, bx) = plt.subplots(
        2, 1, figsize=(10, 6.5), gridspec_kw={"height_ratios": [2, 1.3]}, sharex=True
    )
    for name, values in similarity.items():
        ax.plot(range(len(values)), values, marker="o", label=f"{name} cos(h_in, h_out)")
    ax.set_ylabel("mean cosine similarity")
    ax.set_title(title or "Per-layer similarity (higher = changes its input less = removed first)")
    ax.grid(alpha=0.3)
    ax.legend()
    names = list(removed)
    for row, name in enumerate(names):
        bx.scatter(removed[name], [row] * len(removed[name]), marker="s", s=60)
    bx.set_yticks(range(len(names)), names)
    bx.set_xlabel("decoder layer")
    bx.set_title("layers removed by each criterion")
    bx.grid(alpha=0.3)
    n = max((len(v) for v in similarity.values()), default=0)
    bx.set_xticks(range(n))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def accuracy_vs_budget(
    records: Sequence[Mapping], groups: Mapping[str, str], out: str | Path, title: str = ""
) -> Path:
    """One panel per task group (``{column: label}``), one line per method; the unpruned model is
    budget 0 of every line. Records with ``{column}_ci`` intervals get a shaded band."""
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.6), squeeze=False)
    base = {r["model"]: r for r in records if r["budget"] == 0}
    methods = sorted({r["method"] for r in records if r["budget"] != 0})
    # Ten default colours repeat past ten methods; tab20 keeps a dozen or so apart.
    palette = plt.get_cmap("tab20").colors
    colors = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    spaced = {r["method"]: bool(r.get("spacing_aware")) for r in records}  # dashed lines
    for ax, (col, label) in zip(axes[0], groups.items(), strict=True):
        for m in methods:
            pts = sorted(
                (r["budget"], r[col]) for r in records if r["method"] == m and r[col] is not None
            )
            pts = [(0, b[col]) for b in base.values() if b[col] is not None][:1] + pts
            style = "--" if spaced[m] else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3.5, label=m,
                    color=colors[m])  # fmt: skip
            band = sorted(
                (r["budget"], *r[f"{col}_ci"])
                for r in records
                if r["method"] == m and r.get(f"{col}_ci")
            )
            band = [(0, *b[f"{col}_ci"]) for b in base.values() if b.get(f"{col}_ci")][:1] + band
            if band:  # the bootstrap interval of each point
                ax.fill_between([p[0] for p in band], [p[1] for p in band], [p[2] for p in band],
                                color=colors[m], alpha=0.1, linewidth=0)  # fmt: skip
        ax.set_title(label)
        ax.set_xlabel("layers removed (budget)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plan_stability(
    frequency: Mapping[str, Sequence[float]],
    agreement: Mapping[str, float],
    out: str | Path,
    title: str = "",
) -> Path:
    """Heat map: per criterion (rows) how often each layer (columns) is removed over bootstrap
    resamples of the calibration samples; the row label carries the mean Jaccard agreement."""
    names = list(frequency)
    n = max((len(v) for v in frequency.values()), default=0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * n + 3), 0.45 * len(names) + 1.6))
    data = [list(frequency[c]) for c in names]
    im = ax.imshow(data, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    for r, row in enumerate(data):
        for c, v in enumerate(row):
            if v > 0:
                ax.text(c, r, f"{v:.2f}".lstrip("0"), ha="center", va="center", fontsize=7,
                        color="white" if v > 0.6 else "black")  # fmt: skip
    ax.set_yticks(range(len(names)), [f"{c} (J={agreement[c]:.2f})" for c in names])
    ax.set_xticks(range(n))
    ax.set_xlabel("decoder layer")
    ax.set_title(title or "how often each layer is removed over bootstrap resamples")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
