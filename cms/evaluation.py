"""Evaluation protocols on the test split.

``run``: pass@1 with greedy decoding. The same function scores the learner
before fine-tuning (the baseline, with the dataset's few-shot prompt: base
models need it) and after (zero-shot, as it was trained). Baseline scores depend
only on the model and the test questions, so they are cached and shared by
every cell with the same learner.

``sampled``: k samples per question at a temperature; pass@1 as the mean over
the k samples with a 95% confidence interval over questions, and maj@k, the
majority vote over answers that grade as equivalent (``0.5`` and ``\\frac12``
are one vote).

``select``: the paper's checkpoint protocol on the validation questions.

Each summary stores the fingerprint of what it was computed from (model,
questions, prompt, decoding, grader); one computed otherwise is never returned.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from filelock import FileLock

from cms import data, estimators, grading, progress, resume, sampling
from cms.data import PromptFormat, Record

log = logging.getLogger(__name__)


def fingerprint(model_path: str, records: list[Record], exemplars: list[Record], *, fmt: str, prompt_format: PromptFormat,
                sampler: dict, max_new_tokens: int, stop: list[str], grading_cfg: Optional[dict] = None) -> dict:
    """What an evaluation's outputs depend on."""
    return {"model": str(model_path), "questions": resume.digest([(r.id, r.question, r.answer) for r in records]),
            "exemplars": [r.id for r in exemplars], "fmt": fmt, "prompt": [prompt_format.question_template, prompt_format.solution_template],
            "max_new_tokens": max_new_tokens, "stop": list(stop), "backend": sampler.get("backend", "hf"),
            "dtype": sampler.get("dtype", "auto"), "grading_timeout_s": (grading_cfg or {}).get("timeout_s"),
            "grader": grading.GRADER_VERSION}


def run(model_path: str, records: list[Record], exemplars: list[Record], *, fmt: str, prompt_format: PromptFormat,
        sampler: dict, max_new_tokens: int, stop: list[str], out_path: str | Path, grading_cfg: Optional[dict] = None,
        desc: Optional[str] = "evaluating") -> dict:
    """Greedy pass@1 of ``model_path`` on ``records``; per-question outputs go to ``out_path`` (jsonl).
    ``desc``: the progress bar's name (None: the caller shows progress)."""
    out_path = Path(out_path)
    summary_path = out_path.with_suffix(".json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(model_path, records, exemplars, fmt=fmt, prompt_format=prompt_format, sampler=sampler,
                     max_new_tokens=max_new_tokens, stop=stop, grading_cfg=grading_cfg)
    with FileLock(str(out_path.with_name(f".{out_path.name}.lock"))):  # hidden: evaluations in a cell directory lock too
        done = resume.reuse(summary_path, fp, "an evaluation")
        if done is not None:
            return done
        prompts = [prompt_format.prompt(r, exemplars) for r in records]
        engine = sampling.from_config(sampler, model_path)
        try:
            outs = engine.generate(prompts, 1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, stop=stop, seeds=[[0]] * len(prompts), desc=desc)
        finally:
            engine.close()
        verdicts = grading.grade(fmt, [(o[0].text, r.answer) for o, r in zip(outs, records)], progress=desc is not None, **(grading_cfg or {}))
        data.write_rows(out_path, ({"id": r.id, "question": r.question, "reference": r.solution, "gold": r.answer,
                                    "output": o[0].text, "verdict": v} for r, o, v in zip(records, outs, verdicts)))
        n = len(records)
        summary = {
            "accuracy": verdicts.count(grading.CORRECT) / n if n else 0.0,
            "n": n,
            "correct": verdicts.count(grading.CORRECT),
            "ungraded": verdicts.count(grading.UNGRADED),
            "shots": len(exemplars),
            "fingerprint": fp,
        }
        data.write_json(summary_path, summary)
        return summary


def sampled(model_path: str, records: list[Record], exemplars: list[Record], *, k: int, temperature: float, maj_k: list[int],
            fmt: str, prompt_format: PromptFormat, sampler: dict, max_new_tokens: int, stop: list[str], out_path: str | Path,
            grading_cfg: Optional[dict] = None, seed: int = 0) -> dict:
    """pass@1 as the mean over ``k`` samples per question (with its 95% CI) and maj@m for
    each m in ``maj_k`` up to k; per-question samples go to ``out_path`` (jsonl)."""
    out_path = Path(out_path)
    summary_path = out_path.with_suffix(".json")
    fp = {**fingerprint(model_path, records, exemplars, fmt=fmt, prompt_format=prompt_format, sampler=sampler,
                        max_new_tokens=max_new_tokens, stop=stop, grading_cfg=grading_cfg),
          "k": k, "temperature": temperature, "top_p": sampler.get("top_p", 1.0), "maj_k": list(maj_k), "seed": seed}
    done = resume.reuse(summary_path, fp, "a sampled evaluation")
    if done is not None:
        return done
    prompts = [prompt_format.prompt(r, exemplars) for r in records]
    engine = sampling.from_config(sampler, model_path)
    try:
        outs = engine.generate(prompts, k, temperature=temperature, top_p=sampler.get("top_p", 1.0), max_new_tokens=max_new_tokens,
                               stop=stop, seeds=[[sampling.seed_for(seed, r.id, i) for i in range(k)] for r in records],
                               desc=f"evaluating, {k} samples")
    finally:
        engine.close()
    flat = grading.grade(fmt, [(o.text, r.answer) for os_, r in zip(outs, records) for o in os_], **(grading_cfg or {}))
    answers = [[grading.final_answer(fmt, o.text) for o in os_] for os_ in outs]
    # every comparison a vote may make, in the killable grading workers: an answer math-verify cannot
    # compare in time is a class of its own
    pairs = sorted({pair for per in answers for pair in itertools.combinations(sorted(set(per) - {None}), 2)})
    known = grading.same_answers(fmt, pairs, **(grading_cfg or {}))
    same = lambda a, b: a == b or bool(known.get((min(a, b), max(a, b))))  # noqa: E731
    uncompared = sum(v is None for v in known.values())
    if uncompared:
        log.warning("maj@k: %d of %d answer pairs could not be compared within grading.timeout_s; each such answer "
                    "votes on its own", uncompared, len(known))
    rows, per_question, votes = [], [], {m: [] for m in maj_k if m <= k}
    for q, (r, os_) in enumerate(zip(records, outs)):
        correct = [v == grading.CORRECT for v in flat[q * k:(q + 1) * k]]
        per_question.append(sum(correct) / k)
        for m in votes:
            votes[m].append(estimators.maj_at_k(answers[q], correct, m, same))
        rows.append({"id": r.id, "gold": r.answer, "outputs": [o.text for o in os_], "answers": answers[q], "correct": correct})
    data.write_rows(out_path, rows)
    mean, ci = estimators.mean_ci(per_question) if per_question else (None, None)
    summary = {"pass1_mean": mean, "pass1_ci95": ci, "k": k, "temperature": temperature, "n": len(records), "maj_uncompared_pairs": uncompared,
               **{f"maj@{m}": sum(v) / len(v) if v else None for m, v in votes.items()}, "fingerprint": fp}
    data.write_json(summary_path, summary)
    return summary


def validation_path(out_dir: str | Path, step: int) -> Path:
    """Where the outputs of the checkpoint of ``step`` on the validation questions go."""
    return Path(out_dir) / f"step-{step:06d}.jsonl"


def select(checkpoints: list[dict], val: list[Record], exemplars: list[Record], *, out_dir: str | Path, **eval_args) -> dict:
    """The paper's protocol: greedy pass@1 of each checkpoint ({step, path}) on the validation
    questions; the best (the later one on a tie) is selected. Without validation questions,
    the last checkpoint is."""
    if not val:
        last = checkpoints[-1]
        return {**last, "val_accuracy": None}
    scores = []
    with progress.bar(len(checkpoints), f"validating {len(checkpoints)} checkpoints", unit="checkpoint") as bar:
        for ck in checkpoints:
            summary = run(ck["path"], val, exemplars, out_path=validation_path(out_dir, ck["step"]), desc=None, **eval_args)
            scores.append({"step": ck["step"], "accuracy": summary["accuracy"]})
            bar.update()
    best = max(range(len(scores)), key=lambda i: (scores[i]["accuracy"], i))
    log.info("checkpoint selection on %d validation questions: %s; selected step %d", len(val),
             ", ".join(f"{s['step']}: {s['accuracy']:.3f}" for s in scores), scores[best]["step"])
    return {**checkpoints[best], "val_accuracy": scores}


def validator(*, records: list[dict], exemplars: list[dict], out_dir: str, question_template: str, solution_template: str, **eval_args):
    """``score(path, step) -> accuracy`` of a checkpoint on the validation questions, written where
    ``select`` looks, so the selection later reuses each score (``validation_spec`` builds the arguments)."""
    val, shots = [Record(**r) for r in records], [Record(**r) for r in exemplars]
    prompt_format = PromptFormat(question_template, solution_template)

    def score(path: str, step: int) -> float:
        return run(path, val, shots, out_path=validation_path(out_dir, step), prompt_format=prompt_format, desc=None, **eval_args)["accuracy"]

    return score


def validation_spec(val: list[Record], exemplars: list[Record], out_dir: str | Path, *, prompt_format: PromptFormat, **eval_args) -> dict:
    """The JSON-able arguments of ``validator`` (they travel to multi-device fine-tuning processes)."""
    return {"records": [asdict(r) for r in val], "exemplars": [asdict(r) for r in exemplars], "out_dir": str(out_dir),
            "question_template": prompt_format.question_template, "solution_template": prompt_format.solution_template, **eval_args}
