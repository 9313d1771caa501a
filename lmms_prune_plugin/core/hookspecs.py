"""Extension points. Third-party packages implement these through the ``lmms_prune`` entry point."""

from pluggy import HookimplMarker, HookspecMarker

PROJECT = "lmms_prune"
hookspec = HookspecMarker(PROJECT)
hookimpl = HookimplMarker(PROJECT)


@hookspec
def register_criteria(register):
    """Register layer-scoring criteria: ``register(Criterion(...))``."""


@hookspec
def register_strategies(register):
    """Register layer-selection strategies: ``register(Strategy(...))``."""


@hookspec
def register_calibration_sets(register):
    """Register calibration sets: ``register(CalibrationSet(...))``."""


@hookspec(firstresult=True)
def locate_decoder_layers(model):
    """Return the dotted path of the text-decoder ``ModuleList`` of ``model``, or None."""


@hookspec
def register_layer_rules(register):
    """Register how layer structure is recorded in configs and modules: ``register(LayerRule(...))``."""
