"""How sure is a plan: bootstrap the calibration samples and re-plan. Pure given the samples.

Each resample draws, per domain, as many samples as it has, with replacement (the same draw
serves every criterion, so criteria are compared on the same resamples), sums their
per-sample statistics and plans from them exactly as from the full set. Reported per
criterion: how often each layer is removed, the mean Jaccard agreement between the removed
sets of every pair of resamples, and the mean Jaccard agreement with the full-data plan.

Only criteria scored from one calibration of the unpruned model are bootstrapped: a greedy
criterion would rerun its passes per resample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from lmms_prune_plugin.core.plan import ModelIdentity
from lmms_prune_plugin.core.planner import PruneOptions, make_plan
from lmms_prune_plugin.core.stats import LayerStatistics


@dataclass(frozen=True)
class Stability:
    """One criterion's plan stability at one budget."""

    criterion: str
    strategy: str
    budget: int | float
    frequency: tuple[float, ...]  # per layer: share of resamples that remove it
    jaccard: float  # mean over pairs of resamples
    jaccard_to_plan: float  # mean over resamples, against the full-data plan
    plan: tuple[int, ...]  # the full-data plan's removed layers
    resamples: int

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion,
            "strategy": self.strategy,
            "budget": self.budget,
            "frequency": list(self.frequency),
            "jaccard": self.jaccard,
            "jaccard_to_plan": self.jaccard_to_plan,
            "plan": list(self.plan),
            "resamples": self.resamples,
        }


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """|a & b| / |a | b|; two empty sets agree fully."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def mean_pairwise_jaccard(sets: Sequence[Sequence[int]]) -> float:
    """Mean Jaccard agreement over every pair (1.0 for fewer than two sets)."""
    pairs = list(combinations(range(len(sets)), 2))
    if not pairs:
        return 1.0
    # Identical sets are common: count each distinct set once per pair of kinds.
    kinds: dict[tuple[int, ...], int] = {}
    for s in sets:
        key = tuple(sorted(s))
        kinds[key] = kinds.get(key, 0) + 1
    total = 0.0
    items = list(kinds.items())
    for i, (a, na) in enumerate(items):
        total += na * (na - 1) / 2  # pairs within a kind agree fully
        for b, nb in items[i + 1 :]:
            total += na * nb * jaccard(a, b)
    return total / len(pairs)


def resample_counts(sizes: Mapping[str, int], resamples: int, seed: int = 0) -> list[dict]:
    """Per resample, per domain: how many times each sample is drawn (sums to its size)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(resamples):
        draw = {}
        for d in sorted(sizes):
            n = sizes[d]
            draw[d] = np.bincount(rng.integers(0, n, size=n), minlength=n)
        out.append(draw)
    return out


def bootstrap_plans(
    model: ModelIdentity,
    samples: Mapping[str, Sequence[LayerStatistics]],
    options: Sequence[PruneOptions],
    resamples: int = 200,
    seed: int = 0,
) -> list[Stability]:
    """Plan every option on ``resamples`` bootstrap resamples of the per-sample statistics."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 2:
        raise ValueError(f"bootstrap={resamples!r} is not allowed; it must be an integer >= 2")
    empty = [d for d, rows in samples.items() if not rows]
    if empty:
        raise ValueError(f"no per-sample statistics for {empty[0]}")
    matrices = {d: np.array([r.flatten() for r in rows]) for d, rows in samples.items()}
    full = {d: rows[0].unflatten(list(matrices[d].sum(axis=0))) for d, rows in samples.items()}
    plans = [make_plan(model, full, o).removed for o in options]
    removed: list[list[tuple[int, ...]]] = [[] for _ in options]
    sizes = {d: len(rows) for d, rows in samples.items()}
    for draw in resample_counts(sizes, resamples, seed):
        stats = {
            d: samples[d][0].unflatten(list(draw[d].astype(float) @ matrices[d])) for d in samples
        }
        for i, o in enumerate(options):
            removed[i].append(make_plan(model, stats, o).removed)
    out = []
    n = model.num_layers
    for o, plan, sets in zip(options, plans, removed, strict=True):
        freq = tuple(sum(layer in s for s in sets) / len(sets) for layer in range(n))
        out.append(
            Stability(
                o.criterion,
                o.strategy_name,
                o.budget,
                freq,
                mean_pairwise_jaccard(sets),
                float(np.mean([jaccard(s, plan) for s in sets])),
                plan,
                resamples,
            )
        )
    return out
