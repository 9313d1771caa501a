"""The statistics of every reported ratio: exact intervals and three-way verdicts.

Pure functions on lists of numbers (no timing, no torch), so they can be tested on synthetic
data with known answers.

A ratio compares two variants that ran in the same interleaved rounds. Each round gives one
ratio (``num[i] / den[i]``); both timings of a round were taken seconds apart, so slow drift of
the machine (a neighbour's job, frequency changes) cancels in the ratio. The estimate is the
median of the per-round ratios, robust to a round hit by a burst of stolen time. Its interval is
the distribution-free one of a median: the pair of order statistics whose binomial coverage is
at least ``level``, whatever the distribution of the rounds. Below six rounds no such pair
exists at 95% (even the smallest and largest value cover only 1 - 2 / 2**n), so the interval is
NaN and every verdict on it inconclusive; a percentile bootstrap would print [min, max] there
and call it 95% when it covers 75% (3 rounds) to 94% (5 rounds).

Rounds may come in *groups* (the same variants on separately allocated copies of the weights,
one after the other). Rounds of one group share where the weights sit and the state the host is
in, so they are not independent draws of what another allocation would give. Then the unit is
the group: the estimate is the geometric mean of the groups' medians and the interval is
Student's t on their logarithms, with one degree of freedom less than there are groups. Its
width follows how far the groups lie apart, not how many rounds each holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

LEVEL = 0.95

MET, MISSED, INCONCLUSIVE = "met", "missed", "inconclusive"
NAN = (math.nan, math.nan)


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-round ratios ``num[i] / den[i]`` (the two lists come from the same rounds)."""
    if len(num) != len(den):
        raise ValueError(f"unpaired samples: {len(num)} vs. {len(den)}")
    return [a / b for a, b in zip(num, den)]


def median_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Distribution-free interval of the median: the ``j``-th smallest and ``j``-th largest
    values for the largest ``j`` whose coverage ``1 - 2 P(Binomial(n, 1/2) < j)`` is at least
    ``level``; NaN when even ``j = 1`` covers less (fewer than 6 values at 95%)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = x.size
    j = 0
    while j < n // 2 and 1 - 2 * sps.binom.cdf(j, n, 0.5) >= level:
        j += 1  # coverage of the (j+1)-th pair is still enough
    if j == 0:
        return NAN
    return float(x[j - 1]), float(x[n - j])


def group_interval(
    values: Sequence[float], groups: Sequence[int], level: float = LEVEL
) -> tuple[float, float, float]:
    """Geometric mean of the groups' medians and Student's t interval of it (on logarithms,
    ``groups - 1`` degrees of freedom): ``(value, lo, hi)``."""
    x = np.asarray(values, dtype=float)
    labels = np.asarray(groups)
    if labels.shape != x.shape:
        raise ValueError(f"{labels.size} group labels for {x.size} values")
    logs = np.log([np.median(x[labels == g]) for g in np.unique(labels)])
    if logs.size < 2:
        raise ValueError(f"a group interval needs at least 2 groups, got {logs.size}")
    centre = float(logs.mean())
    half = float(
        sps.t.ppf(0.5 + level / 2, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size)
    )
    return math.exp(centre), math.exp(centre - half), math.exp(centre + half)


def estimate(
    values: Sequence[float], groups: Sequence[int] | None = None, level: float = LEVEL
) -> dict[str, Any]:
    """``{value, lo, hi, n}`` of per-round values (and ``groups``, their number, when the
    rounds came in more than one group; see the module's docstring)."""
    if groups is not None and len(groups) != len(values):
        raise ValueError(f"{len(groups)} group labels for {len(values)} values")
    if not len(values):
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    count = len(set(groups)) if groups is not None else 1
    if count > 1:
        value, lo, hi = group_interval(values, groups, level)
        return {"value": value, "lo": lo, "hi": hi, "n": len(values), "groups": count}
    lo, hi = median_interval(values, level)
    return {"value": float(np.median(values)), "lo": lo, "hi": hi, "n": len(values)}


def ratio_estimate(
    num: Sequence[float], den: Sequence[float], groups: Sequence[int] | None = None
) -> dict[str, Any]:
    """The estimate of the paired per-round ratios ``num / den``."""
    return estimate(paired_ratios(num, den), groups)


def scale(est: dict[str, Any], factor: float) -> dict[str, Any]:
    """The same estimate multiplied by a constant (e.g. divided by an ideal speed-up)."""
    return est | {
        "value": est["value"] * factor,
        "lo": est["lo"] * factor,
        "hi": est["hi"] * factor,
    }


def finite(est: dict[str, Any]) -> bool:
    """Whether the estimate has a value and an interval."""
    return all(math.isfinite(est[k]) for k in ("value", "lo", "hi"))


def relative_half_width(est: dict[str, Any]) -> float:
    """Half the interval's width over the estimate: 0.02 means about +-2%."""
    if not est["value"] or not finite(est):
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


def agree(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """Whether two runs' estimates of one ratio are consistent: their distance (in logarithms)
    is at most the two half-widths that face each other, added in quadrature. That is a test of
    "no difference" at about the intervals' level; merely overlapping intervals would let a pair
    of runs 1.4 times as far apart pass, and a noisy run agree with anything. ``None`` when
    either has no interval."""
    if not (finite(a) and finite(b)):
        return None
    (low, high) = (a, b) if a["value"] <= b["value"] else (b, a)
    up = math.log(low["hi"]) - math.log(low["value"])
    down = math.log(high["value"]) - math.log(high["lo"])
    return math.log(high["value"]) - math.log(low["value"]) <= math.hypot(up, down)


def precise_enough(estimates: Sequence[dict[str, Any]], rel_half_width: float) -> bool:
    """The adaptive stopping rule: every interval narrower than +-``rel_half_width``."""
    return all(relative_half_width(e) <= rel_half_width for e in estimates)
