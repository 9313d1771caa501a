"""An lmms-prune plugin: the ``middle_out`` criterion (no calibration, distance from the edges)."""

from lmms_prune_plugin.core.criteria import Criterion, Scores
from lmms_prune_plugin.core.hookspecs import hookimpl


def middle_out(stats, num_layers, options):
    centre = (num_layers - 1) / 2
    return Scores(tuple(-abs(i - centre) for i in range(num_layers)))


@hookimpl
def register_criteria(register):
    register(Criterion("middle_out", middle_out, (), "-|l - (L - 1) / 2|", "middle layers first"))
