"""GPU paths: vLLM sampling and bf16 fine-tuning. Skipped without CUDA (and vLLM), but for the GPU
proof's CPU run at tiny size, which keeps benchmarks/gpu.py working between lent GPUs."""

import subprocess
import sys

import pytest
import torch

from cms import finetuning, models, sampling
from conftest import ROOT


def test_the_gpu_proof_runs_at_tiny_size_on_a_cpu(env):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--size", "tiny", "--steps", "3", "--batch", "4",
                           "--questions", "4", "--samples", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    changed = next(line for line in lines if line.startswith("exported parameters changed"))
    assert float(changed.rsplit(": ", 1)[1].rstrip("%")) > 99  # bf16-stored model, lr 1e-6, fp32 master weights and export
    assert any(line.startswith("HF sampler:") for line in lines) and lines[-1].startswith("fsdp/single tokens per second")


@pytest.mark.gpu
def test_vllm_sampler_draws_n_per_prompt_and_frees_the_gpu(tiny_family, tmp_path):
    pytest.importorskip("vllm", reason="vLLM not installed: pip install -e '.[gpu]'")
    path = models.resolve(tiny_family["se"], tmp_path)
    engine = sampling.make_sampler("vllm", path, gpu_memory_utilization=0.3)
    seeds = [[sampling.seed_for(0, f"q{q}", i) for i in range(4)] for q in range(3)]
    out = engine.generate(["Question: 1+1?\nAnswer:"] * 3, 4, 0.7, 1.0, 16, ["Question:"], seeds)
    assert [len(o) for o in out] == [4, 4, 4] and all(s.tokens > 0 for o in out for s in o)
    engine.close()
    free, total = torch.cuda.mem_get_info()
    assert free / total > 0.8


@pytest.mark.gpu
def test_bf16_finetuning_on_gpu(tiny_family, tmp_path):
    path = models.resolve(tiny_family["wc"], tmp_path)
    pairs = [(f"Question: {i}+1?\nAnswer:", f" {i + 1}\n\n") for i in range(32)]
    metrics = finetuning.run(path, pairs, tmp_path / "ft", steps=20, batch_size=8, lr=3e-3, precision="bf16-mixed", accelerator="gpu")
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert metrics["mfu"] is None or 0 < metrics["mfu"] < 1  # known GPUs get a peak, hence an MFU


@pytest.mark.gpu
def test_fsdp_preset_across_the_gpus_of_a_node(tiny_family, tmp_path):
    """Every GPU of the node, one included, with the default gradient clipping (FSDP's own norm)."""
    path = models.resolve(tiny_family["wc"], tmp_path)
    pairs = [(f"Question: {i}+1?\nAnswer:", f" {i + 1}\n\n") for i in range(64)]
    metrics = finetuning.run(path, pairs, tmp_path / "ft", steps=10, batch_size=16, lr=3e-3, precision="bf16-mixed",
                             accelerator="gpu", checkpoints=2,
                             strategy={"name": "fsdp", "devices": torch.cuda.device_count(), "activation_checkpointing": True})
    assert metrics["steps"] == 10 and models.load_model(metrics["checkpoint"], device="cpu")
