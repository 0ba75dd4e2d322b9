"""The estimators against values computed by hand."""

import math
import time

import pytest

from cms import estimators, grading


def test_pass_at_k_matches_hand_values():
    # 5 samples, 2 correct: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@4 = 1 (only 3 wrong)
    assert estimators.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert estimators.pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert estimators.pass_at_k(5, 2, 4) == 1.0
    assert estimators.pass_at_k(5, 0, 5) == 0.0
    with pytest.raises(ValueError, match="k=6"):
        estimators.pass_at_k(5, 2, 6)


def test_diversity_at_k_is_the_expected_number_of_unique_correct_solutions():
    # 4 samples: solution A twice, B once, one wrong. k=2 subsets (6 of them):
    # A appears in 1 - C(2,2)/C(4,2) = 5/6 of them, B in 1 - C(3,2)/C(4,2) = 1/2: 4/3 unique on average
    assert estimators.unique_at_k(4, [2, 1], 2) == pytest.approx(4 / 3)
    # enumerate the six subsets by hand to be sure
    samples = ["A", "A", "B", None]
    subsets = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    by_hand = sum(len({samples[i], samples[j]} - {None}) for i, j in subsets) / len(subsets)
    assert by_hand == pytest.approx(4 / 3)
    questions = {"q1": [(True, "A"), (True, "A"), (True, "B"), (False, "x")], "q2": [(False, "y")] * 4}
    c = estimators.curves(questions)
    assert c["k"] == [1, 2, 3, 4]
    assert c["coverage"][0] == pytest.approx((3 / 4 + 0) / 2)  # mean of per-question pass@1
    assert c["coverage"][1] == pytest.approx((1.0 + 0) / 2)  # q1 has only one wrong sample
    assert c["diversity"][1] == pytest.approx((4 / 3) / 2)
    assert c["diversity"][3] == pytest.approx(2 / 2)  # all four samples: A and B


def test_mean_ci():
    mean, half = estimators.mean_ci([0.0, 1.0, 1.0, 0.0])
    assert mean == 0.5 and half == pytest.approx(1.96 * math.sqrt(1 / 3) / 2)
    assert estimators.mean_ci([0.25]) == (0.25, 0.0)


def _same(fmt, answers):
    """Equivalence of ``answers`` as evaluation.sampled decides it: every pair compared in the grading workers."""
    known = grading.same_answers(fmt, [(a, b) for a in answers for b in answers if a < b])
    return lambda a, b: a == b or known[min(a, b), max(a, b)]


def test_maj_at_k_votes_over_equivalent_answers():
    same = _same("math", ["2/3", "\\frac{1}{2}", "0.5", "\\dfrac12"])
    # three ways to write one half outvote two identical strings
    answers = ["2/3", "\\frac{1}{2}", "2/3", "0.5", "\\dfrac12"]
    correct = [False, True, False, True, True]
    assert estimators.majority(answers, same) == 1
    assert estimators.maj_at_k(answers, correct, 5, same)
    assert not estimators.maj_at_k(answers, correct, 3, same)  # first three: 2/3 twice
    assert not estimators.maj_at_k(answers, correct, 1, same)
    # string equality would have picked 2/3
    assert not estimators.maj_at_k(answers, correct, 5, lambda a, b: a == b)


def test_an_answer_math_verify_cannot_compare_in_time_is_its_own_class():
    start = time.monotonic()
    known = grading.same_answers("math", [("5^{5^{5^{5^5}}}", "5"), ("0.5", "\\frac{1}{2}")], timeout_s=2)
    assert known == {("5^{5^{5^{5^5}}}", "5"): None, ("0.5", "\\frac{1}{2}"): True}
    assert time.monotonic() - start < 10
    # GSM8K: 1,000 and 1000.0 are one answer; no answer at all takes no part; ties go to the first seen
    g = _same("gsm8k", ["7", "8", "1,000", "1000.0"])
    assert estimators.majority(["7", "1,000", None, "1000.0", None, None], g) == 1
    assert estimators.majority(["7", "8"], g) == 0
    assert estimators.majority([None, None], g) is None
    with pytest.raises(ValueError, match="maj@4"):
        estimators.maj_at_k(["1"], [True], 4, g)
