"""Decode speed-up in vLLM of a Qwen2 causal LM with k of its L decoder layers removed.

Run in the vLLM environment (``make test-vllm`` builds ``.venv-vllm``), from the repository root::

    .venv-vllm/bin/python -m benchmarks.vllm_speedup                  # L = 24, k = 6, 12
    .venv-vllm/bin/python -m benchmarks.vllm_speedup --layers 16 --new-tokens 16 --reps 2

A pruned export is an ordinary checkpoint whose config has L - k layers, so every variant here is
the same random model (``DecoderSpec`` of the transformers benchmark: hidden 1024, 16 heads, 4 KV
heads, MLP 2816, vocabulary 32000, float32) with ``num_hidden_layers`` = L - k and vLLM's dummy
weights (values do not change the cost). All variants' engines are up at once and timed
interleaved, rotating the order every round. Per-token decode time = (time to generate N tokens
- time to generate 1) / (N - 1), for every request of a batch of 1 and of 16 prompts of 16
tokens, greedy with ``ignore_eos``. Reported: speed-up = unpruned / pruned decode time; the
decoder-only ideal L/(L-k); the target 0.9 L/(L-k); and the whole-model ideal, which also
counts what pruning cannot shrink (embedding, final norm, lm_head, sampling) by its share of the
parameters read per token. Results go to ``benchmarks/results/vllm/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from .common import DecoderSpec, interleaved, log, machine_info, median, qwen2_config, summarize

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vllm_speedup", description=__doc__)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--removed", type=int, nargs="+", help="default: 25%% and 50%% of --layers")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    L = a.layers
    removed = a.removed or [L // 4, L // 2]
    base = replace(DecoderSpec(), num_layers=L)
    specs = {k: replace(base, num_layers=L - k) for k in [0, *removed]}
    tmp = Path(tempfile.mkdtemp(prefix="vllm-speedup-"))
    engines = {}
    try:
        for k, spec in specs.items():
            log(f"starting vLLM on {spec.num_layers} layers")
            engines[k] = engine(write_config(spec, tmp / f"L{spec.num_layers}"), max(a.batches))
        per_token: dict[int, dict[int, float]] = {b: {} for b in a.batches}
        raw = {}
        for b in a.batches:
            batch_prompts = prompts(base, b)
            variants = {}
            for k, llm in engines.items():
                generate(llm, batch_prompts, a.new_tokens)  # warm-up
                for n in (1, a.new_tokens):
                    variants[f"k{k}_n{n}"] = lambda llm=llm, ps=batch_prompts, n=n: generate(
                        llm, ps, n
                    )
            log(f"batch {b}: timing {len(variants)} variants x {a.reps}")
            times = interleaved(variants, a.reps)
            raw[b] = summarize(times)
            for k in engines:
                long, short = median(times[f"k{k}_n{a.new_tokens}"]), median(times[f"k{k}_n1"])
                per_token[b][k] = (long - short) / (a.new_tokens - 1)
    finally:  # stop every engine's processes, or the interpreter waits for them at exit
        for llm in engines.values():
            llm.llm_engine.engine_core.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    share = fixed_share(base)
    for b in a.batches:
        for k in removed:
            ideal = L / (L - k)
            whole = 1 / (share + (1 - share) * (L - k) / L)
            speedup = per_token[b][0] / per_token[b][k]
            rows.append({"layers": L, "removed": k, "batch": b,
                         "decode_ms_per_token_unpruned": 1000 * per_token[b][0],
                         "decode_ms_per_token_pruned": 1000 * per_token[b][k],
                         "speedup": speedup, "ideal": ideal, "target": 0.9 * ideal,
                         "whole_model_ideal": whole, "met": speedup >= 0.9 * ideal})  # fmt: skip
    import vllm

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info() | {"vllm": vllm.__version__},
        "spec": base.to_dict(),
        "new_tokens": a.new_tokens,
        "prompt_len": PROMPT_LEN,
        "reps": a.reps,
        "rows": rows,
        "times": {str(b): t for b, t in raw.items()},
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "vllm_speedup.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| L | k | batch | ms/token unpruned | ms/token pruned | speed-up | 0.9 L/(L-k) | whole-model ideal | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['layers']} | {r['removed']} | {r['batch']} | {r['decode_ms_per_token_unpruned']:.1f} | "
        f"{r['decode_ms_per_token_pruned']:.1f} | {r['speedup']:.2f} | {r['target']:.2f} | "
        f"{r['whole_model_ideal']:.2f} | {'yes' if r['met'] else 'no'} |"
        for r in rows
    ]
    table = "\n".join(lines) + "\n"
    (a.out / "vllm_speedup.md").write_text(
        f"vLLM {vllm.__version__}, {result['machine']['cpu']}, {result['date']}\n\n{table}"
    )
    print(table)
    return 0


if __name__ == "__main__":  # vLLM starts its engines with spawn: the guard is required
    raise SystemExit(main())
