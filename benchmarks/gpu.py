"""The GPU proof, in one call: what cms's paper-scale path does on one GPU.

1. Fine-tunes a randomly initialised ~1.1B-parameter Llama (TinyLlama's shape), stored in bf16 as
   real checkpoints are, with finetune's single-device preset in bf16-mixed: fp32 master weights,
   fp32 export; reports tokens/s, MFU and the share of parameters the export changed at lr 1e-6.
2. Samples from it with the HF sampler (batched, n samples per question); reports tokens/s.
3. Runs the FSDP preset on one device (Lightning's FSDPStrategy, rank 0 loads, sync_module_states);
   reports tokens/s.

One line per figure; the last line is FSDP / single-device tokens per second. vLLM is not part of
it (its wheel cannot be carried to a lent GPU machine here). On a CPU, ``--size tiny`` runs
parts 1 and 2 on a small model in seconds (FSDP needs CUDA: Lightning refuses it on a CPU), which
keeps this script from rotting (tests/test_gpu.py).

    python benchmarks/gpu.py [--size 1b|tiny] [--steps 30] [--batch 16] [--length 1024]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from cms import data, finetuning, models, sampling

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
           "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False},
    "tiny": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 4096},
}
FMT = data.PromptFormat("Question: {question}\nAnswer:", " {solution}\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (32 x 1024 ran out of memory on an 80 GB H100)")
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=4, help="samples per question for the sampler figure")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"device: {device}; model: {args.size}")
    work = Path(tempfile.mkdtemp(prefix="cms-gpu-"))
    path = str(models.build_tiny({"name": f"proof-{args.size}", "tiny": SHAPES[args.size], "dtype": "bfloat16"}, work / "model"))
    n_params = models.count_params({"name": "proof", "tiny": SHAPES[args.size]})
    print(f"parameters: {n_params / 1e6:,.1f}M, stored in bfloat16")
    records = data.load("gsm8k", "train", "gsm8k", args.data_dir)
    pairs = [(FMT.prompt(r), FMT.completion(r.solution)) for r in records[: args.batch * args.steps]]
    common = dict(steps=args.steps, batch_size=args.batch, lr=1e-6, warmup_steps=0, max_length=args.length, checkpoints=1,
                  precision="bf16-mixed", accelerator="gpu" if cuda else "cpu")

    single = finetuning.run(path, pairs, work / "single", **common)
    changed = finetuning.changed_fraction(path, single["checkpoint"])
    print(f"fine-tune single device, bf16-mixed, fp32 master weights: {single['tokens_per_s']:.0f} tokens/s"
          + (f", MFU {100 * single['mfu']:.1f}%" if single["mfu"] else ", MFU n/a (no known peak)"))
    print(f"fine-tune loss: {single['train_loss_first']:.4f} -> {single['train_loss_last']:.4f}; weights {json.dumps(single['weights'])}")
    print(f"exported parameters changed by {args.steps} steps at lr 1e-6: {100 * changed:.2f}%")

    engine = sampling.make_sampler("hf", single["checkpoint"], batch_size=16)
    prompts = [FMT.prompt(r) for r in records[: args.questions]]
    seeds = [[sampling.seed_for(0, str(q), i) for i in range(args.samples)] for q in range(len(prompts))]
    t0 = time.perf_counter()
    outs = engine.generate(prompts, args.samples, temperature=0.7, top_p=1.0, max_new_tokens=128, stop=["Question:"], seeds=seeds)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    engine.close()
    tokens = sum(s.tokens for o in outs for s in o)
    print(f"HF sampler: {tokens} tokens ({len(prompts)} questions x {args.samples}) in {dt:.1f} s = {tokens / dt:.0f} tokens/s")

    if not cuda:
        print("FSDP on one device: skipped, Lightning's FSDP needs CUDA")
        print("fsdp/single tokens per second: n/a")
        return
    fsdp = finetuning.run(path, pairs, work / "fsdp", **common, strategy={"name": "fsdp", "devices": 1, "activation_checkpointing": True})
    print(f"fine-tune FSDP preset on 1 device (activation checkpointing): {fsdp['tokens_per_s']:.0f} tokens/s"
          + (f", MFU {100 * fsdp['mfu']:.1f}%" if fsdp["mfu"] else ""))
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"fsdp/single tokens per second: {fsdp['tokens_per_s'] / single['tokens_per_s']:.3f}")


if __name__ == "__main__":
    main()
