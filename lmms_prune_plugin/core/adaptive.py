"""Greedy criteria that re-measure the model as they remove layers. Pure given ``measure``.

Both return a removal order (first removed first); the plan for budget k removes its first k
layers, so one run for the largest budget serves every smaller one.

- Iterative similarity: score the remaining layers by similarity on the shortened model,
  remove the best ``step`` of them, re-calibrate, repeat. ceil(budget / step) passes per domain.
- Output-aware (functional): for each candidate layer, the KL divergence of the next-token
  distribution at the answer positions between the unpruned model and the current model with
  that layer also removed, averaged over the calibration samples; remove the least damaging
  one, repeat (as SLEB and BlockPruner score blocks by the damage their removal does). The
  candidates are the ``candidates`` most similar remaining layers (0: all of them).
  1 + sum over removals of the candidates tried passes per domain.

A mixed variant weights the domains' scores by ``alpha`` (math) and ``1 - alpha`` (non-math);
a domain of weight 0 is not measured. Ties go to the deeper layer, as in the strategies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lmms_prune_plugin.core.criteria import (
    MATH,
    NONMATH,
    Criterion,
    CriterionOptions,
    Measure,
    Scores,
    Stats,
    order_scores,
)


def remaining_layers(num_layers: int, removed: list[int] | tuple[int, ...]) -> list[int]:
    """Full-model indices of the layers still present, in order (= the shortened model's)."""
    gone = set(removed)
    return [layer for layer in range(num_layers) if layer not in gone]


def similarity_scores(
    measure: Measure,
    weights: Mapping[str, float],
    num_layers: int,
    removed: list[int],
    options: CriterionOptions,
) -> dict[int, float]:
    """Weighted similarity of every remaining layer of the model without ``removed``."""
    left = remaining_layers(num_layers, removed)
    scores = dict.fromkeys(left, 0.0)
    for domain, w in weights.items():
        sims = measure(domain, tuple(removed)).similarity(options.final_norm)
        if len(sims) != len(left):
            raise ValueError(f"{domain} statistics have {len(sims)} layers, expected {len(left)}")
        for layer, s in zip(left, sims, strict=True):
            scores[layer] += w * s
    return scores


def _best_first(scores: Mapping[int, float], sign: float = 1.0) -> list[int]:
    return sorted(scores, key=lambda layer: (-sign * scores[layer], -layer))


def _measured_weights(
    weights: Mapping[str, float], num_layers: int, budget: int, options: CriterionOptions
) -> dict[str, float]:
    """The domains worth measuring (weight > 0), once the budget fits the free layers."""
    free = len(remaining_layers(num_layers, options.protected))
    if budget > free:
        raise ValueError(
            f"budget={budget} asks for {budget} layers, but only {free} of {num_layers} may be removed"
        )
    return {d: w for d, w in weights.items() if w}


def iterative_order(
    measure: Measure,
    weights: Mapping[str, float],
    num_layers: int,
    budget: int,
    options: CriterionOptions,
) -> tuple[int, ...]:
    """Remove the ``step`` most similar layers, re-calibrate the shortened model, repeat."""
    weights = _measured_weights(weights, num_layers, budget, options)
    removed: list[int] = []
    while len(removed) < budget:
        scores = similarity_scores(measure, weights, num_layers, removed, options)
        for layer in options.protected:
            scores.pop(layer, None)
        removed += _best_first(scores)[: min(options.step, budget - len(removed))]
    return tuple(removed)


def functional_order(
    measure: Measure,
    weights: Mapping[str, float],
    num_layers: int,
    budget: int,
    options: CriterionOptions,
) -> tuple[int, ...]:
    """Greedily remove the layer whose removal changes the answer distributions least."""
    weights = _measured_weights(weights, num_layers, budget, options)
    for domain in weights:  # the reference distributions of the unpruned model
        measure(domain, (), outputs=True)
    removed: list[int] = []
    while len(removed) < budget:
        sims = similarity_scores(measure, weights, num_layers, removed, options)
        for layer in options.protected:
            sims.pop(layer, None)
        candidates = _best_first(sims)
        if options.candidates:
            candidates = candidates[: options.candidates]
        damage = {
            c: sum(
                w * measure(d, tuple(removed + [c]), outputs=True).divergence()
                for d, w in weights.items()
            )
            for c in candidates
        }
        removed.append(_best_first(damage, sign=-1.0)[0])
    return tuple(removed)


# -- the greedy criteria, registered with the built-ins ----------------------------------
def _needs_planner(stats: Stats, num_layers: int, options: CriterionOptions) -> Scores:
    raise ValueError(
        "this criterion re-calibrates the model as it removes layers; plan it through the "
        "planner (pruned_vlm, lmms-prune), not from fixed statistics"
    )


def _weights(domains: tuple[str, ...]) -> Callable[[CriterionOptions], dict[str, float]]:
    if len(domains) == 1:
        return lambda o: {domains[0]: 1.0}
    return lambda o: {MATH: o.alpha, NONMATH: 1.0 - o.alpha}


def _greedy(kind: str, domains: tuple[str, ...]):
    weights = _weights(domains)

    def adaptive(
        measure: Measure, num_layers: int, budget: int, options: CriterionOptions
    ) -> Scores:
        run = iterative_order if kind == "iter" else functional_order
        order = run(measure, weights(options), num_layers, budget, options)
        return order_scores(order, budget, num_layers)

    return adaptive


def greedy_criteria() -> tuple[Criterion, ...]:
    out = []
    for suffix, domains, what in (
        ("math", (MATH,), "s_l(math)"),
        ("nonmath", (NONMATH,), "s_l(nonmath)"),
        ("mixed", (MATH, NONMATH), "alpha * s_l(math) + (1 - alpha) * s_l(nonmath)"),
    ):
        dname = suffix if suffix != "mixed" else "both domains"
        kl = what.replace("s_l", "KL_l")
        out += [
            Criterion(
                f"iter_{suffix}",
                _needs_planner,
                domains,
                f"{what} on the model without the layers removed so far; remove the top `step`, "
                "re-calibrate, repeat",
                f"iterative similarity ({dname})",
                greedy=True,
                adaptive=_greedy("iter", domains),
                cost="ceil(budget / step) passes per domain",
            ),
            Criterion(
                f"func_{suffix}",
                _needs_planner,
                domains,
                f"-{kl}: KL(unpruned || without removed + l) of the next-token distribution at the "
                "answer positions; remove the least damaging of the `candidates` most similar, repeat",
                f"output-aware greedy ({dname})",
                greedy=True,
                adaptive=_greedy("func", domains),
                cost="1 + budget x candidates passes per domain (candidates=0: all remaining layers)",
            ),
        ]
    return tuple(out)
