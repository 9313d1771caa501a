"""Criteria: calibration statistics -> per-layer redundancy scores (higher = removed first).

Pure functions of their inputs; none of them touches a model.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from lmms_prune_plugin.core.stats import ANGULAR_TOKENS, LayerStatistics, pool

MATH, NONMATH = "math", "nonmath"
Stats = Mapping[str, LayerStatistics]


@dataclass(frozen=True)
class CriterionOptions:
    """Options shared by the built-in criteria."""

    alpha: float = 0.5  # weight of the math domain in ``mixed``
    seed: int = 0  # for ``random``
    block_sizes: tuple[int, ...] = ()  # block lengths n for which ``angular`` scores blocks
    final_norm: bool = False  # last layer / top block against the post-final-norm state
    angular_tokens: str = "last"  # ``angular``: "last" token (Gromov et al.) or "all" selected
    step: int = 1  # iterative criteria: layers removed between re-calibrations
    candidates: int = 8  # output-aware criteria: layers tried per removal (0 = every layer)
    protected: tuple[int, ...] = ()  # layers a greedy criterion must never pick

    def __post_init__(self) -> None:
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha!r} is not allowed; it must be a number in [0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} is not allowed; it must be an integer")
        if not isinstance(self.final_norm, bool):
            raise ValueError(
                f"final_norm={self.final_norm!r} is not allowed; it must be true or false"
            )
        if self.angular_tokens not in ANGULAR_TOKENS:
            raise ValueError(
                f"angular_tokens={self.angular_tokens!r} is not allowed; choose one of: "
                f"{', '.join(ANGULAR_TOKENS)}"
            )
        for name, low in (("step", 1), ("candidates", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}={v!r} is not allowed; it must be an integer >= {low}")


@dataclass(frozen=True)
class Scores:
    """Per-layer scores, plus optional scores of blocks ``{n: [score of block starting at l]}``."""

    per_layer: tuple[float, ...]
    blocks: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    order: tuple[int, ...] = ()  # a greedy criterion's removal order (first removed first)


def order_scores(order: tuple[int, ...], budget: int, num_layers: int) -> Scores:
    """Scores that make ``topk`` pick the first ``budget`` layers of a greedy removal order:
    the i-th removed layer scores budget - i, every other layer 0. They depend on the order's
    prefix only, so a plan is the same whichever larger budget computed the order."""
    if budget > len(order):
        raise ValueError(f"a removal order of {len(order)} layers cannot serve budget {budget}")
    scores = [0.0] * num_layers
    for i, layer in enumerate(order[:budget]):
        scores[layer] = float(budget - i)
    return Scores(tuple(scores), order=tuple(order[:budget]))


#: ``measure(domain, removed, outputs=False)``: statistics of the model with the layers
#: ``removed`` taken out (indices of the full model), calibrated on ``domain``; ``outputs=True``
#: adds the answer-position KL divergence from the unpruned model
#: (:meth:`LayerStatistics.divergence`). Given to adaptive criteria.
Measure = Callable[..., LayerStatistics]


@dataclass(frozen=True)
class Criterion:
    """A named scoring rule. ``domains`` lists the calibration domains it reads ("*" = any).

    ``fn(stats, num_layers, options)`` scores from one calibration of the unpruned model. An
    ``adaptive`` criterion instead gets ``adaptive(measure, num_layers, budget, options)`` and
    may re-calibrate the model with layers removed, as often as it needs (the planner counts
    and caches every pass). A ``greedy`` adaptive criterion returns its removal order
    (``Scores.order``) and the plan for budget k removes its first k layers, so the planner
    runs it once for the largest budget asked and serves every smaller one from its prefix;
    it works with ``topk`` (or a strategy that ignores scores).
    """

    name: str
    fn: Callable[[Stats, int, CriterionOptions], Scores]
    domains: tuple[str, ...]
    formula: str
    description: str = ""
    default_strategy: str = "topk"
    needs_blocks: bool = False  # scores blocks of n layers: capture must measure n = budget
    adaptive: Callable[[Measure, int, int, CriterionOptions], Scores] | None = None
    cost: str = "one calibration pass per domain"
    greedy: bool = False

    def resolve_domains(self, available: Iterable[str]) -> tuple[str, ...]:
        """The concrete domains this criterion reads, given the calibrated (or configured) ones.

        "*" means every available domain. The one place that says a domain is missing.
        """
        available = tuple(available)
        if "*" in self.domains:
            if not available:
                raise ValueError(
                    f"criterion={self.name!r} needs calibration on at least one domain, but "
                    "calib_math and calib_nonmath are both none"
                )
            return available
        missing = [d for d in self.domains if d not in available]
        if missing:
            raise ValueError(
                f"criterion={self.name!r} needs calibration on {missing[0]}, but only "
                f"{sorted(available) or 'nothing'} was calibrated; set calib_{missing[0]} to a "
                "calibration set or lmms-eval task"
            )
        return self.domains

    def __call__(
        self, stats: Stats, num_layers: int, options: CriterionOptions | None = None
    ) -> Scores:
        options = options or CriterionOptions()
        self.resolve_domains(stats)
        for domain, s in stats.items():
            if s.num_layers != num_layers:
                raise ValueError(
                    f"{domain} statistics have {s.num_layers} layers, the model {num_layers}"
                )
        scores = self.fn(stats, num_layers, options)
        if len(scores.per_layer) != num_layers:
            raise ValueError(
                f"criterion {self.name!r} returned {len(scores.per_layer)} scores for {num_layers} layers"
            )
        return scores


def ranks(values: list[float] | tuple[float, ...]) -> list[float]:
    """Rank of each value, 0 = smallest; ties share their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def _domain(domain: str) -> Callable[[Stats, int, CriterionOptions], Scores]:
    def fn(stats: Stats, num_layers: int, options: CriterionOptions) -> Scores:
        return Scores(tuple(stats[domain].similarity(options.final_norm)))

    return fn


def mixed(stats: Stats, num_layers: int, options: CriterionOptions) -> Scores:
    a, fn = options.alpha, options.final_norm
    m, n = stats[MATH].similarity(fn), stats[NONMATH].similarity(fn)
    return Scores(tuple(a * x + (1 - a) * y for x, y in zip(m, n, strict=True)))


def mixed_rank(stats: Stats, num_layers: int, options: CriterionOptions) -> Scores:
    a, fn = options.alpha, options.final_norm
    m, n = ranks(stats[MATH].similarity(fn)), ranks(stats[NONMATH].similarity(fn))
    return Scores(tuple(a * x + (1 - a) * y for x, y in zip(m, n, strict=True)))


def shortgpt(stats: Stats, num_layers: int, options: CriterionOptions) -> Scores:
    # 1 - Block Influence on all calibration data pooled, domains ignored. ShortGPT's code
    # compares the last layer's input with the post-norm state: final_norm=true.
    return Scores(tuple(pool(stats.values()).similarity(options.final_norm)))


def angular(stats: Stats, num_layers: int, options: CriterionOptions) -> Scores:
    """Gromov et al. (PruneMe's code): 1 - arccos(cos(h_l, h_{l+n})) / pi on each sample's last
    token by default. Blocks start at layer 1 at the earliest, as PruneMe drops the embeddings
    from its hidden states: the block from layer 0 is scored -inf, never picked."""
    pooled = pool(stats.values())
    tok, fn = options.angular_tokens, options.final_norm

    def closeness(n: int) -> tuple[float, ...]:
        return tuple(1.0 - d for d in pooled.angular_distance(n, tok, fn))

    blocks = {n: (-math.inf, *closeness(n)[1:]) for n in options.block_sizes}
    have = pooled.angular_sum if tok == "all" else pooled.angular_last_sum
    if 1 in have:
        per_layer = closeness(1)
    else:  # arccos(cos)/pi of each layer's own input/output over the selected tokens
        per_layer = tuple(
            1.0 - math.acos(max(-1.0, min(1.0, s))) / math.pi for s in pooled.similarity(fn)
        )
    return Scores(per_layer, blocks)


def last(stats: Stats, num_layers: int, options: CriterionOptions) -> Scores:
    return Scores(tuple(float(i) for i in range(num_layers)))


def random(stats: Stats, num_layers: int, options: CriterionOptions) -> Scores:
    rng = _random.Random(options.seed)
    return Scores(tuple(rng.random() for _ in range(num_layers)))


BUILTIN_CRITERIA = (
    Criterion(
        "math", _domain(MATH), (MATH,), "s_l(math)", "layers that change math activations least"
    ),
    Criterion(
        "nonmath",
        _domain(NONMATH),
        (NONMATH,),
        "s_l(nonmath)",
        "layers that change non-math activations least",
    ),
    Criterion(
        "mixed",
        mixed,
        (MATH, NONMATH),
        "alpha * s_l(math) + (1 - alpha) * s_l(nonmath)",
        "weighted mean of both domains",
    ),
    Criterion(
        "mixed_rank",
        mixed_rank,
        (MATH, NONMATH),
        "alpha * rank_l(math) + (1 - alpha) * rank_l(nonmath)",
        "weighted mean of the two domain ranks",
    ),
    Criterion(
        "shortgpt",
        shortgpt,
        ("*",),
        "1 - BI_l = s_l(all data pooled)",
        "ShortGPT Block Influence, no domain split",
    ),
    Criterion(
        "angular",
        angular,
        ("*",),
        "1 - arccos(cos(h_l, h_{l+n})) / pi on the last token, all data pooled",
        "Gromov et al. / PruneMe: angular distance over a block of n, blocks from layer 1",
        "contiguous",
        True,
    ),
    Criterion("last", last, (), "l (layer index)", "remove the tail"),
    Criterion("random", random, (), "U(0, 1) seeded by seed", "seeded random order"),
)
