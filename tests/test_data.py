import json

import pytest

from cms import data
from conftest import DATA


def test_shared_benchmarks_load_with_gold_answers():
    sizes = {("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319, ("math", "train"): 4500, ("math", "test"): 500}
    for (name, split), n in sizes.items():
        records = data.load(name, split, name, DATA)
        assert len(records) == n
        assert all(r.answer and r.question and r.solution for r in records)
    gsm = data.load("gsm8k", "train", "gsm8k", DATA)[0]
    assert gsm.answer == "72" and "<<" not in gsm.solution and gsm.solution.endswith("#### 72")
    math_test = data.load("math", "test", "math", DATA)
    assert math_test[0].level == "Level 2" and math_test[0].type == "Precalculus"


def test_last_boxed_handles_nesting():
    assert data.last_boxed(r"so $\boxed{\frac{1}{2}}$ and then \boxed{3}") == "3"
    assert data.last_boxed(r"\boxed{\left( 3, \frac{\pi}{2} \right)}") == r"\left( 3, \frac{\pi}{2} \right)"
    assert data.last_boxed("no box") is None


def _write(tmp_path, name, split, lines):
    (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / name / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def test_malformed_row_names_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "a\n#### 1"})
    _write(tmp_path, "gsm8k", "train", [good, good, "{not json"])
    with pytest.raises(data.DataError, match=r"train.jsonl:3: not valid JSON"):
        data.load("gsm8k", "train", "gsm8k", tmp_path)


def test_row_without_gold_names_file_and_line(tmp_path):
    _write(tmp_path, "gsm8k", "train", [json.dumps({"question": "q", "answer": "no final line"})])
    with pytest.raises(data.DataError, match=r"train.jsonl:1: no gold answer"):
        data.load("gsm8k", "train", "gsm8k", tmp_path)
    _write(tmp_path, "math", "train", [json.dumps({"problem": "p", "solution": "s"})])
    with pytest.raises(data.DataError, match=r"train.jsonl:1: no gold answer"):
        data.load("math", "train", "math", tmp_path)


def test_missing_file_without_hub_says_where_to_point(tmp_path):
    with pytest.raises(data.DataError, match="paths.data_dir"):
        data.load("gsm8k", "train", "gsm8k", tmp_path, hub={})


def test_exemplars_are_excluded_from_questions_and_prompt_is_completion_style():
    train = data.load("gsm8k", "train", "gsm8k", DATA)
    exemplars, questions, val = data.split_exemplars(train, 8, limit=5, val_size=3)
    assert len(exemplars) == 8 and len(questions) == 5 and len(val) == 3
    assert len({r.id for r in exemplars + questions + val}) == 16  # disjoint
    _, everything, tail = data.split_exemplars(train, 8, val_size=10)
    assert len(everything) == len(train) - 18 and tail == train[-10:]
    with pytest.raises(ValueError, match="lower finetune.val_size"):
        data.split_exemplars(train[:20], 8, limit=10, val_size=5)
    fmt = data.PromptFormat("Question: {question}\nAnswer:", " {solution}\n\n")
    prompt = fmt.prompt(questions[0], exemplars)
    assert prompt.count("Question:") == 9 and prompt.endswith(questions[0].question + "\nAnswer:")
    assert prompt.count("####") == 8


def test_a_generated_dataset_plugs_in_through_its_group(tmp_path, monkeypatch):
    """A dataset group names its generator, step checker and solution key (module.function): data.load,
    the provenance and filtering use them with no dataset-specific code, and data does not import arith."""
    from cms import filtering

    (tmp_path / "mydata.py").write_text(
        "from cms.data import Record\n"
        "def load(split, size, base):\n"
        "    return [Record(f'{split}-{i}', f'{base} + {i}?', str(base + i), f'{base} + {i} = {base + i}\\n#### {base + i}') for i in range(size)]\n"
        "def check(question, solution):\n"
        "    return solution.startswith(question.rstrip('?'))\n"
        "def key(solution):\n"
        "    return solution.split('####')[-1].strip()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = {"name": "mine", "generator": {"function": "mydata.load", "size": 3, "base": 10},
          "step_checker": "mydata.check", "solution_key": "mydata.key"}
    records = data.load("mine", "train", "gsm8k", tmp_path, None, ds["generator"])
    assert [r.answer for r in records] == ["10", "11", "12"]
    assert data.provenance("mine", "train", tmp_path, None, ds["generator"])["function"] == "mydata.load"
    check, key = filtering.hooks(ds)
    rows = [{"qid": "train-1", "index": i, "text": t} for i, t in enumerate(["10 + 1 = 11\n#### 11", "1 + 10 = 11\n#### 11"])]
    kept, quality = filtering.run(records, rows, ["correct", "correct"], check, same=key)
    assert [k["valid_steps"] for k in kept] == [True, False] and quality["fpr"] == 0.5 and quality["diversity"] == 1 / 3
    with pytest.raises(data.DataError, match="dataset.step_checker=mydata.nope names no function"):
        filtering.hooks({**ds, "step_checker": "mydata.nope"})
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import sys, cms.data, cms.run; print(sorted(m for m in sys.modules if m == 'cms.arith'))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
