import json

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


def test_sample_cache_is_shared_and_survives_a_torn_tail(tiny_family, tmp_path):
    questions = [Record(f"q{i}", f"question {i}", "1", "") for i in range(3)]
    args = dict(generator=tiny_family["wc"], questions=questions, prompts=[f"Q{i}:" for i in range(3)], n=2,
                sampler={"backend": "hf", "temperature": 0.7, "top_p": 1.0, "batch_size": 2},
                decoding={"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 8, "stop": []},
                seed=0, cache_dir=tmp_path, key_parts={"dataset": "t"})
    rows, hit, store = sampling.run(**args)
    assert not hit and len(rows) == 6 and {(r["qid"], r["index"]) for r in rows} == {(f"q{q}", i) for q in range(3) for i in range(2)}
    again, hit, _ = sampling.run(**args)
    assert hit and again == rows
    # an interrupted pass: the .done marker is missing and the last line is torn
    (store / ".done").unlink()
    lines = (store / "samples.jsonl").read_text().splitlines()
    (store / "samples.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    resumed, hit, _ = sampling.run(**args)
    assert not hit and sorted(map(json.dumps, resumed)) == sorted(map(json.dumps, rows))
