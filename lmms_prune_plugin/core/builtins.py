"""The built-in criteria, strategies and calibration sets, registered like any plugin."""

from lmms_prune_plugin.core.hookspecs import hookimpl


@hookimpl
def register_criteria(register):
    from lmms_prune_plugin.core.adaptive import greedy_criteria
    from lmms_prune_plugin.core.criteria import BUILTIN_CRITERIA

    for criterion in (*BUILTIN_CRITERIA, *greedy_criteria()):
        register(criterion)


@hookimpl
def register_strategies(register):
    from lmms_prune_plugin.core.strategies import BUILTIN_STRATEGIES

    for strategy in BUILTIN_STRATEGIES:
        register(strategy)


@hookimpl
def register_calibration_sets(register):
    from lmms_prune_plugin.core.calibration import BUILTIN_CALIBRATION_SETS

    for calibration_set in BUILTIN_CALIBRATION_SETS:
        register(calibration_set)


@hookimpl(trylast=True)  # plugins that know an architecture better answer first
def locate_decoder_layers(model):
    from lmms_prune_plugin.surgery.layers import builtin_layers_path

    return builtin_layers_path(model)


@hookimpl
def register_layer_rules(register):
    from lmms_prune_plugin.surgery.structure import BUILTIN_LAYER_RULES

    for rule in BUILTIN_LAYER_RULES:
        register(rule)
