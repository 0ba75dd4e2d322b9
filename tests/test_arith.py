import re

from cms import arith, filtering, grading


def test_generation_is_deterministic_per_seed_and_split():
    a = arith.load("train", {"train": 50, "test": 20}, seed=3)
    b = arith.load("train", {"train": 50, "test": 20}, seed=3)
    c = arith.load("train", {"train": 50, "test": 20}, seed=4)
    assert a == b and a != c
    test = arith.load("test", {"train": 50, "test": 20}, seed=3)
    assert not {r.question for r in test} & {r.question for r in a}


def test_gold_answers_are_correct_and_steps_valid():
    records = arith.load("train", {"train": 400, "test": 50})
    for r in records:
        lines = r.solution.splitlines()
        steps, final = lines[:-1], lines[-1]
        assert final == f"#### {r.answer}"
        x = int(re.match(r"\S+ has (\d+)", r.question)[1])
        for step in steps:  # replay the story: every equation is exact arithmetic
            a, op, b, c = re.match(r"(\d+) ([-+*]) (\d+) = (\d+)", step).groups()
            assert int(a) == x and arith.APPLY[op](int(a), int(b)) == int(c)
            x = int(c)
        assert x == int(r.answer)
        assert arith.check_steps(r.question, r.solution)
        assert grading.grade_gsm8k(r.solution, r.answer) == grading.CORRECT
    levels = {r.level for r in records}
    assert levels == {"Level 1", "Level 2", "Level 3", "Level 4"}
    for r in records:  # a level's step count is its number
        assert len(r.solution.splitlines()) - 1 == int(r.level[-1])


def test_step_checker_flags_a_planted_wrong_step():
    q = "Ann has 7 marbles. Ann finds 5 more. Then Ann gives away 3. How many marbles does Ann have now?"
    good = "7 + 5 = 12\n12 - 3 = 9\n#### 9"
    assert arith.check_steps(q, good)
    assert not arith.check_steps(q, "7 + 5 = 13\n13 - 4 = 9\n#### 9")  # wrong arithmetic, right answer
    assert not arith.check_steps(q, "7 + 6 = 13\n13 - 4 = 9\n#### 9")  # numbers the question never gave
    assert not arith.check_steps(q, "7 + 5 = 12\nso it is 9\n#### 9")  # a step that is no equation
    assert not arith.check_steps(q, "7 + 5 = 12\n12 - 3 = 9\n#### 8")  # answer differs from the last step
    # the exact FPR counts exactly those right-answer, wrong-step solutions
    rows = [{"qid": "q", "index": i, "text": t} for i, t in enumerate([good, "7 + 5 = 13\n13 - 4 = 9\n#### 9", "#### 8"])]
    record = arith.Record("q", q, "9", good)
    verdicts = grading.grade("gsm8k", [(r["text"], "9") for r in rows])
    kept, metrics = filtering.run([record], rows, verdicts, arith.check_steps)
    assert len(kept) == 2 and metrics["fpr"] == 0.5 and metrics["diversity"] == 2 and metrics["coverage"] == 1.0
    # keep=one keeps one solution: its diversity is 1, the samples' is still 2
    kept, metrics = filtering.run([record], rows, verdicts, arith.check_steps, keep="one")
    assert len(kept) == 1 and metrics["diversity"] == 1 and metrics["diversity_sampled"] == 2 and metrics["coverage"] == 1.0
