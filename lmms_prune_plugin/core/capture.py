"""Forward hooks that stream per-layer similarity statistics. The one place that hooks a model.

Nothing of the hidden states is kept beyond the forward in flight: each layer adds the sum of
cos(h_in, h_out) over the selected tokens to a float64 accumulator (the tensor maths is in
:mod:`.similarity`). The ``angular`` baseline needs the input of layer l at layer l+n, so the
inputs of the last max(n) layers are held. The decoder's final norm is hooked too, so the
last layer (and the top block) can also be compared with the post-norm state the reference
codes read from ``output_hidden_states``.

Optionally, at the answer position of each sample (the last real prompt token, whose logits
produce the first answer token), the next-token log-probabilities are recorded
(:class:`AnswerReference`) or compared with a recorded reference by KL divergence: the
measurement behind the output-aware criteria.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmms_prune_plugin.core.similarity import (
    TOKEN_SELECTIONS,
    answer_logprobs,
    kl_rows,
    masked_angular_rows,
    masked_cosine_rows,
    token_mask,
)
from lmms_prune_plugin.core.stats import LayerStatistics
from lmms_prune_plugin.surgery.layers import find_decoder_layers

__all__ = [
    "TOKEN_SELECTIONS",
    "AnswerReference",
    "LayerCapture",
    "NonFiniteActivationError",
    "image_token_ids",
]

_IMAGE_TOKEN_KEYS = ("image_token_id", "image_token_index", "video_token_id", "video_token_index")


class NonFiniteActivationError(FloatingPointError):
    """A decoder layer produced inf or nan during calibration."""


def image_token_ids(model: nn.Module) -> tuple[int, ...]:
    """Ids of the placeholder tokens that carry visual features, read from the model config."""
    cfg = getattr(model, "config", None)
    ids = {getattr(cfg, k) for k in _IMAGE_TOKEN_KEYS if isinstance(getattr(cfg, k, None), int)}
    return tuple(sorted(ids))


def _altup_streams(model: nn.Module) -> tuple[int, int] | None:
    """(number of AltUp streams, index of the main one) for Gemma3n-style decoders, else None."""
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n, active = getattr(text, "altup_num_inputs", None), getattr(text, "altup_active_idx", 0)
    if isinstance(n, int) and n > 1 and isinstance(active, int) and 0 <= active < n:
        return n, active
    return None


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm the text decoder applies after its last layer (``norm`` next to ``layers``)."""
    norm = getattr(find_decoder_layers(model).owner, "norm", None)
    return norm if isinstance(norm, nn.Module) else None


class AnswerReference:
    """Next-token log-probabilities of the unpruned model at each calibration sample's answer
    position, in the order the samples reached the model, keyed by their real input ids so a
    comparison pass can prove it sees the same samples in the same order."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.logprobs: list[torch.Tensor] = []  # one (vocab,) float32 row per sample, on CPU

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: list[str], logprobs: torch.Tensor) -> None:
        self.keys += keys
        self.logprobs += list(logprobs.float().cpu())

    def take(self, start: int, keys: list[str], device) -> torch.Tensor:
        """The reference rows for the samples ``start:start+len(keys)``; an error if they are
        other samples than the reference saw there."""
        end = start + len(keys)
        if end > len(self.keys) or self.keys[start:end] != keys:
            raise ValueError(
                f"the output comparison saw samples {start}-{end - 1} differ from the reference "
                f"pass ({len(self.keys)} samples): the calibration requests must reach the model in "
                "the same order and batches in every pass (same batch_size, one process layout)"
            )
        return torch.stack(self.logprobs[start:end]).to(device)


def _row_keys(input_ids: torch.Tensor | None, real: torch.Tensor) -> list[str]:
    if input_ids is None:
        raise ValueError("measuring outputs needs the forward's input_ids to identify its samples")
    keys = []
    for ids, mask in zip(input_ids, real, strict=True):
        keys.append(hashlib.sha256(ids[mask.bool()].cpu().numpy().tobytes()).hexdigest()[:24])
    return keys


@dataclass
class _Forward:
    """State of the forward in flight: its masks, held layer inputs and per-sample sums."""

    active: bool = False
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    weight: torch.Tensor | None = None  # (2, batch, seq) float64: the token selection, last token
    layer_input: torch.Tensor | None = None
    held_inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    final: tuple[torch.Tensor, torch.Tensor] | None = None  # last layer (input, output)
    norm_seen: bool = False
    rows: dict[Any, torch.Tensor] = field(default_factory=dict)  # name -> (..., batch) float64


class LayerCapture:
    """Context manager that hooks every text-decoder layer of ``model`` and streams statistics.

    ``tokens``: which positions count — all real tokens, text tokens, image tokens, or the last
    real token of each sample. Padding (attention_mask == 0) never counts. Only prefill forwards
    are measured: decode steps of ``generate`` are skipped. Hidden states must be
    (batch, seq, hidden), or Gemma3n's (altup, batch, seq, hidden) AltUp streams, of which the
    main stream (``altup_active_idx``, the one the model predicts and corrects, and the only one
    its output norm sees first) is measured; any other layout is refused rather than measured
    wrongly.

    ``per_sample``: also keep one :class:`LayerStatistics` per sample (for bootstraps).
    ``record_answers``: fill :attr:`answers` with the answer-position log-probabilities.
    ``reference``: compare the answer-position distributions with it (KL, per sample).
    """

    def __init__(
        self,
        model: nn.Module,
        tokens: str = "all",
        block_sizes: Iterable[int] = (),
        per_sample: bool = False,
        record_answers: bool = False,
        reference: AnswerReference | None = None,
    ):
        if tokens not in TOKEN_SELECTIONS:
            raise ValueError(
                f"tokens={tokens!r} is not allowed; choose one of: {', '.join(TOKEN_SELECTIONS)}"
            )
        if record_answers and reference is not None:
            raise ValueError(
                "record_answers and reference exclude each other: record, then compare"
            )
        self.model, self.tokens = model, tokens
        self.decoder = find_decoder_layers(model)
        self.num_layers = len(self.decoder)
        self.block_sizes = tuple(sorted(set(int(n) for n in block_sizes)))
        bad = [n for n in self.block_sizes if not 1 <= n <= self.num_layers]
        if bad:
            raise ValueError(
                f"block_sizes={bad} are not allowed; each must be in [1, {self.num_layers}]"
            )
        self._image_ids = image_token_ids(model)
        self._altup = _altup_streams(model)
        if tokens in ("text", "image") and not self._image_ids:
            raise ValueError(
                f"tokens={tokens!r} is not allowed for {type(model).__name__}: its config names no "
                "image token id (image_token_id / image_token_index); use tokens=all or tokens=last"
            )
        self.per_sample = per_sample
        self.answers = AnswerReference() if record_answers else None
        self.reference = reference
        self._compared = 0  # reference rows consumed
        self._norm = final_norm(model)
        self._norm_ok = self._norm is not None
        self._handles: list[Any] = []
        self._totals: dict[Any, torch.Tensor] = {}
        self._samples: list[LayerStatistics] = []
        self._bad: torch.Tensor | None = None
        self._forwards = self._sample_count = 0
        self._fwd = _Forward()

    @property
    def forwards(self) -> int:
        return self._forwards

    @property
    def compared(self) -> int:
        """Samples compared with the reference so far."""
        return self._compared

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> LayerCapture:
        hooks = [
            self.model.register_forward_pre_hook(self._on_model_start, with_kwargs=True),
            self.model.register_forward_hook(self._on_model_end, with_kwargs=True),
        ]
        for idx, layer in enumerate(self.decoder.layers):
            hooks.append(layer.register_forward_pre_hook(self._layer_pre(idx), with_kwargs=True))
            hooks.append(layer.register_forward_hook(self._layer_post(idx)))
        if self._norm is not None:
            hooks.append(self._norm.register_forward_hook(self._on_norm))
        self._handles = hooks
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._fwd = _Forward()

    # -- hooks -----------------------------------------------------------------------------
    def _on_model_start(self, module, args, kwargs) -> None:
        # Transformers 5.2x passes the KV cache as ``cache``; older releases as ``past_key_values``.
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        ids = kwargs.get("input_ids", args[0] if args and torch.is_tensor(args[0]) else None)
        self._fwd = _Forward(int(past) == 0, ids, kwargs.get("attention_mask"))

    def _on_model_end(self, module, args, kwargs, output) -> None:
        fwd = self._fwd
        self._fwd = _Forward()
        if not (fwd.active and fwd.weight is not None):
            return
        if self._bad is not None and bool(self._bad.any()):
            layer = int(self._bad.nonzero()[0, 0])
            raise NonFiniteActivationError(
                f"decoder layer {layer} produced non-finite activations (inf/nan) during calibration; "
                "this is usually float16 overflow: calibrate in bfloat16 or float32"
            )
        if self._norm is not None and not fwd.norm_seen:
            self._norm_ok = False  # no post-norm state this forward: never report one
        if self.answers is not None or self.reference is not None:
            self._measure_answers(fwd, output)
        for name, rows in fwd.rows.items():
            total = rows.sum(dim=-1)
            self._totals[name] = self._totals[name] + total if name in self._totals else total
        if self.per_sample:
            batch = fwd.weight.shape[1]
            self._samples += [
                self._stats({k: v[..., b] for k, v in fwd.rows.items()}, 1, 0) for b in range(batch)
            ]
        self._forwards += 1
        self._sample_count += fwd.weight.shape[1]

    def _measure_answers(self, fwd: _Forward, output) -> None:
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, tuple | list) and output:
            logits = output[0]
        if not torch.is_tensor(logits):
            raise ValueError(
                f"{type(self.model).__name__} returned no logits; the output divergence needs a model "
                "with a language-model head"
            )
        last = fwd.weight[1].bool()
        logprobs = answer_logprobs(logits, last)
        keys = _row_keys(fwd.input_ids, self._real_mask(fwd, last.shape))
        count = torch.ones(len(keys), dtype=torch.float64, device=logits.device)
        if self.answers is not None:
            self.answers.add(keys, logprobs)
            div = torch.zeros_like(count)
        else:
            ref = self.reference.take(self._compared, keys, logprobs.device)
            self._compared += len(keys)
            div = kl_rows(ref, logprobs).to(count.device)
        fwd.rows["div"], fwd.rows["div_n"] = div, count

    @staticmethod
    def _real_mask(fwd: _Forward, shape) -> torch.Tensor:
        attn = fwd.attention_mask
        if torch.is_tensor(attn) and tuple(attn.shape) == tuple(shape):
            return attn.bool()
        return torch.ones(shape, dtype=torch.bool)

    def _measured(self, idx: int, hidden: torch.Tensor) -> torch.Tensor:
        """The (batch, seq, hidden) tensor measured at a layer; other layouts are refused."""
        if hidden.dim() == 3:
            return hidden
        if hidden.dim() == 4 and self._altup and hidden.shape[0] == self._altup[0]:
            return hidden[self._altup[1]]
        altup = f" or ({self._altup[0]}, batch, seq, hidden) AltUp streams" if self._altup else ""
        raise ValueError(
            f"decoder layer {idx} of {type(self.model).__name__} receives hidden states of "
            f"shape {tuple(hidden.shape)}; capture measures (batch, seq, hidden){altup} only. "
            "Implement the 'locate_decoder_layers' hook to point at layers of that layout"
        )

    def _start_forward(self, idx: int, hidden: torch.Tensor) -> None:
        """At the first layer of a measured forward: the token masks and per-sample buffers."""
        batch, seq = hidden.shape[:2]
        fwd = self._fwd
        masks = [
            token_mask(
                batch, seq, sel, fwd.attention_mask, fwd.input_ids, self._image_ids, hidden.device
            )
            for sel in (self.tokens, "last")
        ]
        fwd.weight = torch.stack(masks).to(torch.float64)
        f64 = {"dtype": torch.float64, "device": hidden.device}
        L = self.num_layers
        fwd.rows = {
            "cos": torch.zeros(L, batch, **f64),
            "tokens": fwd.weight[0].sum(-1),
            "last": fwd.weight[1].sum(-1),
        }
        for n in self.block_sizes:
            fwd.rows[("ang", n)] = torch.zeros(2, L - n + 1, batch, **f64)
        if self._norm is not None:
            fwd.rows["ncos"] = torch.zeros(batch, **f64)
            for n in self.block_sizes:
                fwd.rows[("nang", n)] = torch.zeros(2, batch, **f64)
        if self._bad is None:
            self._bad = torch.zeros(L, dtype=torch.bool, device=hidden.device)

    def _layer_pre(self, idx: int):
        def hook(module, args, kwargs):
            fwd = self._fwd
            if not fwd.active:
                return
            hidden = self._measured(idx, args[0] if args else kwargs["hidden_states"])
            if fwd.weight is None:
                self._start_forward(idx, hidden)
            elif hidden.shape[:2] != fwd.weight.shape[1:]:
                raise ValueError(
                    f"decoder layer {idx} receives hidden states of shape {tuple(hidden.shape)}, "
                    f"but the forward started with (batch, seq) = {tuple(fwd.weight.shape[1:])}"
                )
            if self.block_sizes:
                self._add_angular(idx, hidden)
                fwd.held_inputs[idx] = hidden
                fwd.held_inputs.pop(idx - self.block_sizes[-1], None)
            fwd.layer_input = hidden

        return hook

    def _layer_post(self, idx: int):
        def hook(module, args, output):
            fwd = self._fwd
            if not fwd.active:
                return
            out = self._measured(idx, output[0] if isinstance(output, tuple | list) else output)
            rows, finite = masked_cosine_rows(fwd.layer_input, out, fwd.weight[0])
            fwd.rows["cos"][idx] += rows
            self._bad[idx] |= ~finite
            if idx == self.num_layers - 1:
                fwd.final = (fwd.layer_input, out)
                if self.block_sizes:
                    self._add_angular(self.num_layers, out)  # h_L is the last layer's output

        return hook

    def _on_norm(self, module, args, output) -> None:
        fwd = self._fwd
        if not fwd.active or fwd.final is None:
            return  # not the norm after the last layer of a measured forward
        normed = output[0] if isinstance(output, tuple | list) else output
        h_in, _ = fwd.final
        fwd.final = None
        if not torch.is_tensor(normed) or normed.shape != h_in.shape:
            return
        fwd.norm_seen = True
        fwd.rows["ncos"] += masked_cosine_rows(h_in, normed, fwd.weight[0])[0]
        for n in self.block_sizes:
            start = fwd.held_inputs.get(self.num_layers - n)
            if start is not None:
                fwd.rows[("nang", n)] += masked_angular_rows(start, normed, fwd.weight)

    def _add_angular(self, j: int, hidden: torch.Tensor) -> None:
        fwd = self._fwd
        for n in self.block_sizes:
            start = fwd.held_inputs.get(j - n)
            if start is not None:
                fwd.rows[("ang", n)][:, j - n] += masked_angular_rows(start, hidden, fwd.weight)

    # -- result ----------------------------------------------------------------------------
    def _stats(self, sums: dict, samples: int, forwards: int) -> LayerStatistics:
        L = self.num_layers
        if not sums:
            return LayerStatistics(L, (0.0,) * L, 0, samples, forwards)
        ang = {n: sums[("ang", n)].tolist() for n in self.block_sizes}
        norm = self._norm_ok and "ncos" in sums
        return LayerStatistics(
            num_layers=L,
            cos_sum=tuple(sums["cos"].tolist()),
            tokens=int(round(float(sums["tokens"]))),
            samples=samples,
            forwards=forwards,
            angular_sum={n: tuple(v[0]) for n, v in ang.items()},
            last_tokens=int(round(float(sums["last"]))),
            angular_last_sum={n: tuple(v[1]) for n, v in ang.items()},
            norm_cos_sum=float(sums["ncos"]) if norm else None,
            norm_angular_sum={n: float(sums[("nang", n)][0]) for n in self.block_sizes}
            if norm
            else {},
            norm_angular_last_sum=(
                {n: float(sums[("nang", n)][1]) for n in self.block_sizes} if norm else {}
            ),
            divergence_sum=float(sums["div"]) if "div" in sums else 0.0,
            divergence_samples=int(round(float(sums["div_n"]))) if "div_n" in sums else 0,
        )

    def statistics(self) -> LayerStatistics:
        """The sums collected so far, as plain numbers."""
        return self._stats(self._totals, self._sample_count, self._forwards)

    def sample_statistics(self) -> list[LayerStatistics]:
        """One statistics per sample, in the order the samples reached the model
        (``per_sample=True``); they add up to :meth:`statistics`."""
        if not self.per_sample:
            raise ValueError("per-sample statistics were not kept; capture with per_sample=True")
        return list(self._samples)
