"""Shared helpers: machine description, interleaved timing, and the random Qwen2 decoders."""

from __future__ import annotations

import gc
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
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


def on_hypervisor() -> bool:
    """Whether the CPU says it runs under a hypervisor (the ``hypervisor`` cpuinfo flag)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " hypervisor" in line for line in f)
    except OSError:
        return False


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "cpu": cpu_model(),
        "virtual_machine": on_hypervisor(),
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


def steal_seconds() -> float:
    """CPU time the hypervisor has taken from this virtual machine since boot (all CPUs).

    The ``steal`` column of ``/proc/stat``; 0 where the kernel does not report it.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0
    except (OSError, ValueError):
        return 0.0


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed2(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds and process CPU seconds (every thread) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


CLOCKS = ("cpu", "wall")

# The seed of this run's shuffled orders (``seed_runs``; run.py records it). Each call of
# ``interleaved`` mixes in its own seed, so allocations and lengths get orders of their own,
# and two runs with other seeds do not repeat an effect of a variant's place in the round.
RUN_SEED = 0


def seed_runs(seed: int) -> None:
    """Set the seed that every later ``interleaved`` call mixes into its own."""
    global RUN_SEED
    RUN_SEED = seed


@dataclass(frozen=True)
class Adaptive:
    """How many interleaved rounds to run: at least ``min_rounds``; then stop as soon as every
    compared ratio's interval is within +-``rel_half_width``, or before a round would end past
    ``cap_s`` seconds, or at ``max_rounds``."""

    min_rounds: int
    max_rounds: int
    cap_s: float
    rel_half_width: float = 0.02
    warmup: int = 1
    extra_rounds: int | None = None  # rounds that time the ``extra`` variants (min_rounds)


@dataclass
class Timings:
    """Per-variant wall and CPU seconds from interleaved rounds, and why the rounds stopped."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    rounds: int = 0
    seconds: float = 0.0
    stopped: str = ""
    steal_s: float = 0.0
    groups: list[int] = field(default_factory=list)  # per round; empty: one group

    def of(self, clock: str) -> dict[str, list[float]]:
        return self.cpu if clock == "cpu" else self.wall

    def group_labels(self, n: int) -> list[int] | None:
        """The group of each of the first ``n`` rounds, or None when there is one group."""
        return self.groups[:n] if len(set(self.groups)) > 1 else None

    def ratio(self, num: str, den: str, clock: str = "cpu") -> dict[str, Any]:
        """Median of the per-round ratios num/den with its bootstrap interval."""
        from .stats import ratio_estimate

        t = self.of(clock)
        n = min(len(t[num]), len(t[den]))
        return ratio_estimate(t[num][:n], t[den][:n], groups=self.group_labels(n))

    @classmethod
    def concat(cls, parts: Sequence[Timings]) -> Timings:
        """The rounds of ``parts`` (same variants, run one after the other) as one set of
        rounds in groups, one group per part."""
        names = list(parts[0].wall)
        out = cls({n: [] for n in names}, {n: [] for n in names})
        for g, part in enumerate(parts):
            for n in names:
                if len(part.wall[n]) != part.rounds:
                    raise ValueError(f"variant {n!r} was not timed in every round of part {g}")
                out.wall[n] += part.wall[n]
                out.cpu[n] += part.cpu[n]
            out.groups += [g] * part.rounds
            out.rounds += part.rounds
            out.seconds += part.seconds
            out.steal_s += part.steal_s
        out.stopped = ", ".join(p.stopped for p in parts)
        return out

    def ratios(self, num: str, den: str) -> dict[str, dict[str, Any]]:
        """``{"cpu": estimate, "wall": estimate}`` of num/den."""
        return {c: self.ratio(num, den, c) for c in CLOCKS}

    def summary(self) -> dict[str, Any]:
        """Median, min and max seconds per variant and clock, and the run's bookkeeping."""
        return {
            "variants": {
                n: {
                    c: {
                        "median_s": median(self.of(c)[n]),
                        "min_s": min(self.of(c)[n]),
                        "max_s": max(self.of(c)[n]),
                    }
                    for c in CLOCKS
                }
                | {"n": len(self.wall[n])}
                for n in self.wall
            },
            "rounds": self.rounds,
            "groups": len(set(self.groups)) or 1,
            "seconds": self.seconds,
            "stopped": self.stopped,
            "steal_s": self.steal_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "round_groups": self.groups,
        } | self.summary()


def interleaved(
    variants: Mapping[str, Callable[[], Any]],
    pairs: Sequence[tuple[str, str]],
    plan: Adaptive,
    clock: str = "cpu",
    extra: Sequence[str] = (),
    bar: tqdm | None = None,
    seed: int = 0,
) -> Timings:
    """Time the variants in interleaved rounds until ``plan`` says the ratios are known.

    Every round runs each variant once, in an order shuffled afresh each round (seeded, so a run
    is repeatable): no variant always runs right after a particular other one. A merely rotated
    order keeps each variant's predecessor (in a cyclic order A, B, C, B always follows A), and
    a variant that runs after one sharing its weights finds them in the CPU caches. ``plan.warmup`` untimed rounds come first (first calls pay one-time set-up and, on a
    virtual machine, the host mapping in fresh memory). Garbage is collected outside the timed
    region. ``pairs`` are the (numerator, denominator) ratios whose intervals, on ``clock``,
    decide when to stop; ``extra`` variants are timed in the first ``plan.extra_rounds`` rounds
    only (default ``min_rounds``). The order is seeded by ``seed`` and the run's ``RUN_SEED``.
    """
    from .stats import precise_enough

    names = list(variants)
    rng = random.Random(RUN_SEED * 1_000_003 + seed)
    n_extra = plan.min_rounds if plan.extra_rounds is None else plan.extra_rounds
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    out = Timings(wall, cpu)
    # With torch, transformers and lmms-eval loaded a full collection walks millions of objects
    # (a third of a second here); frozen, the per-call collections only see new objects.
    gc.collect()
    gc.freeze()
    steal0 = steal_seconds()
    try:
        for _ in range(plan.warmup):
            for name in names:
                gc.collect()
                variants[name]()
        start = time.perf_counter()
        for r in range(plan.max_rounds):
            round_start = time.perf_counter()
            order = [n for n in names if r < n_extra or n not in extra]
            rng.shuffle(order)
            for name in order:
                gc.collect()
                w, c, _ = timed2(variants[name])
                wall[name].append(w)
                cpu[name].append(c)
            out.rounds = r + 1
            if bar is not None:
                bar.update(1)
            now = time.perf_counter()
            if out.rounds < plan.min_rounds:
                continue
            if precise_enough([out.ratio(a, b, clock) for a, b in pairs], plan.rel_half_width):
                out.stopped = "precision"
                break
            if now + (now - round_start) - start > plan.cap_s:
                out.stopped = "time cap"
                break
        else:
            out.stopped = "max rounds"
        out.seconds = time.perf_counter() - start
    finally:
        gc.unfreeze()
    out.steal_s = steal_seconds() - steal0
    return out


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
