"""Layer removal on every decoder-only image-text-to-text architecture built tiny offline.

For each architecture, layers including the first and a structure-bearing one are removed; then
either the pruned model is exact (cached generate == uncached, save_pretrained + plain
from_pretrained reproduces the logits, capture counts every real token) or the removal was
refused with the clear error and the model is untouched. Silent divergence fails.
"""

import pytest
import torch
from torch import nn

from lmms_prune_plugin.core.capture import LayerCapture
from lmms_prune_plugin.surgery.layers import find_decoder_layers, remove_decoder_layers_
from lmms_prune_plugin.surgery.structure import RefusedRemoval
from lmms_prune_plugin.testing.archs import ARCH_MODELS, auto_class, build_arch_model, text_batch

NUM_LAYERS = 5
# Layer 0 plus a layer that carries structure: a cross-attention, MoE, dense or KV-shared layer.
REMOVE = {
    "mllama": [0, 1],  # cross_attention_layers [1, 3]
    "llama4": [0, 1],  # MoE every 2nd layer: [1, 3]
    "qwen3_vl_moe": [0, 1],  # mlp_only_layers [1, 4]
    "glm4v_moe": [0, 3],  # first_k_dense_replace 2
    "gemma3n": [0, 3],  # num_kv_shared_layers 2: layers 3, 4 reuse KV
}
# Transformers 5.24's Llama4ForConditionalGeneration.forward reads `image_outputs` from its text
# model's output and fails on every call; its text model (the pruned decoder) is run instead.
TEXT_ONLY_FORWARD = {"llama4": "language_model"}


@pytest.fixture(scope="module", params=ARCH_MODELS)
def pruned(request):
    arch = request.param
    model = build_arch_model(arch, num_layers=NUM_LAYERS)
    removed = REMOVE.get(arch, [0, 3])
    try:
        remove_decoder_layers_(model, removed)
    except RefusedRemoval as err:
        return arch, model, err
    return arch, model, None


def runnable(arch, model):
    return getattr(model, TEXT_ONLY_FORWARD[arch]) if arch in TEXT_ONLY_FORWARD else model


def test_every_builtin_architecture_is_exact(pruned):
    arch, model, refused = pruned
    assert refused is None, f"{arch}: {refused}"
    assert len(find_decoder_layers(model)) == NUM_LAYERS - 2
    assert model.config.get_text_config().num_hidden_layers == NUM_LAYERS - 2


def test_cached_generate_equals_uncached(pruned):
    arch, model, refused = pruned
    lm = runnable(arch, model)
    batch = text_batch()
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = lm.generate(**batch, use_cache=True, **kw)
        uncached = lm.generate(**batch, use_cache=False, **kw)
    assert cached.shape[1] == batch["input_ids"].shape[1] + 4
    assert torch.equal(cached, uncached)


def test_reload_with_plain_from_pretrained_reproduces_the_model(pruned, tmp_path):
    arch, model, refused = pruned
    model.save_pretrained(tmp_path / "full")
    reloaded = auto_class(arch).from_pretrained(tmp_path / "full", dtype=torch.float32).eval()
    assert len(find_decoder_layers(reloaded)) == NUM_LAYERS - 2
    theirs = reloaded.state_dict()
    ours = model.state_dict()
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], v) for k, v in ours.items())
    batch = text_batch(seed=1)
    lm, re_lm = runnable(arch, model), runnable(arch, reloaded)
    with torch.no_grad():
        torch.testing.assert_close(re_lm(**batch).logits, lm(**batch).logits)


def test_capture_counts_every_real_token(pruned):
    arch, model, refused = pruned
    batch = text_batch(seed=2)
    lm = runnable(arch, model)
    with LayerCapture(lm, tokens="all") as cap, torch.no_grad():
        lm(**batch)
    stats = cap.statistics()
    assert stats.tokens == int(batch["attention_mask"].sum())
    assert stats.num_layers == NUM_LAYERS - 2 and stats.samples == 2
    assert all(abs(c) <= stats.tokens + 1e-6 for c in stats.cos_sum)


# -- the verification on a model nobody wrote rules for ------------------------------------------
class _SpecialConfig:
    pass


def _special_model():
    """A Llama whose config lists 'wide' layers (a wider MLP) under a name no rule knows."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    class WideConfig(LlamaConfig):
        model_type = "wide_llama_test"

        def __init__(self, wide_blocks=(), **kw):
            self.wide_blocks = list(wide_blocks)
            super().__init__(**kw)

    class WideForCausalLM(LlamaForCausalLM):
        config_class = WideConfig

        def __init__(self, config):
            super().__init__(config)
            for i in config.wide_blocks:
                layer = LlamaDecoderLayer(config, i)
                layer.mlp.up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size)
                layer.mlp.gate_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size)
                layer.mlp.down_proj = nn.Linear(2 * config.intermediate_size, config.hidden_size)
                self.model.layers[i] = layer

    cfg = WideConfig(
        wide_blocks=[1, 3],
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return WideForCausalLM(cfg).eval()


def test_a_layer_index_field_no_rule_knows_is_refused_and_the_model_untouched():
    model = _special_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = list(find_decoder_layers(model).layers)
    with pytest.raises(RefusedRemoval) as err:
        remove_decoder_layers_(model, [0, 1])
    message = str(err.value)
    assert "WideForCausalLM (model_type='wide_llama_test')" in message
    assert "wide_blocks=[1, 3]" in message  # the field no rule handles
    assert "'register_layer_rules' hook" in message
    assert list(find_decoder_layers(model).layers) == layers
    assert model.config.num_hidden_layers == 5 and model.config.wide_blocks == [1, 3]
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3, 4]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_plugin_rule_for_the_field_makes_the_removal_exact(tmp_path):
    from lmms_prune_plugin.core.hookspecs import hookimpl
    from lmms_prune_plugin.core.plugins import pm
    from lmms_prune_plugin.surgery.structure import LayerRule

    class Plugin:
        @hookimpl
        def register_layer_rules(self, register):
            register(LayerRule("wide_blocks", "indices", ("wide_blocks",)))

    model = _special_model()
    batch = {"input_ids": torch.tensor([[3, 5, 7, 9]])}
    pm.register(Plugin(), "wide-test")
    try:
        remove_decoder_layers_(model, [0, 1])
    finally:
        pm.unregister(name="wide-test")
    assert model.config.wide_blocks == [1]  # old layer 3, renumbered
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, before)


def test_qwen3_5_checkpoint_loads_in_lmms_evals_own_wrapper_and_generates(tmp_path):
    from helpers import vlm_batch

    from lmms_prune_plugin.harnesses.lmms_eval.base import build_wrapper
    from lmms_prune_plugin.testing.archs import checkpoint_wrapper_kwargs, save_arch_checkpoint

    path = save_arch_checkpoint("qwen3_5", tmp_path / "qwen3_5", num_layers=4)
    wrapper = build_wrapper(
        "qwen3_5", True, pretrained=str(path), **checkpoint_wrapper_kwargs("qwen3_5", path)
    )
    model = wrapper.model
    assert type(model).__name__ == "Qwen3_5ForConditionalGeneration"
    batch = vlm_batch(wrapper.processor)
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) > 0
    remove_decoder_layers_(model, [0, 2])
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False)
    with torch.no_grad():
        cached = model.generate(**batch, use_cache=True, **kw)
        uncached = model.generate(**batch, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("arch, removed", [("gemma4", [0, 3]), ("mllama", [0, 1])])
def test_temporary_removal_restores_structure_heavy_models_exactly(arch, removed):
    from lmms_prune_plugin.surgery.layers import decoder_layers_removed

    model = build_arch_model(arch, num_layers=NUM_LAYERS)
    batch = text_batch(seed=3)
    config = model.config.to_dict()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = {n: dict(vars(m)) for n, m in model.named_modules() if n.endswith("language_model")}
    with torch.no_grad():
        full = model(**batch).logits
    with decoder_layers_removed(model, removed):
        assert len(find_decoder_layers(model)) == NUM_LAYERS - 2
        assert model.config.to_dict() != config
        with torch.no_grad():
            pruned = model(**batch).logits
    assert model.config.to_dict() == config
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    for name, values in attrs.items():
        module = model.get_submodule(name)
        assert {k: v for k, v in vars(module).items() if not k.startswith("_")} == {
            k: v for k, v in values.items() if not k.startswith("_")
        }
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, full)
    remove_decoder_layers_(model, removed)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, pruned)


def test_capture_measures_gemma3n_main_altup_stream():
    """Gemma3n layers carry (altup, batch, seq, hidden); the main stream is the one measured."""
    from lmms_prune_plugin.core.similarity import masked_cosine_sum

    model = build_arch_model("gemma3n", num_layers=4)
    text = model.config.get_text_config()
    batch = text_batch(seed=4)
    layer = find_decoder_layers(model).layers[1]
    seen = {}

    def spy(module, args, output):
        seen["in"], seen["out"] = args[0], output

    handle = layer.register_forward_hook(spy)
    with LayerCapture(model, tokens="all") as cap, torch.no_grad():
        model(**batch)
    handle.remove()
    assert seen["in"].shape[0] == text.altup_num_inputs and seen["in"].dim() == 4
    main = text.altup_active_idx
    weight = batch["attention_mask"].to(torch.float64)
    expected, _ = masked_cosine_sum(seen["in"][main], seen["out"][main], weight)
    stats = cap.statistics()
    assert stats.tokens == int(batch["attention_mask"].sum())
    assert stats.cos_sum[1] == pytest.approx(float(expected), rel=1e-9)
    other, _ = masked_cosine_sum(seen["in"][1 - main], seen["out"][1 - main], weight)
    assert float(other) != pytest.approx(float(expected), rel=1e-6)


def test_removing_a_gemma3n_kv_producer_is_refused_and_the_model_untouched():
    """Layers 3-4 reuse the KV of the last earlier layer of their type; removing such a producer
    would make a reload pick another one, so it is refused (removing a consumer is fine)."""
    model = build_arch_model("gemma3n", num_layers=NUM_LAYERS)
    config = model.config.to_dict()
    with pytest.raises(RefusedRemoval, match=r"store_full_length_kv is False but a reload builds"):
        remove_decoder_layers_(model, [2])
    with pytest.raises(RefusedRemoval, match=r"does not build the model"):
        remove_decoder_layers_(model, [1])  # the only full-attention producer
    assert model.config.to_dict() == config and len(find_decoder_layers(model)) == NUM_LAYERS
    remove_decoder_layers_(model, [4])
    assert model.config.get_text_config().num_kv_shared_layers == 1
