import json
import random

from cms import data, report


def cell(model, setting, seed, acc, coverage=0.5, **fingerprint):
    return {"model": model, "setting": setting, "seed": seed, "dataset": "arith", "budget": "low", "family": "toy",
            "source": "sampled", "generator": f"toy-{model}", "finetuned": "toy-student", "accuracy": acc,
            "baseline_accuracy": 0.1, "samples_per_question": 5 if model == "wc" else 1, "sample_accuracy": 0.2,
            "coverage": coverage, "diversity": 1.0, "fpr": 0.1, "_dir": "/nonexistent",
            "fingerprint": {"model.role": model, "seed": seed, "setting.name": setting, "sampler.temperature": 0.7, **fingerprint}}


def sweep(tmp_path, cells, correct=None):
    """Write each cell's results.json (and, with ``correct``, its per-question test outputs) and load them back."""
    for i, c in enumerate(cells):
        d = tmp_path / f"{i}_{c['model']}_{c['setting']}"
        d.mkdir(parents=True)
        data.write_json(d / "results.json", {k: v for k, v in c.items() if k != "_dir"})
        if correct:
            data.write_rows(d / "eval_finetuned.jsonl", [{"id": f"q{j}", "verdict": "correct" if ok else "wrong"}
                                                         for j, ok in enumerate(correct[i])])
    return report.load_results(tmp_path)


def test_relative_gain_is_of_the_mean_accuracies():
    results = [cell("wc", "kd", 0, 0.30), cell("se", "kd", 0, 0.20), cell("wc", "kd", 1, 0.10), cell("se", "kd", 1, 0.10)]
    [row] = report.accuracy_rows(results)
    assert row["seeds"] == 2
    assert abs(row["relative_gain"] - (0.20 - 0.15) / 0.15) < 1e-9  # not the mean of +50% and 0%
    assert abs(row["acc_wc_data"] - 0.20) < 1e-9 and row["acc_se_data_std"] > 0
    data_rows = {r["model"]: r for r in report.data_rows(results)}
    assert data_rows["wc"]["samples_per_question"] == 5 and data_rows["se"]["coverage"] == 0.5
    text = report.markdown(results)
    assert "+33.3%" in text and "mean ± standard deviation" in text


def test_a_seed_missing_one_side_is_left_out_of_both_means_and_named():
    results = [cell("wc", "kd", 0, 0.30), cell("se", "kd", 0, 0.20), cell("wc", "kd", 1, 0.90), cell("se", "kd", 1, None)]
    [row] = report.accuracy_rows(results)
    assert row["seeds"] == 1 and abs(row["acc_wc_data"] - 0.30) < 1e-9 and abs(row["relative_gain"] - 0.5) < 1e-9
    assert row["unpaired"] == "seed 1: no SE result"
    assert "seed 1: no SE result" in report.markdown(results)
    [alone] = report.accuracy_rows([cell("wc", "kd", 0, None), cell("se", "kd", 0, 0.2)])
    assert alone["relative_gain"] is None and "n/a" in report.markdown([cell("wc", "kd", 0, None), cell("se", "kd", 0, 0.2)])


def test_cells_that_differ_in_a_setting_outside_the_fixed_list_are_not_paired(tmp_path):
    """A sweep over finetune.steps (or budget.flops_per_question, a model path, the temperature): before,
    WC of one value was paired with SE of another in one row."""
    cells = [cell(m, "kd", 0, acc, **{"finetune.steps": steps})
             for m, acc, steps in (("wc", 0.3, 100), ("se", 0.2, 100), ("wc", 0.5, 600), ("se", 0.6, 600))]
    results = sweep(tmp_path, cells)
    rows = report.accuracy_rows(results)
    assert [(r["cfg:finetune.steps"], r["acc_wc_data"], r["acc_se_data"]) for r in rows] == [(100, 0.3, 0.2), (600, 0.5, 0.6)]
    assert "| dataset | budget | finetune.steps | setting |" in report.markdown(results)
    # the same settings twice are reported, not silently merged
    dup = sweep(tmp_path / "dup", [cell("wc", "kd", 0, 0.3), cell("wc", "kd", 0, 0.4), cell("se", "kd", 0, 0.2)])
    assert len(report.duplicates(dup)) == 1 and "Cells with the same settings" in report.markdown(dup)


def test_paired_bootstrap_interval_over_seeds_and_questions(tmp_path):
    rng = random.Random(0)
    n = 200
    correct, cells = [], []
    for seed in range(3):
        for model, p in (("wc", 0.6), ("se", 0.4)):
            answers = [rng.random() < p for _ in range(n)]
            correct.append(answers)
            cells.append(cell(model, "kd", seed, sum(answers) / n))
    [row] = report.accuracy_rows(sweep(tmp_path / "a", cells, correct))
    low, high = row["gain_ci95_low"], row["gain_ci95_high"]
    assert low < row["relative_gain"] < high and low > 0  # a 0.6 vs 0.4 gap on 600 answers a side is clear
    assert high - low < 0.5
    # the same answers on both sides: an interval around 0
    same = [correct[i - i % 2] for i in range(len(cells))]
    cells_same = [{**c, "accuracy": sum(same[i]) / n, "n_test": n} for i, c in enumerate(cells)]
    [flat] = report.accuracy_rows(sweep(tmp_path / "b", cells_same, same))
    assert flat["relative_gain"] == 0 and flat["gain_ci95_low"] == 0 == flat["gain_ci95_high"]
    assert "excludes 0" in report.markdown(sweep(tmp_path / "c", cells, correct))
    assert json.dumps(row)  # summary.csv-able
    # summary.csv: the gain and its interval in percent, the half-width in points, whether it excludes 0
    report.write_summary(tmp_path / "c")
    [written] = list(__import__("csv").DictReader((tmp_path / "c" / "summary.csv").open()))
    assert float(written["gain_ci95_low"]) == 100 * low and float(written["relative_gain"]) == 100 * row["relative_gain"]
    assert float(written["gain_ci95_halfwidth"]) == 50 * (high - low) and written["gain_excludes_0"] == "True"
    # an interval that includes 0 is said to leave the sources apart undecided, with its half-width
    text = report.markdown(sweep(tmp_path / "d", cells_same, same))
    assert "kd: the 95% interval includes 0, so 3 seeds and 200 test questions cannot separate WC from SE data" in text
    assert "[+0.0%, +0.0%] ± 0.0" in text


def test_data_differences_have_paired_intervals_over_seeds_and_questions(tmp_path):
    """WC covers 90% of 300 questions with 2 unique solutions each, SE 60% with 1: the coverage, diversity and
    FPR differences of the data with their paired bootstrap intervals."""
    rng = random.Random(0)
    cells = []
    for seed in range(2):
        for model, p, unique, bad in (("wc", 0.9, 2, 0.2), ("se", 0.6, 1, 0.0)):
            c = cell(model, "kd", seed, 0.3)
            c["_graded"] = [{"qid": f"q{j}", "correct": ok, "key": f"{model}{k}"} for j in range(300)
                            for ok in [rng.random() < p] for k in range(unique)]
            c["_kept"] = [{"qid": g["qid"], "valid_steps": rng.random() >= bad} for g in c["_graded"] if g["correct"]]
            cells.append(c)
    for i, c in enumerate(cells):
        d = tmp_path / f"{i}_{c['model']}_{c['setting']}"
        d.mkdir(parents=True)
        data.write_rows(d / "graded.jsonl", c.pop("_graded"))
        data.write_rows(d / "kept.jsonl", c.pop("_kept"))
        data.write_json(d / "results.json", {k: v for k, v in c.items() if k != "_dir"})
    results = report.load_results(tmp_path)
    [row] = report.data_difference_rows(results)
    assert row["seeds"] == 2 and row["questions"] == 300
    assert 0.2 < row["coverage_diff"] < 0.4 and row["coverage_diff_ci95_low"] > 0.2 and row["coverage_diff_ci95_high"] < 0.4
    assert row["coverage_diff_ci95_low"] < row["coverage_diff"] < row["coverage_diff_ci95_high"]
    assert 1.0 < row["diversity_diff_ci95_low"] < row["diversity_diff"] < row["diversity_diff_ci95_high"] < 1.4
    assert 0.1 < row["fpr_diff_ci95_low"] < row["fpr_diff"] < row["fpr_diff_ci95_high"] < 0.3
    assert "WC data - SE data, paired 95% intervals" in report.markdown(results)


def test_the_accuracy_figure_draws_before_and_no_missing_side_and_says_what_its_error_bars_are(tmp_path, monkeypatch):
    """Before: no 'before fine-tuning' bar, a missing side drawn as a 0% bar, zero-length error bars for one seed
    with no word on what they are, and ticks that did not say who was fine-tuned."""
    import matplotlib.axes

    drawn, texts, ticks = [], [], []
    bar, text, xticks = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.text, matplotlib.axes.Axes.set_xticks
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", lambda self, x, h, *a, **k: drawn.append((round(x, 2), h, k.get("yerr"))) or bar(self, x, h, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, x, y, s, *a, **k: texts.append(s) or text(self, x, y, s, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks", lambda self, pos, labels=None, **k: ticks.extend(labels or []) or xticks(self, pos, labels, **k))
    one_seed = [cell("wc", "kd", 0, 0.30), cell("se", "kd", 0, 0.20), cell("wc", "self", 0, 0.5), cell("se", "self", 0, None)]
    for r in one_seed:
        r["n_test"] = 100
    [(png, caption)] = [f for f in report.figures(one_seed, [], tmp_path) if f[0].name == "accuracy.png"]
    assert png.exists() and "95% binomial interval over the test questions (one seed" in caption
    heights = {x: h for x, h, _ in drawn}
    assert heights[-0.27] == heights[0.73] == 10.0  # the 'before' bars (baseline 10%), one per setting
    assert heights[0.0] == 30.0 and heights[0.27] == 20.0 and 1.27 not in heights  # self's SE side: not a 0% bar
    assert "no\nresult" in texts
    assert ticks[0].startswith("kd: fine-tunes\ntoy-student")
    errs = {x: e for x, _, e in drawn}
    assert abs(errs[0.0] - 100 * 1.96 * (0.3 * 0.7 / 100) ** 0.5) < 1e-9  # not a zero-length bar
    seeds = [cell("wc", "kd", 0, 0.3), cell("se", "kd", 0, 0.2), cell("wc", "kd", 1, 0.4), cell("se", "kd", 1, 0.3)]
    [(_, caption)] = [f for f in report.figures(seeds, [], tmp_path / "2") if f[0].name == "accuracy.png"]
    assert "± standard deviation over 2 seeds" in caption


def test_compared_cells_that_read_different_data_are_flagged():
    here = {"source": "file", "path": "/d/math/train.jsonl", "sha256": "a" * 64, "rows": 4500}
    hub = {"source": "hub", "id": "EleutherAI/hendrycks_math", "config": None, "split": "train", "revision": "unpinned", "rows": 7500}
    test = {"source": "file", "path": "/d/math/test.jsonl", "sha256": "b" * 64, "rows": 500}
    same = [{**cell(m, "kd", 0, 0.3), "data": {"train": here, "test": test}, "_dir": f"/s/{m}"} for m in ("wc", "se")]
    assert not report.data_mismatches(same) and "different data" not in report.markdown(same)
    moved = [same[0], {**same[1], "data": {"train": {**here, "path": "/elsewhere/math/train.jsonl"}, "test": test}}]
    assert not report.data_mismatches(moved)  # the same file content at another path is the same data
    mixed = [same[0], {**same[1], "data": {"train": hub, "test": test}}]
    [line] = report.data_mismatches(mixed)
    assert "/s/wc and /s/se" in line and "4500 rows" in line and "hendrycks_math@unpinned, 7500 rows" in line and "test" not in line.split(": ", 1)[1]
    assert "## Warning: compared cells read different data" in report.markdown(mixed)


def test_a_crossover_whose_fine_tuning_steps_follow_the_budget_is_one_series(tmp_path):
    """finetune=toy trains 100 steps per SE sample: the steps differ with the budget, and the budget points
    still make one crossover series (they were split into one group per step count, so no crossover table)."""
    cells = []
    for se_samples, steps in ((1, 100), (3, 300)):
        for model, acc in (("wc", 0.3), ("se", 0.2)):
            c = cell(model, "kd", 0, acc, **{"finetune.steps": steps})
            c.update(se_samples=se_samples, spent_flops=1e9 * se_samples, n_questions=10)
            cells.append(c)
    results = sweep(tmp_path, cells)
    rows = report.crossover_rows(results)
    assert [(r["se_samples"], r["cfg:finetune.steps"]) for r in rows] == [(1, 100), (3, 300)]
    assert "## Crossover: accuracy against sampling FLOPs" in report.markdown(results)


def test_the_phase_map_says_who_wins_at_each_size_ratio_and_budget(tmp_path):
    """Two size ratios x two budgets, 3 seeds on 200 questions each: the table and the heatmap name WC where its
    paired interval is above 0, SE where below, and 'cannot tell' where it includes 0."""
    rng = random.Random(0)
    p_wc = {("toy", 1): 0.7, ("toy", 3): 0.5, ("toy9", 1): 0.5, ("toy9", 3): 0.3}  # SE data: 0.5 everywhere
    cells, correct = [], []
    for (family, se_samples), p in p_wc.items():
        for seed in range(3):
            for model, acc in (("wc", p), ("se", 0.5)):
                c = cell(model, "kd", seed, acc, **{"budget.se_samples": se_samples})
                c.update(family=family, se_samples=se_samples, ratio_used=3.0 if family == "toy" else 9.0)
                cells.append(c)
                correct.append([rng.random() < acc for _ in range(200)])
    results = sweep(tmp_path, cells, correct)
    rows = {(r["size_ratio"], r["se_samples"]): r for r in report.phase_rows(report.accuracy_rows(results))}
    assert {k: r["winner"] for k, r in rows.items()} == {(3.0, 1): "WC", (3.0, 3): "cannot tell", (9.0, 1): "cannot tell", (9.0, 3): "SE"}
    assert "## Where WC data wins: size ratio x budget" in report.markdown(results)
    pngs = [p.name for p, _ in report.figures(results, [], tmp_path / "figures")]
    assert "phase.png" in pngs
    assert report.phase_rows(report.accuracy_rows([c for c in results if c["family"] == "toy"])) == []  # one size ratio: no map


def test_one_seed_says_its_intervals_leave_out_the_seed_to_seed_spread():
    one = [cell("wc", "kd", 0, 0.30), cell("se", "kd", 0, 0.20)]
    assert "- one seed: these intervals resample the test questions only" in report.markdown(one)
    two = one + [cell("wc", "kd", 1, 0.30), cell("se", "kd", 1, 0.20)]
    assert "- one seed:" not in report.markdown(two)


def test_a_varying_model_card_is_shown_by_its_name_alone():
    cells = [cell(m, "kd", 0, 0.3, **{"family.student.name": name, "family.student.tiny.hidden_size": width})
             for m in ("wc", "se") for name, width in (("small", 32), ("large", 64))]
    results = [{**c, **{f"cfg:{k}": v for k, v in c["fingerprint"].items() if k.startswith("family.")}} for c in cells]
    assert report.varying(results) == ["dataset", "budget", "cfg:family.student.name"]
    assert len(report.accuracy_rows(results)) == 2  # the card's other settings still tell the rows apart
