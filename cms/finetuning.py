"""Supervised fine-tuning of the setting's learner on the kept (question, solution) pairs.

A LightningModule around an HF causal LM. The loss covers the solution tokens
only (prompt and padding are masked with -100). Each rank packs its share of a
step's pairs into as few balanced rows of at most ``pack_length`` tokens as fit;
inside a row the position ids restart per example and no attention mask is passed, which makes transformers build a
block-diagonal causal mask (varlen kernels with flash-attention), so examples
never attend to each other.

The learner trains on fp32 master weights whatever its checkpoint's dtype
(``bf16-mixed`` autocasts the compute; AdamW's state and updates stay fp32, so
lr 1e-6 moves bf16 checkpoints too) and is exported in ``save_dtype`` (fp32 by
default: bf16 rounds most updates of that size away).

Step ``s`` trains on ``batch_size`` examples, a function of (seed, s) alone,
dealt to the ranks so that each gets at least one row and nearly the same
tokens; the loss is the global token mean (token losses summed over all ranks /
the step's target tokens), so a step's gradient does not depend on the number of
devices. Under FSDP only rank 0 reads the weights; the others start on the meta
device and receive them when the model is sharded. A full training
state is written atomically every few steps, so a killed run resumes where it
stopped and ends exactly where an uninterrupted one would. The paper's protocol
keeps ``checkpoints`` evenly spaced HF checkpoints; the caller picks the best one
on a validation split. Multi-device presets re-launch this module as its own
process (``python -m cms.finetuning spec.json``), under ``srun`` across nodes.
"""

from __future__ import annotations

import contextlib
import functools
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

from cms import data, models, progress, resume, threads

log = logging.getLogger(__name__)
IGNORE = -100
# bf16 dense peak per GPU (TFLOP/s), for MFU; finetune.peak_tflops overrides
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "A10G": 125.0}


def tokenize_pairs(tokenizer, pairs: list[tuple[str, str]], max_length: int) -> list[dict]:
    """input_ids and labels (solution tokens only, then EOS) for each (prompt, completion); the prompt's ids
    are the samplers' (``models.prompt_ids``: BOS where the tokenizer adds one)."""
    examples = []
    for prompt, completion in pairs:
        p = models.prompt_ids(tokenizer, prompt)
        c = models.text_ids(tokenizer, completion) + [tokenizer.eos_token_id]
        ids = (p + c)[:max_length]
        labels = ([IGNORE] * len(p) + c)[:max_length]
        if any(t != IGNORE for t in labels):
            examples.append({"input_ids": ids, "labels": labels})
    if len(examples) < len(pairs):
        log.warning("%d of %d examples have no solution token within finetune.max_length=%d and are skipped",
                    len(pairs) - len(examples), len(pairs), max_length)
    return examples


def deal(lengths: list[int], bins: int) -> list[list[int]]:
    """Indices dealt into ``bins`` groups of nearly equal total length: longest first, each to the
    group holding the fewest tokens (then the fewest items), so no group is empty while there are
    enough items and the totals differ by less than the longest item."""
    groups: list[list[int]] = [[] for _ in range(bins)]
    load = [0] * bins
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        g = min(range(bins), key=lambda g: (load[g], len(groups[g]), g))
        groups[g].append(i)
        load[g] += lengths[i]
    return groups


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of at most ``capacity`` tokens, as few as fit and balanced: the batch is as wide as its
    fullest row, so balanced rows waste little padding."""
    if max(lengths, default=0) > capacity:
        raise ValueError(f"example of {max(lengths)} tokens exceeds finetune.pack_length={capacity}: raise it to finetune.max_length or above")
    rows = max(1, -(-sum(lengths) // capacity))
    while True:
        groups = deal(lengths, rows)
        if all(sum(lengths[i] for i in g) <= capacity for g in groups):
            return [g for g in groups if g]
        rows += 1


def targets(example: dict) -> int:
    """Tokens the loss scores in an example: its labels after the first token (the first is never predicted)."""
    return sum(t != IGNORE for t in example["labels"][1:])


def plan_step(lengths: list[int], world: int, capacity: int | None) -> list[list[list[int]]]:
    """Split one step's examples (their token ``lengths``) across ``world`` ranks: per rank, its rows of
    example indices. Longest first, each example goes to the rank holding the fewest tokens, so every
    rank gets at least one example and the ranks differ by less than the longest example; each rank
    then packs its share into rows of ``capacity`` tokens (None: one example per row)."""
    if len(lengths) < world:
        raise ValueError(f"a step of {len(lengths)} examples cannot give each of {world} ranks one: "
                         f"raise finetune.batch_size to at least {world} or use fewer devices")
    shares = deal(lengths, world)
    if capacity is None:
        return [[[i] for i in share] for share in shares]
    return [[[share[j] for j in row] for row in pack([lengths[i] for i in share], capacity)] for share in shares]


def collate(rows: list[list[dict]], pad_id: int, length: int | None = None) -> dict:
    """A batch of rows, each a list of examples.

    ``length`` set (packing): rows of at most ``length`` tokens, examples side by side with
    their own position ids, as wide as the fullest row; the padding tail is one more segment,
    masked from the loss.
    ``length`` None: one example per row, padded to the longest with an attention mask.
    """
    packed = length is not None
    fill = max(sum(len(ex["input_ids"]) for ex in r) for r in rows)
    width = min(length, -(-fill // 8) * 8) if packed else fill  # as wide as the fullest row (a multiple of 8)
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


class StepPlan:
    """Which examples step s trains on: positions [s*B, (s+1)*B) of an endless stream of
    seeded permutations of the examples, B = ``batch_size``, and how they split across ranks."""

    def __init__(self, examples: list[dict], batch_size: int, seed: int, capacity: int | None, world: int = 1):
        self.examples, self.seed, self.capacity, self.world = examples, seed, capacity, world
        self.n = len(examples)
        self.batch_size = min(batch_size, self.n)
        self.lengths = [len(e["input_ids"]) for e in examples]
        self.n_targets = [targets(e) for e in examples]
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            self._perms[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)).tolist()
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        return [self._perm(p // self.n)[p % self.n] for p in range(step * self.batch_size, (step + 1) * self.batch_size)]

    def ranks(self, step: int) -> list[list[list[dict]]]:
        """Per rank, the rows (lists of examples) of step ``step``."""
        idx = self.indices(step)
        split = plan_step([self.lengths[i] for i in idx], self.world, self.capacity)
        return [[[self.examples[idx[j]] for j in row] for row in share] for share in split]

    def targets(self, step: int) -> int:
        """The step's target tokens over all ranks: the loss's denominator."""
        return sum(self.n_targets[i] for i in self.indices(step))


class StepBatches(Sampler):
    """Yields the step numbers from ``start()`` (the trainer's step, for resuming) to ``steps``."""

    def __init__(self, steps: int, start=lambda: 0):
        self.steps, self.start = steps, start

    def __iter__(self):
        for s in range(self.start(), self.steps):
            yield [s]

    def __len__(self) -> int:
        return self.steps


class StepLoader(DataLoader):
    """A DataLoader whose position is the trainer's step, so Lightning may treat it as resumable."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _Steps:
    """Map-style dataset: step s -> this rank's collated batch, with the step's global target count."""

    def __init__(self, plan: StepPlan, rank: int, pad_id: int, pack_length: int | None):
        self.plan, self.rank, self.pad_id, self.pack_length = plan, rank, pad_id, pack_length

    def __getitem__(self, step: int) -> dict:
        batch = collate(self.plan.ranks(step)[self.rank], self.pad_id, self.pack_length)
        return {**batch, "targets": self.plan.targets(step)}


class SFTData(L.LightningDataModule):
    def __init__(self, examples: list[dict], batch_size: int, pad_id: int, steps: int, seed: int = 0, pack_length: int | None = None):
        super().__init__()
        self.examples, self.batch_size, self.pad_id, self.steps, self.seed, self.pack_length = examples, batch_size, pad_id, steps, seed, pack_length

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        plan = StepPlan(self.examples, self.batch_size, self.seed, self.pack_length, t.world_size)
        return StepLoader(_Steps(plan, t.global_rank, self.pad_id, self.pack_length), batch_sampler=StepBatches(self.steps, start=lambda: t.global_step),
                          collate_fn=lambda batch: batch[0])


def token_loss(model, batch: dict) -> torch.Tensor:
    """The sum of this rank's token losses (fp32 cross-entropy over the targets)."""
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    logits = model(**inputs, use_cache=False).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")


def step_loss(model, batch: dict, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(what this rank backpropagates, its summed token loss). DDP and FSDP average gradients over
    the ranks, so scaling the rank's sum by world / (the step's target tokens over all ranks) makes
    the step's gradient that of the global token mean, whatever the number of devices."""
    summed = token_loss(model, batch)
    return summed * world / batch["targets"], summed


class SFTModule(L.LightningModule):
    """``load(rank)`` builds the learner in ``configure_model``, after the strategy knows the rank."""

    def __init__(self, load, lr: float, warmup_steps: int, weight_decay: float = 0.0, schedule: str = "constant",
                 total_steps: int = 1, activation_checkpointing: bool = False):
        super().__init__()
        self.load, self.model, self.lr, self.warmup_steps, self.weight_decay = load, None, lr, warmup_steps, weight_decay
        self.schedule, self.total_steps, self.activation_checkpointing = schedule, total_steps, activation_checkpointing

    def configure_model(self):
        if self.model is None:
            self.model = self.load(self.global_rank).train()
            if self.activation_checkpointing:
                self.model.gradient_checkpointing_enable()

    def training_step(self, batch, batch_idx):
        loss, summed = step_loss(self.model, batch, self.trainer.world_size)
        total = summed.detach().clone()
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        mean = total / batch["targets"]
        if not torch.isfinite(mean):
            raise FloatingPointError(
                f"fine-tuning loss is {mean.item()} at step {self.global_step}: lower finetune.lr "
                "or use finetune.precision=32-true; the samples and the data stay in the run directory"
            )
        self.log("train/loss", mean, prog_bar=True)
        return {"loss": loss, "mean_loss": mean}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Under FSDP, clip by the norm over all shards with FSDP's own ``clip_grad_norm_``: Lightning's
        norm clipping refuses FSDP's precision plugin."""
        if gradient_clip_val and isinstance(self.trainer.strategy, L.pytorch.strategies.FSDPStrategy):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

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

    def __init__(self, n_params: int, examples_per_step: int, n_examples: int, peak_flops: float | None):
        self.n_params, self.examples_per_step, self.n_examples, self.peak_flops = n_params, examples_per_step, n_examples, peak_flops
        self.curve: list[dict] = []
        self.stats = {"real_tokens": 0, "tokens": 0, "seconds": 0.0, "epochs": []}
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - self._t0
        counts = torch.tensor([batch["real_tokens"], batch["tokens"]], dtype=torch.float64, device=module.device)
        real, total = (int(v) for v in trainer.strategy.reduce(counts, reduce_op="sum").tolist()) if trainer.world_size > 1 else (batch["real_tokens"], batch["tokens"])
        s = self.stats
        step = trainer.global_step - 1
        epoch = step * self.examples_per_step // self.n_examples
        if not s["epochs"] or s["epochs"][-1]["epoch"] != epoch:
            s["epochs"].append({"epoch": epoch, "real_tokens": 0, "tokens": 0})
        for acc in (s, s["epochs"][-1]):
            acc["real_tokens"] += real
            acc["tokens"] += total
        s["seconds"] += dt
        point = {"step": step, "loss": outputs["mean_loss"].item(), "lr": trainer.optimizers[0].param_groups[0]["lr"],
                 "tokens_per_s": real / dt, "padding_waste": 1 - real / total}
        self.curve.append(point)
        module.log_dict({"train/tokens_per_s": point["tokens_per_s"], "train/padding_waste": point["padding_waste"], "train/lr": point["lr"]})

    def summary(self, world: int) -> dict:
        s = self.stats
        tps = s["real_tokens"] / s["seconds"] if s["seconds"] else None
        return {
            "train_tokens": s["real_tokens"],
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


class Progress(L.Callback):
    """One bar for the training phase, in steps (Lightning's own counts epochs: 'Epoch 0/-2' for a run of max_steps)."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_start(self, trainer, module):
        if trainer.is_global_zero:
            self.bar = progress.bar(trainer.max_steps, self.desc, unit="step")
            self.bar.update(trainer.global_step)  # resumed: the steps already done

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.bar is not None:
            self.bar.update(trainer.global_step - self.bar.n)
            if trainer.global_step % 10 == 0:
                self.bar.set_postfix_str(f"loss {float(outputs['mean_loss']):.3f}")

    def on_train_end(self, trainer, module):
        if self.bar is not None:
            self.bar.close()


def checkpoint_path(out_dir: Path, step: int) -> Path:
    """Where the HF checkpoint of ``step`` is written."""
    return Path(out_dir) / "checkpoints" / f"step-{step:06d}"


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """``n`` evenly spaced steps ending at ``steps``."""
    n = max(1, min(n, steps))
    return sorted({round(steps * (i + 1) / n) for i in range(n)})


class Checkpoints(L.Callback):
    """HF checkpoints (in ``save_dtype``) at the protocol's steps; the full training state
    (atomically) at those steps and every ``save_every`` steps, for resuming. With ``score``
    (keep only the best), each checkpoint is scored as it is written and only the best so
    far (the later one on a tie, as the selection does) stays on disk."""

    def __init__(self, out_dir: Path, steps: list[int], save_every: int | None, tokenizer, save_dtype: torch.dtype, score=None):
        self.out_dir, self.steps, self.save_every, self.tokenizer = out_dir, set(steps), save_every, tokenizer
        self.save_dtype, self.score = save_dtype, score
        self.best: dict | None = None  # {step, accuracy}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step in self.steps:
            path = checkpoint_path(self.out_dir, step)
            self.save_hf(trainer, module, path)
            if self.score is not None and trainer.is_global_zero:
                self.keep_best(step, path)
            trainer.strategy.barrier()
        if step in self.steps or (self.save_every and step % self.save_every == 0):
            tmp = self.out_dir / "last.ckpt.tmp"
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                os.replace(tmp, self.out_dir / "last.ckpt")
            trainer.strategy.barrier()

    def keep_best(self, step: int, path: Path) -> None:
        accuracy = self.score(str(path), step)
        if self.best is None or accuracy >= self.best["accuracy"]:
            if self.best is not None:
                shutil.rmtree(checkpoint_path(self.out_dir, self.best["step"]), ignore_errors=True)
            self.best = {"step": step, "accuracy": accuracy}
        else:
            shutil.rmtree(path, ignore_errors=True)
        log.info("checkpoint at step %d scores %.3f on validation; keeping step %d (finetune.keep_checkpoints=best)",
                 step, accuracy, self.best["step"])

    def save_hf(self, trainer, module, path: Path) -> None:
        state = trainer.strategy.lightning_module_state_dict()  # gathered on rank 0 under FSDP
        if trainer.is_global_zero:
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            state = {k.removeprefix("model."): v.to(self.save_dtype) if v.is_floating_point() else v for k, v in state.items()}
            module.model.config.dtype = self.save_dtype  # what the config.json says the weights are
            module.model.save_pretrained(tmp, state_dict=state)
            self.tokenizer.padding_side = "left"
            self.tokenizer.save_pretrained(tmp)
            self.tokenizer.padding_side = "right"
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
        trainer.strategy.barrier()

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")


def _strategy(strategy: dict, layers: set):
    """Lightning strategy for a preset: single device, DDP, or FSDP wrapping the model's decoder ``layers``.
    Under FSDP, ranks other than 0 hold the model on the meta device until it is sharded: their
    shards are allocated empty and filled from rank 0 (sync_module_states)."""
    name = strategy.get("name", "single")
    if name == "single":
        return "auto"
    if name == "ddp":
        return L.pytorch.strategies.DDPStrategy(find_unused_parameters=False)
    if name == "fsdp":
        return L.pytorch.strategies.FSDPStrategy(
            auto_wrap_policy=layers, sharding_strategy=strategy.get("sharding", "FULL_SHARD"), state_dict_type="full",
            activation_checkpointing_policy=layers if strategy.get("activation_checkpointing") else None,
            limit_all_gathers=True, use_orig_params=True, sync_module_states=True, param_init_fn=_materialize,
        )
    raise ValueError(f"unknown finetune.strategy.name={name!r}: use single, ddp or fsdp")


def decoder_layers(model) -> set:
    """The classes of the model's decoder layers: FSDP's wrapping (and checkpointing) units."""
    return {type(m) for m in model.modules() if type(m).__name__ in set(model._no_split_modules or [])}


def _materialize(module: torch.nn.Module) -> None:
    """FSDP's param_init_fn for a module on the meta device: empty storage on this rank's GPU (rank 0's values follow)."""
    module.to_empty(device=torch.device("cuda", torch.cuda.current_device()), recurse=False)


def load_for_training(model_path: str, rank: int, fsdp: bool, config=None):
    """The learner in fp32 (the master weights) on the host; under FSDP, only rank 0 reads the
    weights and the other ranks build the architecture (``config``) on the meta device (no host memory)."""
    if fsdp and rank != 0:
        return _meta_model(config or _config(model_path))
    return models.load_model(model_path, dtype="float32", device="cpu")


def _config(model_path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path)


def _meta_model(config):
    """The architecture in fp32 on the meta device: no memory, no weights read."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _peak_flops(accelerator: str, peak_tflops: float | None) -> float | None:
    if peak_tflops:
        return peak_tflops * 1e12
    if accelerator != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


@contextlib.contextmanager
def _tensors(path: str):
    """Name -> loader of each of a checkpoint's tensors: its safetensors files opened once and read
    lazily, tensor by tensor (a checkpoint without them is loaded whole)."""
    from safetensors import safe_open

    root = Path(path)
    index = root / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else (["model.safetensors"] if (root / "model.safetensors").exists() else [])
    if not files:
        yield {k: (lambda v=v: v) for k, v in models.load_model(path, dtype="auto", device="cpu").state_dict().items()}
        return
    with contextlib.ExitStack() as stack:
        out = {}
        for f in files:
            st = stack.enter_context(safe_open(root / f, framework="pt"))
            out.update({k: functools.partial(st.get_tensor, k) for k in st.keys()})
        yield out


def changed_fraction(start_path: str, exported_path: str) -> float:
    """The share of parameters whose exported value differs from the starting model's (tensor by tensor)."""
    changed = total = 0
    with _tensors(start_path) as a, _tensors(exported_path) as b:
        for name in sorted(set(a) & set(b)):
            x, y = a[name](), b[name]()
            if not x.is_floating_point():
                continue
            changed += int((x.float() != y.float()).sum())
            total += x.numel()
    return changed / total if total else 0.0


# settings that change what fine-tuning produces (the rest: where and how fast it runs)
FINGERPRINTED = ("steps", "batch_size", "lr", "warmup_steps", "weight_decay", "schedule", "grad_clip", "max_length", "precision",
                 "seed", "packing", "pack_length", "checkpoints", "save_dtype", "keep_checkpoints")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run(model_path: str, pairs: list[tuple[str, str]], out_dir: str | Path, *, steps: int, batch_size: int, lr: float,
        warmup_steps: int = 0, weight_decay: float = 0.0, schedule: str = "constant", grad_clip: float = 1.0,
        max_length: int = 1024, precision: str = "32-true", accelerator: str = "auto", log_every: int = 10,
        seed: int = 0, packing: bool = True, pack_length: int | None = None, checkpoints: int = 1,
        save_every: int | None = None, peak_tflops: float | None = None, strategy: dict | None = None,
        save_dtype: str = "fp32", keep_checkpoints: str = "all", validate: dict | None = None, wandb: dict | None = None,
        desc: str = "fine-tuning", **_) -> dict:
    """Fine-tune ``model_path`` on ``pairs`` for ``steps`` optimizer steps; return the metrics.

    Writes ``checkpoints`` evenly spaced HF checkpoints under ``out_dir/checkpoints/``
    (the last is also ``metrics["checkpoint"]``) and ``out_dir/finetune.json``. Finished
    work is returned as stored when it was computed with the same settings (else
    ``resume.StaleError``); a run stopped midway resumes from ``out_dir/last.ckpt``.
    ``keep_checkpoints="best"`` scores each checkpoint with ``validate`` (see
    ``evaluation.validator``) as it is written and keeps only the best so far.
    ``wandb``: the run to log the curves to live (``tracking.Tracker.lightning``); ``desc``: the progress bar's name.
    """
    out_dir = Path(out_dir)
    if save_dtype not in DTYPES:
        raise ValueError(f"finetune.save_dtype={save_dtype!r}: use fp32 (the default) or bf16")
    if keep_checkpoints not in ("all", "best"):
        raise ValueError(f"finetune.keep_checkpoints={keep_checkpoints!r}: use all or best")
    if keep_checkpoints == "best" and not validate:
        raise ValueError("finetune.keep_checkpoints=best scores checkpoints on validation questions: set finetune.val_size > 0")
    strategy = dict(strategy or {"name": "single"})
    args = dict(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, weight_decay=weight_decay,
                schedule=schedule, grad_clip=grad_clip, max_length=max_length, precision=precision, accelerator=accelerator,
                log_every=log_every, seed=seed, packing=packing, pack_length=pack_length, checkpoints=checkpoints,
                save_every=save_every, peak_tflops=peak_tflops, strategy=strategy, save_dtype=save_dtype,
                keep_checkpoints=keep_checkpoints, validate=validate, wandb=wandb, desc=desc)
    fingerprint = {"model": model_path, "pairs": resume.digest(pairs), **{k: args[k] for k in FINGERPRINTED}}
    done = resume.reuse(out_dir / "finetune.json", fingerprint, "a finished fine-tuning")
    if done is not None:
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last.ckpt"
    if last.exists():
        resume.reuse_file(last, fingerprint, "a fine-tuning state to resume")
    resume.mark(last, fingerprint)
    if strategy.get("devices", 1) > 1 or strategy.get("num_nodes", 1) > 1:
        return _launch(model_path, pairs, out_dir, args, fingerprint)
    return _train(model_path, pairs, out_dir, fingerprint=fingerprint, **args)


def srun_command(strategy: dict, cmd: list[str]) -> list[str]:
    """``cmd`` started once per device on every node of the cell's SLURM allocation. The cell itself runs
    as a job step holding the allocation, so the nested step must share it: ``--overlap`` (SLURM >= 20.11;
    without it the step waits forever) and ``--mem=0`` (the outer step holds the job's memory). ``--ntasks``
    is explicit because the outer step's SLURM_NTASKS (1) would otherwise cap it. Checked on a real
    SLURM 22.05 (tests/test_slurm.py)."""
    nodes, devices = strategy.get("num_nodes", 1), strategy.get("devices", 1)
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes * devices}", f"--ntasks-per-node={devices}", "--overlap", "--mem=0",
            "--kill-on-bad-exit=1", *cmd]


def _launch(model_path: str, pairs: list[tuple[str, str]], out_dir: Path, args: dict, fingerprint: dict) -> dict:
    """Run the training in its own process(es): Lightning starts one rank per device; in a SLURM allocation, srun does."""
    spec = out_dir / "spec.json"
    spec.write_text(json.dumps({"model_path": model_path, "pairs": pairs, "args": args, "fingerprint": fingerprint}))
    cmd = [sys.executable, "-m", "cms.finetuning", str(spec)]
    st = args["strategy"]
    if st.get("num_nodes", 1) > 1 or "SLURM_JOB_ID" in os.environ:  # in an allocation, SLURM starts the ranks
        cmd = srun_command(st, cmd)
    log.info("fine-tuning on %d node(s) x %d device(s): %s", st.get("num_nodes", 1), st.get("devices", 1), " ".join(cmd))
    rc = subprocess.run(cmd, env=threads.for_children(st.get("devices", 1))).returncode
    if rc:
        raise RuntimeError(f"the fine-tuning processes failed (exit {rc}, their log is above). The kept data and {spec} "
                           f"stay; re-running the cell resumes from {out_dir / 'last.ckpt'} if one was written")
    return json.loads((out_dir / "finetune.json").read_text())


def _logger(spec: dict | None):
    """Lightning's WandbLogger on the cell's wandb run (the same id; resumed on requeue), or none."""
    if not spec:
        return False
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(**spec)


def _train(model_path: str, pairs: list[tuple[str, str]], out_dir: Path, *, steps: int, batch_size: int, lr: float,
           warmup_steps: int, weight_decay: float, schedule: str, grad_clip: float, max_length: int, precision: str,
           accelerator: str, log_every: int, seed: int, packing: bool, pack_length: int | None, checkpoints: int,
           save_every: int | None, peak_tflops: float | None, strategy: dict, save_dtype: str = "fp32",
           keep_checkpoints: str = "all", validate: dict | None = None, wandb: dict | None = None, fingerprint: dict | None = None,
           desc: str = "fine-tuning") -> dict:
    L.seed_everything(seed, workers=True, verbose=False)
    tokenizer = models.load_tokenizer(model_path)
    tokenizer.padding_side = "right"
    examples = tokenize_pairs(tokenizer, pairs, max_length)
    if not examples:
        raise ValueError("no training example has a solution token left after truncation: raise finetune.max_length")
    sft = SFTData(examples, batch_size, tokenizer.pad_token_id, steps, seed, (pack_length or max_length) if packing else None)
    config = _config(model_path)
    checkpoint_dtype = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    meta = _meta_model(config)
    fsdp = strategy.get("name") == "fsdp"
    layers = decoder_layers(meta)
    module = SFTModule(lambda rank: load_for_training(model_path, rank, fsdp, config), lr, warmup_steps, weight_decay, schedule, steps,
                       activation_checkpointing=strategy.get("activation_checkpointing", False) and strategy.get("name", "single") == "single")
    per_step = min(batch_size, len(examples))
    meter = Meter(sum(p.numel() for p in meta.parameters()), per_step, len(examples), _peak_flops(accelerator, peak_tflops))
    del meta
    marks = checkpoint_steps(steps, checkpoints)
    score = None
    if keep_checkpoints == "best":
        from cms import evaluation

        score = evaluation.validator(**validate)
    keeper = Checkpoints(out_dir, marks, save_every, tokenizer, DTYPES[save_dtype], score)
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None  # submitit owns requeue
    trainer = L.Trainer(
        max_steps=steps, accelerator=accelerator, devices=strategy.get("devices", 1), num_nodes=strategy.get("num_nodes", 1),
        strategy=_strategy(strategy, layers), precision=precision, logger=_logger(wandb), plugins=plugins,
        gradient_clip_val=grad_clip or None, callbacks=[meter, keeper, Progress(desc)], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=log_every,
        num_sanity_val_steps=0, default_root_dir=str(out_dir), use_distributed_sampler=False,
    )
    last = out_dir / "last.ckpt"
    if last.exists():
        log.info("resuming fine-tuning from %s", last)
    trainer.fit(module, datamodule=sft, ckpt_path=str(last) if last.exists() else None)
    if not trainer.is_global_zero:
        return {}
    if wandb and "experiment" not in wandb:  # a run of this process's own: let go of it for the cell to reopen
        trainer.logger.experiment.finish()
    stats, curve = meter.summary(trainer.world_size), meter.curve
    kept = [keeper.best["step"]] if keeper.best else marks
    metrics = {
        "checkpoint": str(checkpoint_path(out_dir, kept[-1])),
        "checkpoints": [{"step": m, "path": str(checkpoint_path(out_dir, m)), "kept": m in kept} for m in marks],
        "steps": trainer.global_step,
        "epochs": math.ceil(trainer.global_step * per_step / len(examples)),
        "n_examples": len(examples),
        "examples_per_step": per_step,
        "world_size": trainer.world_size,
        "weights": {"checkpoint_dtype": checkpoint_dtype, "master": "float32", "compute": precision, "saved": str(DTYPES[save_dtype]).removeprefix("torch."),
                    "kept_checkpoints": keep_checkpoints},
        "train_loss_first": curve[0]["loss"] if curve else None,
        "train_loss_last": curve[-1]["loss"] if curve else None,
        **stats,
        "curve": curve,
        "fingerprint": fingerprint,
    }
    log.info("fine-tuned %d steps: %.0f tokens/s, padding waste %.1f%%%s", metrics["steps"], stats["tokens_per_s"] or 0,
             100 * (stats["padding_waste"] or 0), f", MFU {100 * stats['mfu']:.1f}%" if stats["mfu"] else "")
    data.write_json(out_dir / "finetune.json", metrics)
    last.unlink(missing_ok=True)
    resume.sidecar(last).unlink(missing_ok=True)
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    progress.quiet()
    spec = json.loads(Path(sys.argv[1]).read_text())
    _train(spec["model_path"], [tuple(p) for p in spec["pairs"]], Path(sys.argv[1]).parent, fingerprint=spec.get("fingerprint"), **spec["args"])
