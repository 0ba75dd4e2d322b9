import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cms import data, evaluation, finetuning, models, resume
from conftest import DATA, ROOT

FMT = data.PromptFormat("Question: {question}\nAnswer:", " {solution}\n\n")


def gsm8k_pairs(n):
    return [(FMT.prompt(r), FMT.completion(r.solution)) for r in data.load("gsm8k", "train", "gsm8k", DATA)[:n]]


def test_reference_finetuning_lowers_loss_and_checkpoint_evaluates(tiny_family, tmp_path):
    test = data.load("gsm8k", "test", "gsm8k", DATA)[:4]
    path = models.resolve(tiny_family["student"], tmp_path / "cache")
    metrics = finetuning.run(path, gsm8k_pairs(16), tmp_path / "ft", steps=30, batch_size=8, lr=3e-3, warmup_steps=2,
                             max_length=1024, seed=0, checkpoints=3)
    assert metrics["steps"] == 30 and metrics["n_examples"] == 16
    early = sum(p["loss"] for p in metrics["curve"][:3]) / 3
    late = sum(p["loss"] for p in metrics["curve"][-3:]) / 3
    assert late < early - 0.5, (early, late)
    assert [c["step"] for c in metrics["checkpoints"]] == [10, 20, 30]
    assert all((tmp_path / "ft" / "checkpoints" / f"step-{s:06d}" / "config.json").exists() for s in (10, 20, 30))
    assert metrics["tokens_per_s"] > 0 and 0 <= metrics["padding_waste"] < 0.5 and metrics["mfu"] is None  # no peak on CPU
    assert not (tmp_path / "ft" / "last.ckpt").exists()  # the resume state goes once the run is done
    # the checkpoint is an HF directory that the evaluation loads
    result = evaluation.run(metrics["checkpoint"], test, [], fmt="gsm8k", prompt_format=FMT, max_new_tokens=8,
                            stop=["Question:"], sampler={"backend": "hf", "batch_size": 4}, out_path=tmp_path / "eval.jsonl")
    assert result["n"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    assert len((tmp_path / "eval.jsonl").read_text().splitlines()) == 4
    # a finished evaluation is reused; asked with other decoding or questions, it is refused
    again = dict(fmt="gsm8k", prompt_format=FMT, max_new_tokens=8, stop=["Question:"], sampler={"backend": "hf", "batch_size": 4}, out_path=tmp_path / "eval.jsonl")
    assert evaluation.run(metrics["checkpoint"], test, [], **again) == result
    with pytest.raises(resume.StaleError, match="max_new_tokens: 8 -> 16"):
        evaluation.run(metrics["checkpoint"], test, [], **{**again, "max_new_tokens": 16})
    with pytest.raises(resume.StaleError, match="questions"):
        evaluation.run(metrics["checkpoint"], test[:3], [], **again)
    # finished work is not redone; asked with other settings, it is refused, never returned
    same = dict(steps=30, batch_size=8, lr=3e-3, warmup_steps=2, max_length=1024, seed=0, checkpoints=3)
    assert finetuning.run(path, gsm8k_pairs(16), tmp_path / "ft", **same) == metrics
    with pytest.raises(resume.StaleError, match=r"lr: 0\.003 -> 0\.001; .*steps: 30 -> 6000.*rerun=true"):
        finetuning.run(path, gsm8k_pairs(16), tmp_path / "ft", **{**same, "lr": 1e-3, "steps": 6000})
    with pytest.raises(resume.StaleError, match="pairs"):
        finetuning.run(path, gsm8k_pairs(15), tmp_path / "ft", **same)
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text()) == metrics  # and kept


def test_loss_masks_the_prompt(tiny_family, tmp_path):
    tok = models.load_tokenizer(models.resolve(tiny_family["student"], tmp_path))
    [ex] = finetuning.tokenize_pairs(tok, [("Question: q\nAnswer:", " 42")], 64)
    n_prompt = len(tok("Question: q\nAnswer:", add_special_tokens=False).input_ids)
    assert ex["labels"][:n_prompt] == [finetuning.IGNORE] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:] and ex["labels"][-1] == tok.eos_token_id


def test_pack_makes_few_balanced_rows_within_capacity():
    lengths = [7, 3, 5, 2, 6, 4, 1, 9]
    rows = finetuning.pack(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(8))
    assert len(rows) == 4 and sorted(sum(lengths[i] for i in r) for r in rows) == [9, 9, 9, 10]  # 37 tokens: 4 rows, even
    assert finetuning.pack([6, 5, 5], 10) == [[0], [1, 2]]  # 16 tokens would fit 2 rows of 8, but not whole examples
    with pytest.raises(ValueError, match="pack_length"):
        finetuning.pack([11], 10)


def _per_example_loss(model, batch, spans):
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids", "attention_mask")}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=finetuning.IGNORE, reduction="none")
    out = []
    for row, start, n in spans:
        keep = labels[row, start:start + n - 1] != finetuning.IGNORE
        out.append(ce[row, start:start + n - 1][keep].mean().item())
    return out


def test_packed_training_gives_each_example_the_loss_it_has_alone(tiny_family, tmp_path):
    """Step-0 loss of every example, packed with others vs alone: equal, so no attention crosses examples."""
    path = models.resolve(tiny_family["student"], tmp_path / "cache")
    tok = models.load_tokenizer(path)
    model = models.load_model(path, device="cpu").eval()
    ex = finetuning.tokenize_pairs(tok, gsm8k_pairs(10), 1024)
    rows = finetuning.pack([len(e["input_ids"]) for e in ex], 2048)
    assert max(len(r) for r in rows) > 1
    packed = finetuning.collate([[ex[i] for i in r] for r in rows], tok.pad_token_id, 2048)
    assert "attention_mask" not in packed
    spans, order = [], []
    for row, r in enumerate(rows):
        at = 0
        for i in r:
            spans.append((row, at, len(ex[i]["input_ids"])))
            order.append(i)
            at += len(ex[i]["input_ids"])
    together = dict(zip(order, _per_example_loss(model, packed, spans)))
    alone = {i: _per_example_loss(model, finetuning.collate([[e]], tok.pad_token_id), [(0, 0, len(e["input_ids"]))])[0]
             for i, e in enumerate(ex)}
    assert all(abs(together[i] - alone[i]) < 1e-4 for i in alone), (together, alone)
    # the control: the same rows with one causal mask over the whole row do leak, and the test sees it
    leaky = {**packed, "attention_mask": torch.ones_like(packed["input_ids"])}
    leaked = dict(zip(order, _per_example_loss(model, leaky, spans)))
    assert max(abs(leaked[i] - alone[i]) for i in alone) > 1e-3


@pytest.mark.parametrize("dataset", ["gsm8k", "math"])
def test_padding_waste_of_reference_solutions_is_under_5_percent(tiny_family, tmp_path, dataset):
    """What training pads: 60 steps of 32 reference solutions, rows of up to 4,096 byte tokens, on 1 rank and on 8."""
    tok = models.load_tokenizer(models.resolve(tiny_family["student"], tmp_path / "cache"))
    records = data.load(dataset, "train", dataset if dataset == "gsm8k" else "math", DATA)[:2000]
    ex = finetuning.tokenize_pairs(tok, [(FMT.prompt(r), FMT.completion(r.solution)) for r in records], 2048)
    for world in (1, 8):
        plan = finetuning.StepPlan(ex, 32, seed=0, capacity=4096, world=world)
        batches = [finetuning.collate(share, tok.pad_token_id, 4096) for s in range(60) for share in plan.ranks(s)]
        waste = 1 - sum(b["real_tokens"] for b in batches) / sum(b["tokens"] for b in batches)
        assert waste < 0.05, (world, waste)
    padded = finetuning.collate([[e] for e in ex[:32]], tok.pad_token_id)
    assert 1 - padded["real_tokens"] / padded["tokens"] > 0.3  # padding each example to the longest wastes far more


def test_batches_depend_only_on_seed_and_step():
    examples = [{"input_ids": [1] * (3 + i), "labels": [1] * (3 + i)} for i in range(10)]
    a = finetuning.StepPlan(examples, 4, seed=3, capacity=16)
    assert [finetuning.StepPlan(examples, 4, seed=3, capacity=16).indices(s) for s in range(7, 20)] == [a.indices(s) for s in range(7, 20)]
    assert sorted(a.indices(0) + a.indices(1) + a.indices(2)[:2]) == list(range(10))  # an epoch sees every example once
    assert finetuning.StepPlan(examples, 4, seed=4, capacity=16).indices(0) != a.indices(0)
    assert list(finetuning.StepBatches(20, start=lambda: 7)) == [[s] for s in range(7, 20)]
    # the split across ranks does not change which examples a step trains on
    two = finetuning.StepPlan(examples, 4, seed=3, capacity=16, world=2)
    assert sorted(len(e["input_ids"]) for share in two.ranks(5) for row in share for e in row) == sorted(3 + i for i in a.indices(5))
    assert two.targets(5) == a.targets(5) == sum(2 + i for i in a.indices(5))
    assert finetuning.checkpoint_steps(600, 10) == list(range(60, 601, 60))


def test_killed_training_resumes_to_the_same_result(tiny_family, tmp_path):
    """SIGKILL mid-training, restart: same final step, same loss curve as an uninterrupted run."""
    path = models.resolve(tiny_family["student"], tmp_path / "cache")
    args = dict(steps=40, batch_size=4, lr=3e-3, warmup_steps=2, weight_decay=0.0, schedule="cosine", grad_clip=1.0, max_length=512,
                precision="32-true", accelerator="cpu", log_every=10, seed=1, packing=True, pack_length=1024, checkpoints=4,
                save_every=3, peak_tflops=None, strategy={"name": "single"})
    pairs = gsm8k_pairs(24)
    uninterrupted = finetuning.run(path, pairs, tmp_path / "straight", **args)

    out = tmp_path / "killed"
    out.mkdir()
    (out / "spec.json").write_text(json.dumps({"model_path": path, "pairs": pairs, "args": args}))
    cmd = [sys.executable, "-m", "cms.finetuning", str(out / "spec.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "first.log", "w") as first:
        proc = subprocess.Popen(cmd, env=env, stdout=first, stderr=first)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-000010").exists() and time.time() < deadline:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "last.ckpt").exists() and not (out / "finetune.json").exists(), "the kill came too late to test a resume"
    killed_at = torch.load(out / "last.ckpt", weights_only=False)["global_step"]
    assert 3 <= killed_at < 40
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming fine-tuning" in done.stderr
    resumed = json.loads((out / "finetune.json").read_text())
    assert resumed["steps"] == uninterrupted["steps"] == 40
    assert [p["loss"] for p in resumed["curve"]] == [p["loss"] for p in uninterrupted["curve"]]
    assert [p["step"] for p in resumed["curve"]] == list(range(40))
    a = models.load_model(resumed["checkpoint"], device="cpu").state_dict()
    b = models.load_model(uninterrupted["checkpoint"], device="cpu").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_preset_trains_in_two_processes_on_cpu(tiny_family, tmp_path):
    """The multi-device path: the cell launches `python -m cms.finetuning spec.json` and Lightning starts the ranks."""
    path = models.resolve(tiny_family["student"], tmp_path / "cache")
    metrics = finetuning.run(path, gsm8k_pairs(24), tmp_path / "ddp", steps=6, batch_size=8, lr=3e-3, accelerator="cpu",
                             checkpoints=2, strategy={"name": "ddp", "devices": 2, "num_nodes": 1})
    assert metrics["steps"] == 6 and [c["step"] for c in metrics["checkpoints"]] == [3, 6]
    assert (tmp_path / "ddp" / "spec.json").exists() and models.load_model(metrics["checkpoint"], device="cpu")
    assert metrics["world_size"] == 2 and metrics["examples_per_step"] == 8


def _rank_grads(rank, world, port, path, examples, out):
    """One training step's gradient on ``rank`` of ``world`` gloo ranks under DDP, with cms's loss
    (global token mean) and with a per-rank token mean (the control)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = models.load_model(path, dtype="float32", device="cpu").train()
    ddp = DistributedDataParallel(model)
    plan = finetuning.StepPlan(examples, 8, seed=0, capacity=1024, world=world)
    batch = {**finetuning.collate(plan.ranks(0)[rank], 0, 1024), "targets": plan.targets(0)}
    grads = {}
    for how in ("global", "per_rank"):
        model.zero_grad()
        if how == "global":
            loss, _ = finetuning.step_loss(ddp, batch, world)
        else:
            loss = finetuning.token_loss(ddp, batch) / sum(finetuning.targets(e) for row in plan.ranks(0)[rank] for e in row)
        loss.backward()
        grads[how] = torch.cat([p.grad.flatten() for p in model.parameters()]).clone()
    if rank == 0:
        torch.save(grads, out)
    dist.barrier()
    os._exit(0)  # tearing down gloo under a live DDP reducer can hang in its destructor; the results are saved


@pytest.mark.timeout(300)
def test_a_step_has_the_same_gradient_on_one_rank_and_on_two(tiny_family, tmp_path):
    """The loss is the global token mean, so the gradient does not depend on the number of devices
    (tolerance: 1e-4 of the largest gradient entry; float32 sums in another order)."""
    import socket

    import torch.multiprocessing as mp

    path = models.resolve(tiny_family["student"], tmp_path / "cache")
    examples = finetuning.tokenize_pairs(models.load_tokenizer(path), gsm8k_pairs(8), 1024)
    got = {}
    for world in (1, 2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_rank_grads, args=(world, port, path, examples, tmp_path / f"g{world}.pt"), nprocs=world, join=True)
        got[world] = torch.load(tmp_path / f"g{world}.pt")
    scale = got[1]["global"].abs().max()
    diff = (got[1]["global"] - got[2]["global"]).abs().max() / scale
    assert diff < 1e-4, diff
    # the control: a per-rank mean weights the two ranks' tokens unequally, and the test sees it
    assert (got[1]["global"] - got[2]["per_rank"]).abs().max() / scale > 1e-3


def test_eight_ranks_each_get_rows_and_nearly_equal_tokens_on_gsm8k(tiny_family, tmp_path):
    """The paper preset on 8 GPUs: batch 32, rows of 1,024 tokens. Byte tokens / 4 stand in for a BPE
    tokenizer's lengths (~4 bytes a token): then a step's 32 examples fill only 4-5 rows, so dealing
    whole rows (the old rows[r::8]) left 3-4 ranks empty."""
    tok = models.load_tokenizer(models.resolve(tiny_family["student"], tmp_path / "cache"))
    records = data.load("gsm8k", "train", "gsm8k", DATA)
    examples = [{"input_ids": [0] * max(1, len(e["input_ids"]) // 4), "labels": e["labels"][: max(1, len(e["input_ids"]) // 4)]}
                for e in finetuning.tokenize_pairs(tok, [(FMT.prompt(r), FMT.completion(r.solution)) for r in records], 4096)]
    plan = finetuning.StepPlan(examples, 32, seed=0, capacity=1024, world=8)
    old_rows, spreads = [], []
    for step in range(200):
        ranks = plan.ranks(step)
        assert all(len(share) >= 1 for share in ranks), step
        tokens = [sum(len(e["input_ids"]) for row in share for e in row) for share in ranks]
        longest = max(len(examples[i]["input_ids"]) for i in plan.indices(step))
        assert max(tokens) - min(tokens) <= longest, (step, tokens)
        spreads.append((max(tokens) - min(tokens)) / (sum(tokens) / 8))
        old_rows.append(len(finetuning.pack([len(examples[i]["input_ids"]) for i in plan.indices(step)], 1024)))
    assert max(old_rows) < 8  # what dealing whole rows would have left empty
    assert sum(spreads) / len(spreads) < 0.5


def test_bf16_checkpoint_trains_on_fp32_master_weights(env, tmp_path):
    """A bf16 tiny model, 5 AdamW steps at lr 1e-6 under bf16-mixed through `python -m cms.run`: the
    fp32 export differs from the start in >= 99% of its parameters (the old bf16-in-place training
    changed about 2%); a bf16 export rounds most of the update away, which is why fp32 is the default."""
    common = ["family=tiny", "dataset=gsm8k", "debug=smoke", "setting=kd", "data.source=reference", "family.student.dtype=bfloat16",
              "finetune.precision=bf16-mixed", "finetune.lr=1e-6", "finetune.steps=5", "finetune.warmup_steps=0",
              "finetune.checkpoints=1", "finetune.val_size=0", "logger=none", "evaluation.baseline=false"]
    changed = {}
    for save in ("fp32", "bf16"):
        run_dir = tmp_path / save
        proc = subprocess.run([sys.executable, "-m", "cms.run", *common, f"finetune.save_dtype={save}", f"hydra.run.dir={run_dir}"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads((run_dir / "results.json").read_text())
        changed[save] = results["changed_fraction"]
        assert results["weights"] == {"checkpoint_dtype": "bfloat16", "master": "float32", "compute": "bf16-mixed",
                                      "saved": {"fp32": "float32", "bf16": "bfloat16"}[save], "kept_checkpoints": "all"}
        assert json.loads((run_dir / "finetune" / "finetune.json").read_text())["weights"] == results["weights"]
        assert "of the parameters of the selected checkpoint differ" in proc.stdout + proc.stderr
    assert changed["fp32"] >= 0.99, changed
    assert changed["bf16"] < 0.5, changed


def test_keep_best_checkpoint_scores_each_as_it_is_written(tiny_family, tmp_path):
    path = models.resolve(tiny_family["student"], tmp_path / "cache")
    records = data.load("gsm8k", "train", "gsm8k", DATA)
    val = records[100:104]
    eval_args = dict(fmt="gsm8k", prompt_format=FMT, sampler={"backend": "hf", "batch_size": 4}, max_new_tokens=8, stop=["Question:"])
    spec = evaluation.validation_spec(val, [], tmp_path / "validation", **eval_args)
    metrics = finetuning.run(path, gsm8k_pairs(16), tmp_path / "ft", steps=8, batch_size=4, lr=3e-3, checkpoints=4,
                             keep_checkpoints="best", validate=spec)
    left = sorted(p.name for p in (tmp_path / "ft" / "checkpoints").iterdir())
    assert len(left) == 1 and [c["step"] for c in metrics["checkpoints"] if c["kept"]] == [int(left[0][5:])]
    # the selection reuses the scores written during training and picks the one checkpoint kept
    selected = evaluation.select(metrics["checkpoints"], val, [], out_dir=tmp_path / "validation", **eval_args)
    assert selected["path"] == metrics["checkpoint"] == str(tmp_path / "ft" / "checkpoints" / left[0])
    assert len(selected["val_accuracy"]) == 4
    with pytest.raises(ValueError, match="val_size"):
        finetuning.run(path, gsm8k_pairs(16), tmp_path / "ft2", steps=8, batch_size=4, lr=3e-3, keep_checkpoints="best")


def test_changed_fraction_counts_parameters_that_moved(tiny_family, tmp_path):
    path = models.resolve(tiny_family["student"], tmp_path / "cache")
    model = models.load_model(path, device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(1.0)
    model.save_pretrained(tmp_path / "moved")
    norms = sum(p.numel() for n, p in model.named_parameters() if n.endswith("norm.weight"))
    total = sum(p.numel() for p in model.parameters())
    assert finetuning.changed_fraction(path, str(tmp_path / "moved")) == pytest.approx(norms / total)
    assert finetuning.changed_fraction(path, path) == 0.0


def test_fsdp_ranks_other_than_0_hold_no_weights_before_sharding(tiny_family, tmp_path):
    """Lightning's FSDP pattern: the learner is built in configure_model; only rank 0 reads the weights
    (fp32 master copy), the other ranks build it on the meta device, so host RAM holds one copy per node."""
    card = {**tiny_family["student"], "dtype": "bfloat16"}
    path = models.resolve(card, tmp_path / "cache")
    rank0 = finetuning.load_for_training(path, 0, fsdp=True)
    rank1 = finetuning.load_for_training(path, 1, fsdp=True)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in rank0.parameters())
    assert all(p.is_meta for p in rank1.parameters())
    assert sum(p.numel() for p in rank1.parameters()) == sum(p.numel() for p in rank0.parameters())
    ddp = finetuning.load_for_training(path, 1, fsdp=False)  # DDP: every rank holds its full copy
    assert not any(p.is_meta for p in ddp.parameters()) and next(ddp.parameters()).dtype == torch.float32


def test_a_resume_state_of_other_settings_is_refused(tiny_family, tmp_path):
    """A killed run's last.ckpt is resumed only under the settings it was written with."""
    path = models.resolve(tiny_family["student"], tmp_path / "cache")
    out = tmp_path / "ft"
    out.mkdir()
    (out / "last.ckpt").write_bytes(b"a training state")
    args = dict(steps=600, batch_size=4, lr=1e-6)
    fingerprint = {"model": path, "pairs": resume.digest(gsm8k_pairs(8)),
                   **{k: v for k, v in {**dict(warmup_steps=0, weight_decay=0.0, schedule="constant", grad_clip=1.0, max_length=1024,
                                            precision="32-true", seed=0, packing=True, pack_length=None, checkpoints=1,
                                            save_dtype="fp32", keep_checkpoints="all"), **args}.items()}}
    resume.mark(out / "last.ckpt", fingerprint)
    with pytest.raises(resume.StaleError, match=r"last.ckpt holds a fine-tuning state to resume .*lr: 1e-06 -> 0.001; steps: 600 -> 6000"):
        finetuning.run(path, gsm8k_pairs(8), out, **{**args, "lr": 1e-3, "steps": 6000})
    assert (out / "last.ckpt").read_bytes() == b"a training state"


def test_fsdp_clips_gradients_with_fsdps_own_norm():
    """Lightning's norm clipping raises under FSDP's precision plugin (seen on an H200 in the GPU
    proof); the module clips through the FSDP root's clip_grad_norm_ instead."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy

    class Root(torch.nn.Module):
        norms = []

        def clip_grad_norm_(self, max_norm):
            self.norms.append(max_norm)

    module = finetuning.SFTModule(lambda rank: None, lr=1e-3, warmup_steps=0)
    module.trainer = SimpleNamespace(strategy=FSDPStrategy(), model=Root(), precision_plugin=FSDPPrecision("bf16-mixed"),
                                     gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert Root.norms == [1.0]
