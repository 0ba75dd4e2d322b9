"""Keep the sampled solutions whose final answer grades correct, and measure the data.

- coverage: the share of questions with at least one correct solution;
- diversity: the mean number of unique correct solutions per question, over all
  questions (a question with none counts 0). Two solutions are the same when
  they are equal after collapsing runs of whitespace and stripping the ends;
- accuracy: the share of all samples that grade correct (per-sample accuracy);
- fpr: where the dataset has an exact step checker (arith), the share of kept
  solutions whose final answer is right but whose reasoning is not.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Optional

from cms.grading import CORRECT, UNGRADED


def normalise(text: str) -> str:
    return " ".join(text.split())


def run(questions: list, rows: list[dict], verdicts: list[str], step_check: Optional[Callable[[str, str], bool]] = None) -> tuple[list[dict], dict]:
    """The kept (question, solution) rows, in sample order, and the data metrics.

    ``step_check(question, solution)`` says whether a solution's reasoning is valid.
    """
    by_id = {q.id: q for q in questions}
    unique: dict[str, set] = defaultdict(set)
    kept = []
    for row, verdict in zip(rows, verdicts):
        if verdict != CORRECT or row["qid"] not in by_id:
            continue
        q = by_id[row["qid"]]
        unique[q.id].add(normalise(row["text"]))
        valid = step_check(q.question, row["text"]) if step_check else None
        kept.append({"qid": q.id, "index": row["index"], "question": q.question, "solution": row["text"].strip(), "valid_steps": valid})
    n = len(questions)
    metrics = {
        "coverage": len(unique) / n if n else 0.0,
        "diversity": sum(len(s) for s in unique.values()) / n if n else 0.0,
        "sample_accuracy": verdicts.count(CORRECT) / len(verdicts) if verdicts else 0.0,
        "ungraded": verdicts.count(UNGRADED),
        "n_samples": len(rows),
        "fpr": sum(not k["valid_steps"] for k in kept) / len(kept) if step_check and kept else None,
    }
    return kept, metrics


def reference(questions: list) -> tuple[list[dict], dict]:
    """The human-data baseline: each question's own reference solution."""
    kept = [{"qid": q.id, "index": 0, "question": q.question, "solution": q.solution.strip()} for q in questions]
    return kept, {"coverage": 1.0, "diversity": 1.0, "sample_accuracy": None, "ungraded": 0, "n_samples": 0, "fpr": None}
