"""Part 4: how many calibration forwards a sweep of criteria x budgets costs.

A sweep loads one base wrapper, builds one ``Planner`` and asks it once for every cell's plan:
it calibrates the union of the domains the cells read (with every angular block size the
budgets need) once, then makes each cell's plan from those statistics. The forwards are counted twice: by the
planner and by a hook on the model itself. For contrast the same cells are also planned one
by one, each asking the planner for just its own plan.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import log, progress, timed
from .tiny_vlm import ARCH, SETS, planner


class ForwardCounter:
    """Counts prefill forwards of the text decoder (a hook on its owner module)."""

    def __init__(self, model) -> None:
        from .package import find_decoder_layers

        self.count = 0
        owner = find_decoder_layers(model).owner
        self._handle = owner.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = (
            cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        )
        self.count += int(past) == 0

    def close(self) -> None:
        self._handle.remove()


def _needs(criterion: str, sets) -> tuple[str, ...]:
    from .package import get_criterion

    return get_criterion(criterion).resolve_domains(sets)


def run(
    criteria: Sequence[str],
    budgets: Sequence[int],
    num_layers: int,
    calib_limit: int,
    per_cell: bool = True,
) -> dict[str, Any]:
    import lmms_eval.models

    from .package import PruneOptions, get_criterion, resolve_budget, save_tiny_vlm, wrapper_kwargs

    sets = SETS
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_tiny_vlm(ARCH, Path(tmp) / "ckpt", num_layers=num_layers)
        wrapper = lmms_eval.models.get_model(ARCH)(pretrained=str(ckpt), **wrapper_kwargs(ARCH))
        model = wrapper.model
        cells = [(c, b) for c in criteria for b in budgets]
        options = {cell: PruneOptions(criterion=cell[0], budget=cell[1]) for cell in cells}

        def fresh() -> Any:
            return planner(wrapper, ckpt, calib_limit)

        # The sweep: one request for the union of domains and block sizes, then plans only.
        cal, counter = fresh(), ForwardCounter(model)
        n = cal.identity.num_layers
        log(
            f"[sweep] {len(cells)} cells ({len(criteria)} criteria x {len(budgets)} budgets) on a {n}-layer model"
        )
        domains = tuple(dict.fromkeys(d for c, _ in cells for d in _needs(c, sets)))
        blocks = tuple(
            sorted({resolve_budget(b, n) for c, b in cells if get_criterion(c).needs_blocks})
        )
        # The planner's own sweep path: every cell's options at once.
        calib_s, planned = timed(lambda: cal.plans([options[cell] for cell in cells]))
        plans = dict(zip(cells, planned, strict=True))
        counter.close()
        samples = dict(cal.calibration_identity(domains).samples)
        sweep = {
            "domains": list(domains),
            "block_sizes": list(blocks),
            "calibrator_forwards": cal.forwards,
            "hooked_forwards": counter.count,
            "calibration_s": calib_s,
            "plans": len(plans),
            "distinct_removals": len({p.removed for p in plans.values()}),
        }

        # Contrast: each cell asks for exactly its own domains and block size, in sweep order.
        one_by_one = None
        if per_cell:
            cal2, counter2 = fresh(), ForwardCounter(model)
            bar = progress(len(cells), "cells one by one")
            for cell in cells:
                cal2.plan(options[cell])
                bar.update(1)
            bar.close()
            counter2.close()
            one_by_one = {"calibrator_forwards": cal2.forwards, "hooked_forwards": counter2.count}

    # Without sharing, every cell would calibrate each domain it reads.
    naive = sum(samples.get(d, 0) for c, _ in cells for d in _needs(c, sets))
    expected = sum(samples[d] for d in domains)
    ok = sweep["calibrator_forwards"] == expected == sweep["hooked_forwards"]
    return {
        "model": {"arch": ARCH, "num_layers": n},
        "criteria": list(criteria),
        "budgets": list(budgets),
        "cells": len(cells),
        "samples_per_domain": samples,
        "sweep": sweep,
        "one_by_one": one_by_one,
        "naive_forwards": naive,
        "passes_per_domain": sweep["calibrator_forwards"] / expected if expected else 0.0,
        "target": {"forwards": expected, "met": ok},
    }
