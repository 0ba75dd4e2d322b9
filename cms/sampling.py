"""Sampling S solutions per question from a generator, with a shared sample cache.

Two backends share one interface, ``generate(prompts, n, ...) -> [[Sample]*n]``:

- ``HFSampler``: HF transformers on CPU or GPU. Batched across questions; each
  prompt is prefilled once and its KV cache repeated for the n samples; every
  sample row has its own seeded generator (seed, question, index), so sample i
  of question q does not depend on the batch it ran in; rows stop at EOS or a
  stop string and leave the batch.
- ``VLLMSampler``: vLLM on GPU, ``LLM.generate`` with ``SamplingParams(n=S)`` and
  prefix caching, imported only when chosen.

Samples are cached under a key of everything that determines them (generator,
dataset split and questions, prompt text, decoding parameters, backend, seed) in
``<cache_dir>/samples/<key>/``; every grid cell that needs them reuses them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from filelock import FileLock
from tqdm import tqdm

from cms import models

log = logging.getLogger(__name__)


@dataclass
class Sample:
    text: str
    tokens: int  # generated tokens, stop string included: what the sampling cost
    finish: str  # stop | length


def seed_for(seed: int, qid: str, index: int) -> int:
    """The seed of sample ``index`` of question ``qid``."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{qid}:{index}".encode()).digest()[:8], "little") & (2**63 - 1)


def _cut(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stop if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


class HFSampler:
    """Batched sampling with HF transformers and a hand-rolled KV-cache decode loop."""

    def __init__(self, path: str, dtype: str = "auto", batch_size: int = 8, device: str | None = None, **_):
        self.tokenizer = models.load_tokenizer(path)
        self.model = models.load_model(path, dtype, device)
        self.batch_size = batch_size
        self.context = getattr(self.model.config, "max_position_embeddings", None)

    @property
    def device(self):
        return self.model.device

    def _pick(self, logits: torch.Tensor, temperature: float, top_p: float, gens: list) -> torch.Tensor:
        if temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        cpu = probs.cpu()
        return torch.stack([torch.multinomial(cpu[r], 1, generator=g)[0] for r, g in enumerate(gens)]).to(logits.device)

    @torch.inference_mode()
    def _batch(self, prompts, n, temperature, top_p, max_new_tokens, stop, seeds) -> list[list[Sample]]:
        tok, model = self.tokenizer, self.model
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        if self.context and enc.input_ids.shape[1] + max_new_tokens > self.context:
            raise ValueError(
                f"prompt of {enc.input_ids.shape[1]} tokens plus {max_new_tokens} new tokens exceeds the model's "
                f"context of {self.context}: lower dataset.num_shots or dataset.max_new_tokens"
            )
        mask = enc.attention_mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=enc.input_ids, attention_mask=mask, position_ids=pos, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1, :]
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits, mask, pos = (t.repeat_interleave(n, 0) for t in (logits, mask, pos))
        pos = pos[:, -1:]
        rows = [(q, i) for q in range(len(prompts)) for i in range(n)]
        gens = [torch.Generator().manual_seed(seeds[q][i]) for q, i in rows]
        tokens: list[list[int]] = [[] for _ in rows]
        live = list(range(len(rows)))  # indices into rows, aligned with the batch dimension
        result: dict[int, Sample] = {}
        window = max((len(s) for s in stop), default=0) + 8
        for step in range(max_new_tokens):
            picked = self._pick(logits, temperature, top_p, [gens[r] for r in live]).tolist()
            keep = []
            for b, r in enumerate(live):
                tokens[r].append(picked[b])
                eos = picked[b] == tok.eos_token_id
                hit = bool(stop) and any(s in tok.decode(tokens[r][-window:]) for s in stop)
                if eos or hit or step == max_new_tokens - 1:
                    text, stopped = _cut(tok.decode(tokens[r], skip_special_tokens=True), stop)
                    result[r] = Sample(text, len(tokens[r]), "stop" if eos or stopped else "length")
                else:
                    keep.append(b)
            if not keep:
                break
            if len(keep) < len(live):
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                mask, pos = mask[idx], pos[idx]
                live = [live[b] for b in keep]
                picked = [picked[b] for b in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            pos = pos + 1
            ids = torch.tensor(picked, device=self.device)[:, None]
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1, :]
        return [[result[q * n + i] for i in range(n)] for q in range(len(prompts))]

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, seeds, desc="sampling"):
        """``n`` samples for each prompt; ``seeds[q][i]`` seeds sample i of prompt q."""
        results = []
        for start in tqdm(range(0, len(prompts), self.batch_size), desc=desc, unit="batch", leave=False):
            end = start + self.batch_size
            results += self._batch(prompts[start:end], n, temperature, top_p, max_new_tokens, stop, seeds[start:end])
        return results

    def close(self) -> None:
        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VLLMSampler:
    """vLLM: one ``LLM.generate`` call per chunk, ``SamplingParams(n=S)``, prefix caching on."""

    def __init__(self, path: str, dtype: str = "auto", batch_size: int = 512, gpu_memory_utilization: float = 0.85, tensor_parallel_size: int = 1, seed: int = 0, **_):
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError("sampler=vllm needs vLLM: pip install -e '.[gpu]' on a CUDA machine, or use sampler=hf") from err
        self.llm = LLM(
            model=path, dtype=dtype, seed=seed, enable_prefix_caching=True,
            gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
        )
        self.batch_size = batch_size

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, seeds, desc="sampling"):
        from vllm import SamplingParams

        results = []
        for start in tqdm(range(0, len(prompts), self.batch_size), desc=desc, unit="chunk", leave=False):
            chunk = range(start, min(start + self.batch_size, len(prompts)))
            params = [
                SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, stop=list(stop), seed=seeds[q][0])
                for q in chunk
            ]
            for out in self.llm.generate([prompts[q] for q in chunk], params, use_tqdm=False):
                results.append([Sample(o.text, len(o.token_ids), "stop" if o.finish_reason == "stop" else "length") for o in out.outputs])
        return results

    def close(self) -> None:
        """Release the engine and its GPU memory for the fine-tuning that follows."""
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        del self.llm
        destroy_model_parallel()
        destroy_distributed_environment()
        gc.collect()
        torch.cuda.empty_cache()


BACKENDS = {"hf": HFSampler, "vllm": VLLMSampler}


def make_sampler(backend: str, path: str, **options):
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampler backend {backend!r}: use sampler=hf or sampler=vllm")
    return BACKENDS[backend](path, **options)


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_rows(path: Path) -> list[dict]:
    """The rows of a jsonl store; a torn last line (a crash mid-write) is dropped."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def run(
    *, generator: dict, questions: list, prompts: list[str], n: int, sampler: dict, decoding: dict,
    seed: int, cache_dir: str | Path, key_parts: dict,
) -> tuple[list[dict], bool, Path]:
    """Samples for every question, from the cache or freshly drawn.

    Returns (rows, cache_hit, store directory); each row is
    {qid, index, text, tokens, finish}. Shards of ``sampler.batch_size``
    questions are appended (and fsynced) as they finish, so an interrupted pass
    resumes where it stopped.
    """
    key = cache_key(generator=models.card_key(generator), n=n, seed=seed, backend=sampler["backend"], decoding=decoding, **key_parts)
    store = Path(cache_dir) / "samples" / key
    store.mkdir(parents=True, exist_ok=True)
    path = store / "samples.jsonl"
    with FileLock(str(store / ".lock")):
        if (store / ".done").exists():
            rows = _read_rows(path)
            log.info("sampling: cache hit: %d samples of %s already in %s", len(rows), generator["name"], store)
            return rows, True, store
        rows = _read_rows(path)
        done = {r["qid"] for r in rows}
        todo = [(q, p) for q, p in zip(questions, prompts) if q.id not in done]
        log.info(
            "sampling: sampling pass: %d samples (%d per question x %d questions, %d already stored) with %s -> %s",
            len(todo) * n, n, len(todo), len(done), generator["name"], store,
        )
        (store / "meta.json").write_text(json.dumps({"generator": generator, "n": n, "seed": seed, "decoding": decoding, "sampler": sampler, **key_parts}, indent=2, default=str))
        if todo:
            path_or_id = models.resolve(generator, cache_dir)
            options = {k: v for k, v in sampler.items() if k not in ("backend", "temperature", "top_p")}
            engine = make_sampler(sampler["backend"], path_or_id, seed=seed, **options)
            try:
                shard = engine.batch_size
                with path.open("a", encoding="utf-8") as f:
                    for start in tqdm(range(0, len(todo), shard), desc=f"sampling {generator['name']}", unit="shard"):
                        part = todo[start : start + shard]
                        seeds = [[seed_for(seed, q.id, i) for i in range(n)] for q, _ in part]
                        out = engine.generate([p for _, p in part], n, seeds=seeds, desc="batch", **decoding)
                        for (q, _), samples in zip(part, out):
                            for i, s in enumerate(samples):
                                row = {"qid": q.id, "index": i, **asdict(s)}
                                f.write(json.dumps(row) + "\n")
                                rows.append(row)
                        f.flush()
                        os.fsync(f.fileno())
            finally:
                engine.close()
        (store / ".done").touch()
    return rows, False, store
