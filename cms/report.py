"""The answer of a sweep: WC data against SE data at a matched budget.

``python -m cms.report <sweep dir>`` reads every results.json under the folder
and writes ``summary.csv`` and ``summary.md`` there (a multirun does this itself
when its last cell ends). Two tables: the data each generator produced
(per-sample accuracy, coverage, diversity, false positive rate) and the pass@1
of each fine-tuned model with WC data vs SE data, with the relative gain
(acc_WC - acc_SE) / acc_SE as the paper reports it. Over several seeds, each
figure is the mean, with the standard deviation across seeds after a ±.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)
GROUP = ("dataset", "budget", "family", "source")
DATA_METRICS = ("samples_per_question", "sample_accuracy", "coverage", "diversity", "fpr")


def load_results(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("results.json"))]


def gain(wc: Optional[float], se: Optional[float]) -> Optional[float]:
    return None if wc is None or not se else (wc - se) / se


def spread(values: list) -> tuple[Optional[float], Optional[float], int]:
    """Mean, standard deviation (None for one value) and count of the non-missing values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def data_rows(results: list[dict]) -> list[dict]:
    """One row per (group, generator): the data it produced, across seeds."""
    per: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in results:
        if r.get("source") == "sampled":
            per[tuple(r.get(k) for k in GROUP) + (r["model"], r["generator"])][r["seed"]] = r  # one cell per seed suffices
    rows = []
    for key, by_seed in sorted(per.items(), key=lambda kv: tuple(map(str, kv[0]))):
        row = dict(zip(GROUP + ("model", "generator"), key))
        for m in DATA_METRICS:
            row[m], row[m + "_std"], _ = spread([r.get(m) for r in by_seed.values()])
        row["seeds"] = len(by_seed)
        rows.append(row)
    return rows


def accuracy_rows(results: list[dict]) -> list[dict]:
    """One row per (group, setting): pass@1 with WC data vs SE data and the gain, across seeds."""
    cells: dict[tuple, dict[int, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in results:
        cells[tuple(r.get(k) for k in GROUP) + (r["setting"],)][r["seed"]][r["model"]] = r
    rows = []
    for key, by_seed in sorted(cells.items(), key=lambda kv: tuple(map(str, kv[0]))):
        pairs = list(by_seed.values())
        any_cell = next(iter(pairs[0].values()))
        row = {**dict(zip(GROUP + ("setting",), key)), "learner": any_cell.get("finetuned")}
        series = {
            "baseline_accuracy": [next(iter(p.values())).get("baseline_accuracy") for p in pairs],
            "acc_wc_data": [p.get("wc", {}).get("accuracy") for p in pairs],
            "acc_se_data": [p.get("se", {}).get("accuracy") for p in pairs],
            "relative_gain": [gain(p.get("wc", {}).get("accuracy"), p.get("se", {}).get("accuracy")) for p in pairs],
        }
        for name, values in series.items():
            row[name], row[name + "_std"], _ = spread(values)
        row["seeds"] = len(pairs)
        rows.append(row)
    return rows


def _cell(row: dict, key: str, pct: bool = False) -> str:
    """``mean ± std`` of one figure: percentages with one decimal (gains signed), else 3 digits."""
    value, std = row.get(key), row.get(key + "_std")
    if value is None:
        return "n/a"
    if not pct:
        return f"{value:.3g}" + (f" ± {std:.3g}" if std is not None else "")
    sign = "+" if key == "relative_gain" else ""
    return f"{100 * value:{sign}.1f}%" + (f" ± {100 * std:.1f}%" if std is not None else "")


def markdown(results: list[dict]) -> str:
    seeds = sorted({r.get("seed") for r in results})
    out = [f"# WC vs SE data at a matched budget\n\n{len(results)} runs, seeds {seeds}"
           + ("; mean ± standard deviation across seeds" if len(seeds) > 1 else "") + ".\n"]
    drows = data_rows(results)
    if drows:
        out.append("## The data\n\n| dataset | budget | generator | samples/question | per-sample accuracy | coverage | diversity | FPR (exact) |\n|---|---|---|---|---|---|---|---|")
        for r in drows:
            out.append(f"| {r['dataset']} | {r['budget']} | {r['model'].upper()} ({r['generator']}) | {_cell(r, 'samples_per_question')} | "
                       f"{_cell(r, 'sample_accuracy', True)} | {_cell(r, 'coverage', True)} | {_cell(r, 'diversity')} | {_cell(r, 'fpr', True)} |")
        out.append("")
    out.append("## pass@1 after fine-tuning\n\nrelative gain = (acc with WC data - acc with SE data) / acc with SE data\n\n"
               "| dataset | budget | setting | fine-tuned | before | WC data | SE data | relative gain |\n|---|---|---|---|---|---|---|---|")
    for r in accuracy_rows(results):
        out.append(f"| {r['dataset']} | {r['budget']} | {r['setting']} | {r['learner']} | {_cell(r, 'baseline_accuracy', True)} | "
                   f"{_cell(r, 'acc_wc_data', True)} | {_cell(r, 'acc_se_data', True)} | {_cell(r, 'relative_gain', True)} |")
    return "\n".join(out) + "\n"


def write_summary(sweep_dir: str | Path) -> str:
    sweep_dir = Path(sweep_dir)
    results = load_results(sweep_dir)
    rows = accuracy_rows(results)
    with (sweep_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["setting"])
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(results)
    (sweep_dir / "summary.md").write_text(text)
    print(text)
    return text


class SummaryCallback(Callback):
    """Writes the sweep's summary when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            write_summary(config.hydra.sweep.dir)
        except Exception as err:  # the cells' results are on disk; the summary can be rebuilt with cms.report
            log.error("could not write the sweep summary (%s); run: python -m cms.report %s", err, config.hydra.sweep.dir)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python -m cms.report <sweep dir>")
    write_summary(sys.argv[1])
