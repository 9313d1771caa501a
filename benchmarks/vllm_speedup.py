"""Decode speed-up in vLLM of a Qwen2 causal LM with k of its L decoder layers removed.

Run in the vLLM environment (``make test-vllm`` builds ``.venv-vllm``), from the repository root::

    .venv-vllm/bin/python -m benchmarks.vllm_speedup                  # L = 24, k = 6, 12
    .venv-vllm/bin/python -m benchmarks.vllm_speedup --layers 16 --new-tokens 16 --rounds 6

A pruned export is an ordinary checkpoint whose config has L - k layers, so every variant here is
the same random model (``DecoderSpec`` of the transformers benchmark: hidden 1024, 16 heads, 4 KV
heads, MLP 2816, vocabulary 32000, float32) with ``num_hidden_layers`` = L - k and vLLM's dummy
weights (values do not change the cost). All variants' engines are up at once and timed in
interleaved rounds (``benchmarks.common.interleaved``: an order shuffled every round, seeded,
after one warm-up call per engine), on wall time: the engine works in its own process, which
the client's CPU time does not see. Per round, per-step decode time = (time to generate N
tokens - time to generate 1) / (N - 1), for every request of a batch of 1 and of 16 prompts of
16 tokens, greedy with ``ignore_eos``; the speed-up is the median of the per-round ratios
unpruned / pruned with its exact 95% interval (``benchmarks/stats.py``; at least 6 rounds). Reported
beside it: the decoder-only ideal L/(L-k); the target 0.9 L/(L-k) with a verdict on the interval;
and the whole-model ideal, which also counts what pruning cannot shrink (embedding, final norm,
lm_head, sampling) by its share of the parameters read per token. Results go to
``benchmarks/results/vllm/``; ``python -m benchmarks.run`` (``--vllm``) and
``python -m benchmarks.report`` show them beside the transformers speed-ups, with their run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from .common import (
    Adaptive,
    DecoderSpec,
    interleaved,
    log,
    machine_info,
    median,
    qwen2_config,
    seed_runs,
)

PROMPT_LEN = 16
OUT = Path(__file__).parent / "results" / "vllm"


def write_config(spec: DecoderSpec, folder: Path) -> Path:
    """A checkpoint folder holding only the config (vLLM fills the weights with dummies)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = qwen2_config(spec)
    config.architectures = ["Qwen2ForCausalLM"]
    config.save_pretrained(folder)
    return folder


def prompts(spec: DecoderSpec, batch: int) -> list[dict]:
    import torch

    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, spec.vocab_size, (batch, PROMPT_LEN), generator=gen)
    return [{"prompt_token_ids": row.tolist()} for row in ids]


def engine(folder: Path, max_batch: int):
    from vllm import LLM

    return LLM(
        model=str(folder), load_format="dummy", skip_tokenizer_init=True, dtype="float32",
        max_model_len=256, max_num_seqs=max_batch, enforce_eager=True, seed=0,
        disable_log_stats=True,
    )  # fmt: skip


def generate(llm, batch_prompts: list[dict], tokens: int) -> None:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True,
                            detokenize=False)  # fmt: skip
    out = llm.generate(batch_prompts, params, use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == tokens for o in out)


def fixed_share(spec: DecoderSpec) -> float:
    """The share of per-token weights that pruning does not remove (embedding row, lm_head)."""
    head = spec.vocab_size * spec.hidden_size
    return head / (head + spec.decoder_params())


def per_step(times, k: int, tokens: int) -> list[float]:
    """Per-step decode seconds of the k-removed engine in each round, wall clock (the engine
    works in its own process): (time for ``tokens`` new tokens - time for 1) / (tokens - 1)."""
    long, short = times.wall[f"k{k}_n{tokens}"], times.wall[f"k{k}_n1"]
    return [(a - b) / (tokens - 1) for a, b in zip(long, short, strict=True)]


def rows_of(times, spec: DecoderSpec, removed: list[int], batch: int, tokens: int) -> list[dict]:
    """Speed-up of every k over k = 0 in one batch size, the median of the per-round ratios with
    its exact interval (benchmarks/stats.py), against 0.9 L/(L-k) and the whole-model ideal."""
    from .stats import MET, ratio_estimate, verdict

    L, share = spec.num_layers, fixed_share(spec)
    base = per_step(times, 0, tokens)
    out = []
    for k in removed:
        ideal = L / (L - k)
        est = ratio_estimate(base, per_step(times, k, tokens))
        judged = verdict(est, 0.9 * ideal, at_most=False)
        out.append(
            {
                "layers": L,
                "removed": k,
                "batch": batch,
                "decode_ms_per_token_unpruned": 1000 * median(base),
                "decode_ms_per_token_pruned": 1000 * median(per_step(times, k, tokens)),
                "speedup": est,
                "ideal": ideal,
                "target": 0.9 * ideal,
                "whole_model_ideal": 1 / (share + (1 - share) * (L - k) / L),
                "verdict": judged,
                "met": judged == MET,
            }
        )
    return out


def time_batch(engines: dict, spec: DecoderSpec, batch: int, tokens: int, rounds: int):
    """Interleaved rounds of every engine generating 1 and ``tokens`` tokens for ``batch``
    prompts (one warm-up round first)."""
    batch_prompts = prompts(spec, batch)
    variants = {}
    for k, llm in engines.items():
        for n in (1, tokens):
            variants[f"k{k}_n{n}"] = lambda llm=llm, n=n: generate(llm, batch_prompts, n)
    log(f"batch {batch}: {len(variants)} variants x {rounds} rounds")
    plan = Adaptive(min_rounds=rounds, max_rounds=rounds, cap_s=float("inf"))
    times = interleaved(variants, [], plan, "wall", seed=batch)
    times.stopped = f"{rounds} rounds"
    return times


def markdown(result: dict) -> str:
    import vllm

    from .report import ci

    lines = [
        "| L | k | batch | ms/token unpruned | ms/token pruned | speed-up [95% interval] "
        "| 0.9 L/(L-k) | whole-model ideal | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['layers']} | {r['removed']} | {r['batch']} | "
        f"{r['decode_ms_per_token_unpruned']:.1f} | {r['decode_ms_per_token_pruned']:.1f} | "
        f"{ci(r['speedup'], 2)} | {r['target']:.2f} | "
        f"{r['whole_model_ideal']:.2f} | {r['verdict']} |"
        for r in result["rows"]
    ]
    m = result["machine"]
    head = f"vLLM {vllm.__version__}, {m['cpu']}, {result['date']}, {result['rounds']} rounds"
    return f"{head}\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vllm_speedup", description=__doc__)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--removed", type=int, nargs="+", help="default: 25%% and 50%% of --layers")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument(
        "--rounds",
        "--reps",
        dest="rounds",
        type=int,
        default=8,
        help="interleaved rounds (at least 6 for a 95%% interval)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the shuffled round orders")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    seed = a.seed if a.seed is not None else time.time_ns() % 2**31
    seed_runs(seed)
    L = a.layers
    removed = a.removed or [L // 4, L // 2]
    base = replace(DecoderSpec(), num_layers=L)
    tmp = Path(tempfile.mkdtemp(prefix="vllm-speedup-"))
    engines: dict = {}
    try:
        for k in [0, *removed]:
            log(f"starting vLLM on {L - k} layers")
            spec = replace(base, num_layers=L - k)
            engines[k] = engine(write_config(spec, tmp / f"L{L - k}"), max(a.batches))
        for llm in engines.values():  # warm-up: the first calls of an engine pay its set-up
            generate(llm, prompts(base, max(a.batches)), a.new_tokens)
        times = {b: time_batch(engines, base, b, a.new_tokens, a.rounds) for b in a.batches}
    finally:  # stop every engine's processes, or the interpreter waits for them at exit
        for llm in engines.values():
            llm.llm_engine.engine_core.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    import vllm

    result = {
        "schema": 2,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info() | {"vllm": vllm.__version__},
        "seed": seed,
        "spec": base.to_dict(),
        "new_tokens": a.new_tokens,
        "prompt_len": PROMPT_LEN,
        "rounds": a.rounds,
        "rows": [r for b in a.batches for r in rows_of(times[b], base, removed, b, a.new_tokens)],
        "times": {str(b): t.to_dict() for b, t in times.items()},
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "vllm_speedup.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (a.out / "vllm_speedup.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":  # vLLM starts its engines with spawn: the guard is required
    raise SystemExit(main())
