"""False positives: a right final answer reached by wrong reasoning.

Three ways to count them, all over solutions that grade correct:
- exact, where the dataset group names a step checker (arith: ``arith.check_steps``);
- an LLM judge: any model any sampler backend can load reads the question, the
  reference solution and the sampled one with the rubric below and ends with
  VALID or INVALID; the false positive rate is the share judged INVALID among
  the verdicts it could parse, on a seeded random subset (the paper judged 500);
- people: ``export`` writes a random subset (the paper labelled 50 per model)
  to CSV with an empty ``valid`` column; ``import`` reads the labels back and
  adds ``fpr_human`` to the run's results.json.

    python -m cms.judge export <run dir> [--n 50] [--what train|test] [--out F.csv]
    python -m cms.judge import <run dir> F.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
from pathlib import Path
from typing import Optional

from cms import data, models, resume, sampling

RUBRIC = """You check the reasoning of a solution to a math problem whose final answer is already known to be right.
The solution is VALID when every step follows from the question and the steps before it and every calculation is right.
It is INVALID when any step is wrong, unjustified or unrelated to the question, even though the final answer matches.

Question: {question}
Reference solution: {reference}
Solution to check: {solution}

Answer with one word, VALID or INVALID.
Verdict:"""

VERDICT = re.compile(r"\b(in)?valid\b", re.IGNORECASE)
# rows of the two kinds a run directory holds: kept training solutions and correct test answers
SOURCES = {"train": "kept.jsonl", "test": "eval_finetuned.jsonl"}
LABELS = {"1": True, "valid": True, "yes": True, "true": True, "0": False, "invalid": False, "no": False, "false": False}


def parse(output: str) -> Optional[bool]:
    """True (valid), False (invalid) or None (no verdict) from a judge's output: the
    first VALID/INVALID after the last ``Verdict:`` if there is one, else the first at all."""
    tail = re.split(r"verdict\s*:", output, flags=re.IGNORECASE)[-1]
    m = VERDICT.search(tail) or VERDICT.search(output)
    return None if m is None else m.group(1) is None


def pick(rows: list[dict], n: int, seed: int) -> list[dict]:
    """A seeded random subset of ``n`` rows (all when fewer), in their original order."""
    if len(rows) <= n:
        return list(rows)
    chosen = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in chosen]


def rate(labels: list[Optional[bool]]) -> dict:
    """False positive rate: the share of invalid among the labelled (None: no label)."""
    known = [v for v in labels if v is not None]
    return {"fpr": sum(not v for v in known) / len(known) if known else None, "n": len(known), "unlabelled": len(labels) - len(known)}


def judge(rows: list[dict], out_path: str | Path, *, model_path: str | None, sampler: dict, template: str = RUBRIC, max_new_tokens: int = 96,
          card: dict | None = None) -> dict:
    """Judge ``rows`` ({id, question, reference, solution}) greedily; verdicts go to
    ``out_path`` (jsonl, reused when it exists and was judged from the same rows, model and
    rubric) and their rate is returned. A hosted judge has no ``model_path``: its ``card``'s api answers."""
    out_path = Path(out_path)
    fp = {"model": str(model_path or models.card_key(card)), "rows": resume.digest(rows), "template": resume.digest(template), "max_new_tokens": max_new_tokens,
          "backend": sampler.get("backend", "hf"), "dtype": sampler.get("dtype", "auto")}
    if resume.reuse_file(out_path, fp, "judge verdicts"):
        done = data.read_rows(out_path)
    else:
        resume.mark(out_path, fp)
        done = []
        if rows:
            prompts = [template.format(question=r["question"], reference=r["reference"], solution=r["solution"]) for r in rows]
            engine = sampling.from_config(sampler, model_path, **({"card": card} if card else {}))
            try:
                outs = engine.generate(prompts, 1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, stop=["\n\n"],
                                       seeds=[[0]] * len(prompts), desc="judging")
            finally:
                engine.close()
            done = [{"id": r["id"], "output": o[0].text, "valid": parse(o[0].text)} for r, o in zip(rows, outs)]
        data.write_rows(out_path, done)
    return rate([d["valid"] for d in done])


def rows(stored: list[dict], what: str) -> list[dict]:
    """What a judge or a person labels, {id, question, reference, solution}, from kept training
    solutions (``train``, kept.jsonl rows) or evaluation outputs (``test``: the correct ones)."""
    if what == "train":
        return [{"id": f"{r['qid']}:{r['index']}", "question": r["question"], "reference": r.get("reference", ""), "solution": r["solution"]}
                for r in stored]
    return [{"id": r["id"], "question": r.get("question", ""), "reference": r.get("reference", ""), "solution": r["output"]}
            for r in stored if r["verdict"] == "correct"]


def candidates(run_dir: Path, what: str) -> list[dict]:
    """The rows of a run directory a judge or a person can label (see ``rows``)."""
    path = run_dir / SOURCES[what]
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {what} rows exist once the run has {'sampled' if what == 'train' else 'evaluated'}")
    return rows(data.read_rows(path), what)


def export_csv(run_dir: str | Path, out: str | Path, n: int = 50, seed: int = 0, what: str = "train") -> int:
    """Write a random subset of ``n`` rows to CSV for people to fill the ``valid`` column (1/0)."""
    chosen = pick(candidates(Path(run_dir), what), n, seed)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["what", "id", "question", "reference", "solution", "valid"])
        writer.writeheader()
        writer.writerows({"what": what, **r, "valid": ""} for r in chosen)
    return len(chosen)


def import_csv(run_dir: str | Path, path: str | Path) -> dict:
    """Read people's labels back; store them in ``human_labels.json`` and add
    ``fpr_human`` / ``n_human`` (``test_`` prefixed for test rows) to results.json."""
    run_dir = Path(run_dir)
    labels: dict[str, dict[str, Optional[bool]]] = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            value = (row.get("valid") or "").strip().lower()
            if value and value not in LABELS:
                raise ValueError(f"{path}:{i}: valid={row['valid']!r}; write 1 (valid), 0 (invalid) or leave it empty")
            labels.setdefault(row["what"], {})[row["id"]] = LABELS.get(value)
    data.write_json(run_dir / "human_labels.json", labels)
    metrics = {}
    for what, by_id in labels.items():
        r = rate(list(by_id.values()))
        prefix = "" if what == "train" else "test_"
        metrics.update({f"{prefix}fpr_human": r["fpr"], f"{prefix}n_human": r["n"]})
    results_path = run_dir / "results.json"
    if results_path.exists():
        data.write_json(results_path, {**json.loads(results_path.read_text()), **metrics})
    return metrics


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cms.judge", description="Human labels of false positives.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a random subset of a run's correct solutions to CSV")
    ex.add_argument("run_dir", type=Path)
    ex.add_argument("--n", type=int, default=50)
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--what", choices=sorted(SOURCES), default="train")
    ex.add_argument("--out", type=Path)
    im = sub.add_parser("import", help="read the filled CSV back into the run's results.json")
    im.add_argument("run_dir", type=Path)
    im.add_argument("csv", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            out = args.out or args.run_dir / f"labels-{args.what}.csv"
            print(f"wrote {export_csv(args.run_dir, out, args.n, args.seed, args.what)} rows to {out}; fill the 'valid' column "
                  f"(1 valid, 0 invalid), then: python -m cms.judge import {args.run_dir} {out}")
        else:
            print(json.dumps(import_csv(args.run_dir, args.csv)))
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
