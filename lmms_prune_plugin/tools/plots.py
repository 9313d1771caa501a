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


#: Marker per harness, so one method's curves from two harnesses share a colour and differ in
#: their points.
HARNESS_MARKERS = {"lmms-eval": "o", "lm-eval": "s", "vlmeval": "^"}


def _series_of(rec: Mapping) -> tuple[str, str, str]:
    return rec["model"], rec.get("harness", "lmms-eval"), rec.get("engine", "hf")


def _curve_label(key: tuple[str, str, str], every: set, method: str) -> str:
    """The method, with whatever tells its series apart from the board's other series."""
    parts = [v for i, v in enumerate(key) if len({k[i] for k in every}) > 1]
    return f"{method} [{', '.join(parts)}]" if parts else method


def _draw_curves(ax, records: Sequence[Mapping], col: str, colors: Mapping[str, tuple]) -> None:
    """One line per (series, method) of one panel, starting at its own series' unpruned model,
    with the bootstrap band where the records have intervals."""
    every = {_series_of(r) for r in records}
    for key in sorted(every):
        mine = [r for r in records if _series_of(r) == key]
        base = [r for r in mine if r["budget"] == 0][:1]
        for m in sorted({r["method"] for r in mine if r["budget"] != 0}):
            recs = sorted((r for r in mine if r["method"] == m), key=lambda r: r["budget"])
            pts = [(r["budget"], r[col]) for r in base + recs if r[col] is not None]
            if not pts:
                continue
            style = "--" if any(r.get("spacing_aware") for r in recs) else "-"
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                marker=HARNESS_MARKERS.get(key[1], "D"),
                ms=3.5,
                label=_curve_label(key, every, m),
                color=colors[m],
            )
            band = [(r["budget"], *r[f"{col}_ci"]) for r in base + recs if r.get(f"{col}_ci")]
            if band:  # the bootstrap interval of each point
                ax.fill_between(
                    [p[0] for p in band],
                    [p[1] for p in band],
                    [p[2] for p in band],
                    color=colors[m],
                    alpha=0.1,
                    linewidth=0,
                )


def accuracy_vs_budget(
    records: Sequence[Mapping], groups: Mapping[str, str], out: str | Path, title: str = ""
) -> Path:
    """One panel per task group (``{column: label}``), one line per method of each series
    (model, harness, engine); a series' unpruned model is budget 0 of its lines. A method has
    one colour across series, each harness its own marker. Records with ``{column}_ci``
    intervals get a shaded band."""
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.6), squeeze=False)
    methods = sorted({r["method"] for r in records if r["budget"] != 0})
    # tab10's colours are far apart; past ten methods tab20 keeps a dozen or so apart.
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20").colors
    colors = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    for ax, (col, label) in zip(axes[0], groups.items(), strict=True):
        _draw_curves(ax, records, col, colors)
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
                color = "white" if v > 0.6 else "black"
                ax.text(
                    c, r, f"{v:.2f}".lstrip("0"), ha="center", va="center", fontsize=7, color=color
                )
    ax.set_yticks(range(len(names)), [f"{c} (J={agreement[c]:.2f})" for c in names])
    ax.set_xticks(range(n))
    ax.set_xlabel("decoder layer")
    ax.set_title(title or "how often each layer is removed over bootstrap resamples")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
