"""Pure tensor functions behind capture: which tokens count, and masked similarity sums.

No hooks and no model here: each function takes tensors and returns tensors, so each is
tested on hand-made inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TOKEN_SELECTIONS = ("all", "text", "image", "last")


def token_mask(
    batch: int,
    seq: int,
    tokens: str = "all",
    attention_mask: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    image_token_ids: tuple[int, ...] = (),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean (batch, seq) mask of the positions that count.

    Padding (``attention_mask == 0``) never counts. ``text``/``image`` split the real tokens by
    whether their id is an image placeholder; ``last`` keeps each sample's last real token.
    """
    if tokens not in TOKEN_SELECTIONS:
        raise ValueError(
            f"tokens={tokens!r} is not allowed; choose one of: {', '.join(TOKEN_SELECTIONS)}"
        )
    attn = attention_mask
    if torch.is_tensor(attn) and attn.dim() == 2 and tuple(attn.shape) == (batch, seq):
        real = attn.to(device).bool()
    else:
        real = torch.ones(batch, seq, dtype=torch.bool, device=device)
    if tokens in ("text", "image"):
        if not image_token_ids:
            raise ValueError(
                f"tokens={tokens!r} needs the model config to name its image token id "
                "(image_token_id / image_token_index); this model's does not, use tokens=all or last"
            )
        if input_ids is None or tuple(input_ids.shape) != (batch, seq):
            raise ValueError(f"tokens={tokens!r} needs input_ids aligned with the decoder input")
        ids = input_ids.to(device)
        is_image = torch.zeros_like(real)
        for tid in image_token_ids:
            is_image |= ids == tid
        return real & (is_image if tokens == "image" else ~is_image)
    if tokens == "last":
        last = seq - 1 - torch.flip(real.int(), dims=[1]).argmax(dim=1)
        mask = torch.zeros_like(real)
        mask[torch.arange(batch, device=real.device), last] = real.any(dim=1)
        return mask
    return real


def masked_cosine_sum(
    h_in: torch.Tensor, h_out: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over weighted positions of cos(h_in, h_out) in float64, whether every cos is finite).

    ``weight`` is the (batch, seq) float64 token mask; non-finite values are reported, not summed.
    """
    cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
    return (torch.nan_to_num(cos).double() * weight).sum(), torch.isfinite(cos[weight > 0]).all()


def masked_cosine_rows(
    h_in: torch.Tensor, h_out: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (batch,) float64 sum of cos(h_in, h_out) over weighted positions, and whether
    every cosine is finite. Summed over the batch it equals :func:`masked_cosine_sum`."""
    cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
    # padding positions may hold anything: only the counted ones must be finite
    return (torch.nan_to_num(cos).double() * weight).sum(dim=-1), torch.isfinite(
        cos[weight > 0]
    ).all()


def masked_angular_rows(h_a: torch.Tensor, h_b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per sample float64 sum of arccos(cos(h_a, h_b)) / pi over weighted positions.

    ``weight`` is (batch, seq) or stacked masks (k, batch, seq): the result is (batch,) or
    (k, batch), each mask summed from the same angles."""
    cos = F.cosine_similarity(h_a.float(), h_b.float(), dim=-1).clamp(-1.0, 1.0)
    return (torch.nan_to_num(torch.arccos(cos) / torch.pi).double() * weight).sum(dim=-1)


def answer_logprobs(logits: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """(batch, vocab) float32 log-probabilities of the next token at each sample's answer
    position: the last real prompt token, whose logits produce the first answer token.

    ``logits`` is (batch, seq, vocab) over every position, or (batch, 1, vocab) when the model
    kept only the last position (``generate`` with left padding: the last position is real).
    ``last`` is the boolean (batch, seq) mask with one True per sample.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits of shape {tuple(logits.shape)}; expected (batch, seq, vocab)")
    batch, seq = last.shape
    if logits.shape[0] != batch:
        raise ValueError(f"logits for {logits.shape[0]} samples, the forward has {batch}")
    if logits.shape[1] == seq:
        pos = last.int().argmax(dim=1)
        picked = logits[torch.arange(batch, device=logits.device), pos.to(logits.device)]
    elif logits.shape[1] == 1:
        if not bool(last[:, -1].all()):
            raise ValueError(
                "the model returned logits of the final position only, but some samples end in "
                "padding there (right padding); their answer position has no logits"
            )
        picked = logits[:, 0]
    else:
        raise ValueError(
            f"logits cover {logits.shape[1]} positions of a {seq}-token input; cannot find the "
            "answer positions"
        )
    return torch.log_softmax(picked.float(), dim=-1)


def kl_rows(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """Per sample float64 KL(p_ref || p) = sum_v p_ref (log p_ref - log p), from log-probs."""
    if ref_logprobs.shape != logprobs.shape:
        raise ValueError(
            f"reference log-probs {tuple(ref_logprobs.shape)} and log-probs {tuple(logprobs.shape)} differ"
        )
    ref = ref_logprobs.double()
    p = ref.exp()
    kl = torch.where(p > 0, p * (ref - logprobs.double()), 0.0).sum(dim=-1)
    return kl.clamp_min(0.0)  # rounding can leave -1e-12 where the two agree
