"""The removal check's verdict is remembered: in the process and as a ``removal-check`` entry of
the cache folder, keyed by class, config, removed layers and versions; a refusal never is."""

import json

import pytest
import torch

from lmms_prune_plugin.core.cache import Cache
from lmms_prune_plugin.surgery import layers
from lmms_prune_plugin.surgery.layers import (
    REMOVAL_CHECK_KIND,
    forget_removal_checks,
    plan_removal,
    removal_checks_in,
    remove_decoder_layers_,
)
from lmms_prune_plugin.surgery.structure import RefusedRemoval
from lmms_prune_plugin.testing.archs import arch_config, auto_class, build_arch_model, text_batch


@pytest.fixture
def checks(monkeypatch):
    """Counts the reference builds (the check's expensive half); the process memo starts empty."""
    forget_removal_checks()
    calls = {"reference": 0, "verify": 0}
    reference, verify = layers._reference, layers._verify

    def counted_reference(*args, **kwargs):
        calls["reference"] += 1
        return reference(*args, **kwargs)

    def counted_verify(*args, **kwargs):
        calls["verify"] += 1
        return verify(*args, **kwargs)

    monkeypatch.setattr(layers, "_reference", counted_reference)
    monkeypatch.setattr(layers, "_verify", counted_verify)
    yield calls
    forget_removal_checks()


def entries() -> list:
    return sorted(Cache().dir.glob(f"{REMOVAL_CHECK_KIND}-*.json"))


def edits_of(removal) -> list:
    out = []
    for e in removal.edits:
        new = tuple(e.new.shape) if isinstance(e.new, torch.Tensor) else e.new
        new = [type(m).__name__ for m in new] if isinstance(new, torch.nn.ModuleList) else new
        out.append((e.what, e.attr, new, e.target is not None))
    return out


def test_a_second_application_uses_the_remembered_verdict(checks):
    first = build_arch_model("qwen2_vl", num_layers=5)
    remove_decoder_layers_(first, [1, 3])
    assert checks == {"reference": 1, "verify": 1} and len(entries()) == 1
    entry = json.loads(entries()[0].read_text())
    assert entry["verdict"] == "exact" and entry["_kind"] == REMOVAL_CHECK_KIND
    # Another load of the same checkpoint in this process: the memo answers.
    second = build_arch_model("qwen2_vl", num_layers=5)
    remove_decoder_layers_(second, [1, 3])
    # A new process: the entry on disk answers.
    forget_removal_checks()
    third = build_arch_model("qwen2_vl", num_layers=5)
    remove_decoder_layers_(third, [1, 3])
    assert checks == {"reference": 1, "verify": 1}
    batch = text_batch()
    with torch.no_grad():
        logits = [m(**batch).logits for m in (first, second, third)]
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])
    assert third.config.get_text_config().num_hidden_layers == 3


@pytest.mark.parametrize("arch, removed", [("gemma4", [0, 3]), ("mllama", [0, 1])])
def test_remembered_edits_equal_the_checked_ones(checks, arch, removed):
    """Architectures whose removal edits module attributes and per-layer weight tables: the
    edits made from a remembered verdict are the ones the check made."""
    checked = edits_of(plan_removal(build_arch_model(arch, num_layers=5), removed))
    forget_removal_checks()  # from disk
    remembered = edits_of(plan_removal(build_arch_model(arch, num_layers=5), removed))
    assert checks["reference"] == 1 and remembered == checked
    (path,) = entries()
    sites = json.loads(path.read_text())["sites"]
    assert sites["attributes"] or sites["tables"]  # module edits beyond layer_idx were replayed


def test_another_config_removal_or_version_is_checked_again(checks, monkeypatch):
    remove_decoder_layers_(build_arch_model("qwen2_vl", num_layers=5), [1, 3])
    assert checks["reference"] == 1
    remove_decoder_layers_(build_arch_model("qwen2_vl", num_layers=5), [1, 2])
    assert checks["reference"] == 2
    config = arch_config("qwen2_vl", num_layers=5)
    config.get_text_config().rms_norm_eps = 1e-3  # the config's content, not the class
    other = auto_class("qwen2_vl").from_config(config).eval()
    remove_decoder_layers_(other, [1, 3])
    assert checks["reference"] == 3
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    remove_decoder_layers_(build_arch_model("qwen2_vl", num_layers=5), [1, 3])
    assert checks["reference"] == 4
    import transformers

    monkeypatch.setattr(transformers, "__version__", "0.0.1")
    remove_decoder_layers_(build_arch_model("qwen2_vl", num_layers=5), [1, 3])
    assert checks["reference"] == 5
    monkeypatch.setattr("lmms_prune_plugin.core.cache.__version__", "0.0.0-other")
    remove_decoder_layers_(build_arch_model("qwen2_vl", num_layers=5), [1, 3])
    assert checks["reference"] == 6 and len(entries()) == 6


def test_a_corrupt_or_foreign_entry_is_reported_and_checked_again(checks, logged):
    remove_decoder_layers_(build_arch_model("qwen2_vl", num_layers=5), [1, 3])
    (path,) = entries()
    for bad in ("{not json", json.dumps(json.loads(path.read_text()) | {"verdict": "refused"})):
        path.write_text(bad)
        forget_removal_checks()
        before = checks["reference"]
        remove_decoder_layers_(build_arch_model("qwen2_vl", num_layers=5), [1, 3])
        assert checks["reference"] == before + 1
        assert json.loads(path.read_text())["verdict"] == "exact"  # written again, whole
    assert any("corrupt" in m for m in logged) and any("not an exact" in m for m in logged)
    # Well formed, but naming modules this model does not have.
    entry = json.loads(path.read_text())
    entry["sites"]["tables"] = ["model.no_such_module"]
    path.write_text(json.dumps(entry))
    forget_removal_checks()
    model = build_arch_model("qwen2_vl", num_layers=5)
    remove_decoder_layers_(model, [1, 3])
    assert checks["reference"] == 4 and any("does not have" in m for m in logged)
    assert len(layers.find_decoder_layers(model)) == 3


def test_a_refused_removal_is_never_remembered(checks):
    model = build_arch_model("gemma3n", num_layers=5)
    config = model.config.to_dict()
    for _ in range(2):
        with pytest.raises(RefusedRemoval, match="store_full_length_kv is False"):
            remove_decoder_layers_(model, [2])
    assert checks == {"reference": 2, "verify": 2} and entries() == []
    assert model.config.to_dict() == config  # untouched


def test_without_a_cache_folder_verdicts_stay_in_the_process(checks):
    with removal_checks_in(None):
        remove_decoder_layers_(build_arch_model("qwen2_vl", num_layers=5), [1, 3])
        remove_decoder_layers_(build_arch_model("qwen2_vl", num_layers=5), [1, 3])
    assert checks["reference"] == 1 and entries() == []
