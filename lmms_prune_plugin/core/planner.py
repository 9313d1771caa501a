"""The one place that plans: (model, calibration config, prune options) -> plans.

:class:`PruneOptions` say which layers should go and how; :func:`make_plan` turns statistics
into a plan without touching a model; :class:`Planner` validates every option against the
loaded model first, calibrates each needed domain once for all of them (or as often as an
adaptive criterion asks), and reads and fills the plan cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from loguru import logger

from lmms_prune_plugin.core.args import parse_float
from lmms_prune_plugin.core.cache import key
from lmms_prune_plugin.core.calibration import CalibrationConfig, Calibrator
from lmms_prune_plugin.core.criteria import CriterionOptions, Scores, order_scores
from lmms_prune_plugin.core.distributed import is_main
from lmms_prune_plugin.core.options import OptionRecord, option
from lmms_prune_plugin.core.plan import CalibrationIdentity, ModelIdentity, PrunePlan, content_hash
from lmms_prune_plugin.core.plugins import get_criterion, get_strategy
from lmms_prune_plugin.core.stats import LayerStatistics
from lmms_prune_plugin.core.strategies import (
    StrategyOptions,
    check_budget,
    eligible_layers,
    resolve_budget,
)
from lmms_prune_plugin.harnesses.base import CalibrationSource

BASELINE = "none"  # criterion and strategy of a budget-0 plan


def prune_option_names() -> tuple[str, ...]:
    """The names of every :class:`PruneOptions` field: model_args and CLI flags derive from them."""
    return PruneOptions.names()


def parse_budget(name: str, value: object) -> int | float:
    """A layer count (``4`` stays an int, as plans record it) or a fraction of the depth."""
    if isinstance(value, str):
        value = parse_float(name, value)
        return int(value) if value.is_integer() else value
    return value  # type: ignore[return-value]  # checked by check_budget


@dataclass(frozen=True)
class PruneOptions(OptionRecord):
    """Everything that decides which layers go, given the statistics. Validated on construction."""

    title = "prune options"
    criterion: str = option("math", "how layers are ranked (lmms-prune list)")
    budget: int | float = option(
        0, "layers to remove, or a fraction of the depth below 1", parse=parse_budget
    )
    strategy: str | None = option(
        None, "how ranked layers are picked (default: the criterion's own)", none=True
    )
    alpha: float = option(0.5, "mixed criteria: weight of math against non-math")
    seed: int = option(0, "random criterion and bootstrap seed")
    min_gap: int = option(2, "spaced: least distance between removed layers")
    protect_first: int = option(0, "never remove the first N layers")
    protect_last: int = option(0, "never remove the last N layers")
    final_norm: bool = option(
        False, "compare the last layer with the post-norm state (reference codes)"
    )
    angular_tokens: str = option(
        "last", "angular: the last token (Gromov et al.) or all selected tokens"
    )
    step: int = option(1, "iterative criteria: layers removed per re-calibration")
    candidates: int = option(8, "output-aware criteria: layers tried per removal (0: all)")

    def __post_init__(self) -> None:
        crit = get_criterion(self.criterion)
        get_strategy(self.strategy or crit.default_strategy)
        check_budget(self.budget)  # against the layer count once the model is known
        self.criterion_options(0)
        self.strategy_options()

    @property
    def strategy_name(self) -> str:
        return self.strategy or get_criterion(self.criterion).default_strategy

    def block_sizes(self, num_layers: int) -> tuple[int, ...]:
        """Angular block lengths to capture: the budget, and 1 for the per-layer scores."""
        k = resolve_budget(self.budget, num_layers)
        return tuple(sorted({1, k})) if get_criterion(self.criterion).needs_blocks and k > 0 else ()

    def criterion_options(self, num_layers: int) -> CriterionOptions:
        blocks = self.block_sizes(num_layers) if num_layers else ()
        protected = tuple(
            sorted(
                set(range(num_layers)) - set(eligible_layers(num_layers, self.strategy_options()))
            )
        )
        return CriterionOptions(
            alpha=self.alpha,
            seed=self.seed,
            block_sizes=blocks,
            final_norm=self.final_norm,
            angular_tokens=self.angular_tokens,
            step=self.step,
            candidates=self.candidates,
            protected=protected,
        )

    def strategy_options(self) -> StrategyOptions:
        return StrategyOptions(
            min_gap=self.min_gap, protect_first=self.protect_first, protect_last=self.protect_last
        )

    def cache_key(self) -> dict:
        return asdict(self) | {"strategy": self.strategy_name}


def check_options(options: PruneOptions, num_layers: int, sets: Mapping[str, str]) -> None:
    """Budget against the layer count, calibration domains, and whether the strategy can pick
    ``budget`` layers under its constraints (tried on neutral scores). Needs no model: the
    loader calls it with the checkpoint config's depth before loading, the planner again after."""
    k = resolve_budget(options.budget, num_layers)
    if k == 0:
        return
    crit = get_criterion(options.criterion)
    crit.resolve_domains(sets)
    strategy = get_strategy(options.strategy_name)
    if crit.greedy and strategy.uses_scores and strategy.name != "topk":
        raise ValueError(
            f"strategy={strategy.name!r} is not allowed with criterion={options.criterion!r}: a "
            "greedy criterion removes layers in its own order, so it takes strategy=topk (or one "
            "that ignores scores, such as uniform)"
        )
    strategy(Scores((0.0,) * num_layers), k, options.strategy_options())


def unpruned_plan(model: ModelIdentity) -> PrunePlan:
    """Budget 0: nothing removed, nothing calibrated."""
    return PrunePlan(model, BASELINE, {}, BASELINE, {}, 0, (), ())


def select(
    model: ModelIdentity,
    scores: Scores,
    options: PruneOptions,
    calibration: CalibrationIdentity | None = None,
    tokens: str = "all",
) -> PrunePlan:
    """Pick ``budget`` layers from ``scores`` with the options' strategy; the plan records why."""
    n = model.num_layers
    k = resolve_budget(options.budget, n)
    copts = options.criterion_options(n)
    removed = get_strategy(options.strategy_name)(scores, k, options.strategy_options())
    return PrunePlan(
        model=model,
        criterion=options.criterion,
        criterion_options={
            "alpha": copts.alpha,
            "seed": copts.seed,
            "block_sizes": list(copts.block_sizes),
            "final_norm": copts.final_norm,
            "angular_tokens": copts.angular_tokens,
            "step": copts.step,
            "candidates": copts.candidates,
            **({"order": list(scores.order)} if scores.order else {}),
            **({"block_scores": _encode(scores.blocks[k])} if k in scores.blocks else {}),
        },
        strategy=options.strategy_name,
        strategy_options=asdict(options.strategy_options()),
        budget=options.budget,
        scores=tuple(scores.per_layer),
        removed=removed,
        calibration=calibration or CalibrationIdentity(),
        token_selection=tokens,
    )


def _encode(values: Sequence[float]) -> list[float | None]:
    """Block scores as JSON: -inf (a block that may not be picked) as null."""
    return [None if v == -math.inf else v for v in values]


def recorded_scores(
    per_layer: Sequence[float], criterion_options: Mapping, budget: int | float, num_layers: int
) -> Scores:
    """The scores a plan (or a sweep row) records, as the strategy saw them: per-layer scores,
    the block scores of ``budget`` layers and a greedy criterion's removal order (its
    per-layer scores are those the order gives)."""
    k = resolve_budget(budget, num_layers)
    blocks = criterion_options.get("block_scores")
    by_size = {k: tuple(-math.inf if v is None else v for v in blocks)} if blocks else {}
    order = tuple(criterion_options.get("order", ()))
    if order:
        return Scores(order_scores(order, k, num_layers).per_layer, by_size, order)
    return Scores(tuple(per_layer), by_size)


def derivation_problem(plan: PrunePlan, options: PruneOptions) -> str | None:
    """What in ``plan`` does not follow from its own scores and ``options`` (a hand-edited or
    foreign plan), or None. Pure: the strategy runs again on the recorded scores."""
    n = plan.model.num_layers
    try:
        if resolve_budget(options.budget, n) == 0:
            want = unpruned_plan(plan.model)
        else:
            scores = recorded_scores(plan.scores, plan.criterion_options, options.budget, n)
            want = select(plan.model, scores, options, plan.calibration, plan.token_selection)
    except (ValueError, TypeError, IndexError, KeyError) as err:
        return f"its scores and options cannot be re-derived ({type(err).__name__}: {err})"
    fields = "criterion criterion_options strategy strategy_options budget scores removed"
    diffs = [
        f"{f}={_short(getattr(plan, f))} where its scores and options give {_short(getattr(want, f))}"
        for f in (*fields.split(), "package_version")
        if getattr(plan, f) != getattr(want, f)
    ]
    return "; ".join(diffs) or None


def _short(value: object, width: int = 120) -> str:
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= width else text[: width - 3] + "..."


def make_plan(
    model: ModelIdentity,
    stats: Mapping[str, LayerStatistics],
    options: PruneOptions,
    calibration: CalibrationIdentity | None = None,
    tokens: str = "all",
) -> PrunePlan:
    """Score the layers with the criterion and pick ``budget`` of them. Pure."""
    if resolve_budget(options.budget, model.num_layers) == 0:
        return unpruned_plan(model)
    n = model.num_layers
    scores = get_criterion(options.criterion)(stats, n, options.criterion_options(n))
    return select(model, scores, options, calibration, tokens)


class Planner:
    """Plans for one loaded model. The only user of :class:`Calibrator`.

    ``source`` is the harness whose inputs calibration measures; ``run_key`` identifies
    everything about the run that changes activations (checkpoint, wrapper and its arguments,
    dtype, processor); with the harness it keys the calibration and plan caches.
    """

    def __init__(
        self,
        source: CalibrationSource,
        model,
        identity: ModelIdentity,
        config: CalibrationConfig,
        run_key: str,
    ) -> None:
        self.identity, self.config = identity, config
        self.run_key = key(run=run_key, harness=source.harness)
        self.calibrator = Calibrator(source, model, config, run_key)
        self.cache = self.calibrator.cache

    @property
    def forwards(self) -> int:
        """Prefill forwards run for calibration so far."""
        return self.calibrator.forwards

    # -- checks, before any calibration -----------------------------------------------------
    def domains(self, options: PruneOptions) -> tuple[str, ...]:
        """The calibration domains ``options`` read; an error if one is not configured."""
        if resolve_budget(options.budget, self.identity.num_layers) == 0:
            return ()
        return get_criterion(options.criterion).resolve_domains(self.config.sets)

    def check(self, options: PruneOptions) -> None:
        """Everything about ``options`` that can be known before calibrating (see check_options)."""
        check_options(options, self.identity.num_layers, self.config.sets)

    # -- planning ---------------------------------------------------------------------------
    def plan_key(self, options: PruneOptions) -> str:
        from lmms_prune_plugin.core.cache import key

        return key(
            kind="plan",
            run=self.run_key,
            identity=self.identity,
            calibration=[self.calibrator.key(d) for d in self.domains(options)],
            options=options.cache_key(),
            tokens=self.config.tokens,  # the plan records it
        )

    def plan(self, options: PruneOptions) -> PrunePlan:
        return self.plans([options])[0]

    def plans(self, options: Sequence[PruneOptions]) -> list[PrunePlan]:
        """One plan per options, in order. Every option is checked before anything runs; one
        calibration pass per domain serves all one-shot criteria together."""
        for o in options:
            self.check(o)
        n = self.identity.num_layers
        out: list[PrunePlan | None] = [None] * len(options)
        todo = []
        for i, o in enumerate(options):
            if resolve_budget(o.budget, n) == 0:
                out[i] = unpruned_plan(self.identity)
            elif (cached := self._cached_plan(o)) is not None:
                out[i] = cached
            else:
                todo.append(i)
        oneshot = [options[i] for i in todo if not get_criterion(options[i].criterion).adaptive]
        domains = tuple(dict.fromkeys(d for o in oneshot for d in self.domains(o)))
        blocks = tuple(sorted({b for o in oneshot for b in o.block_sizes(n)}))
        stats = {d: self.calibrator.calibrate(d, blocks).stats for d in domains}
        orders = self._greedy_orders([options[i] for i in todo])
        for i in todo:
            o = options[i]
            plan = self._make(o, stats, orders)
            if self.cache is not None and is_main():
                self.cache.put("plan", self.plan_key(o), plan.to_dict())
            out[i] = plan
        return out  # type: ignore[return-value]

    def statistics(
        self, domains: Sequence[str] | None = None, block_sizes: tuple[int, ...] = ()
    ) -> dict[str, LayerStatistics]:
        """Each configured (or named) domain's statistics of the unpruned model."""
        names = tuple(domains) if domains is not None else tuple(self.config.sets)
        return {d: self.calibrator.calibrate(d, block_sizes).stats for d in names}

    def sample_statistics(
        self, domains: Sequence[str] | None = None, block_sizes: tuple[int, ...] = ()
    ) -> dict[str, tuple[LayerStatistics, ...]]:
        """Each configured (or named) domain's per-sample statistics of the unpruned model
        (for bootstraps over the calibration samples)."""
        names = tuple(domains) if domains is not None else tuple(self.config.sets)
        return {
            d: self.calibrator.calibrate(d, block_sizes, per_sample=True).per_sample for d in names
        }

    def calibration_identity(self, domains: Sequence[str]) -> CalibrationIdentity:
        """What a plan records about its data: set names, sample counts, content hash."""
        done = {d: self.calibrator.calibrate(d) for d in domains}
        return CalibrationIdentity(
            harness=self.calibrator.source.harness,
            sets={d: c.task for d, c in done.items()},
            samples={d: c.samples for d, c in done.items()},
            content_hash=content_hash([[d, c.fingerprint] for d, c in sorted(done.items())]),
        )

    @staticmethod
    def _greedy_key(o: PruneOptions) -> tuple:
        """Options that share one greedy run: all but the budget (and the strategy, which a
        greedy criterion's plan does not depend on)."""
        return (
            o.criterion,
            *(v for k, v in sorted(o.cache_key().items()) if k not in ("budget", "strategy")),
        )

    def _greedy_orders(self, options: Sequence[PruneOptions]) -> dict[tuple, tuple[int, ...]]:
        """One run per greedy criterion and options, for the largest budget asked: the plan for
        a smaller budget is a prefix of its removal order."""
        n = self.identity.num_layers
        largest: dict[tuple, PruneOptions] = {}
        for o in options:
            if get_criterion(o.criterion).greedy:
                key = self._greedy_key(o)
                if key not in largest or resolve_budget(o.budget, n) > resolve_budget(
                    largest[key].budget, n
                ):
                    largest[key] = o
        orders = {}
        for key, o in largest.items():
            scores = self._adaptive_scores(o)
            if len(scores.order) != resolve_budget(o.budget, n):
                raise ValueError(
                    f"criterion {o.criterion!r} returned a removal order of {len(scores.order)} layers "
                    f"for budget {o.budget!r}"
                )
            orders[key] = scores.order
        return orders

    def _adaptive_scores(self, o: PruneOptions) -> Scores:
        n = self.identity.num_layers
        crit = get_criterion(o.criterion)
        domains = self.domains(o)

        def measure(
            domain: str, removed: tuple[int, ...] = (), outputs: bool = False
        ) -> LayerStatistics:
            if domain not in domains:
                raise ValueError(
                    f"criterion={o.criterion!r} measured domain {domain!r}, not among its "
                    f"declared domains {domains}"
                )
            return self.calibrator.calibrate(domain, (), tuple(removed), outputs=outputs).stats

        k = resolve_budget(o.budget, n)
        scores = crit.adaptive(measure, n, k, o.criterion_options(n))
        if len(scores.per_layer) != n:
            raise ValueError(
                f"criterion {o.criterion!r} returned {len(scores.per_layer)} scores for {n} layers"
            )
        return scores

    def _make(
        self,
        o: PruneOptions,
        stats: Mapping[str, LayerStatistics],
        orders: Mapping[tuple, tuple[int, ...]] | None = None,
    ) -> PrunePlan:
        n = self.identity.num_layers
        crit = get_criterion(o.criterion)
        domains = self.domains(o)
        if crit.adaptive is None:
            scores = crit({d: stats[d] for d in domains}, n, o.criterion_options(n))
        elif crit.greedy and orders and self._greedy_key(o) in orders:
            scores = order_scores(orders[self._greedy_key(o)], resolve_budget(o.budget, n), n)
        else:
            scores = self._adaptive_scores(o)
        return select(
            self.identity, scores, o, self.calibration_identity(domains), self.config.tokens
        )

    def _cached_plan(self, o: PruneOptions) -> PrunePlan | None:
        if self.cache is None:
            return None
        k = self.plan_key(o)
        data = self.cache.get("plan", k)
        try:
            plan = None if data is None else PrunePlan.from_dict(data)
        except ValueError as err:
            logger.warning(
                f"lmms-prune: cache entry {self.cache.path('plan', k)} is not a valid plan "
                f"({err}); recomputing it"
            )
            return None
        if plan is None:
            return None
        problem = plan.problem_for(self.identity, o) or derivation_problem(plan, o)
        if not problem and plan.token_selection != self.config.tokens:
            problem = (
                f"token_selection={plan.token_selection!r}, this run's is {self.config.tokens!r}"
            )
        if problem:
            logger.warning(
                f"lmms-prune: cache entry {self.cache.path('plan', k)} does not fit ({problem}); recomputing it"
            )
            return None
        logger.info(f"lmms-prune: using the cached plan {self.cache.path('plan', k)}")
        return plan
