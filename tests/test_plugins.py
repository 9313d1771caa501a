import sys
import tomllib
from pathlib import Path

import pytest

from lmms_prune_plugin.core import plugins
from lmms_prune_plugin.core.criteria import CriterionOptions
from lmms_prune_plugin.core.plan import ModelIdentity
from lmms_prune_plugin.core.planner import PruneOptions, make_plan

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin"


@pytest.fixture
def example_plugin():
    sys.path.insert(0, str(EXAMPLE))
    import lmms_prune_depth

    plugins.pm.register(lmms_prune_depth, "depth")  # exactly what the entry point does
    yield lmms_prune_depth
    plugins.pm.unregister(name="depth")
    sys.path.remove(str(EXAMPLE))


def test_example_declares_the_entry_point():
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["lmms_prune"] == {"depth": "lmms_prune_depth"}


def test_third_party_criterion_is_usable_by_name(example_plugin):
    assert "middle_out" in plugins.get_criteria()
    ident = ModelIdentity("m", "X", "x", 7, "model.layers")
    plan = make_plan(ident, {}, PruneOptions(criterion="middle_out", budget=3))
    assert plan.removed == (2, 3, 4)
    assert plugins.get_criterion("middle_out")({}, 7, CriterionOptions()).per_layer[3] == 0


def test_builtins_register_through_the_same_hooks():
    names = [plugins.pm.get_name(p) for p in plugins.pm.get_plugins()]
    assert "lmms_prune_plugin.core.builtins" in names
    assert {"math", "nonmath", "mixed", "shortgpt", "angular", "last", "random"} <= set(
        plugins.get_criteria()
    )


def test_locator_hook_answers_for_unknown_architectures():
    import torch.nn as nn

    from lmms_prune_plugin.core.hookspecs import hookimpl
    from lmms_prune_plugin.surgery.layers import find_decoder_layers

    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    class Locator:
        @hookimpl
        def locate_decoder_layers(self, model):
            return "blocks" if isinstance(model, Weird) else None

    with pytest.raises(ValueError, match="could not be found"):
        find_decoder_layers(Weird())
    plugins.pm.register(Locator(), "weird")
    try:
        assert len(find_decoder_layers(Weird())) == 3
    finally:
        plugins.pm.unregister(name="weird")


def test_duplicate_names_are_an_error(example_plugin):
    class Again:
        register_criteria = staticmethod(example_plugin.register_criteria)

    plugins.pm.register(Again(), "again")
    try:
        with pytest.raises(ValueError, match="'middle_out' is registered twice"):
            plugins.get_criteria()
    finally:
        plugins.pm.unregister(name="again")
