"""Money and hosted models without a server: the price table, price and compute matching with hosted
cards, the API sampler's parsing and pacing, the preflight's messages, the report's dollar columns, and
a sampler backend added as one module and one YAML (tests/test_api.py runs the sampler against a server)."""

import asyncio
import json
import subprocess
import sys
import textwrap
import time

import pytest
from omegaconf import OmegaConf

from cms import budget, preflight, prices, report
from cms.api_sampling import Bucket, OpenAISampler, retry_after, samples_of
from conftest import ROOT
from test_config import compose_with

TABLE = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "prices" / "2024-08.yaml"))


def test_the_price_table_says_where_and_when_each_price_was_read():
    for name, row in TABLE["models"].items():
        assert {"input", "cached_input", "output", "reasoning", "batch_discount", "source", "as_of"} <= row.keys(), name
    assert TABLE["models"]["gemini-1.5-pro"]["output"] / TABLE["models"]["gemini-1.5-flash"]["output"] == 35  # the paper's 35:1


def test_cost_prices_cached_reasoning_and_batch_tokens_apart():
    row = TABLE["models"]["gpt-4o"]  # $2.50 input, $1.25 cached, $10 output and reasoning, batch 50% off
    usage = {"input": 1_000_000, "cached_input": 400_000, "output": 200_000, "reasoning": 50_000}
    assert prices.cost(row, usage) == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 0.15 * 10 + 0.05 * 10)
    assert prices.cost(row, usage, batch=True) == pytest.approx(prices.cost(row, usage) / 2)
    rows = [{"tokens": 10, "usage": {**usage, "cost": 4.0}}, {"tokens": 10}]
    spent = prices.spent(rows, row, 10.0)
    assert spent["spent_usd"] == pytest.approx(4.0) and spent["provider_usd"] == 4.0 and spent["usage_tokens"]["output"] == 200_000
    assert prices.spent([{"tokens": 500_000}], None, 2.0)["spent_usd"] == pytest.approx(1.0)  # a local model: output tokens at its price


def test_price_matching_reads_the_table_and_compute_matching_refuses_a_hosted_model():
    flash, pro = {"api": {"model": "gemini-1.5-flash"}}, {"priced_as": "gemini-1.5-pro"}
    out = {"wc": prices.output_price(flash, TABLE), "se": prices.output_price(pro, TABLE)}
    assert budget.samples_per_question("wc", {"wc": None, "se": None}, match="price", prices=out, se_samples=2) == 70
    assert prices.output_price({"priced_as": "gpt-4o", "price_per_mtok": 7.0}, TABLE) == 7.0  # a card's own price wins
    with pytest.raises(budget.BudgetError, match=r"family.se is a hosted model of unknown size: match on price \(budget=price.*family.se.params=<count>"):
        budget.samples_per_question("wc", {"wc": 1e9, "se": None}, match="compute")
    assert budget.samples_per_question("wc", {"wc": 1e9, "se": 9e9}, match="compute") == 9  # family.<role>.params given
    with pytest.raises(budget.BudgetError, match=r"family.wc has none: name its row of the price table \(family.<role>.priced_as"):
        budget.samples_per_question("wc", {"wc": 1, "se": 1}, match="price", prices={"wc": None, "se": 10.5})


def test_a_response_without_answers_is_empty_and_retry_after_is_read_in_every_form():
    body = {"choices": [{"index": 1, "text": "b", "finish_reason": "length"}, {"index": 0, "text": "", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 4}, "cost": 0.5}}
    first, second = samples_of(body, 2, chat=False)
    assert (first.text, first.finish, second.text, second.finish) == ("", "stop", "b", "length")
    assert first.usage == {"input": 7, "cached_input": 0, "output": 10, "reasoning": 4, "cost": 0.5} and second.usage is None
    assert samples_of(body, 3, chat=False) is None  # fewer choices than asked
    assert samples_of({"choices": [{"index": 0, "message": {"content": None}}]}, 1, chat=True) is None
    assert retry_after({"retry-after": "2"}) == 2 and retry_after({"retry-after-ms": "250"}) == 0.25
    assert 58 < retry_after({"retry-after": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))}) <= 60
    assert retry_after({}) is None


def test_the_bucket_spaces_requests_evenly_and_a_pause_holds_them():
    async def go(bucket, n):
        t0 = time.monotonic()
        for _ in range(n):
            await bucket.take()
        return time.monotonic() - t0

    assert 0.95 < asyncio.run(go(Bucket(1200), 21)) < 1.2  # 20 gaps of 50 ms: no burst
    sleep = asyncio.sleep

    async def late(seconds):  # a busy machine wakes every sleeper 20 ms late
        await sleep(seconds + 0.02)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(asyncio, "sleep", late)
        assert 0.95 < asyncio.run(go(Bucket(1200), 21)) < 1.1  # still 20 gaps of 50 ms, not 70 ms

    async def owing(bucket):  # a response used one unit more than was taken, while the next request waited
        async def owe():
            await asyncio.sleep(0.02)
            bucket.give_back(-1)

        await bucket.take()
        t0 = time.monotonic()
        await asyncio.gather(bucket.take(), owe())
        return time.monotonic() - t0

    assert asyncio.run(owing(Bucket(600))) >= 0.19  # the debt costs one more 100 ms interval, not forgotten
    paused = Bucket(None)
    paused.pause(0.5)
    assert asyncio.run(go(paused, 1)) >= 0.45


def test_preflight_names_a_missing_key_and_a_hosted_learner(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    c = OmegaConf.to_container(compose_with(["family=openai", "sampler=openai", "budget=price", "family.student.path=/nonexistent"]), resolve=True)
    found = preflight.problems(c)
    assert any("OPENAI_API_KEY, which is not set: export OPENAI_API_KEY=<your key>" in p for p in found)
    c = OmegaConf.to_container(compose_with(["family=openai", "sampler=openai", "setting=self"]), resolve=True)
    assert any("setting=self fine-tunes family.wc, a hosted model" in p for p in preflight.problems(c))
    c = OmegaConf.to_container(compose_with(["family=openai", "sampler=openai", "budget=low"]), resolve=True)
    assert any("budget.match=compute needs both models' parameter counts" in p for p in preflight.problems(c))
    c = OmegaConf.to_container(compose_with(["family=gemini", "budget=price"]), resolve=True)
    assert any("family.wc is a hosted model (https://generativelanguage" in p and "use sampler=openai" in p for p in preflight.problems(c))
    c = OmegaConf.to_container(compose_with(["sampler=openai"]), resolve=True)
    assert any("sampler=openai asks a model behind an API, and family.wc (toy-wc) has none" in p for p in preflight.problems(c))


def test_the_data_table_shows_dollars_next_to_flops_and_the_providers_figure():
    cells = [{"model": m, "setting": "kd", "seed": 0, "source": "sampled", "generator": g, "samples_per_question": s, "coverage": 0.5,
              "diversity": 1.0, "planned_usd": 0.03, "spent_usd": spent, "provider_usd": provider, "planned_flops": None, "spent_flops": None,
              "accuracy": None, "dataset": "math", "budget": "price", "family": "gemini", "n_questions": 10}
             for m, g, s, spent, provider in (("wc", "flash", 35, 0.0291, 0.03), ("se", "pro", 1, 0.0312, None))]
    header, lines = report.tables(cells)["The data"]
    assert header[-3:] == ["planned $", "spent $", "provider's $"] and "planned FLOPs" not in header
    by = {line[header.index("generator")]: line for line in lines}
    assert by["WC (flash)"][-3:] == ["$0.03", "$0.0291", "$0.03 (+0.0009 from ours)"] and by["SE (pro)"][-1] == "n/a"


def test_a_backend_is_one_module_and_one_yaml(env, tmp_path):
    """A sampler outside cms: its class in a module, its group in a YAML on Hydra's search path; nothing in cms changes."""
    (tmp_path / "echo_backend.py").write_text(textwrap.dedent('''
        from cms.sampling import Sample

        class EchoSampler:
            """Answers every question with its own last line: a backend in eight lines."""

            def __init__(self, path, batch_size=8, answer="#### 0", **_):
                self.batch_size, self.answer = batch_size, answer

            def generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, seeds, desc=None):
                return [[Sample(f"echo {i} {self.answer}", 3, "stop") for i in range(n)] for _ in prompts]

            def close(self):
                pass
    '''))
    (tmp_path / "conf" / "sampler").mkdir(parents=True)
    (tmp_path / "conf" / "sampler" / "echo.yaml").write_text(
        "_target_: echo_backend.EchoSampler\nbackend: echo\ntemperature: 0.7\ntop_p: 1.0\nbatch_size: 8\nanswer: '#### 7'\n"
        "isolate: false\ndtype: auto\nworker: 0\nworkers: 1\n")
    run = [sys.executable, "-m", "cms.run", "sampler=echo", "family=tiny", "dataset=gsm8k", "debug=smoke", "stop_after=sampling",
           f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"hydra.run.dir={tmp_path / 'run'}", "logger=none"]
    proc = subprocess.run(run, env={**env, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    graded = [json.loads(line) for line in (tmp_path / "run" / "graded.jsonl").read_text().splitlines()]
    assert len({r["qid"] for r in graded}) == 8 and all(r["answer"] == "7" for r in graded)  # debug=smoke: 8 questions
    bad = subprocess.run(run + ["+sampler.anwser=1"], env={**env, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "sampler.anwser is not a setting of EchoSampler (did you mean sampler.answer?)" in bad.stderr


def test_a_cell_finished_by_an_older_cms_is_still_reused_and_a_price_change_is_not():
    """Settings added since (at None) and sampler.per_index_seed, which an older cms wrote for every
    backend, are no difference; a price-matched cell's fingerprint holds the two prices it used, so a
    new row in the table leaves it alone and a changed price does not."""
    from cms import config, resume

    now = config.cell_fingerprint(OmegaConf.to_container(compose_with([]), resolve=True))
    older = {k: v for k, v in now.items() if v is not None and k != "evaluation.backend"} | {"sampler.per_index_seed": True}
    assert "family.wc.api" in now and "family.wc.api" not in older
    resume.check(older, now, ROOT, "a cell")
    with pytest.raises(resume.StaleError, match="sampler.per_index_seed: False -> '<unset>'"):
        resume.check(older | {"sampler.per_index_seed": False}, now, ROOT, "a cell")

    def priced(*overrides):
        return config.cell_fingerprint(OmegaConf.to_container(compose_with(["family=gemini", "budget=price", *overrides]), resolve=True))

    base = priced()
    assert base["prices.wc.output"] == 0.3 and base["prices.se.output"] == 10.5 and not any(k.startswith("prices.models") for k in base)
    assert priced("+prices.models.new-model={input: 1, output: 2}") == base
    assert resume.differences(base, priced("family.se.price_per_mtok=5.0")) == ["family.se.price_per_mtok: None -> 5.0", "prices.se.output: 10.5 -> 5.0"]


def test_requests_ask_at_most_128_samples_each_and_seeded_ones_one():
    card = {"name": "m", "api": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "endpoint": "chat", "key_env": None, "n": True, "seed": False}}
    requests = OpenAISampler(card=card)._requests(["p"], 300, [list(range(300))], None)
    assert [len(idx) for _, idx, _ in requests] == [128, 128, 44] and [b["n"] for *_, b in requests] == [128, 128, 44]
    assert [i for _, idx, _ in requests for i in idx] == list(range(300)) and requests[0][2]["messages"] == [{"role": "user", "content": "p"}]
    seeded = OpenAISampler(card={**card, "api": {**card["api"], "seed": True}})._requests(["p", "q"], 2, [[5, 6], [7, 8]], None)
    assert [(q, idx, b["seed"]) for q, idx, b in seeded] == [(0, [0], 5), (0, [1], 6), (1, [0], 7), (1, [1], 8)] and "n" not in seeded[0][2]
