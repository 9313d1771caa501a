"""Forward hooks that stream per-layer similarity statistics. The one place that hooks a model.

Nothing of the hidden states is kept beyond the forward in flight: each layer adds the sum of
cos(h_in, h_out) over the selected tokens to a float64 accumulator (the tensor maths is in
:mod:`.similarity`). The ``angular`` baseline needs the input of layer l at layer l+n, so the
inputs of the last max(n) layers are held.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .layers import find_decoder_layers
from .similarity import TOKEN_SELECTIONS, masked_angular_sum, masked_cosine_sum, token_mask
from .stats import LayerStatistics

__all__ = ["TOKEN_SELECTIONS", "LayerCapture", "NonFiniteActivationError", "image_token_ids"]

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


@dataclass
class _Sums:
    """Everything one capture accumulates, created in one place on the first measured forward."""

    cos: torch.Tensor
    bad: torch.Tensor  # per layer: a non-finite cosine was seen
    angular: dict[int, torch.Tensor]
    tokens: int = 0
    samples: int = 0
    forwards: int = 0

    @classmethod
    def zeros(cls, num_layers: int, block_sizes: tuple[int, ...], device) -> _Sums:
        f64 = {"dtype": torch.float64, "device": device}
        return cls(
            cos=torch.zeros(num_layers, **f64),
            bad=torch.zeros(num_layers, dtype=torch.bool, device=device),
            angular={n: torch.zeros(num_layers - n + 1, **f64) for n in block_sizes},
        )


@dataclass
class _Forward:
    """State of the forward in flight."""

    active: bool = False
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    weight: torch.Tensor | None = None  # float64 (batch, seq) token mask, built at layer 0
    layer_input: torch.Tensor | None = None
    held_inputs: dict[int, torch.Tensor] = field(default_factory=dict)


class LayerCapture:
    """Context manager that hooks every text-decoder layer of ``model`` and streams statistics.

    ``tokens``: which positions count — all real tokens, text tokens, image tokens, or the last
    real token of each sample. Padding (attention_mask == 0) never counts. Only prefill forwards
    are measured: decode steps of ``generate`` are skipped. Hidden states must be
    (batch, seq, hidden), or Gemma3n's (altup, batch, seq, hidden) AltUp streams, of which the
    main stream (``altup_active_idx``, the one the model predicts and corrects, and the only one
    its output norm sees first) is measured; any other layout is refused rather than measured
    wrongly.
    """

    def __init__(self, model: nn.Module, tokens: str = "all", block_sizes: Iterable[int] = ()):
        if tokens not in TOKEN_SELECTIONS:
            raise ValueError(
                f"tokens={tokens!r} is not allowed; choose one of: {', '.join(TOKEN_SELECTIONS)}"
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
        self._handles: list[Any] = []
        self._sums: _Sums | None = None
        self._fwd = _Forward()

    @property
    def forwards(self) -> int:
        return self._sums.forwards if self._sums else 0

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> LayerCapture:
        hooks = [
            self.model.register_forward_pre_hook(self._on_model_start, with_kwargs=True),
            self.model.register_forward_hook(self._on_model_end, with_kwargs=True),
        ]
        for idx, layer in enumerate(self.decoder.layers):
            hooks.append(layer.register_forward_pre_hook(self._layer_pre(idx), with_kwargs=True))
            hooks.append(layer.register_forward_hook(self._layer_post(idx)))
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
        fwd, sums = self._fwd, self._sums
        if fwd.active and fwd.weight is not None and sums is not None:
            if bool(sums.bad.any()):
                layer = int(sums.bad.nonzero()[0, 0])
                raise NonFiniteActivationError(
                    f"decoder layer {layer} produced non-finite activations (inf/nan) during calibration; "
                    "this is usually float16 overflow: calibrate in bfloat16 or float32"
                )
            sums.forwards += 1
        self._fwd = _Forward()

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
        """At the first layer of a measured forward: the token mask, and the sums if new."""
        batch, seq = hidden.shape[:2]
        fwd = self._fwd
        mask = token_mask(batch, seq, self.tokens, fwd.attention_mask, fwd.input_ids,
                          self._image_ids, hidden.device)  # fmt: skip
        if self._sums is None:
            self._sums = _Sums.zeros(self.num_layers, self.block_sizes, hidden.device)
        self._sums.tokens += int(mask.sum())
        self._sums.samples += batch
        fwd.weight = mask.to(torch.float64)

    def _layer_pre(self, idx: int):
        def hook(module, args, kwargs):
            fwd = self._fwd
            if not fwd.active:
                return
            hidden = self._measured(idx, args[0] if args else kwargs["hidden_states"])
            if fwd.weight is None:
                self._start_forward(idx, hidden)
            elif hidden.shape[:2] != fwd.weight.shape:
                raise ValueError(
                    f"decoder layer {idx} receives hidden states of shape {tuple(hidden.shape)}, "
                    f"but the forward started with (batch, seq) = {tuple(fwd.weight.shape)}"
                )
            if self.block_sizes:
                self._add_angular(idx, hidden)
                fwd.held_inputs[idx] = hidden
                fwd.held_inputs.pop(idx - self.block_sizes[-1], None)
            fwd.layer_input = hidden

        return hook

    def _layer_post(self, idx: int):
        def hook(module, args, output):
            fwd, sums = self._fwd, self._sums
            if not fwd.active:
                return
            out = self._measured(idx, output[0] if isinstance(output, tuple | list) else output)
            total, finite = masked_cosine_sum(fwd.layer_input, out, fwd.weight)
            sums.cos[idx] += total
            sums.bad[idx] |= ~finite
            if self.block_sizes and idx == self.num_layers - 1:
                self._add_angular(self.num_layers, out)  # h_L is the last layer's output

        return hook

    def _add_angular(self, j: int, hidden: torch.Tensor) -> None:
        fwd = self._fwd
        for n in self.block_sizes:
            start = fwd.held_inputs.get(j - n)
            if start is not None:
                self._sums.angular[n][j - n] += masked_angular_sum(start, hidden, fwd.weight)

    # -- result ----------------------------------------------------------------------------
    def statistics(self) -> LayerStatistics:
        """The sums collected so far, as plain numbers."""
        sums = self._sums or _Sums.zeros(self.num_layers, self.block_sizes, "cpu")
        return LayerStatistics(
            num_layers=self.num_layers,
            cos_sum=tuple(sums.cos.tolist()),
            tokens=sums.tokens,
            samples=sums.samples,
            forwards=sums.forwards,
            angular_sum={n: tuple(v.tolist()) for n, v in sums.angular.items()},
        )
