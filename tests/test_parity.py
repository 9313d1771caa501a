"""Parity with the reference baselines, re-derived here from their definitions.

ShortGPT (Men et al., icip-cas/ShortGPT): Block Influence BI_l = 1 - E[cos(h_l, h_{l+1})] over
every position, from ``output_hidden_states``, whose last entry is the post-final-norm state.
Gromov et al. / PruneMe (arcee-ai/PruneMe): d(l, n) = arccos(cos(h_l, h_{l+n})) / pi on each
sample's last non-padding token, averaged over samples, over ``hidden_states[1:]`` (no
embeddings), so blocks start at layer 1 and the top block ends at the post-norm state.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import vlm_batch

from lmms_prune_plugin.core.capture import LayerCapture
from lmms_prune_plugin.core.criteria import CriterionOptions
from lmms_prune_plugin.core.plugins import get_criterion, get_strategy
from lmms_prune_plugin.testing.tiny import build_tiny_vlm

L = 5


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny_vlm("qwen2_5_vl", num_layers=L)
    norm = model.model.language_model.norm
    with torch.no_grad():  # uneven gains, so the post-norm state differs from the raw output
        norm.weight.copy_(torch.linspace(0.2, 3.0, norm.weight.numel()).roll(7))
    prompts = ("What colour is the shape?", "How many apples are on the table today?")
    unpadded = ("Name the colour of the shape.",)
    return model, vlm_batch(processor, prompts), vlm_batch(processor, unpadded)


def hidden_states(model, batch):
    with torch.no_grad():
        return [h.float() for h in model(**batch, output_hidden_states=True).hidden_states]


def captured(model, batch, blocks=()):
    with torch.no_grad(), LayerCapture(model, block_sizes=blocks) as cap:
        model(**batch)
    return {"math": cap.statistics()}


def shortgpt_reference(hs):
    """BI_l over every position, as ShortGPT's code sums 1 - cos(hs[i], hs[i+1])."""
    return [
        float((1 - F.cosine_similarity(hs[i], hs[i + 1], dim=-1)).mean())
        for i in range(len(hs) - 1)
    ]


def pruneme_reference(hs, attention_mask, n):
    """PruneMe's compute_block_distances on the last non-padded tokens of hidden_states[1:]."""
    last = [int(m.nonzero()[-1]) for m in attention_mask]
    states = [torch.stack([h[b, i] for b, i in enumerate(last)]) for h in hs[1:]]
    return [
        float(
            (
                torch.arccos(F.cosine_similarity(states[j], states[j + n], dim=-1).clamp(-1, 1))
                / math.pi
            ).mean()
        )
        for j in range(len(states) - n)
    ]


def test_shortgpt_with_final_norm_equals_the_reference_on_every_layer(tiny):
    model, _, batch = tiny
    assert bool(batch["attention_mask"].all())  # the reference has no padding mask
    bi = shortgpt_reference(hidden_states(model, batch))
    stats = captured(model, batch)
    crit = get_criterion("shortgpt")
    ours = crit(stats, L, CriterionOptions(final_norm=True)).per_layer
    assert [1 - s for s in ours] == pytest.approx(bi, abs=1e-6)
    # The default compares the last layer with its raw output: the same but for that layer.
    raw = crit(stats, L, CriterionOptions()).per_layer
    assert list(raw[:-1]) == pytest.approx(ours[:-1], abs=1e-12)
    assert abs(raw[-1] - ours[-1]) > 1e-3
    for k in range(1, L):
        want = tuple(sorted(sorted(range(L), key=lambda i: (bi[i], -i))[:k]))
        scores = crit(stats, L, CriterionOptions(final_norm=True))
        assert get_strategy("topk")(scores, k) == want


@pytest.mark.parametrize("n", [1, 2, 3])
def test_angular_follows_pruneme_blocks_from_layer_one_on_the_last_token(tiny, n):
    model, batch, _ = tiny
    assert not bool(batch["attention_mask"].all())  # padded: the last real token matters
    ref = pruneme_reference(hidden_states(model, batch), batch["attention_mask"], n)
    stats = captured(model, batch, blocks=(1, n))
    crit = get_criterion("angular")
    scores = crit(stats, L, CriterionOptions(block_sizes=(1, n), final_norm=True))
    # Our block s removes layers s..s+n-1; PruneMe's block j compares hidden_states[1:][j]
    # and [j + n], i.e. it removes layers j+1..j+n: s = j + 1, and s = 0 is never a block.
    assert scores.blocks[n][0] == -math.inf
    assert [1 - c for c in scores.blocks[n][1:]] == pytest.approx(ref, abs=1e-6)
    j = min(range(len(ref)), key=lambda j: ref[j])
    assert get_strategy("contiguous")(scores, n) == tuple(range(j + 1, j + 1 + n))


def test_angular_defaults_to_the_last_token_and_keeps_the_all_token_variant(tiny):
    model, batch, _ = tiny
    stats = captured(model, batch, blocks=(1, 2))
    crit = get_criterion("angular")
    default = crit(stats, L, CriterionOptions(block_sizes=(1, 2)))
    last = crit(stats, L, CriterionOptions(block_sizes=(1, 2), angular_tokens="last"))
    every = crit(stats, L, CriterionOptions(block_sizes=(1, 2), angular_tokens="all"))
    assert default == last and default.blocks[2] != every.blocks[2]
    # The all-token variant over real tokens, by hand (raw last-layer output).
    hs = hidden_states(model, batch)
    with torch.no_grad(), LayerCapture(model, block_sizes=(2,)) as cap:
        model(**batch)
    mask = batch["attention_mask"].double()
    s = stats["math"]
    for start in range(1, L - 2):
        d = (
            torch.arccos(F.cosine_similarity(hs[start], hs[start + 2], dim=-1).clamp(-1, 1))
            / math.pi
        )
        assert 1 - every.blocks[2][start] == pytest.approx(
            float((d * mask).sum() / mask.sum()), abs=1e-6
        )
    assert s.last_tokens == 2 and cap.statistics().tokens == int(mask.sum())


def test_final_norm_needs_a_norm_and_is_refused_otherwise(tiny):
    model, batch, _ = tiny
    stats = captured(model, batch)["math"]
    bare = type(stats)(stats.num_layers, stats.cos_sum, stats.tokens, stats.samples)
    with pytest.raises(ValueError, match="final_norm"):
        get_criterion("shortgpt")({"math": bare}, L, CriterionOptions(final_norm=True))
