"""From statistics to a plan: validate options, score, select. No model is touched here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from .capture import TOKEN_SELECTIONS
from .criteria import CriterionOptions
from .plan import CalibrationIdentity, ModelIdentity, PrunePlan
from .plugins import get_criterion, get_strategy
from .stats import LayerStatistics
from .strategies import StrategyOptions, resolve_budget


@dataclass(frozen=True)
class PruneOptions:
    """Everything that decides which layers go. Validated on construction."""

    criterion: str = "math"
    budget: int | float = 0
    strategy: str | None = None  # None: the criterion's default (topk; contiguous for angular)
    alpha: float = 0.5
    seed: int = 0
    min_gap: int = 2
    protect_first: int = 0
    protect_last: int = 0
    tokens: str = "all"

    def __post_init__(self) -> None:
        crit = get_criterion(self.criterion)
        get_strategy(self.strategy or crit.default_strategy)
        resolve_budget(self.budget, 10**9)  # type and sign; the layer count is checked later
        if self.tokens not in TOKEN_SELECTIONS:
            raise ValueError(
                f"tokens={self.tokens!r} is not allowed; choose one of: {', '.join(TOKEN_SELECTIONS)}"
            )
        self.criterion_options(0)
        self.strategy_options()

    @property
    def strategy_name(self) -> str:
        return self.strategy or get_criterion(self.criterion).default_strategy

    @property
    def domains(self) -> tuple[str, ...]:
        """Calibration domains the criterion reads ("*" = any that was calibrated)."""
        return get_criterion(self.criterion).domains

    def block_sizes(self, num_layers: int) -> tuple[int, ...]:
        k = resolve_budget(self.budget, num_layers)
        return (k,) if get_criterion(self.criterion).needs_blocks and k > 0 else ()

    def criterion_options(self, num_layers: int) -> CriterionOptions:
        blocks = self.block_sizes(num_layers) if num_layers else ()
        return CriterionOptions(alpha=self.alpha, seed=self.seed, block_sizes=blocks)

    def strategy_options(self) -> StrategyOptions:
        return StrategyOptions(
            min_gap=self.min_gap, protect_first=self.protect_first, protect_last=self.protect_last
        )

    def cache_key(self) -> dict:
        return asdict(self) | {"strategy": self.strategy_name}


def make_plan(
    model: ModelIdentity,
    stats: Mapping[str, LayerStatistics],
    options: PruneOptions,
    calibration: CalibrationIdentity | None = None,
) -> PrunePlan:
    """Score the layers with the criterion and pick ``budget`` of them with the strategy."""
    n = model.num_layers
    k = resolve_budget(options.budget, n)
    crit = get_criterion(options.criterion)
    copts = options.criterion_options(n)
    scores = crit(stats, n, copts)
    removed = get_strategy(options.strategy_name)(scores, k, options.strategy_options())
    return PrunePlan(
        model=model,
        criterion=crit.name,
        criterion_options={
            "alpha": copts.alpha,
            "seed": copts.seed,
            "block_sizes": list(copts.block_sizes),
        },
        strategy=options.strategy_name,
        strategy_options=asdict(options.strategy_options()),
        budget=options.budget,
        scores=tuple(scores.per_layer),
        removed=removed,
        calibration=calibration or CalibrationIdentity(),
        token_selection=options.tokens,
    )
