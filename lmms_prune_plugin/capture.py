"""Forward hooks that stream per-layer similarity statistics. The one place that hooks a model.

Nothing of the hidden states is kept beyond the forward in flight: each layer adds the sum of
cos(h_in, h_out) over the selected tokens to a float64 accumulator. The ``angular`` baseline
needs the input of layer l at layer l+n, so the inputs of the last max(n) layers are held.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import find_decoder_layers
from .stats import LayerStatistics

TOKEN_SELECTIONS = ("all", "text", "image", "last")
_IMAGE_TOKEN_KEYS = ("image_token_id", "image_token_index", "video_token_id", "video_token_index")


class NonFiniteActivationError(FloatingPointError):
    """A decoder layer produced inf or nan during calibration."""


def image_token_ids(model: nn.Module) -> tuple[int, ...]:
    """Ids of the placeholder tokens that carry visual features, read from the model config."""
    cfg = getattr(model, "config", None)
    ids = {getattr(cfg, k) for k in _IMAGE_TOKEN_KEYS if isinstance(getattr(cfg, k, None), int)}
    return tuple(sorted(ids))


class LayerCapture:
    """Context manager that hooks every text-decoder layer of ``model`` and streams statistics.

    ``tokens``: which positions count — all real tokens, text tokens, image tokens, or the last
    real token of each sample. Padding (attention_mask == 0) never counts. Only prefill forwards
    are measured: decode steps of ``generate`` are skipped.
    """

    def __init__(self, model: nn.Module, tokens: str = "all", block_sizes: Iterable[int] = ()):
        if tokens not in TOKEN_SELECTIONS:
            raise ValueError(
                f"tokens={tokens!r} is not allowed; choose one of: {', '.join(TOKEN_SELECTIONS)}"
            )
        self.model = model
        self.tokens = tokens
        self.decoder = find_decoder_layers(model)
        self.num_layers = len(self.decoder)
        self.block_sizes = tuple(sorted(set(int(n) for n in block_sizes)))
        bad = [n for n in self.block_sizes if not 1 <= n <= self.num_layers]
        if bad:
            raise ValueError(
                f"block_sizes={bad} are not allowed; each must be in [1, {self.num_layers}]"
            )
        self._image_ids = image_token_ids(model)
        self._handles: list[Any] = []
        self._reset()

    def _reset(self) -> None:
        self._cos: torch.Tensor | None = None
        self._ang: dict[int, torch.Tensor] = {}
        self._tokens = 0
        self._samples = 0
        self.forwards = 0
        self._mask: torch.Tensor | None = None
        self._ids: torch.Tensor | None = None
        self._active = False
        self._inputs: dict[int, torch.Tensor] = {}
        self._bad: torch.Tensor | None = None

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> LayerCapture:
        self._handles.append(
            self.model.register_forward_pre_hook(self._on_model_start, with_kwargs=True)
        )
        self._handles.append(self.model.register_forward_hook(self._on_model_end, with_kwargs=True))
        for idx, layer in enumerate(self.decoder.layers):
            self._handles.append(
                layer.register_forward_pre_hook(self._layer_pre(idx), with_kwargs=True)
            )
            self._handles.append(layer.register_forward_hook(self._layer_post(idx)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._inputs.clear()
        self._active = False

    # -- hooks -----------------------------------------------------------------------------
    def _on_model_start(self, module, args, kwargs) -> None:
        # Transformers 5.2x passes the KV cache as ``cache``; older releases as ``past_key_values``.
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = (
            cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        )
        self._active = int(past) == 0
        self._ids = kwargs.get("input_ids", args[0] if args and torch.is_tensor(args[0]) else None)
        self._attn = kwargs.get("attention_mask")
        self._mask = None
        self._inputs.clear()

    def _on_model_end(self, module, args, kwargs, output) -> None:
        if self._active and self._mask is not None:
            if bool(self._bad.any()):
                layer = int(self._bad.nonzero()[0, 0])
                raise NonFiniteActivationError(
                    f"decoder layer {layer} produced non-finite activations (inf/nan) during calibration; "
                    "this is usually float16 overflow: calibrate in bfloat16 or float32"
                )
            self.forwards += 1
        self._active = False
        self._inputs.clear()

    def _select(self, hidden: torch.Tensor) -> torch.Tensor:
        """Boolean (batch, seq) mask of the positions that count, built once per forward."""
        if self._mask is not None:
            return self._mask
        batch, seq = hidden.shape[:2]
        attn = self._attn
        real = (
            attn.bool()
            if torch.is_tensor(attn) and attn.dim() == 2 and attn.shape == (batch, seq)
            else None
        )
        if real is None:
            real = torch.ones(batch, seq, dtype=torch.bool, device=hidden.device)
        real = real.to(hidden.device)
        mask = real
        if self.tokens in ("text", "image"):
            ids = self._ids
            if ids is None or ids.shape != (batch, seq):
                raise ValueError(
                    f"tokens={self.tokens!r} needs input_ids aligned with the decoder input"
                )
            is_image = torch.zeros_like(real)
            for tid in self._image_ids:
                is_image |= ids.to(hidden.device) == tid
            mask = real & (is_image if self.tokens == "image" else ~is_image)
        elif self.tokens == "last":
            last = seq - 1 - torch.flip(real.int(), dims=[1]).argmax(dim=1)
            mask = torch.zeros_like(real)
            mask[torch.arange(batch, device=real.device), last] = real.any(dim=1)
        self._mask = mask
        self._maskf = mask.to(torch.float64)
        self._tokens += int(mask.sum())
        self._samples += batch
        if self._cos is None:
            self._cos = torch.zeros(self.num_layers, dtype=torch.float64, device=hidden.device)
            self._bad = torch.zeros(self.num_layers, dtype=torch.bool, device=hidden.device)
            self._ang = {
                n: torch.zeros(self.num_layers - n + 1, dtype=torch.float64, device=hidden.device)
                for n in self.block_sizes
            }
        return mask

    def _layer_pre(self, idx: int):
        def hook(module, args, kwargs):
            if not self._active:
                return
            hidden = args[0] if args else kwargs["hidden_states"]
            self._select(hidden)
            if self.block_sizes:
                self._add_angular(idx, hidden)
                self._inputs[idx] = hidden
                self._inputs.pop(idx - self.block_sizes[-1], None)
            self._current_in = hidden

        return hook

    def _layer_post(self, idx: int):
        def hook(module, args, output):
            if not self._active:
                return
            out = output[0] if isinstance(output, tuple | list) else output
            cos = F.cosine_similarity(self._current_in.float(), out.float(), dim=-1)
            self._bad[idx] |= ~torch.isfinite(cos).all()
            self._cos[idx] += (torch.nan_to_num(cos).double() * self._maskf).sum()
            if self.block_sizes and idx == self.num_layers - 1:
                self._add_angular(self.num_layers, out)  # h_L is the last layer's output

        return hook

    def _add_angular(self, j: int, hidden: torch.Tensor) -> None:
        for n in self.block_sizes:
            start = self._inputs.get(j - n)
            if start is None:
                continue
            cos = F.cosine_similarity(start.float(), hidden.float(), dim=-1).clamp(-1.0, 1.0)
            dist = torch.arccos(cos) / torch.pi
            self._ang[n][j - n] += (torch.nan_to_num(dist).double() * self._maskf).sum()

    # -- result ----------------------------------------------------------------------------
    def statistics(self) -> LayerStatistics:
        """The sums collected so far, as plain numbers."""
        zeros = [0.0] * self.num_layers
        return LayerStatistics(
            num_layers=self.num_layers,
            cos_sum=tuple(self._cos.tolist()) if self._cos is not None else tuple(zeros),
            tokens=self._tokens,
            samples=self._samples,
            forwards=self.forwards,
            angular_sum={
                n: tuple(self._ang[n].tolist())
                if n in self._ang
                else tuple(zeros[: self.num_layers - n + 1])
                for n in self.block_sizes
            },
        )
