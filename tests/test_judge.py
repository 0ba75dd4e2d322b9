"""False positives: verdict parsing, a local judge end to end, and people's labels through CSV."""

import csv
import json
import random

import pytest

from cms import arith, cell, filtering, finetuning, judge, models, resume
from test_run import compose_cell


@pytest.mark.parametrize("output, verdict", [
    (" VALID", True), (" INVALID", False), ("invalid.", False), (" Valid\nVerdict: INVALID", False),
    ("The steps are fine. Verdict: valid", True), ("Verdict:  **Invalid**", False), ("::::", None), ("", None),
    (" validity unclear", None),
])
def test_verdicts_parse(output, verdict):
    assert judge.parse(output) is verdict


def test_rate_and_subset():
    assert judge.rate([True, False, None, False]) == {"fpr": pytest.approx(2 / 3), "n": 3, "unlabelled": 1}
    assert judge.rate([None])["fpr"] is None
    rows = [{"id": str(i)} for i in range(100)]
    a, b = judge.pick(rows, 10, seed=0), judge.pick(rows, 10, seed=0)
    assert a == b and len(a) == 10 and [int(r["id"]) for r in a] == sorted(int(r["id"]) for r in a)
    assert judge.pick(rows, 10, seed=1) != a and judge.pick(rows[:5], 10, 0) == rows[:5]


def corrupted(records, rng):
    """Right final answers, some with a wrong step: arith's false positives."""
    rows = []
    for r in records:
        solution = r.solution
        if rng.random() < 0.5 and "\n" in solution:  # break the first step's result, keep the final line
            first, rest = solution.split("\n", 1)
            lhs, rhs = first.split("=")
            solution = f"{lhs}= {int(rhs) + 1}\n{rest}"
        rows.append({"id": r.id, "question": r.question, "reference": r.solution, "solution": solution})
    return rows


def test_a_local_judge_runs_end_to_end_and_its_verdicts_are_parsed(tiny_family, tmp_path, monkeypatch):
    """A tiny model fine-tuned for a few steps to answer VALID/INVALID after the rubric: its
    verdicts are poor, but they come back parsed and counted."""
    rng = random.Random(0)
    records = arith.load("train", {"train": 60, "test": 20})
    train, held = corrupted(records[:40], rng), corrupted(records[40:], rng)
    pairs = [(judge.RUBRIC.format(**{k: r[k] for k in ("question", "reference", "solution")}),
              " VALID" if arith.check_steps(r["question"], r["solution"]) else " INVALID") for r in train]
    base = models.resolve(tiny_family["student"], tmp_path / "cache")
    trained = finetuning.run(base, pairs, tmp_path / "judge-ft", steps=30, batch_size=8, lr=3e-3, max_length=1024, checkpoints=1)
    out = tmp_path / "judge.jsonl"
    rate = judge.judge(held, out, model_path=trained["checkpoint"], sampler={"backend": "hf", "batch_size": 8}, max_new_tokens=12)
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [v["id"] for v in verdicts] == [r["id"] for r in held]
    assert all(v["valid"] is judge.parse(v["output"]) for v in verdicts)
    assert rate["n"] == sum(v["valid"] is not None for v in verdicts) >= 15  # it learned the format
    assert rate["fpr"] == pytest.approx(sum(v["valid"] is False for v in verdicts) / rate["n"])
    # stored verdicts are reused, not judged again; verdicts of other rows or another judge are refused
    same = dict(model_path=trained["checkpoint"], sampler={"backend": "hf", "batch_size": 8}, max_new_tokens=12)
    monkeypatch.setattr(judge.sampling, "from_config", lambda *a, **k: pytest.fail("judged again"))
    assert judge.judge(held, out, **same) == rate
    with pytest.raises(resume.StaleError, match="rows"):
        judge.judge(held[:-1], out, **same)
    with pytest.raises(resume.StaleError, match="model"):
        judge.judge(held, out, **{**same, "model_path": base})


def test_judge_in_a_cell_with_the_familys_model(env, tmp_path):
    """judge=se: the cell's kept solutions and correct test answers go through the judge."""
    cfg = compose_cell("setting=self", "debug=smoke", "data.source=reference", "judge=se", "judge.subset=5", "judge.max_new_tokens=8")
    results = cell.run_cell(cfg, tmp_path / "cell")
    verdicts = [json.loads(line) for line in (tmp_path / "cell" / "judge_train.jsonl").read_text().splitlines()]
    assert len(verdicts) == 5 and all(set(v) == {"id", "output", "valid"} for v in verdicts)
    assert results["n_judged"] + results["judge_unparsed"] == 5
    assert "test_fpr_judge" in results


def test_people_labels_round_trip_and_match_the_exact_count(tmp_path):
    """Export a subset to CSV, label it the way the exact checker does, import: fpr_human equals
    the judge-free count of arith on the same rows, and results.json gains it."""
    rng = random.Random(1)
    records = arith.load("train", {"train": 80, "test": 20})
    rows = corrupted(records, rng)
    verdicts = ["correct"] * len(rows)
    kept, metrics = filtering.run(records, [{"qid": r["id"], "index": 0, "text": r["solution"]} for r in rows], verdicts, arith.check_steps)
    run_dir = tmp_path / "cell"
    run_dir.mkdir()
    (run_dir / "kept.jsonl").write_text("".join(json.dumps(k) + "\n" for k in kept))
    (run_dir / "results.json").write_text(json.dumps({"fpr": metrics["fpr"]}))
    n = judge.export_csv(run_dir, tmp_path / "labels.csv", n=50, seed=0)
    assert n == 50
    table = list(csv.DictReader((tmp_path / "labels.csv").open()))
    assert {r["valid"] for r in table} == {""} and all(r["reference"] for r in table)
    for r in table:  # the "person" is the exact step checker
        r["valid"] = "1" if arith.check_steps(r["question"], r["solution"]) else "0"
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    got = judge.import_csv(run_dir, tmp_path / "labels.csv")
    labelled = {r["id"] for r in table}
    exact = [k for k in kept if f"{k['qid']}:{k['index']}" in labelled]
    assert got["n_human"] == 50
    assert got["fpr_human"] == pytest.approx(sum(not k["valid_steps"] for k in exact) / 50)
    assert 0.2 < got["fpr_human"] < 0.8  # about half the rows were corrupted
    assert json.loads((run_dir / "results.json").read_text())["fpr_human"] == got["fpr_human"]
    # the whole set: the exact FPR equals the count of corrupted rows
    assert metrics["fpr"] == pytest.approx(sum(r["solution"] != r["reference"] for r in rows) / len(rows))
    # a label people cannot mean is an error naming the fix
    table[0]["valid"] = "maybe"
    with (tmp_path / "bad.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    with pytest.raises(ValueError, match="write 1 \\(valid\\), 0 \\(invalid\\)"):
        judge.import_csv(run_dir, tmp_path / "bad.csv")
