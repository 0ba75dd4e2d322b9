import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cms import arith, filtering, grading
from conftest import composed_family

ROOT = Path(__file__).resolve().parents[1]


def test_generation_is_deterministic_per_seed_and_split():
    a = arith.load("train", {"train": 50, "test": 20}, seed=3)
    b = arith.load("train", {"train": 50, "test": 20}, seed=3)
    c = arith.load("train", {"train": 50, "test": 20}, seed=4)
    assert a == b and a != c
    test = arith.load("test", {"train": 50, "test": 20}, seed=3)
    assert not {r.question for r in test} & {r.question for r in a}


def test_the_pretraining_corpus_holds_no_sampled_validation_or_test_question():
    """The toy models' corpus (the family's corpus size) against the dataset group's train split (its
    questions, validation and exemplars) and test split, at this and another seed."""
    cards = [composed_family(f, f"family/student={s}") for f in ("toy", "toy9", "toy27") for s in ("toy_small", "toy_large")]
    gen = OmegaConf.load(ROOT / "conf/dataset/arith.yaml").generator
    size = max(c[r]["train"]["corpus_size"] for c in cards for r in ("wc", "se", "student"))
    corpus = {r.question for r in arith.load("pretrain", {"pretrain": size})}
    assert len(corpus) == size
    for seed in (gen.seed, gen.seed + 1):
        used = {r.question for split in ("train", "test") for r in arith.load(split, dict(gen.sizes), seed)}
        assert len(used) == sum(gen.sizes.values()) and not corpus & used


def test_reference_solutions_are_right_valid_and_of_their_level():
    records = arith.load("train", {"train": 400, "test": 50})
    for r in records:
        assert r.solution.splitlines()[-1] == f"#### {r.answer}"
        assert arith.check_steps(r.question, r.solution)
        assert grading.grade_gsm8k(r.solution, r.answer) == grading.CORRECT
        start, changes = arith.parse_story(r.question)
        assert int(r.level[-1]) == len(changes) + (2 if len(start) == 3 else 0)  # bags count as 2 steps
    assert {r.level for r in records} == {"Level 1", "Level 2", "Level 3", "Level 4"}
    assert 0.3 < sum(len(arith.parse_story(r.question)[0]) == 3 for r in records) / len(records) < 0.5  # bags at levels 2-4


def test_every_derivation_the_generator_writes_is_accepted_and_most_questions_have_several():
    """Each test question solved in 16 drawn styles: every solution passes the checker, and the
    share of questions with more than one distinct derivation is what the README states."""
    records = arith.load("test", {"test": 500})
    accepted = keys = multi = 0
    for r in records:
        solutions = [arith.solve(*arith.parse_story(r.question), random.Random(s)) for s in range(16)]
        accepted += sum(arith.check_steps(r.question, t) for t in solutions)
        derivations = {arith.derivation(t) for t in solutions}
        keys += len(derivations)
        multi += len(derivations) > 1
    print(f"valid alternative derivations accepted: {accepted} of {16 * len(records)}; {keys} distinct; "
          f"{multi / len(records):.1%} of questions have more than one")
    assert accepted == 16 * len(records)
    assert multi / len(records) > 0.5


@pytest.mark.parametrize("question, solution", [
    ("Ann has 7 marbles, finds 5 more, then gives away 3. How many marbles now?", "7 + 5 = 12\n12 - 3 = 9\n#### 9"),
    ("Ann has 7 marbles, finds 5 more, then gives away 3. How many marbles now?", "5 - 3 = 2\n7 + 2 = 9\n#### 9"),  # net change
    ("Ann has 7 marbles, finds 5 more, then gives away 3. How many marbles now?", "7 - 3 = 4\n5 + 4 = 9\n#### 9"),  # other order
    ("Ann has 7 marbles, gives away 5, then finds 3 more. How many marbles now?", "5 - 3 = 2\n7 - 2 = 5\n#### 5"),  # net loss
    ("Ann has 7 marbles, gives away 2, then loses 3. How many marbles now?", "2 + 3 = 5\n7 - 5 = 2\n#### 2"),  # all given away
    ("Ann has 3 marbles, finds 1 more, then ends up with 4 times as many. How many marbles now?",
     "3 * 4 = 12\n4 * 1 = 4\n12 + 4 = 16\n#### 16"),  # the multiplication applied to each part
    ("Bo has 3 red bags of 4 pens and 2 blue bags of 4 pens. How many pens in all?", "3 * 4 = 12\n2 * 4 = 8\n12 + 8 = 20\n#### 20"),
    ("Bo has 3 red bags of 4 pens and 2 blue bags of 4 pens. How many pens in all?", "3 + 2 = 5\n5 * 4 = 20\n#### 20"),
    ("Bo has 3 red bags of 4 pens and 2 blue bags of 4 pens, then sells 6. How many pens now?", "2 * 4 = 8\n8 - 6 = 2\n4 * 3 = 12\n12 + 2 = 14\n#### 14"),
])
def test_valid_alternative_derivations_are_accepted(question, solution):
    assert arith.check_steps(question, solution)


@pytest.mark.parametrize("question, solution", [
    ("Jo has 2 marbles, gets 2 more. How many marbles now?", "2 * 2 = 4\n#### 4"),  # the case: right number, wrong operation
    ("Ann has 3 marbles, finds 1 more, then ends up with 4 times as many. How many marbles now?", "3 + 1 = 4\n4 * 4 = 16\n4 * 1 = 4\n16 + 0 = 16\n#### 16"),
    ("Ann has 3 marbles, finds 1 more, then ends up with 4 times as many. How many marbles now?", "3 * 4 = 12\n12 + 1 = 13\n13 + 3 = 16\n#### 16"),
    ("Bo has 3 red bags of 4 pens and 2 blue bags of 4 pens. How many pens in all?", "3 * 2 = 6\n6 + 4 = 10\n10 + 10 = 20\n#### 20"),
    ("Ann has 6 marbles, gives away 3, then finds 3 more. How many marbles now?", "6 + 3 = 9\n9 - 3 = 6\n#### 6"),  # 3 and 3: still fine
])
def test_the_checker_reads_what_each_number_means(question, solution):
    valid = solution.startswith("6 + 3")  # the last case takes "3" as the found 3, then the given-away 3: valid
    assert arith.check_steps(question, solution) is valid


@pytest.mark.parametrize("solution, why", [
    ("7 + 5 = 13\n13 - 4 = 9\n#### 9", "wrong arithmetic"),
    ("7 + 6 = 13\n13 - 4 = 9\n#### 9", "a number neither the question nor a step gave"),
    ("7 * 5 = 35\n#### 35", "an operation the story does not have"),
    ("7 + 5 = 12\nso it is 9\n#### 9", "a step that is no equation"),
    ("7 + 5 = 12\n12 - 3 = 9\n#### 8", "a final answer that is not the last step's"),
    ("7 + 5 = 12\n#### 12", "a last step that is not the story's answer"),
    ("#### 9", "no step"),
    ("5 - 3 = 2\n7 + 2 = 9\n#### 9", None),
])
def test_the_checker_says_what_is_first_wrong(solution, why):
    assert arith.why_invalid("Ann has 7 marbles, finds 5 more, then gives away 3. How many marbles now?", solution) == why


@pytest.mark.parametrize("question, solution, why", [
    ("Lou has 2 red bags of 5 cards and 2 blue bags of 5 cards. How many cards in all?", "2 * 5 = 10\n2 * 5 = 10\n10 + 8 = 20\n#### 20", "wrong arithmetic"),
    ("Eve has 2 red bags of 4 beads and 2 blue bags of 4 beads. How many beads in all?", "2 * 4 = 8\n2 * 4 = 8\n8 + 4 = 16\n#### 16", "wrong arithmetic"),
    ("Cal has 2 beads, ends up with 8 times as many, then buys 4 more, then gives away 12. How many beads now?",
     "2 * 4 = 8\n8 * 4 = 20\n20 - 12 = 8\n#### 8", "an operation the story does not have"),
    ("Dee has 3 apples, ends up with 5 times as many, then gets 3 more. How many apples now?", "3 * 3 = 9\n9 * 3 = 18\n#### 18",
     "an operation the story does not have"),
    ("Fay has 9 coins, buys 10 more, then buys 1 more, then sells 3, then finds 2 more. How many coins now?",
     "9 + 6 = 15\n15 + 2 = 18\n18 + 6 = 19\n19 + 6 = 19\n#### 19", "a number neither the question nor a step gave"),
    ("Kim has 5 shells, ends up with 2 times as many, then ends up with 2 times as many. How many shells now?", "5 * 2 = 10\n = 20\n#### 20",
     "a step that is no equation"),
])
def test_the_distilled_students_false_positives_are_real_errors(question, solution, why):
    """The smallest kd student's (family/student=toy_small) test FPR of about 50% is the student's reasoning,
    not the checker: these are its right-answer outputs from a fresh default run when it was the default
    student (0_wc_kd, 3_se_kd), and each has a step that is plainly wrong; 50 of the 63 false positives of
    0_wc_kd were wrong arithmetic. A 49k-parameter model learns which answers a story tends to have before
    it learns to add."""
    assert arith.why_invalid(question, solution) == why


def test_a_step_with_an_operation_the_story_does_not_have_is_rejected():
    """Generated cases: in a story whose numbers and totals all differ, each step of the plain derivation
    done with another operation (right arithmetic, numbers from the question) ends a solution that the
    checker rejects, however the steps before it were written."""
    rejected = cases = 0
    for r in arith.load("train", {"train": 2000}):
        start, changes = arith.parse_story(r.question)
        if len(start) != 1:
            continue
        x, steps = start[0], []
        for op, n in changes:
            steps.append((x, op, n, arith.APPLY[op](x, n)))
            x = steps[-1][3]
        numbers = [start[0]] + [n for _, n in changes] + [s[3] for s in steps]
        if len(set(numbers)) != len(numbers):
            continue
        for i, (a, op, b, _) in enumerate(steps):
            for other in "+-*".replace(op, ""):
                c = arith.APPLY[other](a, b)
                lines = [f"{p} {o} {q} = {z}" for p, o, q, z in steps[:i]] + [f"{a} {other} {b} = {c}", f"#### {c}"]
                cases += 1
                rejected += not arith.check_steps(r.question, "\n".join(lines))
    print(f"wrong-operation cases rejected: {rejected} of {cases}")
    assert cases > 1000 and rejected == cases


def test_diversity_counts_derivations_not_surface_variants():
    q = "Ann has 7 marbles, finds 5 more, then gives away 3. How many marbles now?"
    same = ["7 + 5 = 12\n12 - 3 = 9\n#### 9", "5 + 7 = 12\n12 - 3 = 9\n#### 9", "  7+5 = 12\n 12 - 3=9\n####  9"]
    other = ["5 - 3 = 2\n7 + 2 = 9\n#### 9", "7 - 3 = 4\n4 + 5 = 9\n#### 9"]
    assert len({arith.derivation(t) for t in same}) == 1 and len({arith.derivation(t) for t in same + other}) == 3
    record = arith.Record("q", q, "9", same[0])
    rows = [{"qid": "q", "index": i, "text": t} for i, t in enumerate(same + other)]
    verdicts = grading.grade("gsm8k", [(r["text"], "9") for r in rows])
    check, key = filtering.hooks(OmegaConf.to_container(OmegaConf.load(ROOT / "conf/dataset/arith.yaml")))
    assert check is arith.check_steps and key is arith.derivation
    assert filtering.run([record], rows, verdicts, check, same=key)[1]["diversity"] == 3
    assert filtering.run([record], rows, verdicts, check)[1]["diversity"] == 5  # by text: operand order and spacing make new ones


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
