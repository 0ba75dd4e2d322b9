"""The answer of a sweep: WC data against SE data at a matched budget, as the paper's tables and figures.

``python -m cms.report SWEEP_DIR`` reads every results.json and the graded
samples (graded.jsonl) under the folder and writes there:

- ``report.md``: the data (per-sample accuracy, coverage, diversity, false
  positive rate exact / judged / by people), coverage@k and diversity@k at the
  compute-matched points, pass@1 after fine-tuning with WC vs SE data and the
  relative gain (acc_WC - acc_SE) / acc_SE, the other evaluation protocols
  (pass@1 over k samples with its CI, maj@k, transfer), the false positives of
  the fine-tuned models (absolute points), and the crossover study when the sweep
  holds several budgets;
- ``figures/*.png``: accuracy per setting (before fine-tuning, on WC data, on SE data;
  each caption says what its error bars are), coverage/diversity curves per difficulty
  level against sampling FLOPs (axes shared per row), accuracy against sampling FLOPs;
- ``summary.csv`` / ``summary.md`` (a multirun writes these itself when its last cell ends);
- one wandb run (offline unless the cells logged online, or ``--wandb-mode``) with the
  tables and figures, and with wandb online a W&B Report of those panels.

Over several seeds, each figure is the mean with the standard deviation across seeds after a ±.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Optional

from hydra.experimental.callback import Callback

from cms import data, estimators

log = logging.getLogger(__name__)
# what tells two cells of a sweep apart, besides model, setting and seed; shown when it varies. Any other
# setting of the cells' stored configs that varies (finetune.steps, budget.flops_per_question, family.wc.path,
# sampler.temperature, ...) separates rows too (``group_fields``), so WC and SE of different settings never pair.
GROUP = ("dataset", "family", "source", "budget", "match", "se_samples", "ratio", "keep", "lr", "train_limit")
ALWAYS = ("dataset", "budget")
BUDGET_POINT = ("budget", "match", "se_samples", "ratio")
# the config keys GROUP's fields stand for, and the ones that are the report's own axes
COVERED = {"dataset.name", "family.name", "data.source", "budget.name", "budget.match", "budget.se_samples", "budget.ratio",
           "data.keep", "finetune.lr", "dataset.train_limit", "data.mix_se"}
AXES = ("model.", "setting.", "seed")
DATA_METRICS = ("samples_per_question", "sample_accuracy", "coverage", "diversity", "multi_solution", "fpr", "fpr_judge", "fpr_human",
                "planned_flops", "spent_flops", "planned_usd", "spent_usd", "provider_usd")


def load_results(sweep_dir: Path) -> list[dict]:
    """Every finished cell under ``sweep_dir`` (cells set aside by rerun=true under previous/ left out),
    with the settings of its stored config as ``cfg:<key>`` fields."""
    out = []
    for p in sorted(sweep_dir.rglob("results.json")):
        if "previous" in p.relative_to(sweep_dir).parts:
            continue
        r = {**json.loads(p.read_text()), "_dir": str(p.parent)}
        for k, v in (r.get("fingerprint") or {}).items():
            if k not in COVERED and not k.startswith(AXES):
                r[f"cfg:{k}"] = json.dumps(v) if isinstance(v, (list, dict)) else v
        out.append(r)
    return out


def group_fields(results: list[dict]) -> tuple:
    """GROUP, and every other stored setting whose value differs between cells."""
    extra = sorted({k for r in results for k in r if k.startswith("cfg:")})
    return GROUP + tuple(k for k in extra if len({json.dumps(r.get(k), default=str) for r in results}) > 1)


def gain(wc: Optional[float], se: Optional[float]) -> Optional[float]:
    return None if wc is None or not se else (wc - se) / se


def spread(values: list) -> tuple[Optional[float], Optional[float], int]:
    """Mean, standard deviation (None for one value) and count of the non-missing values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def _get(r: dict, key: str):
    for part in key.split("/"):
        r = r.get(part) if isinstance(r, dict) else None
    return r


def _key(r: dict, fields) -> tuple:
    return tuple(r.get(k) for k in fields)


def _sorted(groups: dict) -> list:
    return sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0])))


def varying(results: list[dict]) -> list[str]:
    """The group fields a table shows: dataset and budget, and any other that differs between cells; a
    model card's settings (``cfg:family.student.tiny.hidden_size``) are left to its name where that shows."""
    shown = [k for k in group_fields(results) if k in ALWAYS or len({json.dumps(r.get(k), default=str) for r in results}) > 1]
    named = {k.removesuffix(".name") for k in shown if k.startswith("cfg:family.") and k.endswith(".name")}
    return [k for k in shown if not any(k.startswith(card + ".") and k != card + ".name" for card in named)]


def _aggregate(results: list[dict], fields: tuple, metrics) -> list[dict]:
    """One row per value of ``fields``: each metric's spread across seeds (one cell per seed)."""
    per: dict[tuple, dict] = defaultdict(dict)
    for r in results:
        per[_key(r, fields)].setdefault(r["seed"], r)
    rows = []
    for key, by_seed in _sorted(per):
        row = dict(zip(fields, key))
        for m in metrics:
            row[m], row[m + "_std"], _ = spread([_get(r, m) for r in by_seed.values()])
        row["seeds"] = len(by_seed)
        rows.append(row)
    return rows


def data_rows(results: list[dict]) -> list[dict]:
    """One row per (group, generator): the data it produced, across seeds (one cell per seed suffices)."""
    return _aggregate([r for r in results if r.get("source") in ("sampled", "mix")], group_fields(results) + ("model", "generator", "mix_se"), DATA_METRICS)


def _pairs(results: list[dict], fields: tuple) -> list[tuple[dict, list[dict[str, dict]]]]:
    """Cells grouped by ``fields``, then per seed a {"wc": cell, "se": cell} pair (mixed-data cells are ``mix_rows``')."""
    cells: dict[tuple, dict] = defaultdict(lambda: defaultdict(dict))
    for r in results:
        if r.get("source") == "mix":
            continue
        cells[_key(r, fields)][r["seed"]][r["model"]] = r
    return [(dict(zip(fields, key)), list(by_seed.values())) for key, by_seed in _sorted(cells)]


def accuracy_rows(results: list[dict]) -> list[dict]:
    """One row per (group, setting): pass@1 with WC data vs SE data across the seeds that have both,
    the relative gain of the means, (mean WC - mean SE) / mean SE, and its paired bootstrap 95%
    interval over seeds and test questions. A seed with one side missing is left out of both
    means and named in ``unpaired``."""
    rows = []
    for head, pairs in _pairs(results, group_fields(results) + ("setting",)):
        any_cell = next(iter(pairs[0].values()))
        row = {**head, "learner": any_cell.get("finetuned"), "n_test": any_cell.get("n_test"), "ratio_used": any_cell.get("ratio_used")}
        both = [p for p in pairs if p.get("wc", {}).get("accuracy") is not None and p.get("se", {}).get("accuracy") is not None]
        series = {
            "baseline_accuracy": [next(iter(p.values())).get("baseline_accuracy") for p in pairs],
            "acc_wc_data": [p["wc"]["accuracy"] for p in both],
            "acc_se_data": [p["se"]["accuracy"] for p in both],
        }
        for name, values in series.items():
            row[name], row[name + "_std"], _ = spread(values)
        row["relative_gain"] = gain(row["acc_wc_data"], row["acc_se_data"])
        row["gain_ci95_low"], row["gain_ci95_high"] = gain_interval(both)
        row["seeds"] = len(both)
        row["unpaired"] = "; ".join(f"seed {next(iter(p.values()))['seed']}: no {'WC' if p.get('wc', {}).get('accuracy') is None else 'SE'} result"
                                    for p in pairs if p not in both)
        rows.append(row)
    return rows


def _verdicts(cell: dict) -> Optional[dict[str, int]]:
    """A cell's per-question test verdicts (1 correct), read once and kept on the cell."""
    if "_verdicts" not in cell:
        path = Path(cell["_dir"]) / "eval_finetuned.jsonl"
        cell["_verdicts"] = {x["id"]: int(x["verdict"] == "correct") for x in data.read_rows(path)} if path.exists() else None
    return cell["_verdicts"]


def _resampled(k: int, q: int, n: int, seed: int):
    """The paired bootstrap's weights: ``n`` resamples of ``k`` seeds and ``q`` questions, drawn once and
    applied to both sides, as (seeds[n, k], questions[n, q]) counts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.multinomial(k, np.full(k, 1 / k), size=n), rng.multinomial(q, np.full(q, 1 / q), size=n)


def gain_interval(pairs: list[dict[str, dict]], n: int = 2000, seed: int = 0) -> tuple[Optional[float], Optional[float]]:
    """Paired bootstrap 95% interval of the relative gain: seeds and test questions resampled together
    for WC and SE (each seed's two cells answered the same questions); None without per-question outputs."""
    import numpy as np

    if not pairs:
        return None, None
    per = [(_verdicts(p["wc"]), _verdicts(p["se"])) for p in pairs]
    if any(w is None or s is None for w, s in per):
        return None, None
    ids = sorted(per[0][0])
    if any(sorted(w) != ids or sorted(s) != ids for w, s in per) or not ids:
        log.warning("the WC and SE cells of a pair answered different test questions: no interval for their gain")
        return None, None
    W = np.array([[w[i] for i in ids] for w, _ in per], dtype=float)
    S = np.array([[s[i] for i in ids] for _, s in per], dtype=float)
    seeds, questions = _resampled(*W.shape, n, seed)
    wc = np.einsum("bs,sq,bq->b", seeds, W, questions)
    se = np.einsum("bs,sq,bq->b", seeds, S, questions)
    ok = se > 0
    g = (wc[ok] - se[ok]) / se[ok]
    return (float(np.percentile(g, 2.5)), float(np.percentile(g, 97.5))) if len(g) else (None, None)


def _graded(cell: dict) -> list[dict]:
    """A cell's graded samples (graded.jsonl; none for a cell that did not sample), read once and kept on the cell."""
    if "_graded" not in cell:
        path = Path(cell["_dir"]) / "graded.jsonl" if cell.get("_dir") else None
        cell["_graded"] = data.read_rows(path) if path and path.exists() else []
    return cell["_graded"]


def _per_question(cell: dict) -> Optional[dict[str, tuple]]:
    """A sampled cell's train questions: (covered, unique correct solutions, kept, kept with invalid steps),
    from its graded samples and kept.jsonl, kept on the cell; None without graded samples."""
    if "_data" not in cell:
        graded = _graded(cell)
        if not graded:
            cell["_data"] = None
            return None
        d = Path(cell["_dir"])
        unique: dict[str, set] = defaultdict(set)
        for g in graded:
            unique[g["qid"]].update([g["key"]] if g["correct"] else [])
        kept, invalid = defaultdict(int), defaultdict(int)
        for k in data.read_rows(d / "kept.jsonl") if (d / "kept.jsonl").exists() else []:
            kept[k["qid"]] += 1
            invalid[k["qid"]] += k.get("valid_steps") is False
        one = (cell.get("config") or {}).get("data", {}).get("keep") == "one"  # one kept per question: diversity is coverage
        cell["_data"] = {q: (bool(u), min(len(u), 1) if one else len(u), kept[q], invalid[q]) for q, u in unique.items()}
    return cell["_data"]


def data_difference_rows(results: list[dict], n: int = 2000, seed: int = 0) -> list[dict]:
    """WC data minus SE data, per group: coverage (points), diversity (solutions per question) and the exact
    FPR of the kept data (points), each with a paired bootstrap 95% interval over seeds and train questions
    (both generators' cells of a seed sampled the same questions)."""
    import numpy as np

    rows = []
    for head, pairs in _pairs([r for r in results if r.get("source") == "sampled"], group_fields(results)):
        per = [(_per_question(p["wc"]), _per_question(p["se"])) for p in pairs if "wc" in p and "se" in p]
        per = [(w, s) for w, s in per if w and s]
        ids = sorted(set.intersection(*(set(w) & set(s) for w, s in per))) if per else []
        if not ids:
            continue
        W = np.array([[w[i] for i in ids] for w, _ in per], dtype=float)  # [seed, question, figure]
        S = np.array([[s[i] for i in ids] for _, s in per], dtype=float)
        point = _differences(W, S, np.ones((1, len(per))), np.ones((1, len(ids))))
        boot = _differences(W, S, *_resampled(len(per), len(ids), n, seed))
        row = {**head, "seeds": len(per), "questions": len(ids)}
        for name, value in point.items():
            resampled = boot[name][np.isfinite(boot[name])]
            known = np.isfinite(value[0]) and len(resampled) and (name != "fpr_diff" or _has_fpr(pairs))
            row[name] = float(value[0]) if known else None
            if known:
                row[name + "_ci95_low"], row[name + "_ci95_high"] = (float(x) for x in np.percentile(resampled, [2.5, 97.5]))
        rows.append(row)
    return rows


def _differences(W, S, seeds, questions) -> dict:
    """WC minus SE for each row of weights over seeds and questions: coverage, diversity, FPR of the kept data."""
    import numpy as np

    wc, se = (np.einsum("bs,sqf,bq->bf", seeds, X, questions) for X in (W, S))
    total = seeds.sum(1) * questions.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"coverage_diff": (wc[:, 0] - se[:, 0]) / total, "diversity_diff": (wc[:, 1] - se[:, 1]) / total,
                "fpr_diff": wc[:, 3] / wc[:, 2] - se[:, 3] / se[:, 2]}


def _has_fpr(pairs: list[dict[str, dict]]) -> bool:
    return all(c.get("fpr") is not None for p in pairs for c in p.values())


def protocol_metrics(results: list[dict]) -> list[str]:
    """The evaluation-protocol figures present in the sweep: pass@1 over k samples, maj@k, transfer."""
    found = {k for r in results for k in r if k == "pass1_mean" or k.startswith("maj@")}
    found |= {f"transfer/{name}/accuracy" for r in results for name in (r.get("transfer") or {})}
    order = lambda k: (k != "pass1_mean", k.startswith("transfer"), int(k[4:]) if k.startswith("maj@") else 0, k)  # noqa: E731
    return sorted(found, key=order)


def per_model_rows(results: list[dict], metrics: list[str]) -> list[dict]:
    """One row per (group, setting, data source): ``metrics`` across seeds."""
    return _aggregate(results, group_fields(results) + ("setting", "model"), metrics)


def fpr_rows(results: list[dict]) -> list[dict]:
    """False positives among the fine-tuned models' correct test answers, WC vs SE data, in points."""
    rows = []
    for head, pairs in _pairs(results, group_fields(results) + ("setting",)):
        row = dict(head)
        for how in ("test_fpr", "test_fpr_judge", "test_fpr_human"):
            wc = [p.get("wc", {}).get(how) for p in pairs]
            se = [p.get("se", {}).get(how) for p in pairs]
            row[f"{how}_wc"], row[f"{how}_wc_std"], _ = spread(wc)
            row[f"{how}_se"], row[f"{how}_se_std"], _ = spread(se)
            row[f"{how}_diff"], row[f"{how}_diff_std"], _ = spread([None if a is None or b is None else a - b for a, b in zip(wc, se)])
        row["measured"] = [h for h in ("test_fpr", "test_fpr_judge", "test_fpr_human") if any(h in c for p in pairs for c in p.values())]
        if row["measured"]:
            rows.append(row)
    return rows


def mix_rows(results: list[dict]) -> list[dict]:
    """``data.source=mix`` cells: pass@1 per share of the budget spent on SE samples (``mix_se``), and its
    relative gain over the all-SE (mix_se=1) and all-WC (mix_se=0) data of the same sweep, over the seeds
    both have, with the paired bootstrap 95% interval over those seeds and the test questions."""
    mixes = [r for r in results if r.get("source") == "mix"]
    fields = group_fields(mixes) + ("setting", "finetuned")
    groups: dict[tuple, dict] = defaultdict(lambda: defaultdict(dict))
    for r in mixes:
        groups[_key(r, fields)][r["mix_se"]][r["seed"]] = r
    rows = []
    for key, by_share in _sorted(groups):
        for share, cells in sorted(by_share.items()):
            row = {**dict(zip(fields, key)), "mix_se": share, "seeds": len(cells), "n_test": next(iter(cells.values())).get("n_test")}
            row["accuracy"], row["accuracy_std"], _ = spread([c.get("accuracy") for c in cells.values()])
            for end, name in ((1.0, "se"), (0.0, "wc")):
                ends = by_share.get(end, {}) if share != end else {}
                both = [{"wc": cells[s], "se": ends[s]} for s in sorted(cells) if s in ends
                        and cells[s].get("accuracy") is not None and ends[s].get("accuracy") is not None]
                row[f"vs_{name}"] = gain(*(statistics.fmean(p[side]["accuracy"] for p in both) for side in ("wc", "se"))) if both else None
                row[f"vs_{name}_ci95_low"], row[f"vs_{name}_ci95_high"] = gain_interval(both)
            rows.append(row)
    return rows


def phase_rows(rows: list[dict]) -> list[dict]:
    """The phase map (sweeps/phase.yaml), from ``accuracy_rows``: each setting's relative gain of WC over SE data with its paired
    interval at each SE:WC size ratio (one per family) and budget (SE samples per question), and who wins:
    WC or SE where the interval excludes 0, else neither can be told apart. Empty unless the sweep holds
    at least two size ratios and two budgets. The size ratio is the one drawn: S_WC / S_SE (``ratio_used``)."""
    rows = [{**r, "size_ratio": r["ratio_used"]} for r in rows]
    if len({r["size_ratio"] for r in rows}) < 2 or len({r.get("se_samples") for r in rows}) < 2:
        return []
    for r in rows:
        low, high = r["gain_ci95_low"], r["gain_ci95_high"]
        r["winner"] = "n/a" if low is None else "WC" if low > 0 else "SE" if high < 0 else "cannot tell"
    return sorted(rows, key=lambda r: (r["setting"], r["size_ratio"] or 0, r.get("se_samples") or 0))


def crossover_rows(results: list[dict]) -> list[dict]:
    """Accuracy against sampling FLOPs per question, one row per (group, setting, budget point),
    when the sweep holds more than one budget point for a group (the crossover study)."""
    # a budget point: its budget settings, and the fine-tuning steps, which follow the budget (finetune=toy, paper)
    point = BUDGET_POINT + tuple(k for k in group_fields(results) if k.startswith("cfg:budget.") or k == "cfg:finetune.steps")
    rest = tuple(k for k in group_fields(results) if k not in point)
    rows = []
    for head, cells in _pairs(results, rest + ("setting",) + point):
        flops = {m: spread([c[m]["spent_flops"] / c[m]["n_questions"] for c in cells
                            if m in c and c[m].get("n_questions") and c[m].get("spent_flops") is not None])[0] for m in ("wc", "se")}
        usd = {m: spread([c[m]["spent_usd"] / c[m]["n_questions"] for c in cells
                          if m in c and c[m].get("n_questions") and c[m].get("spent_usd") is not None])[0] for m in ("wc", "se")}
        samples = {m: next((c[m]["samples_per_question"] for c in cells if m in c), None) for m in ("wc", "se")}
        accs = {m: spread([c.get(m, {}).get("accuracy") for c in cells]) for m in ("wc", "se")}
        rows.append({**head, "wc_samples": samples["wc"], "se_samples_drawn": samples["se"], "flops_wc": flops["wc"], "flops_se": flops["se"], "usd_wc": usd["wc"], "usd_se": usd["se"],
                     "acc_wc_data": accs["wc"][0], "acc_wc_data_std": accs["wc"][1], "acc_se_data": accs["se"][0], "acc_se_data_std": accs["se"][1],
                     "relative_gain": gain(accs["wc"][0], accs["se"][0])})
    by_series = defaultdict(list)
    for r in rows:
        by_series[_key(r, rest + ("setting",))].append(r)
    return [r for series in by_series.values() if len(series) > 1
            for r in sorted(series, key=lambda r: (r["flops_se"] or r["flops_wc"] or 0))]


def crossover_text(rows: list[dict]) -> list[str]:
    """Where, along the budget, the better data source changes, per setting."""
    lines, series = [], defaultdict(list)
    for r in rows:
        series[(r["dataset"], r["setting"])].append(r)
    for (dataset, setting), points in series.items():
        winners = [None if r["acc_wc_data"] is None or r["acc_se_data"] is None else
                   ("WC" if r["acc_wc_data"] > r["acc_se_data"] else "SE" if r["acc_se_data"] > r["acc_wc_data"] else "tie") for r in points]
        flips = [f"between {_flops(a)} and {_flops(b)} FLOPs/question ({wa} → {wb})"
                 for a, b, wa, wb in zip(points, points[1:], winners, winners[1:]) if wa and wb and wa != wb]
        told = ", ".join(f"{_flops(p)}: {w or 'n/a'}" for p, w in zip(points, winners))
        lines.append(f"- {dataset} / {setting}: better data at each budget: {told}. "
                     + (f"The winner changes {'; '.join(flips)}." if flips else "No crossover in this range."))
    return lines


def _flops(r: dict) -> str:
    return f"{r['flops_se'] or r['flops_wc'] or 0:.3g}"


def quality_curves(results: list[dict]) -> list[dict]:
    """coverage@k and diversity@k, k = 1..S, per (group, generator) and difficulty level, from the
    stored graded samples of one cell per generator (the lowest seed), with sampling FLOPs per k."""
    first: dict[tuple, dict] = {}
    fields = group_fields(results)
    for r in sorted(results, key=lambda r: r.get("seed", 0)):
        if r.get("source") == "sampled":
            first.setdefault(_key(r, fields) + (r["model"],), r)
    out = []
    for key, r in _sorted(first):
        rows = _graded(r)
        if not rows:
            continue
        per_sample = 2 * r["generator_params"] * statistics.fmean(x["tokens"] for x in rows)
        by_level: dict[str, dict] = defaultdict(lambda: defaultdict(list))
        for x in sorted(rows, key=lambda x: x["index"]):
            by_level["all"][x["qid"]].append((x["correct"], x["key"]))
            if x.get("level"):
                by_level[x["level"]][x["qid"]].append((x["correct"], x["key"]))
        for level, questions in sorted(by_level.items(), key=lambda kv: (kv[0] != "all", kv[0])):
            c = estimators.curves(questions)
            out.append({**dict(zip(fields + ("model",), key)), "group": json.dumps(list(key[:-1]), default=str), "generator": r["generator"], "level": level, "questions": len(questions),
                        "flops_per_sample": per_sample, **c})
    return out


def matched_rows(curves: list[dict]) -> list[dict]:
    """coverage and diversity at the compute-matched points: SE@k against WC@(S_WC/S_SE)k."""
    rows, pair = [], defaultdict(dict)
    for c in curves:
        pair[(c["group"], c["level"])][c["model"]] = c
    for _, p in _sorted(pair):
        if "wc" not in p or "se" not in p or not p["se"]["k"]:
            continue
        ratio = max(1, round(len(p["wc"]["k"]) / len(p["se"]["k"])))
        for k in p["se"]["k"]:
            if k * ratio <= len(p["wc"]["k"]):
                rows.append({**{f: v for f, v in p["se"].items() if f in GROUP or f.startswith("cfg:")}, "level": p["se"]["level"], "k_se": k, "k_wc": k * ratio,
                             "coverage_se": p["se"]["coverage"][k - 1], "coverage_wc": p["wc"]["coverage"][k * ratio - 1],
                             "diversity_se": p["se"]["diversity"][k - 1], "diversity_wc": p["wc"]["diversity"][k * ratio - 1]})
    return rows


def _cell(row: dict, key: str, pct: bool = False, signed: bool = False, points: bool = False) -> str:
    """``mean ± std`` of one figure: percentages with one decimal, points as signed numbers, else 3 digits."""
    value, std = row.get(key), row.get(key + "_std")
    if value is None:
        return "n/a"
    if points:
        return f"{100 * value:+.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")
    if not pct:
        return f"{value:.3g}" + (f" ± {std:.3g}" if std is not None else "")
    return f"{100 * value:{'+' if signed else ''}.1f}%" + (f" ± {100 * std:.1f}%" if std is not None else "")


def _money(row: dict, key: str) -> str:
    """Dollars, to the cent above one dollar and to four significant digits below."""
    value = row.get(key)
    return "n/a" if value is None else f"${value:,.2f}" if value >= 1 else f"${value:.4g}"


def _provider(row: dict) -> str:
    """The provider's own dollar figure and how far it is from ours (from the usage at the table's prices)."""
    theirs, ours = row.get("provider_usd"), row.get("spent_usd")
    return "n/a" if theirs is None else _money(row, "provider_usd") + (f" ({theirs - ours:+.2g} from ours)" if ours is not None else "")


def _interval(row: dict, key: str = "gain", unit: str = "%") -> str:
    """``[low, high] ± half-width``, marked when it excludes 0: in percent (``%``), points (``pt``) or as is ("")."""
    low, high = row.get(f"{key}_ci95_low"), row.get(f"{key}_ci95_high")
    if low is None:
        return "n/a"
    scale, digits = (1, ".3f") if unit == "" else (100, ".1f")
    unit = "%" if unit == "%" else ""
    return (f"[{scale * low:+{digits}}{unit}, {scale * high:+{digits}}{unit}] ± {scale * (high - low) / 2:{digits}}"
            + (" excludes 0" if low > 0 or high < 0 else ""))


def _undecided(rows: list[dict], shown: list[str]) -> list[str]:
    """A line for each row whose gain's interval includes 0, named by its setting and the fields that tell
    the rows apart: these runs cannot separate the sources."""
    apart = [k for k in shown if len({str(r.get(k)) for r in rows}) > 1]
    lines = []
    for r in rows:
        if r.get("gain_ci95_low") is not None and r["gain_ci95_low"] <= 0 <= r["gain_ci95_high"]:
            where = ", ".join(f"{k.removeprefix('cfg:')}={r.get(k)}" for k in apart)
            lines.append(f"- {r['setting']}{f' ({where})' if where else ''}: the 95% interval includes 0, so {r['seeds']} "
                         f"seed{'s' * (r['seeds'] != 1)}" + (f" and {r['n_test']} test questions" if r.get("n_test") else "")
                         + " cannot separate WC from SE data here (more seeds or test questions narrow it)")
    return lines


def data_mismatches(results: list[dict]) -> list[str]:
    """The WC/SE pairs compared in the tables whose cells read different data (another file content, another
    hub revision: ``results.json``'s ``data``; the same file at another path is the same data), one line each."""
    out = []
    for _, by_seed in _pairs(results, group_fields(results) + ("setting",)):
        for pair in by_seed:
            if len(pair) < 2:
                continue
            differ = [split for split in ("train", "test") if _identity(pair["wc"], split) != _identity(pair["se"], split)]
            if differ:
                out.append(f"{pair['wc']['_dir']} and {pair['se']['_dir']}: "
                           + "; ".join(f"{split}: {_source(pair['wc'], split)} vs {_source(pair['se'], split)}" for split in differ))
    return out


def _identity(r: dict, split: str) -> Optional[dict]:
    d = (r.get("data") or {}).get(split)
    return data.identity(d) if d else None


def _source(r: dict, split: str) -> str:
    d = (r.get("data") or {}).get(split)
    return data.describe(d) if d else "not recorded"


def duplicates(results: list[dict]) -> list[list[str]]:
    """Cells that agree on every setting, seed and generator included: only the first of each is used."""
    seen, fields = defaultdict(list), group_fields(results) + ("setting", "seed", "model", "mix_se")
    for r in results:
        seen[_key(r, fields)].append(r["_dir"])
    return [dirs for dirs in seen.values() if len(dirs) > 1]


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    header = [h.removeprefix("cfg:") for h in header]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, line)) + " |" for line in lines] + [""]


def _generator(row: dict) -> str:
    """Who drew the data: ``WC (toy-wc)``, or for mixed data ``MIX 0.2 SE (toy-se+toy-wc)``."""
    share = "" if row.get("mix_se") is None else f" {row['mix_se']:g} SE"
    return f"{row['model'].upper()}{share} ({row['generator']})"


def _head(row: dict, shown: list[str]) -> list[str]:
    return ["-" if row.get(k) is None else str(row.get(k)) for k in shown]


def tables(results: list[dict], curves: Optional[list[dict]] = None, rows: Optional[list[dict]] = None) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Every table of the report as (header, lines), keyed by title; empty ones left out."""
    shown = varying(results)
    out = {}
    drows = data_rows(results)
    if drows:
        # the cost of the data in what it was matched on: FLOPs, and dollars where a price is known (an API's usage priced by the table)
        costs = [(h, k) for h, k in (("planned FLOPs", "planned_flops"), ("spent FLOPs", "spent_flops"), ("planned $", "planned_usd"),
                                     ("spent $", "spent_usd"), ("provider's $", "provider_usd")) if any(r.get(k) is not None for r in drows)]
        out["The data"] = (shown + ["generator", "samples/question", "per-sample accuracy", "coverage", "diversity", "2+ solutions", "FPR (exact)", "FPR (judge)", "FPR (people)"]
                           + [h for h, _ in costs],
                           [_head(r, shown) + [_generator(r), _cell(r, "samples_per_question"), _cell(r, "sample_accuracy", True),
                                               _cell(r, "coverage", True), _cell(r, "diversity"), _cell(r, "multi_solution", True), _cell(r, "fpr", True), _cell(r, "fpr_judge", True),
                                               _cell(r, "fpr_human", True)] + [_provider(r) if k == "provider_usd" else _money(r, k) if k.endswith("usd") else _cell(r, k) for _, k in costs]
                            for r in drows])
    diffs = data_difference_rows(results)
    if diffs:
        out["WC data - SE data, paired 95% intervals"] = (
            shown + ["coverage (points)", "95% CI", "diversity", "95% CI", "FPR exact (points)", "95% CI", "seeds", "questions"],
            [_head(r, shown) + [_cell(r, "coverage_diff", points=True), _interval(r, "coverage_diff", "pt"), f"{r['diversity_diff']:+.3f}",
                                _interval(r, "diversity_diff", ""), _cell(r, "fpr_diff", points=True), _interval(r, "fpr_diff", "pt"),
                                r["seeds"], r["questions"]] for r in diffs])
    matched = matched_rows(curves or [])
    if matched:
        out["Coverage and diversity at the compute-matched points"] = (
            shown + ["level", "SE@k", "WC@k", "coverage SE", "coverage WC", "diversity SE", "diversity WC"],
            [_head(r, shown) + [r["level"], r["k_se"], r["k_wc"], f"{100 * r['coverage_se']:.1f}%", f"{100 * r['coverage_wc']:.1f}%",
                                f"{r['diversity_se']:.3g}", f"{r['diversity_wc']:.3g}"] for r in matched])
    arows = accuracy_rows(results) if rows is None else rows
    if arows:
        out["pass@1 after fine-tuning"] = (
            shown + ["setting", "fine-tuned", "before", "WC data", "SE data", "relative gain", "95% CI (paired bootstrap)", "seeds"],
            [_head(r, shown) + [r["setting"], r["learner"], _cell(r, "baseline_accuracy", True), _cell(r, "acc_wc_data", True),
                                _cell(r, "acc_se_data", True), _cell(r, "relative_gain", True, signed=True), _interval(r), r["seeds"]]
             for r in arows])
    metrics = protocol_metrics(results)
    if metrics:
        rows = per_model_rows(results, ["accuracy", "pass1_ci95"] + metrics)
        names = {"pass1_mean": "pass@1 (mean of k)"} | {m: m.split("/")[1] + " (transfer)" for m in metrics if m.startswith("transfer")}
        out["Evaluation protocols"] = (
            shown + ["setting", "data", "pass@1 (greedy)"] + [names.get(m, m) for m in metrics],
            [_head(r, shown) + [r["setting"], r["model"].upper(), _cell(r, "accuracy", True)]
             + [(_cell(r, m, True) + (f" (95% CI ± {100 * r['pass1_ci95']:.1f})" if m == "pass1_mean" and r.get("pass1_ci95") is not None else ""))
                for m in metrics] for r in rows])
    frows = fpr_rows(results)
    if frows:
        hows = [h for h in ("test_fpr", "test_fpr_judge", "test_fpr_human") if any(h in r["measured"] for r in frows)]
        label = {"test_fpr": "exact", "test_fpr_judge": "judge", "test_fpr_human": "people"}
        out["False positives of the fine-tuned models"] = (
            shown + ["setting"] + [f"{label[h]}: {w}" for h in hows for w in ("WC data", "SE data", "WC - SE (points)")],
            [_head(r, shown) + [r["setting"]] + [x for h in hows for x in (_cell(r, f"{h}_wc", True), _cell(r, f"{h}_se", True), _cell(r, f"{h}_diff", points=True))]
             for r in frows])
    prows = phase_rows(arows)
    if prows:
        out["Where WC data wins: size ratio x budget"] = (
            ["dataset", "setting", "fine-tuned", "SE:WC size ratio", "SE samples", "relative gain", "95% CI (paired bootstrap)", "winner", "seeds"],
            [[r["dataset"], r["setting"], r["learner"], f"{r['size_ratio']:g}", r["se_samples"], _cell(r, "relative_gain", True, signed=True),
              _interval(r), r["winner"], r["seeds"]] for r in prows])
    mrows = mix_rows(results)
    if mrows:
        rest = [k for k in shown if k != "source"]
        out["Mixed data: a share of the budget to SE samples"] = (
            rest + ["setting", "fine-tuned", "SE share", "pass@1", "vs all-SE data", "95% CI", "vs all-WC data", "95% CI", "seeds"],
            [_head(r, rest) + [r["setting"], r["finetuned"], f"{r['mix_se']:g}", _cell(r, "accuracy", True), _cell(r, "vs_se", True, signed=True),
                               _interval(r, "vs_se"), _cell(r, "vs_wc", True, signed=True), _interval(r, "vs_wc"), r["seeds"]] for r in mrows])
    xrows = crossover_rows(results)
    if xrows:
        rest = [k for k in shown if k not in BUDGET_POINT]
        dollars = any(r["usd_se"] is not None or r["usd_wc"] is not None for r in xrows)
        out["Crossover: accuracy against sampling FLOPs"] = (
            rest + ["setting", "SE samples", "WC samples", "FLOPs/question"] + (["$/question"] if dollars else []) + ["WC data", "SE data", "relative gain"],
            [_head(r, rest) + [r["setting"], r["se_samples_drawn"], r["wc_samples"], _flops(r)]
             + ([_money({"v": r["usd_se"] or r["usd_wc"]}, "v")] if dollars else [])
             + [_cell(r, "acc_wc_data", True), _cell(r, "acc_se_data", True), _cell(r, "relative_gain", True, signed=True)] for r in xrows])
    return out


def markdown(results: list[dict], curves: Optional[list[dict]] = None, figures: Optional[list[tuple[Path, str]]] = None,
             rows: Optional[list[dict]] = None) -> str:
    """The summary (or, with curves and figures, the report) as markdown; ``rows``: ``accuracy_rows(results)`` if already computed."""
    rows = accuracy_rows(results) if rows is None else rows
    seeds = sorted({r.get("seed") for r in results}, key=str)
    out = [f"# WC vs SE data at a matched budget\n\n{len(results)} runs, seeds {seeds}"
           + ("; mean ± standard deviation across seeds" if len(seeds) > 1 else "") + ".\n"
           + "relative gain = (acc with WC data - acc with SE data) / acc with SE data; FPR = share of correct-answer "
             "solutions with invalid reasoning.\n"]
    for title, (header, lines) in tables(results, curves, rows).items():
        out += [f"## {title}\n"] + _table(header, lines)
        if title.startswith("Crossover"):
            out += crossover_text(crossover_rows(results)) + [""]
        if title.startswith("pass@1"):
            out += [f"- {r['setting']}: left out of both means, {r['unpaired']}" for r in rows if r["unpaired"]] + _undecided(rows, varying(results))
            if rows and max(r["seeds"] for r in rows) == 1:
                out.append("- one seed: these intervals resample the test questions only, not the seed-to-seed spread of sampling "
                           "and fine-tuning, so they are too narrow to settle the question; over several seeds (seed=0,1,...) "
                           "they cover both")
            out.append("")
    mismatched = data_mismatches(results)
    if mismatched:
        out += ["## Warning: compared cells read different data\n",
                "The WC and SE cells below were compared although their questions came from different data:\n"]
        out += [f"- {m}" for m in mismatched] + [""]
    dups = duplicates(results)
    if dups:
        out += ["## Cells with the same settings\n", "Each group below ran the same settings; only the first is used:\n"]
        out += [f"- {', '.join(d)}" for d in dups] + [""]
    if figures:
        out.append("## Figures\n")
        out += [f"![{p.stem}](figures/{p.name})\n\n*{caption}*\n" for p, caption in figures]
    return "\n".join(out)


def figures(results: list[dict], curves: list[dict], out_dir: Path, rows: Optional[list[dict]] = None) -> list[tuple[Path, str]]:
    """The report's PNGs with their captions: accuracy bars, quality curves, crossover; those the sweep has data for."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written, colors = [], {"wc": "tab:blue", "se": "tab:orange", "before": "0.65"}
    shown = varying(results)

    def save(fig, name: str, caption: str) -> None:
        fig.text(0.01, 0.01, caption, fontsize=7.5, ha="left", va="bottom", wrap=True)
        written.append((out_dir / name, caption))
        fig.savefig(written[-1][0], dpi=130)
        plt.close(fig)

    rows = accuracy_rows(results) if rows is None else rows
    if rows:
        seeds = max(r["seeds"] for r in rows)
        fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(rows) + 2), 4.4))
        labels = ["\n".join([f"{r['setting']}: fine-tunes", str(r["learner"])]
                            + [", ".join(f"{k}={r.get(k)}" for k in shown if k in ALWAYS)]
                            + [f"{k.removeprefix('cfg:')}={r.get(k)}" for k in shown if k not in ALWAYS]) for r in rows]
        width, labelled = 0.27, set()  # each series named once in the legend
        for j, (key, name, label) in enumerate((("before", "baseline_accuracy", "before fine-tuning"),
                                                ("wc", "acc_wc_data", "on WC data"), ("se", "acc_se_data", "on SE data"))):
            for i, r in enumerate(rows):
                x, value = i + (j - 1) * width, r[name]
                if value is None:  # a side with no result is named, not drawn as 0% (no 'before' bar: evaluation.baseline=false)
                    if key != "before":
                        ax.text(x, 1, "no\nresult", ha="center", va="bottom", fontsize=7, color=colors[key])
                    continue
                err = _bar_error(value, r[name + "_std"], r["seeds"], r.get("n_test"))
                ax.bar(x, 100 * value, width, color=colors[key], label=None if key in labelled else label,
                       yerr=None if err is None else 100 * err, capsize=3)
                labelled.add(key)
                ax.text(x, 100 * value + (100 * err if err else 0) + 0.8, f"{100 * value:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set_ylabel("pass@1 on the test set (%)")
        ax.set_ylim(0, min(100, 1.18 * max(100 * (r[n] or 0) for r in rows for n in ("baseline_accuracy", "acc_wc_data", "acc_se_data")) + 4))
        ax.set_title("The learner before fine-tuning, and fine-tuned on WC vs SE data at a matched budget", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", ncols=3)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        bars = (f"error bars: ± standard deviation over {seeds} seeds" if seeds > 1 else
                "error bars: 95% binomial interval over the test questions (one seed; seed-to-seed spread not shown)")
        save(fig, "accuracy.png", f"Greedy pass@1; {bars}; 'before': the learner before fine-tuning, on the same test questions.")

    groups = defaultdict(list)
    for c in curves:
        groups[c["group"]].append(c)
    for gi, (_, cs) in enumerate(_sorted(groups)):
        questions = {c["level"]: c["questions"] for c in cs}
        levels = sorted(questions, key=lambda lv: (lv != "all", lv))
        fig, axes = plt.subplots(2, len(levels), figsize=(2.9 * len(levels) + 1.0, 6.0), squeeze=False, sharey="row", sharex=True)
        for col, level in enumerate(levels):
            se = next((c for c in cs if c["level"] == level and c["model"] == "se"), None)
            for c in (c for c in cs if c["level"] == level):
                one = len(c["k"]) == 1  # one sample per question: a point, drawn large enough to see
                for row, metric in enumerate(("coverage", "diversity")):
                    xs = [k * c["flops_per_sample"] for k in c["k"]]
                    ys = [100 * v for v in c[metric]] if metric == "coverage" else c[metric]
                    axes[row][col].plot(xs, ys, marker="o" if one else ".", markersize=8 if one else 5, color=colors[c["model"]],
                                        label=f"{c['model'].upper()} ({c['generator']}), " + ("1 sample per question" if one else f"k = 1..{c['k'][-1]}"))
            for row in range(2):
                ax = axes[row][col]
                if se:  # the compute-matched points: each SE budget k, where WC has drawn about (P_SE/P_WC) k samples
                    for k in se["k"]:
                        ax.axvline(k * se["flops_per_sample"], color="grey", linestyle=":", linewidth=0.8)
                ax.set_xscale("log")
                ax.grid(alpha=0.3)
            axes[0][col].set_title(f"{level} ({questions[level]} questions)", fontsize=9)
            axes[1][col].set_xlabel("sampling FLOPs per question", fontsize=8)
        axes[0][0].set_ylabel("coverage@k (%)")
        axes[0][0].set_ylim(0, 102)
        axes[1][0].set_ylabel("diversity@k (unique correct)")
        axes[1][0].set_ylim(bottom=0)
        axes[0][0].legend(fontsize=7, loc="lower right")
        head = cs[0]
        fig.suptitle("coverage@k and diversity@k against sampling compute" + (" — " if shown else "")
                     + ", ".join(f"{k.removeprefix('cfg:')}={head[k]}" for k in shown if k in head), fontsize=10)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        save(fig, f"quality_curves{'' if gi == 0 else f'_{gi}'}.png",
             "Each curve: k = 1..S samples per question from the stored samples (unbiased estimators); dotted lines: SE's "
             "budgets, where WC has spent the same FLOPs. One sample per question is a single point. Axes shared per row.")

    xrows = crossover_rows(results)
    if xrows:
        settings = sorted({(r["dataset"], r["setting"]) for r in xrows})
        fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.6), squeeze=False)
        for ax, (dataset, setting) in zip(axes[0], settings):
            pts = [r for r in xrows if (r["dataset"], r["setting"]) == (dataset, setting)]
            for m in ("wc", "se"):
                xy = [(r[f"flops_{m}"], 100 * r[f"acc_{m}_data"]) for r in pts if r[f"flops_{m}"] and r[f"acc_{m}_data"] is not None]
                if xy:
                    ax.plot(*zip(*xy), marker="o", color=colors[m], label=f"{m.upper()} data")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("sampling FLOPs per question")
            ax.set_ylabel("pass@1 after fine-tuning (%)")
            ax.set_title(f"{dataset} / {setting}")
            ax.legend(fontsize=8)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        save(fig, "crossover.png", "pass@1 after fine-tuning against the sampling FLOPs per question of the data; one point per budget.")
    prows = phase_rows(rows)
    if prows:
        settings = sorted({r["setting"] for r in prows})
        ratios, budgets = sorted({r["size_ratio"] for r in prows}), sorted({r["se_samples"] for r in prows})
        fig, axes = plt.subplots(1, len(settings), figsize=(max(6.5, 3.2 * len(settings) + 1.5), 0.9 * len(ratios) + 3.0), squeeze=False)
        bound = max([abs(100 * r["relative_gain"]) for r in prows if r["relative_gain"] is not None] + [1.0])
        for ax, setting in zip(axes[0], settings):
            grid = [[next((r for r in prows if r["setting"] == setting and r["size_ratio"] == q and r["se_samples"] == b), None)
                     for b in budgets] for q in ratios]
            values = [[100 * c["relative_gain"] if c and c["relative_gain"] is not None else float("nan") for c in line] for line in grid]
            image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound, origin="lower", aspect="auto")  # blue: WC data wins
            for i, line in enumerate(grid):
                for j, c in enumerate(line):
                    if c and c["relative_gain"] is not None:
                        half = "" if c["gain_ci95_low"] is None else f"\n± {50 * (c['gain_ci95_high'] - c['gain_ci95_low']):.1f}"
                        ax.text(j, i, f"{100 * c['relative_gain']:+.1f}%{half}\n{c['winner']}", ha="center", va="center", fontsize=7,
                                fontweight="bold" if c["winner"] in ("WC", "SE") else "normal",
                                color="white" if abs(values[i][j]) > 0.55 * bound else "black")
            ax.set_xticks(range(len(budgets)), [str(b) for b in budgets])
            ax.set_yticks(range(len(ratios)), [f"{q:g}x" for q in ratios])
            ax.set_xlabel("SE samples per question (budget)", fontsize=8)
            ax.set_title(f"{setting}: fine-tunes " + ", ".join(sorted({str(r["learner"]) for r in prows if r["setting"] == setting})), fontsize=8)
        axes[0][0].set_ylabel("SE:WC size ratio")
        fig.subplots_adjust(left=0.1, right=0.82, bottom=0.22, top=0.84, wspace=0.3)
        fig.colorbar(image, cax=fig.add_axes((0.85, 0.22, 0.02, 0.62)), label="relative gain of WC data (%)")
        fig.suptitle("Where WC data wins: (WC - SE) / SE by size ratio and budget", fontsize=10)
        save(fig, "phase.png", "Each cell: the relative gain over the seeds with its paired bootstrap 95% half-width; WC or SE where the "
             "interval excludes 0 (bold), 'cannot tell' where it includes 0. Blue: WC data wins, red: SE data wins.")
    return written


def _bar_error(value: float, std: Optional[float], seeds: int, n_test: Optional[int]) -> Optional[float]:
    """The error bar of an accuracy: the spread over seeds, or with one seed the half-width of a
    95% binomial (normal approximation) interval over the ``n_test`` questions."""
    if seeds > 1:
        return std
    return 1.96 * (value * (1 - value) / n_test) ** 0.5 if n_test else None


def _logger_settings(results: list[dict]) -> dict:
    """The cells' logger group (from a cell's saved Hydra config), for the report's wandb run."""
    from omegaconf import OmegaConf

    for r in results:
        saved = Path(r["_dir"]) / ".hydra" / "config.yaml"
        if saved.exists():
            return OmegaConf.to_container(OmegaConf.load(saved).get("logger", {}))
    return {"backend": "wandb", "project": "cms", "mode": "offline"}


def log_wandb(sweep_dir: Path, tabs: dict, pngs: list[Path], settings: dict) -> Optional[str]:
    """One report-style wandb run for the sweep (tables and figures); with wandb online, a W&B
    Report of those panels too. A failure is a warning: the files on disk are the report."""
    if settings.get("backend") == "none" or settings.get("mode") == "disabled":
        return None
    name = f"report-{sweep_dir.name}"
    try:
        import wandb

        run = wandb.init(project=settings.get("project", "cms"), entity=settings.get("entity"), mode=settings.get("mode", "offline"),
                         dir=str(sweep_dir), name=name, job_type="report", group=sweep_dir.name,
                         id=hashlib.sha256(f"report:{sweep_dir.resolve()}".encode()).hexdigest()[:16], resume="allow",
                         settings=wandb.Settings(init_timeout=settings.get("init_timeout_s", 60), silent=True))
        keys = {}
        for title, (header, lines) in tabs.items():
            keys[title] = "table/" + "_".join(title.lower().replace(":", "").split())
            run.log({keys[title]: wandb.Table(columns=header, data=[[str(x) for x in line] for line in lines])})
        run.log({f"figure/{p.stem}": wandb.Image(str(p)) for p in pngs})
        url = None
        if settings.get("mode") == "online":
            url = _wandb_report(run, name, keys, [f"figure/{p.stem}" for p in pngs])
        where = Path(run.dir).parent
        page = run.url if settings.get("mode") == "online" else None
        run.finish()
        print(f"wandb run: {page} ({where})" if page else f"wandb run (offline): {where}; upload it with: wandb sync {where}")
        return url
    except Exception as err:
        log.warning("wandb report run failed (%s: %s); the report is in %s", err.__class__.__name__, err, sweep_dir / "report.md")
        return None


def _wandb_report(run, name: str, tables: dict, images: list[str]) -> str:
    """A W&B Report (wandb-workspaces) with the report run's figures and tables as panels."""
    import wandb_workspaces.reports.v2 as wr

    runset = wr.Runset(entity=run.entity, project=run.project, query=name)
    blocks = [wr.H1(f"cms sweep {run.group}: WC vs SE data at a matched budget"),
              wr.PanelGrid(runsets=[runset], panels=[wr.MediaBrowser(title=k.split("/")[1], media_keys=[k]) for k in images])]
    for title, key in tables.items():
        blocks += [wr.H2(title), wr.WeaveBlockSummaryTable(entity=run.entity, project=run.project, table_name=key)]
    report = wr.Report(project=run.project, entity=run.entity, title=f"cms: {run.group}", blocks=blocks)
    report.save()
    log.info("W&B Report: %s", report.url)
    return report.url


def _csv_row(row: dict) -> dict:
    """An accuracy row for summary.csv: the relative gain and its interval in percent, with the interval's
    half-width (points) and whether it excludes 0."""
    low, high = row["gain_ci95_low"], row["gain_ci95_high"]
    pct = {k: None if row[k] is None else 100 * row[k] for k in ("relative_gain", "gain_ci95_low", "gain_ci95_high")}
    return {**row, **pct, "gain_ci95_halfwidth": None if low is None else 50 * (high - low),
            "gain_excludes_0": None if low is None else bool(low > 0 or high < 0)}


def write_summary(sweep_dir: str | Path, results: Optional[list[dict]] = None, rows: Optional[list[dict]] = None) -> str:
    """summary.csv and summary.md: the tables, no figures (what a multirun writes when it ends); ``results``
    and their ``accuracy_rows`` where the caller has them."""
    sweep_dir = Path(sweep_dir)
    results = load_results(sweep_dir) if results is None else results
    rows = accuracy_rows(results) if rows is None else rows
    csv_rows = [_csv_row(r) for r in rows]
    with (sweep_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]) if csv_rows else ["setting"])
        writer.writeheader()
        writer.writerows(csv_rows)
    text = markdown(results, rows=rows)
    (sweep_dir / "summary.md").write_text(text)
    print(text)
    return text


def write_report(sweep_dir: str | Path, wandb_mode: Optional[str] = None) -> list[Path]:
    """Everything: report.md, figures/*.png, summary.csv/md, curves.json and the wandb report run."""
    sweep_dir = Path(sweep_dir)
    results = load_results(sweep_dir)
    if not results:
        raise FileNotFoundError(f"no results.json under {sweep_dir}: point cms.report at a sweep directory whose cells have finished")
    rows = accuracy_rows(results)  # its paired bootstrap is most of a report's time: computed once
    write_summary(sweep_dir, results, rows)
    curves = quality_curves(results)
    (sweep_dir / "curves.json").write_text(json.dumps(curves))
    captioned = figures(results, curves, sweep_dir / "figures", rows)
    pngs = [p for p, _ in captioned]
    (sweep_dir / "report.md").write_text(markdown(results, curves, captioned, rows))
    settings = _logger_settings(results)
    if wandb_mode:  # asked for explicitly: log even when the cells had logger=none
        settings.update(mode=wandb_mode, backend="wandb")
    log_wandb(sweep_dir, tables(results, curves, rows), pngs, settings)
    written = [sweep_dir / n for n in ("report.md", "summary.md", "summary.csv", "curves.json")] + pngs
    print("wrote " + ", ".join(str(p.relative_to(sweep_dir)) for p in written))
    return written


class SummaryCallback(Callback):
    """Writes the sweep's summary when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        if config.get("detach") and "Slurm" in str(config.hydra.launcher.get("_target_", "")):
            return  # submitted, not run: python -m cms.slurm collect writes the summary
        try:
            write_summary(sweep)
        except Exception as err:  # the cells' results are on disk; the summary can be rebuilt with cms.report
            log.error("could not write the sweep summary (%s); run: python -m cms.report %s", err, sweep)
            return
        print(f"\nthe grid is in {sweep}\n  its summary: {sweep / 'summary.md'}\n"
              f"  next, the tables and figures: python -m cms.report {sweep}")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cms.report", description="The paper's tables and figures for a sweep directory.")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--wandb-mode", choices=["offline", "online", "disabled"],
                        help="default: the cells' logger (backend and mode)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"error: {args.sweep_dir} is not a directory; give the sweep directory of a multirun\n")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write_report(args.sweep_dir, args.wandb_mode)
    except FileNotFoundError as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
