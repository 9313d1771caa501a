import math

import pytest
import torch
import torch.nn.functional as F
from helpers import vlm_batch

from lmms_prune_plugin.core.capture import LayerCapture, NonFiniteActivationError, image_token_ids
from lmms_prune_plugin.surgery.layers import find_decoder_layers
from lmms_prune_plugin.testing.tiny import build_tiny_vlm


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny_vlm("qwen2_5_vl", num_layers=4)
    return model, processor, vlm_batch(processor)


def reference(model, batch, mask):
    """Per-layer sums of cos(h_l, h_{l+1}) from output_hidden_states, for layers 0..L-2.

    (The last entry of hidden_states is taken after the final norm, so it is not a layer output.)
    """
    with torch.no_grad():
        hs = model(**batch, output_hidden_states=True).hidden_states
    return [
        float((F.cosine_similarity(hs[l].float(), hs[l + 1].float(), dim=-1) * mask).sum())
        for l in range(len(hs) - 2)
    ]


def test_capture_matches_output_hidden_states_and_skips_padding(tiny):
    model, _, batch = tiny
    mask = batch["attention_mask"].bool()
    assert not mask.all()  # the batch really is padded
    with torch.no_grad(), LayerCapture(model) as cap:
        model(**batch)
    stats = cap.statistics()
    assert stats.tokens == int(mask.sum()) and stats.samples == 2 and stats.forwards == 1
    ref = reference(model, batch, mask.double())
    assert stats.cos_sum[:3] == pytest.approx(ref, rel=1e-5)
    assert all(-1 <= s <= 1 for s in stats.similarity())


def test_token_selections_partition_real_tokens(tiny):
    model, _, batch = tiny
    got = {}
    for sel in ("all", "text", "image", "last"):
        with torch.no_grad(), LayerCapture(model, tokens=sel) as cap:
            model(**batch)
        got[sel] = cap.statistics()
    image_ids = image_token_ids(model)
    n_image = int(sum((batch["input_ids"] == i).sum() for i in image_ids))
    assert got["image"].tokens == n_image > 0
    assert got["text"].tokens + got["image"].tokens == got["all"].tokens
    assert got["last"].tokens == 2
    for l in range(4):
        assert got["text"].cos_sum[l] + got["image"].cos_sum[l] == pytest.approx(
            got["all"].cos_sum[l]
        )


def test_angular_distance_between_block_ends(tiny):
    model, _, batch = tiny
    mask = batch["attention_mask"].double()
    inputs = {}
    handles = [
        layer.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
        for i, layer in enumerate(find_decoder_layers(model).layers)
    ]
    handles.append(
        find_decoder_layers(model)
        .layers[-1]
        .register_forward_hook(
            lambda m, a, o: inputs.__setitem__(4, o if torch.is_tensor(o) else o[0])
        )
    )
    with torch.no_grad(), LayerCapture(model, block_sizes=(1, 2)) as cap:
        model(**batch)
    for h in handles:
        h.remove()
    stats = cap.statistics()
    for n in (1, 2):
        for l in range(4 - n + 1):
            cos = F.cosine_similarity(inputs[l].float(), inputs[l + n].float(), dim=-1).clamp(-1, 1)
            want = float((torch.arccos(cos) / math.pi * mask).sum())
            assert stats.angular_sum[n][l] == pytest.approx(want, rel=1e-5, abs=1e-6)
    # n=1 angular is the per-layer angle of the plain capture
    plain = [math.acos(max(-1, min(1, s))) / math.pi for s in stats.similarity()]
    assert stats.angular_distance(1) != pytest.approx(plain)  # mean of angles != angle of mean
    assert stats.angular_distance(1) == pytest.approx(plain, abs=0.05)


def test_hooks_are_removed_even_when_the_forward_raises(tiny):
    model, _, batch = tiny
    layers = find_decoder_layers(model).layers
    counts = lambda: (
        len(model._forward_pre_hooks),
        sum(len(l._forward_hooks) + len(l._forward_pre_hooks) for l in layers),
    )  # noqa: E731
    before = counts()
    with pytest.raises(RuntimeError):
        with LayerCapture(model):
            assert counts() != before
            model(
                input_ids=batch["input_ids"],
                pixel_values=batch["pixel_values"][:1],
                image_grid_thw=batch["image_grid_thw"],
            )
    assert counts() == before


def test_non_finite_activations_name_the_layer(tiny):
    model, _, batch = tiny
    layer = find_decoder_layers(model).layers[2]
    handle = layer.register_forward_hook(lambda m, a, o: o * float("inf"))
    try:
        with (
            pytest.raises(NonFiniteActivationError, match="decoder layer 2 produced non-finite"),
            torch.no_grad(),
        ):
            with LayerCapture(model):
                model(**batch)
    finally:
        handle.remove()


def test_decode_steps_are_not_measured(tiny):
    model, _, batch = tiny
    with torch.no_grad(), LayerCapture(model) as cap:
        model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert cap.statistics().forwards == 1
    assert cap.statistics().tokens == int(batch["attention_mask"].sum())


def test_bad_token_selection_is_rejected(tiny):
    with pytest.raises(
        ValueError, match="tokens='words' is not allowed; choose one of: all, text, image, last"
    ):
        LayerCapture(tiny[0], tokens="words")
