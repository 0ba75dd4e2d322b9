"""SFT throughput: cms's packed fine-tuning against TRL's SFTTrainer (packing, padding-free).

Same model (a locally built small Llama, or --model PATH), same data (GSM8K train
reference solutions as prompt/completion pairs, loss on the completion), same
learning rate and schedule, about the same tokens per step, same number of steps,
on the CPU. Each side is timed from its training call to its saved model (TRL's
tokenising and packing included, as cms's). Prints tokens per second for both,
cms's padding waste, both final losses (mean of the last 5 steps) and, on the
last line, cms / TRL.

    python benchmarks/finetune.py [--examples 512] [--steps 12] [--batch 8] [--length 2048] [--model PATH]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from cms import data, finetuning, models

ROOT = Path(__file__).resolve().parents[1]
CARD = {"name": "bench-llama", "tiny": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                                        "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 512,
                                        "max_position_embeddings": 4096}}


def trl_sft(path: str, pairs, out: Path, steps: int, rows: int, length: int, lr: float, warmup: int) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok = models.load_tokenizer(path)
    tok.padding_side = "right"
    model = models.load_model(path, device="cpu").train()
    ds = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
    args = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=rows, learning_rate=lr, warmup_steps=warmup,
        lr_scheduler_type="constant_with_warmup", weight_decay=0.0, max_grad_norm=1.0, packing=True, padding_free=True,
        max_length=length, completion_only_loss=True, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
        include_num_input_tokens_seen=True, seed=0, activation_checkpointing=False, bf16=False, fp16=False, dataloader_num_workers=0, disable_tqdm=True,
    )
    start = time.perf_counter()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.train()
    trainer.save_model(str(out / "final"))
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "tokens": int(trainer.state.num_input_tokens_seen), "loss": sum(losses[-5:]) / len(losses[-5:])}


def cms_sft(path: str, pairs, out: Path, steps: int, batch: int, length: int, lr: float, warmup: int) -> dict:
    start = time.perf_counter()
    m = finetuning.run(path, pairs, out, steps=steps, batch_size=batch, lr=lr, warmup_steps=warmup, max_length=length,
                       pack_length=length, accelerator="cpu", checkpoints=1, log_every=1000)
    seconds = time.perf_counter() - start
    rows = m["train_tokens"] / (1 - m["padding_waste"]) / length  # packed rows, padding included
    return {"seconds": seconds, "tokens": m["train_tokens"], "loss": sum(p["loss"] for p in m["curve"][-5:]) / 5,
            "padding_waste": m["padding_waste"], "rows_per_step": max(1, round(rows / steps))}


def padding_waste(tok, dataset: str, length: int, batch: int = 32, world: int = 1, steps: int = 60) -> tuple[float, float, int]:
    """Padding share of train reference solutions as training lays them out (``steps`` steps of ``batch``,
    each rank's share in balanced rows of up to ``length``), and padded per batch of ``batch``."""
    fmt = data.PromptFormat("Question: {question}\nAnswer:", " {solution}\n\n")
    records = data.load(dataset, "train", "gsm8k" if dataset == "gsm8k" else "math", ROOT.parent / "shared" / "data")
    ex = finetuning.tokenize_pairs(tok, [(fmt.prompt(r), fmt.completion(r.solution)) for r in records], length)
    plan = finetuning.StepPlan(ex, batch, seed=0, capacity=length, world=world)
    packed = [finetuning.collate(share, 0, length) for s in range(steps) for share in plan.ranks(s)]
    lengths = [len(e["input_ids"]) for e in ex]
    order = torch.randperm(len(ex), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [[lengths[i] for i in order[k:k + batch]] for k in range(0, len(order), batch)]
    padded = 1 - sum(lengths) / sum(max(b) * len(b) for b in batches)
    return 1 - sum(p["real_tokens"] for p in packed) / sum(p["tokens"] for p in packed), padded, len(ex)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8, help="examples per step")
    ap.add_argument("--length", type=int, default=2048, help="tokens per packed row")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--model", help="an HF model directory (default: a locally built small Llama)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = a.model or str(models.build_tiny(CARD, tmp / "model", seed=0))
        fmt = data.PromptFormat("Question: {question}\nAnswer:", " {solution}\n\n")
        pairs = [(fmt.prompt(r), fmt.completion(r.solution)) for r in data.load("gsm8k", "train", "gsm8k", ROOT.parent / "shared" / "data")[: a.examples]]
        n_params = sum(p.numel() for p in models.load_model(path, device="cpu").parameters())
        print(f"model {path}: {n_params:,} params; "
              f"{len(pairs)} GSM8K pairs, {a.steps} steps, ~{a.batch} examples/step, rows of {a.length} tokens, {torch.get_num_threads()} threads")
        ours = cms_sft(path, pairs, tmp / "cms", a.steps, a.batch, a.length, a.lr, 2)
        theirs = trl_sft(path, pairs, tmp / "trl", a.steps, ours["rows_per_step"], a.length, a.lr, 2)
    for name, r in (("cms", ours), ("trl", theirs)):
        print(f"{name}: {r['tokens']} tokens in {r['seconds']:.1f} s = {r['tokens'] / r['seconds']:.0f} tokens/s, final loss {r['loss']:.4f}")
    print(f"cms padding waste: {100 * ours['padding_waste']:.2f}% ({ours['rows_per_step']} rows/step)")
    tok = models.byte_tokenizer()
    for dataset in ("gsm8k", "math"):
        for length, world in ((2048, 1), (4096, 1), (4096, 8)):
            packed, padded, n = padding_waste(tok, dataset, length, world=world)
            print(f"padding waste, {dataset} train reference solutions ({n}, byte tokens), batch 32, rows of {length}, "
                  f"{world} rank(s): packed {100 * packed:.2f}%, padded batches of 32 {100 * padded:.1f}%")
    print(f"cms/trl tokens per second: {(ours['tokens'] / ours['seconds']) / (theirs['tokens'] / theirs['seconds']):.3f}")


if __name__ == "__main__":
    main()
