"""The comparison table of a sweep: accuracy with WC data vs SE data per setting.

``python -m cms.report <sweep dir>`` reads every results.json under the folder
and writes ``summary.csv`` and ``summary.md`` there; a multirun does this itself
when its last cell ends. The relative gain is (acc_WC - acc_SE) / acc_SE, as the
paper reports it.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)
GROUP = ("dataset", "setting", "budget", "family", "source", "seed")
COLUMNS = GROUP + ("learner", "baseline_accuracy", "acc_wc_data", "acc_se_data", "relative_gain",
                   "coverage_wc", "coverage_se", "diversity_wc", "diversity_se")


def load_results(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("results.json"))]


def gain(wc: Optional[float], se: Optional[float]) -> Optional[float]:
    return None if wc is None or not se else (wc - se) / se


def table(results: list[dict]) -> list[dict]:
    """One row per (dataset, setting, budget, family, source, seed): WC data against SE data."""
    cells: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in results:
        cells[tuple(r.get(k) for k in GROUP)][r["model"]] = r
    rows = []
    for key, by_model in sorted(cells.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        wc, se = by_model.get("wc", {}), by_model.get("se", {})
        any_cell = wc or se
        rows.append({
            **dict(zip(GROUP, key)),
            "learner": any_cell.get("finetuned"),
            "baseline_accuracy": any_cell.get("baseline_accuracy"),
            "acc_wc_data": wc.get("accuracy"),
            "acc_se_data": se.get("accuracy"),
            "relative_gain": gain(wc.get("accuracy"), se.get("accuracy")),
            "coverage_wc": wc.get("coverage"), "coverage_se": se.get("coverage"),
            "diversity_wc": wc.get("diversity"), "diversity_se": se.get("diversity"),
        })
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict]) -> str:
    shown = ("dataset", "setting", "budget", "learner", "baseline_accuracy", "acc_wc_data", "acc_se_data",
             "relative_gain", "coverage_wc", "coverage_se", "diversity_wc", "diversity_se")
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in shown) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: str | Path) -> list[dict]:
    sweep_dir = Path(sweep_dir)
    rows = table(load_results(sweep_dir))
    with (sweep_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    text = "# WC vs SE data at a matched budget\n\nrelative_gain = (acc_WC - acc_SE) / acc_SE\n\n" + markdown(rows)
    (sweep_dir / "summary.md").write_text(text)
    print(text)
    return rows


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
