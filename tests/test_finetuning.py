import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cms import data, evaluation, finetuning, models
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
    # finished work is not redone
    assert finetuning.run(path, gsm8k_pairs(16), tmp_path / "ft", steps=30, batch_size=8, lr=3e-3) == metrics


def test_loss_masks_the_prompt(tiny_family, tmp_path):
    tok = models.load_tokenizer(models.resolve(tiny_family["student"], tmp_path))
    [ex] = finetuning.tokenize_pairs(tok, [("Question: q\nAnswer:", " 42")], 64)
    n_prompt = len(tok("Question: q\nAnswer:", add_special_tokens=False).input_ids)
    assert ex["labels"][:n_prompt] == [finetuning.IGNORE] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:] and ex["labels"][-1] == tok.eos_token_id


def test_pack_is_best_fit_decreasing_and_respects_capacity():
    lengths = [7, 3, 5, 2, 6, 4, 1, 9]
    rows = finetuning.pack(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(8))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert len(rows) == 4  # 37 tokens need at least 4 rows of 10
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
    tok = models.load_tokenizer(models.resolve(tiny_family["student"], tmp_path / "cache"))
    records = data.load(dataset, "train", dataset if dataset == "gsm8k" else "math", DATA)[:2000]
    ex = finetuning.tokenize_pairs(tok, [(FMT.prompt(r), FMT.completion(r.solution)) for r in records], 2048)
    d = finetuning.SFTData(ex, 32, tok.pad_token_id, steps=1, pack_length=4096)
    real = sum(len(e["input_ids"]) for e in ex)
    waste = 1 - real / (len(d.rows) * 4096)
    assert waste < 0.05, waste
    unpacked = finetuning.SFTData(ex, 32, tok.pad_token_id, steps=1)
    batch = finetuning.collate(unpacked.rows[:32], tok.pad_token_id)
    assert 1 - batch["real_tokens"] / batch["tokens"] > waste  # padding to the longest wastes more


def test_batches_depend_only_on_seed_and_step():
    a = finetuning.StepBatches(10, 4, 20, seed=3)
    b = finetuning.StepBatches(10, 4, 20, seed=3, start=lambda: 7)
    assert [a.rows(s) for s in range(7, 20)] == list(b)
    assert sorted(a.rows(0) + a.rows(1) + a.rows(2)[:2]) == list(range(10))  # an epoch sees every row once
    assert finetuning.StepBatches(10, 4, 20, seed=4).rows(0) != a.rows(0)
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
    assert metrics["rows_per_step"] >= 2  # each rank gets its share of the step's rows
