"""Shared helpers: machine description, interleaved timing, and the random Qwen2 decoders."""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm


def progress(total: int, desc: str) -> tqdm:
    """A progress bar on stderr (results go to files, progress to the terminal)."""
    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)


_START = time.perf_counter()


def log(message: str) -> None:
    """A progress line on stderr, stamped with the seconds since the run started."""
    print(f"[{time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------- timing
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def reps_for(round_s: float, budget_s: float, low: int, high: int) -> int:
    """Repetitions that fit ``budget_s`` given one round's cost, clamped to [low, high]."""
    if round_s <= 0:
        return high
    return max(low, min(high, int(budget_s // round_s)))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved(
    variants: Mapping[str, Callable[[], Any]],
    reps: int,
    bar: tqdm | None = None,
) -> dict[str, list[float]]:
    """Time every variant ``reps`` times, alternating between them.

    The order rotates each round so no variant always runs right after a particular other one
    (caches, CPU frequency and background load then affect every variant alike). Garbage is
    collected outside the timed region.
    """
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    # With torch, transformers and lmms-eval loaded a full collection walks millions of objects
    # (a third of a second here); frozen, the per-call collections only see new objects.
    gc.collect()
    gc.freeze()
    try:
        for r in range(reps):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                gc.collect()
                seconds, _ = timed(variants[name])
                times[name].append(seconds)
                if bar is not None:
                    bar.update(1)
    finally:
        gc.unfreeze()
    return times


def summarize(times: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median, min and max seconds per variant."""
    return {
        n: {"median_s": median(t), "min_s": min(t), "max_s": max(t), "n": len(t)}
        for n, t in times.items()
    }


def paired_ratios(times: Mapping[str, list[float]], num: str, den: str) -> list[float]:
    """Per-round ratios: both variants of a round ran back to back under the same conditions."""
    return [a / b for a, b in zip(times[num], times[den])]


# --------------------------------------------------------------------------- decoders
@dataclass(frozen=True)
class DecoderSpec:
    """A Qwen2 text decoder of realistic width with random weights (float32)."""

    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_heads: int = 16
    num_kv_heads: int = 4
    num_layers: int = 8
    vocab_size: int = 32000
    max_positions: int = 8192
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def decoder_params(self) -> int:
        """Parameters of the decoder layers (attention, MLP, norms)."""
        h, head = self.hidden_size, self.hidden_size // self.num_heads
        kv = self.num_kv_heads * head
        attn = h * h + 2 * (h * kv + kv) + h + h * h  # q (with bias), k, v (with bias), o
        mlp = 3 * h * self.intermediate_size
        return self.num_layers * (attn + mlp + 2 * h)


def qwen2_config(spec: DecoderSpec):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=False,
        use_cache=False,
    )


def build_decoder(spec: DecoderSpec, causal_lm: bool = False):
    """``Qwen2Model`` (or ``Qwen2ForCausalLM``) with seeded random weights, in eval mode."""
    import torch
    from transformers import Qwen2ForCausalLM, Qwen2Model

    torch.manual_seed(spec.seed)
    cls = Qwen2ForCausalLM if causal_lm else Qwen2Model
    return cls(qwen2_config(spec)).to(torch.float32).eval()


def token_ids(spec: DecoderSpec, seq_len: int, seed: int = 1):
    """A batch of one random token sequence (same tokens for every variant)."""
    import torch

    gen = torch.Generator().manual_seed(seed * 100_003 + seq_len)
    return torch.randint(0, spec.vocab_size, (1, seq_len), generator=gen)
