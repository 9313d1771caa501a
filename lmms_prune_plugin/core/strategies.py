"""Strategies: scores + budget -> sorted indices of the layers to remove. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real

from lmms_prune_plugin.core.criteria import Scores


@dataclass(frozen=True)
class StrategyOptions:
    """Options shared by the built-in strategies."""

    min_gap: int = 2  # ``spaced``: removed layers are at least this far apart (2 = never adjacent)
    protect_first: int = 0  # never remove the first N layers
    protect_last: int = 0  # never remove the last N layers

    def __post_init__(self) -> None:
        for name in ("min_gap", "protect_first", "protect_last"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}={v!r} is not allowed; it must be an integer >= 0")


@dataclass(frozen=True)
class Strategy:
    """A named selection rule and its traits, which sweeps, reports and plots read."""

    name: str
    fn: Callable[[Scores, int, list[int], StrategyOptions], list[int]]
    description: str = ""
    uses_scores: bool = True  # False: the criterion is immaterial (one sweep cell per budget)
    spacing_aware: bool = False  # keeps removed layers apart (the paper's high-budget family)

    def __call__(
        self, scores: Scores, budget: int | float, options: StrategyOptions | None = None
    ) -> tuple[int, ...]:
        options = options or StrategyOptions()
        num_layers = len(scores.per_layer)
        k = resolve_budget(budget, num_layers)
        eligible = eligible_layers(num_layers, options)
        if k > len(eligible):
            raise ValueError(
                f"budget={budget!r} asks for {k} layers, but only {len(eligible)} of {num_layers} may be removed "
                f"with protect_first={options.protect_first}, protect_last={options.protect_last}"
            )
        if k == 0:
            return ()
        chosen = sorted(self.fn(scores, k, eligible, options))
        assert len(set(chosen)) == k and set(chosen) <= set(eligible), (self.name, chosen)
        return tuple(chosen)


def check_budget(budget: int | float) -> None:
    """What can be said of a budget without the model: a number >= 0, whole above 1."""
    if isinstance(budget, bool) or not isinstance(budget, Real) or not math.isfinite(budget):
        raise ValueError(
            f"budget={budget!r} is not allowed; give a layer count or a fraction in (0, 1)"
        )
    if budget < 0:
        raise ValueError(
            f"budget={budget!r} is not allowed; it must be >= 0 (a layer count or a fraction in (0, 1))"
        )
    if budget >= 1 and not float(budget).is_integer():
        raise ValueError(
            f"budget={budget!r} is not allowed; above 1 it must be a whole number of layers"
        )


def resolve_budget(budget: int | float, num_layers: int) -> int:
    """A count of layers, or a fraction of ``num_layers`` when 0 < budget < 1 (rounded half up)."""
    check_budget(budget)
    if 0 < budget < 1:
        k = math.floor(budget * num_layers + 0.5)
        if k == 0:  # evaluating the unpruned model under a pruning label would be a silent lie
            raise ValueError(
                f"budget={budget!r} removes 0 of {num_layers} layers (rounded half up); give a "
                f"fraction of at least {0.5 / num_layers:.3g}, a layer count, or 0 for no pruning"
            )
    else:
        k = int(budget)
    if k >= num_layers:
        raise ValueError(
            f"budget={budget!r} removes {k} of {num_layers} layers; at most {num_layers - 1} may be removed"
        )
    return k


def eligible_layers(num_layers: int, options: StrategyOptions) -> list[int]:
    return list(
        range(options.protect_first, max(options.protect_first, num_layers - options.protect_last))
    )


def _by_score(scores: Scores, eligible: list[int]) -> list[int]:
    # Ties go to the deeper layer: the usual, safer default for layer pruning.
    return sorted(eligible, key=lambda i: (-scores.per_layer[i], -i))


def topk(scores: Scores, k: int, eligible: list[int], options: StrategyOptions) -> list[int]:
    return _by_score(scores, eligible)[:k]


def spaced(scores: Scores, k: int, eligible: list[int], options: StrategyOptions) -> list[int]:
    gap = options.min_gap
    if max_spaced(eligible, gap) < k:
        raise ValueError(
            f"min_gap={gap} is not allowed with budget {k}: at most {max_spaced(eligible, gap)} of the "
            f"{len(eligible)} removable layers can be kept {gap} apart"
        )
    chosen: list[int] = []
    for i in _by_score(scores, eligible):
        if all(abs(i - j) >= gap for j in chosen):
            chosen.append(i)
            if len(chosen) == k:
                return chosen
    # Greedy boxed itself in; the best-scoring feasible set is then found exactly.
    return _best_spaced(scores, k, eligible, gap)


def max_spaced(eligible: list[int], gap: int) -> int:
    count, last = 0, None
    for i in eligible:
        if last is None or i - last >= gap:
            count, last = count + 1, i
    return count


def _best_spaced(scores: Scores, k: int, eligible: list[int], gap: int) -> list[int]:
    # best[j][c]: (total, chosen) using eligible[:j] with c picks; exact DP over positions.
    n = len(eligible)
    neg = (-math.inf, ())
    best = [[neg] * (k + 1) for _ in range(n + 1)]
    for j in range(n + 1):
        best[j][0] = (0.0, ())
    for j in range(1, n + 1):
        i = eligible[j - 1]
        prev = j - 1
        while prev > 0 and i - eligible[prev - 1] < gap:
            prev -= 1
        for c in range(1, k + 1):
            skip = best[j - 1][c]
            base = best[prev][c - 1]
            take = (base[0] + scores.per_layer[i], base[1] + (i,)) if base[0] > -math.inf else neg
            best[j][c] = max(skip, take, key=lambda t: t[0])
    return list(best[n][k][1])


def uniform(scores: Scores, k: int, eligible: list[int], options: StrategyOptions) -> list[int]:
    # Centre of each of k equal slices of the removable depth range; scores are ignored.
    n = len(eligible)
    return [eligible[min(n - 1, math.floor((j + 0.5) * n / k))] for j in range(k)]


def contiguous(scores: Scores, k: int, eligible: list[int], options: StrategyOptions) -> list[int]:
    blocks = scores.blocks.get(k)
    starts = [s for s in eligible if all(s + d in eligible for d in range(k))]

    def block_score(s: int) -> float:
        return blocks[s] if blocks is not None else sum(scores.per_layer[s : s + k])

    best = max(starts, key=lambda s: (block_score(s), s))
    return list(range(best, best + k))


BUILTIN_STRATEGIES = (
    Strategy("topk", topk, "the k highest scores"),
    Strategy(
        "spaced",
        spaced,
        "greedy by score, removed layers at least min_gap apart",
        spacing_aware=True,
    ),
    Strategy(
        "uniform",
        uniform,
        "evenly spaced through depth, scores ignored",
        uses_scores=False,
        spacing_aware=True,
    ),
    Strategy("contiguous", contiguous, "the best-scoring block of k consecutive layers"),
)
