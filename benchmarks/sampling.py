"""Sampling throughput: cms's HF sampler against the raw ``model.generate`` it stands in for.

Same model (a locally built tiny Llama, or --model PATH), same prompts (GSM8K
test questions, zero-shot), same batch size, same number of samples per prompt
and new tokens, sampling at temperature 0.7. Prints generated tokens per second
for both and, on the last line, cms / raw.

    python benchmarks/sampling.py [--questions 64] [--batch 16] [--samples 4] [--new-tokens 64] [--model PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cms import data, models, sampling

ROOT = Path(__file__).resolve().parents[1]


def raw_generate(model, tok, prompts, batch, n, new_tokens) -> int:
    """HF generate, batched the same way; returns the tokens it generated (up to EOS)."""
    generated = 0
    for start in range(0, len(prompts), batch):
        enc = tok(prompts[start : start + batch], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                                 num_return_sequences=n, pad_token_id=tok.pad_token_id)
        new = out[:, enc.input_ids.shape[1]:]
        for row in new.tolist():
            generated += next((i + 1 for i, t in enumerate(row) if t == tok.eos_token_id), len(row))
    return generated


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--model", default=None, help="an HF model directory (default: the tiny SE model, built locally)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or models.resolve(OmegaConf.to_container(OmegaConf.load(ROOT / "conf/family/tiny.yaml"))["se"], tmp)
        records = data.load("gsm8k", "test", "gsm8k", ROOT.parent / "shared" / "data")[: args.questions]
        fmt = data.PromptFormat("Question: {question}\nAnswer:", " {solution}\n\n")
        prompts = [fmt.prompt(r) for r in records]
        engine = sampling.HFSampler(path, batch_size=args.batch)
        model, tok = engine.model, engine.tokenizer
        seeds = [[sampling.seed_for(0, r.id, i) for i in range(args.samples)] for r in records]
        best = {"cms": 0.0, "raw": 0.0}
        for _ in range(args.repeats):  # interleaved, best of N: the machine's noise hits both alike
            t = time.perf_counter()
            out = engine.generate(prompts, args.samples, 0.7, 1.0, args.new_tokens, [], seeds)
            cms_tps = sum(s.tokens for row in out for s in row) / (time.perf_counter() - t)
            t = time.perf_counter()
            raw_tps = raw_generate(model, tok, prompts, args.batch, args.samples, args.new_tokens) / (time.perf_counter() - t)
            best = {"cms": max(best["cms"], cms_tps), "raw": max(best["raw"], raw_tps)}
        print(f"model {path} ({models.count_params({'name': 'm', 'path': path})} params), {len(prompts)} prompts x "
              f"{args.samples} samples x {args.new_tokens} new tokens, batch {args.batch} prompts, device {model.device}")
        print(f"cms HFSampler: {best['cms']:.0f} tokens/s")
        print(f"raw HF generate: {best['raw']:.0f} tokens/s")
        print(f"ratio cms/raw: {best['cms'] / best['raw']:.3f}")


if __name__ == "__main__":
    main()
