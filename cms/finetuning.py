"""Supervised fine-tuning of the setting's learner on the kept (question, solution) pairs.

A LightningModule around an HF causal LM. The loss covers the solution tokens
only (prompt and padding are masked with -100). Pairs are packed into
fixed-length rows (best-fit decreasing); inside a row the position ids restart
per example and no attention mask is passed, which makes transformers build a
block-diagonal causal mask (varlen kernels with flash-attention), so examples
never attend to each other.

The batch of step ``s`` is a function of (seed, s) alone, and a full training
state is written atomically every few steps, so a killed run resumes where it
stopped and ends exactly where an uninterrupted one would. The paper's protocol
keeps ``checkpoints`` evenly spaced HF checkpoints; the caller picks the best one
on a validation split. Multi-device presets re-launch this module as its own
process (``python -m cms.finetuning spec.json``), under ``srun`` across nodes.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from torch.utils.data import DataLoader, Sampler

from cms import data, models

log = logging.getLogger(__name__)
IGNORE = -100
# bf16 dense peak per GPU (TFLOP/s), for MFU; finetune.peak_tflops overrides
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "A10G": 125.0}


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


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: group example indices into rows of at most ``capacity`` tokens."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example of {n} tokens exceeds finetune.pack_length={capacity}: raise it to finetune.max_length or above")
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            rows.append([i])
            room, row = capacity - n, len(rows) - 1
        else:
            room, row = free.pop(at)
            rows[row].append(i)
            room -= n
        if room:
            bisect.insort(free, (room, row))
    return rows


def collate(rows: list[list[dict]], pad_id: int, length: int | None = None) -> dict:
    """A batch of rows, each a list of examples.

    ``length`` set (packing): every row is ``length`` tokens, examples side by side with
    their own position ids; the padding tail is one more segment, masked from the loss.
    ``length`` None: one example per row, padded to the longest with an attention mask.
    """
    packed = length is not None
    width = length or max(len(r[0]["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), IGNORE)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    real = 0
    for i, row in enumerate(rows):
        at = 0
        for ex in row:
            n = len(ex["input_ids"])
            ids[i, at:at + n] = torch.tensor(ex["input_ids"])
            labels[i, at:at + n] = torch.tensor(ex["labels"])
            labels[i, at] = IGNORE  # nothing predicts an example's first token from the previous one
            pos[i, at:at + n] = torch.arange(n)
            at += n
        pos[i, at:] = torch.arange(width - at)
        real += at
    batch = {"input_ids": ids, "labels": labels, "real_tokens": real, "tokens": ids.numel()}
    if packed:
        batch["position_ids"] = pos
    else:
        lengths = torch.tensor([len(r[0]["input_ids"]) for r in rows])
        batch["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return batch


class StepBatches(Sampler):
    """The rows of step s: positions [s*k, (s+1)*k) of an endless stream of seeded
    permutations of the rows. Iteration starts at ``start()`` (the trainer's step)."""

    def __init__(self, n_rows: int, rows_per_step: int, steps: int, seed: int, start=lambda: 0, rank: int = 0, world: int = 1):
        self.n, self.k, self.steps, self.seed, self.start = n_rows, rows_per_step, steps, seed, start
        self.rank, self.world = rank, world
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            self._perms[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)).tolist()
        return self._perms[epoch]

    def rows(self, step: int) -> list[int]:
        out = []
        for p in range(step * self.k, (step + 1) * self.k):
            out.append(self._perm(p // self.n)[p % self.n])
        return out[self.rank::self.world]

    def __iter__(self):
        for s in range(self.start(), self.steps):
            yield self.rows(s)

    def __len__(self) -> int:
        return self.steps


class StepLoader(DataLoader):
    """A DataLoader whose position is the trainer's step, so Lightning may treat it as resumable."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SFTData(L.LightningDataModule):
    def __init__(self, examples: list[dict], batch_size: int, pad_id: int, steps: int, seed: int = 0, pack_length: int | None = None):
        super().__init__()
        self.pad_id, self.steps, self.seed, self.pack_length = pad_id, steps, seed, pack_length
        if pack_length:
            self.rows = [[examples[i] for i in row] for row in pack([len(e["input_ids"]) for e in examples], pack_length)]
            mean_len = sum(len(e["input_ids"]) for e in examples) / len(examples)
            self.rows_per_step = max(1, round(batch_size * mean_len / pack_length))  # about batch_size examples a step
        else:
            self.rows = [[e] for e in examples]
            self.rows_per_step = batch_size
        self.rows_per_step = min(self.rows_per_step, len(self.rows))

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        batches = StepBatches(len(self.rows), self.rows_per_step, self.steps, self.seed,
                              start=lambda: t.global_step, rank=t.global_rank, world=t.world_size)
        return StepLoader(self.rows, batch_sampler=batches, collate_fn=self._collate)

    def _collate(self, rows):
        return collate(rows, self.pad_id, self.pack_length)


class SFTModule(L.LightningModule):
    def __init__(self, model, lr: float, warmup_steps: int, weight_decay: float = 0.0, schedule: str = "constant", total_steps: int = 1):
        super().__init__()
        self.model, self.lr, self.warmup_steps, self.weight_decay = model, lr, warmup_steps, weight_decay
        self.schedule, self.total_steps = schedule, total_steps

    def training_step(self, batch, batch_idx):
        batch = {k: v for k, v in batch.items() if k not in ("real_tokens", "tokens")}
        loss = self.model(**batch, use_cache=False).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"fine-tuning loss is {loss.item()} at step {self.global_step}: lower finetune.lr "
                "or use finetune.precision=32-true; the samples and the data stay in the run directory"
            )
        self.log("train/loss", loss, prog_bar=True)
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


class Meter(L.Callback):
    """Loss curve, tokens per second (padding excluded), MFU by the 6N rule and padding waste per
    epoch; its state travels in the training checkpoint."""

    def __init__(self, n_params: int, rows_per_step: int, rows_per_epoch: int, peak_flops: float | None):
        self.n_params, self.rows_per_step, self.rows_per_epoch, self.peak_flops = n_params, rows_per_step, rows_per_epoch, peak_flops
        self.curve: list[dict] = []
        self.stats = {"real_tokens": 0, "tokens": 0, "seconds": 0.0, "epochs": []}
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - self._t0
        real, total, s = batch["real_tokens"], batch["tokens"], self.stats
        step = trainer.global_step - 1
        epoch = step * self.rows_per_step // self.rows_per_epoch
        if not s["epochs"] or s["epochs"][-1]["epoch"] != epoch:
            s["epochs"].append({"epoch": epoch, "real_tokens": 0, "tokens": 0})
        for acc in (s, s["epochs"][-1]):
            acc["real_tokens"] += real
            acc["tokens"] += total
        s["seconds"] += dt
        point = {"step": step, "loss": outputs["loss"].item(), "lr": trainer.optimizers[0].param_groups[0]["lr"],
                 "tokens_per_s": real * trainer.world_size / dt, "padding_waste": 1 - real / total}
        self.curve.append(point)
        module.log_dict({"train/tokens_per_s": point["tokens_per_s"], "train/padding_waste": point["padding_waste"]})

    def summary(self, world: int) -> dict:
        s = self.stats
        tps = s["real_tokens"] * world / s["seconds"] if s["seconds"] else None
        return {
            "train_tokens": s["real_tokens"] * world,
            "train_seconds": s["seconds"],
            "tokens_per_s": tps,
            "mfu": 6 * self.n_params * tps / (self.peak_flops * world) if tps and self.peak_flops else None,
            "padding_waste": 1 - s["real_tokens"] / s["tokens"] if s["tokens"] else None,
            "padding_waste_per_epoch": [1 - e["real_tokens"] / e["tokens"] for e in s["epochs"]],
        }

    def state_dict(self) -> dict:
        return {"curve": self.curve, "stats": self.stats}

    def load_state_dict(self, state: dict) -> None:
        self.curve, self.stats = state["curve"], state["stats"]


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """``n`` evenly spaced steps ending at ``steps``."""
    n = max(1, min(n, steps))
    return sorted({round(steps * (i + 1) / n) for i in range(n)})


class Checkpoints(L.Callback):
    """HF checkpoints at the protocol's steps; the full training state (atomically) at
    those steps and every ``save_every`` steps, for resuming."""

    def __init__(self, out_dir: Path, steps: list[int], save_every: int | None, tokenizer):
        self.out_dir, self.steps, self.save_every, self.tokenizer = out_dir, set(steps), save_every, tokenizer

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step in self.steps:
            self.save_hf(trainer, module, self.out_dir / "checkpoints" / f"step-{step:06d}")
        if step in self.steps or (self.save_every and step % self.save_every == 0):
            tmp = self.out_dir / "last.ckpt.tmp"
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                os.replace(tmp, self.out_dir / "last.ckpt")
            trainer.strategy.barrier()

    def save_hf(self, trainer, module, path: Path) -> None:
        state = trainer.strategy.lightning_module_state_dict()  # gathered on rank 0 under FSDP
        if trainer.is_global_zero:
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            module.model.save_pretrained(tmp, state_dict={k.removeprefix("model."): v for k, v in state.items()})
            self.tokenizer.padding_side = "left"
            self.tokenizer.save_pretrained(tmp)
            self.tokenizer.padding_side = "right"
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
        trainer.strategy.barrier()


def _strategy(strategy: dict, model):
    """Lightning strategy for a preset: single device, DDP, or FSDP wrapping the model's decoder layers."""
    name = strategy.get("name", "single")
    if name == "single":
        if strategy.get("activation_checkpointing"):
            model.gradient_checkpointing_enable()
        return "auto"
    if name == "ddp":
        return L.pytorch.strategies.DDPStrategy(find_unused_parameters=False)
    if name == "fsdp":
        layers = {type(m) for m in model.modules() if type(m).__name__ in set(model._no_split_modules or [])}
        return L.pytorch.strategies.FSDPStrategy(
            auto_wrap_policy=layers, sharding_strategy=strategy.get("sharding", "FULL_SHARD"), state_dict_type="full",
            activation_checkpointing_policy=layers if strategy.get("activation_checkpointing") else None,
            limit_all_gathers=True, use_orig_params=True,
        )
    raise ValueError(f"unknown finetune.strategy.name={name!r}: use single, ddp or fsdp")


def _peak_flops(accelerator: str, peak_tflops: float | None) -> float | None:
    if peak_tflops:
        return peak_tflops * 1e12
    if accelerator != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


def run(model_path: str, pairs: list[tuple[str, str]], out_dir: str | Path, *, steps: int, batch_size: int, lr: float,
        warmup_steps: int = 0, weight_decay: float = 0.0, schedule: str = "constant", grad_clip: float = 1.0,
        max_length: int = 1024, precision: str = "32-true", accelerator: str = "auto", log_every: int = 10,
        seed: int = 0, packing: bool = True, pack_length: int | None = None, checkpoints: int = 1,
        save_every: int | None = None, peak_tflops: float | None = None, strategy: dict | None = None, **_) -> dict:
    """Fine-tune ``model_path`` on ``pairs`` for ``steps`` optimizer steps; return the metrics.

    Writes ``checkpoints`` evenly spaced HF checkpoints under ``out_dir/checkpoints/``
    (the last is also ``metrics["checkpoint"]``) and ``out_dir/finetune.json``. Finished
    work is returned as stored; a run stopped midway resumes from ``out_dir/last.ckpt``.
    """
    out_dir = Path(out_dir)
    done = out_dir / "finetune.json"
    if done.exists():
        return json.loads(done.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    strategy = dict(strategy or {"name": "single"})
    args = dict(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, weight_decay=weight_decay,
                schedule=schedule, grad_clip=grad_clip, max_length=max_length, precision=precision, accelerator=accelerator,
                log_every=log_every, seed=seed, packing=packing, pack_length=pack_length, checkpoints=checkpoints,
                save_every=save_every, peak_tflops=peak_tflops, strategy=strategy)
    if strategy.get("devices", 1) > 1 or strategy.get("num_nodes", 1) > 1:
        return _launch(model_path, pairs, out_dir, args)
    return _train(model_path, pairs, out_dir, **args)


def _launch(model_path: str, pairs: list[tuple[str, str]], out_dir: Path, args: dict) -> dict:
    """Run the training in its own process(es): Lightning starts one rank per device; across nodes, srun starts them."""
    spec = out_dir / "spec.json"
    spec.write_text(json.dumps({"model_path": model_path, "pairs": pairs, "args": args}))
    cmd = [sys.executable, "-m", "cms.finetuning", str(spec)]
    st = args["strategy"]
    if st.get("num_nodes", 1) > 1:
        cmd = ["srun", f"--nodes={st['num_nodes']}", f"--ntasks-per-node={st['devices']}", "--kill-on-bad-exit=1", *cmd]
    log.info("fine-tuning on %d node(s) x %d device(s): %s", st.get("num_nodes", 1), st.get("devices", 1), " ".join(cmd))
    rc = subprocess.run(cmd).returncode
    if rc:
        raise RuntimeError(f"the fine-tuning processes failed (exit {rc}, their log is above). The kept data and {spec} "
                           f"stay; re-running the cell resumes from {out_dir / 'last.ckpt'} if one was written")
    return json.loads((out_dir / "finetune.json").read_text())


def _train(model_path: str, pairs: list[tuple[str, str]], out_dir: Path, *, steps: int, batch_size: int, lr: float,
           warmup_steps: int, weight_decay: float, schedule: str, grad_clip: float, max_length: int, precision: str,
           accelerator: str, log_every: int, seed: int, packing: bool, pack_length: int | None, checkpoints: int,
           save_every: int | None, peak_tflops: float | None, strategy: dict) -> dict:
    L.seed_everything(seed, workers=True, verbose=False)
    tokenizer = models.load_tokenizer(model_path)
    tokenizer.padding_side = "right"
    model = models.load_model(model_path, device="cpu").train()
    examples = tokenize_pairs(tokenizer, pairs, max_length)
    if not examples:
        raise ValueError("no training example has a solution token left after truncation: raise finetune.max_length")
    sft = SFTData(examples, batch_size, tokenizer.pad_token_id, steps, seed, (pack_length or max_length) if packing else None)
    module = SFTModule(model, lr, warmup_steps, weight_decay, schedule, steps)
    meter = Meter(sum(p.numel() for p in model.parameters()), sft.rows_per_step, len(sft.rows), _peak_flops(accelerator, peak_tflops))
    marks = checkpoint_steps(steps, checkpoints)
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None  # submitit owns requeue
    trainer = L.Trainer(
        max_steps=steps, accelerator=accelerator, devices=strategy.get("devices", 1), num_nodes=strategy.get("num_nodes", 1),
        strategy=_strategy(strategy, model), precision=precision, logger=False, plugins=plugins,
        gradient_clip_val=grad_clip or None, callbacks=[meter, Checkpoints(out_dir, marks, save_every, tokenizer)],
        enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=log_every,
        num_sanity_val_steps=0, default_root_dir=str(out_dir), use_distributed_sampler=False,
    )
    last = out_dir / "last.ckpt"
    if last.exists():
        log.info("resuming fine-tuning from %s", last)
    trainer.fit(module, datamodule=sft, ckpt_path=str(last) if last.exists() else None)
    if not trainer.is_global_zero:
        return {}
    stats, curve = meter.summary(trainer.world_size), meter.curve
    metrics = {
        "checkpoint": str(out_dir / "checkpoints" / f"step-{marks[-1]:06d}"),
        "checkpoints": [{"step": m, "path": str(out_dir / "checkpoints" / f"step-{m:06d}")} for m in marks],
        "steps": trainer.global_step,
        "epochs": math.ceil(trainer.global_step * sft.rows_per_step / len(sft.rows)),
        "n_examples": len(examples),
        "n_rows": len(sft.rows),
        "rows_per_step": sft.rows_per_step,
        "train_loss_first": curve[0]["loss"] if curve else None,
        "train_loss_last": curve[-1]["loss"] if curve else None,
        **stats,
        "curve": curve,
    }
    log.info("fine-tuned %d steps: %.0f tokens/s, padding waste %.1f%%%s", metrics["steps"], stats["tokens_per_s"] or 0,
             100 * (stats["padding_waste"] or 0), f", MFU {100 * stats['mfu']:.1f}%" if stats["mfu"] else "")
    data.write_json(out_dir / "finetune.json", metrics)
    last.unlink(missing_ok=True)
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    spec = json.loads(Path(sys.argv[1]).read_text())
    _train(spec["model_path"], [tuple(p) for p in spec["pairs"]], Path(sys.argv[1]).parent, **spec["args"])
