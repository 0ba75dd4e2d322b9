import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cms import models, sampling
from cms.data import Record


@pytest.fixture(scope="module")
def engine(tiny_family, tmp_path_factory):
    path = models.resolve(tiny_family["wc"], tmp_path_factory.mktemp("models"))
    return sampling.HFSampler(path, batch_size=4)


def test_sample_i_of_q_does_not_depend_on_its_batch(engine):
    prompts = ["Question: 2+2?\nAnswer:", "Question: a longer one about apples and pears?\nAnswer:", "Q: x\nA:"]
    seeds = [[sampling.seed_for(0, f"q{q}", i) for i in range(3)] for q in range(3)]
    together = engine.generate(prompts, 3, 0.7, 1.0, 16, [], seeds)
    alone = engine.generate(prompts[1:2], 3, 0.7, 1.0, 16, [], seeds[1:2])
    assert [s.text for s in together[1]] == [s.text for s in alone[0]]
    assert len({s.text for s in together[1]}) == 3  # different seeds, different samples
    assert all(s.tokens == 16 and s.finish == "length" for row in together for s in row)


def test_greedy_is_deterministic_and_stop_strings_cut(engine):
    first = engine.generate(["Question: 1\nAnswer:"], 1, 0.0, 1.0, 12, [], [[0]])[0][0]
    again = engine.generate(["Question: 1\nAnswer:"], 1, 0.0, 1.0, 12, [], [[5]])[0][0]
    assert first.text == again.text
    stop = first.text[3:5]  # a string the model is known to produce
    cut = engine.generate(["Question: 1\nAnswer:"], 1, 0.0, 1.0, 12, [stop], [[0]])[0][0]
    assert cut.finish == "stop" and stop not in cut.text and first.text.startswith(cut.text)
    assert cut.tokens < first.tokens


def test_prompt_longer_than_context_names_the_fix(engine):
    with pytest.raises(ValueError, match="num_shots"):
        engine.generate(["x" * 9000], 1, 0.0, 1.0, 8, [], [[0]])


def _args(family, cache, n):
    questions = [Record(f"q{i}", f"question {i}", "1", "") for i in range(3)]
    return dict(generator=family["wc"], questions=questions, prompts=[f"Q{i}:" for i in range(3)], n=n,
                sampler={"backend": "hf", "temperature": 0.7, "top_p": 1.0, "batch_size": 2},
                decoding={"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 8, "stop": []},
                seed=0, cache_dir=cache, key_parts={"dataset": "t"})


def test_sample_cache_is_shared_and_survives_a_torn_tail(tiny_family, tmp_path):
    rows, hit, store = sampling.run(**_args(tiny_family, tmp_path, 2))
    assert not hit and len(rows) == 6 and [(r["qid"], r["index"]) for r in rows] == [(f"q{q}", i) for q in range(3) for i in range(2)]
    again, hit, _ = sampling.run(**_args(tiny_family, tmp_path, 2))
    assert hit and again == rows
    # an interrupted pass: the last line of a shard is torn
    shard = store / "shard-00000.jsonl"
    lines = shard.read_text().splitlines()
    shard.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    resumed, hit, _ = sampling.run(**_args(tiny_family, tmp_path, 2))
    assert not hit and resumed == rows
    assert len(shard.read_text().splitlines()) == 4  # the torn line is gone, nothing duplicated


def test_nested_budgets_draw_only_the_difference(tiny_family, tmp_path, caplog):
    caplog.set_level("INFO")
    low, _, _ = sampling.run(**_args(tiny_family, tmp_path, 2))
    assert "drew 6 new samples" in caplog.text
    caplog.clear()
    high, hit, _ = sampling.run(**_args(tiny_family, tmp_path, 5))
    assert not hit and "drew 9 new samples" in caplog.text and "6 were already stored" in caplog.text
    assert [r for r in high if r["index"] < 2] == low
    caplog.clear()
    again, hit, _ = sampling.run(**_args(tiny_family, tmp_path, 1))
    assert hit and "drew" not in caplog.text and again == [r for r in low if r["index"] == 0]
    # sample i of q is the same whichever budget drew it: high first, then low, elsewhere
    fresh, _, _ = sampling.run(**_args(tiny_family, tmp_path / "other", 5))
    assert fresh == high


def _store_rows(cache):
    [store] = (cache / "samples").iterdir()
    return [json.loads(line) for shard in sorted(store.glob("shard-*.jsonl")) for line in shard.read_text().splitlines()]


def _worker(cache, n, questions=12):
    return subprocess.Popen([sys.executable, str(Path(__file__).parent / "sample_worker.py"), str(cache), str(n), str(questions)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_concurrent_processes_share_one_sampling_pass(tmp_path):
    procs = [_worker(tmp_path, 3) for _ in range(4)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    drawn = [int(m) for log in logs for m in re.findall(r"drew (\d+) new samples", log)]
    assert sum(drawn) == 36  # the processes split the shards; nothing was drawn twice
    totals = {line.split(" hit=")[0] for log in logs for line in log.splitlines() if line.startswith("rows=")}
    assert len(totals) == 1 and totals.pop().startswith("rows=36 ")  # every process returned the same samples
    rows = _store_rows(tmp_path)
    assert len(rows) == len({(r["qid"], r["index"]) for r in rows}) == 36


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    reference = _worker(tmp_path / "ref", 3, 16)
    assert reference.wait(timeout=600) == 0
    rng = random.Random(0)
    for _ in range(10):
        proc = _worker(tmp_path / "killed", 3, 16)
        time.sleep(rng.uniform(1.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = _worker(tmp_path / "killed", 3, 16)
    assert final.wait(timeout=600) == 0
    rows = _store_rows(tmp_path / "killed")
    keys = [(r["qid"], r["index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 48
    assert {k: r for k, r in zip(keys, rows)} == {(r["qid"], r["index"]): r for r in _store_rows(tmp_path / "ref")}


def test_isolated_backend_gives_the_same_samples_and_exits(tiny_family, tmp_path):
    path = models.resolve(tiny_family["wc"], tmp_path)
    prompts, seeds = ["Question: 3?\nAnswer:", "Q: 4\nA:"], [[1, 2], [3, 4]]
    inside = sampling.make_sampler("hf", path, batch_size=2).generate(prompts, 2, 0.7, 1.0, 10, [], seeds)
    engine = sampling.make_sampler("hf", path, isolate=True, batch_size=2)
    assert engine.generate(prompts, 2, 0.7, 1.0, 10, [], seeds) == inside
    engine.close()
    assert not engine.proc.is_alive() and engine.proc.exitcode == 0
    with pytest.raises(RuntimeError, match="in the sampler process"):
        sampling.make_sampler("hf", str(tmp_path / "nowhere"), isolate=True)


def test_changing_the_batch_size_reuses_every_stored_sample(tiny_family, tmp_path):
    questions = [Record(f"q{i}", f"question {i}", "1", "") for i in range(6)]
    args = dict(_args(tiny_family, tmp_path, 2), questions=questions, prompts=[f"Q{i}:" for i in range(6)])
    rows, _, store = sampling.run(**args)
    again, hit, _ = sampling.run(**{**args, "sampler": {**args["sampler"], "batch_size": 3}})
    assert hit and again == rows  # nothing redrawn
    more, hit, _ = sampling.run(**{**args, "n": 3, "sampler": {**args["sampler"], "batch_size": 4}})
    assert not hit and [r for r in more if r["index"] < 2] == rows  # a top-up draws only index 2
    stored = [json.loads(line) for shard in store.glob("shard-*.jsonl") for line in shard.read_text().splitlines()]
    assert len(stored) == len({(r["qid"], r["index"]) for r in stored}) == 18


def test_a_model_retrained_at_the_same_path_is_sampled_afresh(tiny_family, tmp_path):
    """The sample key holds the weights' identity, not only the path a card names."""
    path = tmp_path / "my-model"
    models.build_tiny(tiny_family["wc"], path, seed=0)
    card = {"name": "mine", "path": str(path)}
    args = {**_args(tiny_family, tmp_path / "cache", 2), "generator": card}
    first, _, store = sampling.run(**args)
    _, hit, _ = sampling.run(**args)
    assert hit
    import shutil

    shutil.rmtree(path)
    models.build_tiny(tiny_family["wc"], path, seed=1)  # retrained: other weights, same path
    second, hit, other = sampling.run(**args)
    assert not hit and other != store and [r["text"] for r in second] != [r["text"] for r in first]
    dtype, hit, _ = sampling.run(**{**args, "sampler": {**args["sampler"], "dtype": "bfloat16"}})
    assert not hit  # another dtype, other samples


def test_rows_per_forward_are_capped_and_the_samples_do_not_change(tiny_family, tmp_path, monkeypatch):
    path = models.resolve(tiny_family["wc"], tmp_path)
    prompts = ["Question: 2+2?\nAnswer:", "Q: apples?\nA:", "Q: x\nA:"]
    seeds = [[sampling.seed_for(0, f"q{q}", i) for i in range(5)] for q in range(3)]
    wide = sampling.HFSampler(path, batch_size=8, max_rows=64).generate(prompts, 5, 0.7, 1.0, 8, [], seeds)
    capped = sampling.HFSampler(path, batch_size=8, max_rows=2)
    rows, batch = [], capped._batch
    monkeypatch.setattr(capped, "_batch", lambda prompts, n, *a: rows.append(len(prompts) * n) or batch(prompts, n, *a))
    assert capped.generate(prompts, 5, 0.7, 1.0, 8, [], seeds) == wide
    assert max(rows) <= 2 and sum(rows) == 15
