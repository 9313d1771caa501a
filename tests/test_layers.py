import pytest
import torch
from helpers import vlm_batch
from torch import nn
from transformers import AutoModelForImageTextToText

from lmms_prune_plugin.surgery.layers import (
    KNOWN_PATHS,
    find_decoder_layers,
    remove_decoder_layers_,
)
from lmms_prune_plugin.testing.tiny import ARCHITECTURES, build_tiny_vlm


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request):
    return request.param


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_locates_decoder_layers_of_every_architecture(arch):
    model, _ = build_tiny_vlm(arch, num_layers=5)
    decoder = find_decoder_layers(model)
    # A known layout, not the fallback search, and the text decoder: as deep and as wide as the
    # text config says (the vision tower has other sizes).
    assert decoder.path in KNOWN_PATHS and len(decoder) == 5
    text = model.config.get_text_config()
    assert decoder.layers[0].self_attn.o_proj.out_features == text.hidden_size


def test_removal_keeps_cached_generation_equal_to_uncached(arch):
    model, processor = build_tiny_vlm(arch, num_layers=6)
    batch = vlm_batch(processor)
    assert remove_decoder_layers_(model, [1, 4]) == (1, 4)
    layers = find_decoder_layers(model).layers
    assert len(layers) == 4
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]
    text = model.config.get_text_config()
    assert text.num_hidden_layers == 4
    if getattr(text, "layer_types", None) is not None:
        assert len(text.layer_types) == 4
    kw = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6)
    with torch.no_grad():
        cached = model.generate(**batch, use_cache=True, **kw)
        uncached = model.generate(**batch, use_cache=False, **kw)
    assert cached.shape[1] == batch["input_ids"].shape[1] + 6
    assert torch.equal(cached, uncached)


def test_pruned_model_round_trips_through_plain_transformers(arch, tmp_path):
    model, processor = build_tiny_vlm(arch, num_layers=5)
    batch = vlm_batch(processor)
    remove_decoder_layers_(model, [0, 3])
    before = logits(model, batch)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert len(find_decoder_layers(reloaded)) == 3
    assert reloaded.config.get_text_config().num_hidden_layers == 3
    torch.testing.assert_close(logits(reloaded, batch), before)


def test_removing_nothing_is_bit_identical(arch):
    model, processor = build_tiny_vlm(arch, num_layers=4)
    batch = vlm_batch(processor)
    before = logits(model, batch)
    assert remove_decoder_layers_(model, []) == ()
    assert torch.equal(logits(model, batch), before)


def test_removal_changes_outputs_and_matches_a_model_built_without_those_layers():
    model, processor = build_tiny_vlm("qwen2_5_vl", num_layers=4)
    batch = vlm_batch(processor)
    full = logits(model, batch)
    ref_layers = [find_decoder_layers(model).layers[i] for i in (0, 2, 3)]
    remove_decoder_layers_(model, [1])
    assert list(find_decoder_layers(model).layers) == ref_layers  # same modules, same order
    assert not torch.allclose(logits(model, batch), full)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([4], r"\[0, 3\]"),
        ([1, 1], "repeats"),
        ([0, 1, 2, 3], "keep at least one"),
        (["1"], "integers"),
    ],
)
def test_bad_indices_leave_the_model_untouched(bad, message):
    model, _ = build_tiny_vlm("qwen2_vl", num_layers=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        remove_decoder_layers_(model, bad)
    assert len(find_decoder_layers(model)) == 4
    assert model.config.get_text_config().num_hidden_layers == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_model_without_decoder_layers_is_reported():
    with pytest.raises(
        ValueError, match="model=Sequential: its text-decoder layers could not be found"
    ):
        find_decoder_layers(nn.Sequential(nn.Linear(2, 2)))


def test_vision_layers_are_never_taken_for_the_decoder():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower = nn.Module()
            self.vision_tower.layers = nn.ModuleList([nn.Linear(2, 2)])
            self.decoder = nn.Module()
            self.decoder.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    assert find_decoder_layers(Odd()).path == "decoder.layers"


def test_qwen3_vl_deepstack_follows_loop_position():
    """Deepstack features are added after the first k layers *of the pruned stack*.

    Qwen3-VL injects one visual feature level after each of its first k decoder layers by loop
    index. After removing one of those layers, the injections land after the first k surviving
    layers: every level is still used, at the same depth positions of the shorter stack.
    """
    model, processor = build_tiny_vlm("qwen3_vl", num_layers=5)
    batch = vlm_batch(processor)
    text_model = model.model.language_model
    calls = []
    original = text_model._deepstack_process

    def spy(hidden_states, visual_pos_masks, visual_embeds):
        calls.append(len(calls))
        return original(hidden_states, visual_pos_masks, visual_embeds)

    text_model._deepstack_process = spy
    with torch.no_grad():
        model(**batch)
    levels = len(calls)
    assert levels >= 1
    calls.clear()
    remove_decoder_layers_(model, [0])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert len(calls) == levels  # injected in the prefill only, every level used
    assert out.shape[1] == batch["input_ids"].shape[1] + 3


def test_temporary_removal_restores_the_model_exactly():
    from lmms_prune_plugin.surgery.layers import decoder_layers_removed

    model, processor = build_tiny_vlm("qwen2_5_vl", num_layers=5)
    batch = vlm_batch(processor)
    full = logits(model, batch)
    with decoder_layers_removed(model, [1, 3]):
        assert len(find_decoder_layers(model)) == 3
        with torch.no_grad():
            pruned_out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert len(find_decoder_layers(model)) == 5
    assert [l.self_attn.layer_idx for l in find_decoder_layers(model).layers] == [0, 1, 2, 3, 4]
    assert model.config.get_text_config().num_hidden_layers == 5
    assert torch.equal(logits(model, batch), full)
    remove_decoder_layers_(model, [1, 3])
    with torch.no_grad():
        assert torch.equal(model.generate(**batch, max_new_tokens=3, do_sample=False), pruned_out)
