"""The statistics of every reported ratio: paired bootstrap intervals and three-way verdicts.

Pure functions on lists of numbers (no timing, no torch), so they can be tested on synthetic
data with known answers.

A ratio compares two variants that ran in the same interleaved rounds. Each round gives one
ratio (``num[i] / den[i]``); both timings of a round were taken seconds apart, so slow drift of
the machine (a neighbour's job, frequency changes) cancels in the ratio. The estimate is the
median of the per-round ratios, robust to a round hit by a burst of stolen time, and its
interval is a percentile bootstrap over rounds: resample the rounds with replacement, take the
median, and keep the central ``level`` share of those medians. Resampling is seeded, so the same
timings always give the same interval.

Rounds may come in *groups* (the same variants on separately allocated copies of the weights,
one after the other): then each resample first draws groups with replacement and then rounds
within each drawn group (a two-stage bootstrap), so the interval also covers what differs from
one group to the next, not only the noise between rounds of one group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0

MET, MISSED, INCONCLUSIVE = "met", "missed", "inconclusive"


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-round ratios ``num[i] / den[i]`` (the two lists come from the same rounds)."""
    if len(num) != len(den):
        raise ValueError(f"unpaired samples: {len(num)} vs. {len(den)}")
    return [a / b for a, b in zip(num, den)]


def bootstrap_interval(
    values: Sequence[float],
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
    groups: Sequence[int] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values``; two-stage when ``groups``
    (one label per value) has more than one group."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    labels = np.asarray(groups if groups is not None else np.zeros(x.size, dtype=int))
    if labels.shape != x.shape:
        raise ValueError(f"{labels.size} group labels for {x.size} values")
    clusters = [x[labels == g] for g in np.unique(labels)]
    if len(clusters) == 1:
        medians = np.median(x[rng.integers(0, x.size, size=(resamples, x.size))], axis=1)
    else:
        medians = np.empty(resamples)
        for b in range(resamples):
            drawn = rng.integers(0, len(clusters), size=len(clusters))
            pooled = [
                clusters[c][rng.integers(0, clusters[c].size, clusters[c].size)] for c in drawn
            ]
            medians[b] = np.median(np.concatenate(pooled))
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(lo), float(hi)


def estimate(values: Sequence[float], **bootstrap: Any) -> dict[str, Any]:
    """Median and bootstrap interval of per-round values: ``{value, lo, hi, n}`` (and
    ``groups``, their number, when the rounds came in groups)."""
    lo, hi = bootstrap_interval(values, **bootstrap)
    out = {
        "value": float(np.median(values)) if len(values) else math.nan,
        "lo": lo,
        "hi": hi,
        "n": len(values),
    }
    if bootstrap.get("groups") is not None:
        out["groups"] = len(set(bootstrap["groups"]))
    return out


def ratio_estimate(num: Sequence[float], den: Sequence[float], **bootstrap: Any) -> dict[str, Any]:
    """Median of the paired per-round ratios ``num / den`` with its bootstrap interval."""
    return estimate(paired_ratios(num, den), **bootstrap)


def scale(est: dict[str, Any], factor: float) -> dict[str, Any]:
    """The same estimate multiplied by a constant (e.g. divided by an ideal speed-up)."""
    return est | {
        "value": est["value"] * factor,
        "lo": est["lo"] * factor,
        "hi": est["hi"] * factor,
    }


def invert(est: dict[str, Any]) -> dict[str, Any]:
    """The estimate of ``1 / ratio``: the median and the interval's ends map through 1/x."""
    return est | {"value": 1 / est["value"], "lo": 1 / est["hi"], "hi": 1 / est["lo"]}


def relative_half_width(est: dict[str, Any]) -> float:
    """Half the interval's width over the estimate: 0.02 means about +-2%."""
    if not est["value"] or not all(math.isfinite(est[k]) for k in ("value", "lo", "hi")):
        return math.inf
    return (est["hi"] - est["lo"]) / 2 / abs(est["value"])


def verdict(est: dict[str, Any], limit: float, at_most: bool) -> str:
    """``met`` when the whole interval is on the right side of ``limit``, ``missed`` when it is
    entirely on the wrong side, otherwise ``inconclusive``.

    ``at_most``: the target is ``ratio <= limit`` (else ``ratio >= limit``).
    """
    lo, hi = est["lo"], est["hi"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    good, bad = (hi <= limit, lo > limit) if at_most else (lo >= limit, hi < limit)
    return MET if good else MISSED if bad else INCONCLUSIVE


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two estimates' intervals share at least one value."""
    return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]


def precise_enough(estimates: Sequence[dict[str, Any]], rel_half_width: float) -> bool:
    """The adaptive stopping rule: every interval narrower than +-``rel_half_width``."""
    return all(relative_half_width(e) <= rel_half_width for e in estimates)
