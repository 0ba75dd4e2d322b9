"""Supervised fine-tuning of the setting's learner on the kept (question, solution) pairs.

A LightningModule around an HF causal LM and a LightningDataModule of tokenised
pairs; the loss covers the solution tokens only (prompt and padding are masked
with -100). The result is an ordinary HF directory that both samplers load.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from cms import models

log = logging.getLogger(__name__)
IGNORE = -100


def tokenize_pairs(tokenizer, pairs: list[tuple[str, str]], max_length: int) -> list[dict]:
    """input_ids and labels (solution tokens only, then EOS) for each (prompt, completion)."""
    examples = []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        c = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids = (p + c)[:max_length]
        labels = ([IGNORE] * len(p) + c)[:max_length]
        if any(t != IGNORE for t in labels):
            examples.append({"input_ids": ids, "labels": labels})
    if len(examples) < len(pairs):
        log.warning("%d of %d examples have no solution token within finetune.max_length=%d and are skipped",
                    len(pairs) - len(examples), len(pairs), max_length)
    return examples


def collate(batch: list[dict], pad_id: int) -> dict:
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), IGNORE)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class SFTData(L.LightningDataModule):
    def __init__(self, examples: list[dict], batch_size: int, pad_id: int, seed: int = 0):
        super().__init__()
        self.examples, self.batch_size, self.pad_id, self.seed = examples, batch_size, pad_id, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.examples, batch_size=min(self.batch_size, len(self.examples)), shuffle=True,
            generator=torch.Generator().manual_seed(self.seed), collate_fn=lambda b: collate(b, self.pad_id),
        )


class SFTModule(L.LightningModule):
    def __init__(self, model, lr: float, warmup_steps: int, weight_decay: float = 0.0, schedule: str = "constant", total_steps: int = 1):
        super().__init__()
        self.model, self.lr, self.warmup_steps, self.weight_decay = model, lr, warmup_steps, weight_decay
        self.schedule, self.total_steps = schedule, total_steps
        self.curve: list[dict] = []

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"fine-tuning loss is {loss.item()} at step {self.global_step}: lower finetune.lr "
                "or use finetune.precision=32-true; the samples and the data stay in the run directory"
            )
        self.log("train/loss", loss, prog_bar=True)
        self.curve.append({"step": self.global_step, "loss": loss.item(), "lr": self.optimizers().param_groups[0]["lr"]})
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        warmup, total = max(1, self.warmup_steps), max(1, self.total_steps)

        def factor(step: int) -> float:  # linear warm-up, then constant or cosine decay to 10%
            if step < warmup or self.schedule == "constant":
                return min(1.0, (step + 1) / warmup)
            return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def run(model_path: str, pairs: list[tuple[str, str]], out_dir: str | Path, *, steps: int, batch_size: int, lr: float,
        warmup_steps: int = 0, weight_decay: float = 0.0, schedule: str = "constant", grad_clip: float = 1.0,
        max_length: int = 1024, precision: str = "32-true",
        accelerator: str = "auto", devices: int = 1, log_every: int = 10, seed: int = 0, **_) -> dict:
    """Fine-tune ``model_path`` on ``pairs`` for ``steps`` optimizer steps; return the metrics.

    Writes ``out_dir/checkpoint`` (HF format) and ``out_dir/finetune.json``; when
    both exist already, returns the stored metrics without training again.
    """
    out_dir = Path(out_dir)
    done = out_dir / "finetune.json"
    if done.exists() and (out_dir / "checkpoint").exists():
        return json.loads(done.read_text())
    L.seed_everything(seed, workers=True, verbose=False)
    tokenizer = models.load_tokenizer(model_path)
    tokenizer.padding_side = "right"
    model = models.load_model(model_path, device="cpu").train()
    examples = tokenize_pairs(tokenizer, pairs, max_length)
    if not examples:
        raise ValueError("no training example has a solution token left after truncation: raise finetune.max_length")
    module = SFTModule(model, lr, warmup_steps, weight_decay, schedule, steps)
    trainer = L.Trainer(
        max_steps=steps, accelerator=accelerator, devices=devices, precision=precision, logger=False,
        gradient_clip_val=grad_clip or None,
        enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=log_every,
        num_sanity_val_steps=0, default_root_dir=str(out_dir),
    )
    trainer.fit(module, datamodule=SFTData(examples, batch_size, tokenizer.pad_token_id, seed))
    tmp = out_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    module.model.save_pretrained(tmp)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
    tmp.rename(out_dir / "checkpoint")
    curve = module.curve
    metrics = {
        "checkpoint": str(out_dir / "checkpoint"),
        "steps": trainer.global_step,
        "epochs": math.ceil(trainer.global_step * batch_size / len(examples)),
        "n_examples": len(examples),
        "train_loss_first": curve[0]["loss"] if curve else None,
        "train_loss_last": curve[-1]["loss"] if curve else None,
        "curve": curve,
    }
    done.write_text(json.dumps(metrics, indent=2))
    return metrics
