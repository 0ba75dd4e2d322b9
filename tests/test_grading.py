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
    ("so the total is 24 and 48 makes 72", "72", True),  # no ####: the last number
    ("#### 7", "72", False),
    ("#### 3", "-3", False),
    ("#### 18.5", "18", False),
    ("no number at all", "5", False),
    ("#### 12 then 13", "13", False),  # the number after #### wins
    ("#### 1,000,000", "1000000", True),
    ("#### .5", "0.5", True),
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


def test_grades_are_cached(tmp_path):
    path = tmp_path / "grades.json"
    items = [("#### 3", "3"), ("#### 4", "3")]
    assert grading.grade_cached(path, "gsm8k", items, ["q:0", "q:1"]) == [grading.CORRECT, grading.WRONG]
    path.write_text('{"q:0": "wrong", "q:1": "wrong"}')  # a cached verdict is read back, not recomputed
    assert grading.grade_cached(path, "gsm8k", items + [("#### 3", "3")], ["q:0", "q:1", "q:2"]) == [grading.WRONG, grading.WRONG, grading.CORRECT]


def _grade_shared(path):
    items = [(f"#### {i}", str(i % 3)) for i in range(3000)]
    return grading.grade_cached(path, "gsm8k", items, [f"q{i}:0" for i in range(3000)])


def test_grade_cache_shared_by_concurrent_processes(tmp_path):
    import multiprocessing as mp

    with mp.get_context("fork").Pool(4) as pool:
        results = pool.map(_grade_shared, [tmp_path / "grades.json"] * 4)
    assert all(r == results[0] for r in results) and results[0].count(grading.CORRECT) == 3
    assert len(json.loads((tmp_path / "grades.json").read_text())) == 3000
