"""Keep the sampled solutions whose final answer grades correct, and measure the data.

- coverage: the share of questions with at least one correct solution;
- diversity: the mean number of unique correct solutions per question, over all
  questions (a question with none counts 0). Two solutions are the same when
  their keys are equal: the dataset group's ``solution_key`` (arith: the
  derivation, ``cms.arith.derivation``), else the text with runs of whitespace
  collapsed and the ends stripped;
- multi_solution: the share of questions with two or more unique correct solutions;
- accuracy: the share of all samples that grade correct (per-sample accuracy);
- fpr: where the dataset group names an exact ``step_checker`` (arith), the share of kept
  solutions whose final answer is right but whose reasoning is not.

``keep="one"`` keeps only the first correct solution of each question: the same
coverage with no diversity (the paper's coverage/diversity ablation). ``diversity``
is that of the data kept; ``diversity_sampled`` that of every correct sample.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Callable, Optional

from cms import data
from cms.grading import CORRECT, UNGRADED


def normalise(text: str) -> str:
    return " ".join(text.split())


def hooks(ds: dict) -> tuple[Optional[Callable[[str, str], bool]], Callable[[str], str]]:
    """A dataset group's (step checker or None, solution key: ``normalise`` unless it names one)."""
    check = data.function(ds["step_checker"], "step_checker") if ds.get("step_checker") else None
    return check, data.function(ds["solution_key"], "solution_key") if ds.get("solution_key") else normalise


def solution_key(text: str, same: Callable[[str], str] = normalise) -> str:
    """Two solutions are the same when their keys are: a hash of ``same(text)``."""
    return hashlib.sha1(same(text).encode()).hexdigest()[:16]


def run(questions: list, rows: list[dict], verdicts: list[str], step_check: Optional[Callable[[str, str], bool]] = None,
        keep: str = "all", same: Callable[[str], str] = normalise) -> tuple[list[dict], dict]:
    """The kept (question, solution) rows, in sample order, and the data metrics.

    ``step_check(question, solution)`` says whether a solution's reasoning is valid; ``same(solution)``
    is the key by which two solutions are one (diversity).
    """
    if keep not in ("all", "one"):
        raise ValueError(f"data.keep={keep!r} is not one of all, one")
    by_id = {q.id: q for q in questions}
    unique: dict[str, set] = defaultdict(set)
    kept = []
    for row, verdict in zip(rows, verdicts):
        if verdict != CORRECT or row["qid"] not in by_id:
            continue
        q = by_id[row["qid"]]
        first = q.id not in unique
        unique[q.id].add(same(row["text"]))
        if keep == "one" and not first:
            continue
        valid = step_check(q.question, row["text"]) if step_check else None
        kept.append({"qid": q.id, "index": row["index"], "question": q.question, "solution": row["text"].strip(),
                     "reference": q.solution, "valid_steps": valid})
    n, kept_unique = len(questions), {same(k["solution"]) + "\0" + k["qid"] for k in kept}
    metrics = {
        "coverage": len(unique) / n if n else 0.0,
        "diversity": len(kept_unique) / n if n else 0.0,  # of the data kept: keep=one keeps one per question
        "diversity_sampled": sum(len(s) for s in unique.values()) / n if n else 0.0,  # of every correct sample
        "multi_solution": sum(len(s) > 1 for s in unique.values()) / n if n else 0.0,  # questions with 2+ unique correct samples
        "sample_accuracy": verdicts.count(CORRECT) / len(verdicts) if verdicts else 0.0,
        "ungraded": verdicts.count(UNGRADED),
        "n_samples": len(rows),
        "fpr": sum(not k["valid_steps"] for k in kept) / len(kept) if step_check and kept else None,
    }
    return kept, metrics


def graded(questions: list, rows: list[dict], verdicts: list[str], answer: Callable[[str], Optional[str]],
           same: Callable[[str], str] = normalise) -> list[dict]:
    """One row per sample, what the data-quality curves need: question, its level, the
    sample's index, whether it is correct, its solution key (by ``same``) and its final answer."""
    level = {q.id: q.level for q in questions}
    return [{"qid": r["qid"], "level": level[r["qid"]], "index": r["index"], "correct": v == CORRECT,
             "key": solution_key(r["text"], same), "answer": answer(r["text"]), "tokens": r["tokens"]}
            for r, v in zip(rows, verdicts) if r["qid"] in level]


def reference(questions: list) -> tuple[list[dict], dict]:
    """The human-data baseline: each question's own reference solution."""
    kept = [{"qid": q.id, "index": 0, "question": q.question, "solution": q.solution.strip(), "reference": q.solution} for q in questions]
    return kept, {"coverage": 1.0, "diversity": 1.0, "multi_solution": 0.0, "sample_accuracy": None, "ungraded": 0, "n_samples": 0, "fpr": None}
