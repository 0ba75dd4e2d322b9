import json
import time

import pytest

from cms import grading
from cms.data import load
from conftest import DATA

GSM8K = [  # (model output, gold, expected)
    ("She pays 5 + 3 = 8 dollars.\n#### 8", "8", True),
    ("#### 1,000", "1000", True),
    ("#### $1,000", "1000", True),
    ("The answer is 18 dollars.\n#### 18 dollars", "18", True),
    ("#### 18.00", "18", True),
    ("#### 0.5", "0.50", True),
    ("#### -3", "-3", True),
    ("#### 72.", "72", True),
    ("so the total is 24 and 48 makes 72", "72", False),  # no ####: no final answer (a cut-off solution is not kept)
    ("#### 7", "72", False),
    ("#### 3", "-3", False),
    ("#### 18.5", "18", False),
    ("no number at all", "5", False),
    ("#### 12 then 13", "13", False),  # the number after #### wins
    ("#### 1,000,000", "1000000", True),
    ("#### .5", "0.5", True),
    # the whole final expression is read: a fraction is its value, anything else is no answer
    ("#### 3/4", "3", False),
    ("#### 3/4", "0.75", True),
    ("#### 6/2 apples", "3", True),
    ("#### 3^2", "3", False),
    ("#### 3^2", "9", False),
    ("#### \u22123", "-3", True),  # Unicode minus
    ("#### \u22123", "3", False),
    ("#### 3\nThe answer is 4", "3", True),  # only the line after ####
]

MATH = [
    (r"so $\boxed{\frac{1}{2}}$", r"\frac{1}{2}", True),
    (r"$\boxed{0.5}$", r"\frac{1}{2}", True),
    (r"$\boxed{\dfrac{3}{4}}$", r"\frac34", True),
    (r"$\boxed{2\sqrt{2}}$", r"\sqrt{8}", True),
    (r"$\boxed{(1, 2)}$", r"(1,2)", True),
    (r"$\boxed{[0, 1)}$", r"[0,1)", True),
    (r"$\boxed{\{1, 2, 3\}}$", r"\{3,2,1\}", True),
    (r"$\boxed{x^2 + 2x + 1}$", r"(x+1)^2", True),
    (r"$\boxed{\pi}$", r"\pi", True),
    (r"$\boxed{\text{(C)}}$", r"\text{(C)}", True),
    (r"$\boxed{10\%}$", r"10\%", True),
    (r"$\boxed{1{,}000}$", r"1000", True),
    (r"$\boxed{-\frac{1}{3}}$", r"-\frac13", True),
    (r"$\boxed{\frac{\sqrt{3}}{2}}$", r"\frac{\sqrt3}{2}", True),
    (r"$\boxed{3}$", r"3.0", True),
    (r"$\boxed{2}$", r"3", False),
    (r"$\boxed{\frac{1}{3}}$", r"\frac{1}{2}", False),
    (r"$\boxed{(2, 1)}$", r"(1,2)", False),
    (r"$\boxed{(0, 1]}$", r"[0,1)", False),
    (r"$\boxed{\{1, 2\}}$", r"\{1,2,3\}", False),
    (r"$\boxed{x^2 + 1}$", r"(x+1)^2", False),
    (r"$\boxed{\sqrt{3}}$", r"\sqrt{2}", False),
    (r"$\boxed{-5}$", r"5", False),
    (r"no answer here", r"5", False),
    (r"$\boxed{2\pi}$", r"\pi", False),
    # normalised on both sides: a trailing period, thin spaces and thousands commas, unbraced \frac and \sqrt, units
    (r"$\boxed{5.}$", r"5", True),
    (r"$\boxed{5}$", r"5.", True),
    (r"$\boxed{111111111}$", r"111,\!111,\!111", True),
    (r"$\boxed{111}$", r"111,\!111,\!111", False),
    (r"$\boxed{\frac{\pi}{4} + 2 - \sqrt{2}}$", r"\frac \pi4 + 2 - \sqrt2", True),
    (r"$\boxed{2}$", r"\frac \pi4 + 2 - \sqrt2", False),
    (r"$\boxed{12}$", r"12\text { square inches}", True),
    (r"$\boxed{12 \text{ inches}}$", r"12", True),
    # a base subscript is compared exactly: math-verify ignores it
    (r"$\boxed{2112_6}$", r"2112_7", False),
    (r"$\boxed{2112_7}$", r"2112_7", True),
    (r"$\boxed{2112_{7}}$", r"2112_7", True),
    (r"$\boxed{2112}$", r"2112_7", False),
]


@pytest.mark.parametrize("text,gold,expected", GSM8K)
def test_gsm8k_numeric_equality(text, gold, expected):
    assert (grading.grade_gsm8k(text, gold) == grading.CORRECT) is expected


def test_math_equivalence_table():
    verdicts = grading.grade("math", [(t, g) for t, g, _ in MATH], workers=2, timeout_s=10, progress=False)
    wrong = [(t, g, v) for (t, g, e), v in zip(MATH, verdicts) if (v == grading.CORRECT) is not e]
    assert not wrong
    assert len(GSM8K) + len(MATH) >= 40


def test_pathological_input_is_ungraded_within_the_limit():
    start = time.monotonic()
    verdicts = grading.grade("math", [(r"so $\boxed{5^{5^{5^{5^5}}}}$", "5"), (r"$\boxed{3}$", "3")], timeout_s=2, progress=False)
    assert verdicts == [grading.UNGRADED, grading.CORRECT]
    assert time.monotonic() - start < 10


def test_every_gsm8k_reference_solution_grades_correct():
    for split in ("train", "test"):
        records = load("gsm8k", split, "gsm8k", DATA)
        verdicts = grading.grade("gsm8k", [(r.solution, r.answer) for r in records])
        assert verdicts.count(grading.CORRECT) == len(records)


def test_every_math_reference_solution_grades_correct():
    test = load("math", "test", "math", DATA)
    assert grading.grade("math", [(r.solution, r.answer) for r in test], workers=2, progress=False).count(grading.CORRECT) == 500
    train = load("math", "train", "math", DATA)
    verdicts = grading.grade("math", [(r.solution, r.answer) for r in train], workers=2, progress=False)
    # includes the 8 solutions that box several answers ("\boxed{3} or \boxed{2/5}"): the
    # grader reads the last box, the same rule that gives the gold answer
    assert verdicts.count(grading.CORRECT) == 4500


def test_grades_are_cached_by_text_and_grader(tmp_path):
    path = tmp_path / "verdicts.json"
    items = [("#### 3", "3"), ("#### 4", "3")]
    assert grading.grade_cached(path, "gsm8k", items) == [grading.CORRECT, grading.WRONG]
    k0, k1 = (grading.verdict_key("gsm8k", t, g) for t, g in items)
    path.write_text(json.dumps({k0: "wrong", k1: "wrong"}))  # a cached verdict is read back, not recomputed
    assert grading.grade_cached(path, "gsm8k", items + [("#### 3", "3")]) == [grading.WRONG, grading.WRONG, grading.WRONG]
    # another text for the same sample (a redrawn or edited store), another gold or format: graded afresh
    assert grading.grade_cached(path, "gsm8k", [("#### 3.0", "3"), ("#### 4", "4")]) == [grading.CORRECT, grading.CORRECT]
    assert grading.verdict_key("math", *items[0]) != k0


def test_an_ungraded_verdict_is_retried_under_a_longer_time_limit(tmp_path):
    path = tmp_path / "verdicts.json"
    item = ("\\boxed{\\frac{1}{2}}", "0.5")
    path.write_text(json.dumps({grading.verdict_key("math", *item): "ungraded@0.5"}))
    assert grading.grade_cached(path, "math", [item], timeout_s=0.5) == [grading.UNGRADED]  # same limit: not retried
    assert grading.grade_cached(path, "math", [item], timeout_s=5.0) == [grading.CORRECT]
    assert json.loads(path.read_text()) == {grading.verdict_key("math", *item): "correct"}


def _grade_shared(path):
    return grading.grade_cached(path, "gsm8k", [(f"#### {i}", str(i % 3)) for i in range(3000)])


def test_grade_cache_shared_by_concurrent_processes(tmp_path):
    import multiprocessing as mp

    with mp.get_context("fork").Pool(4) as pool:
        results = pool.map(_grade_shared, [tmp_path / "grades.json"] * 4)
    assert all(r == results[0] for r in results) and results[0].count(grading.CORRECT) == 3
    assert len(json.loads((tmp_path / "grades.json").read_text())) == 3000


def test_gold_answers_read_other_than_written_are_counted():
    golds = ["5", "5.", r"111,\! 111", r"\frac \pi4", r"12\text { square inches}", r"\text{(C)}", r"\frac{1}{2}"]
    assert grading.gold_changes("math", golds) == 4  # (C) is an answer, not a unit
    assert [grading.normalise_math(g) for g in golds[1:5]] == ["5", "111111", r"\frac{\pi}{4}", "12"]
    assert grading.gold_changes("gsm8k", golds) == 0
