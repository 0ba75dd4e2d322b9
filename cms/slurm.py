"""SLURM: the grid's launcher, and a command to follow a grid that was submitted without waiting.

``hydra/launcher=submitit_slurm`` uses ``hydra_plugins.cms_slurm.SlurmLauncher``
(Hydra takes launchers from that namespace only), the submitit
plugin's launcher with two additions: every submission writes ``jobs.json`` in
the sweep directory (job id, cell directory, overrides of each cell), and with
``detach=true`` it returns as soon as the jobs are queued, so a
grid survives the SSH session that submitted it. A refused submission (bad
partition, account, time) fails with sbatch's reason and the key that fixes it.

    python -m cms.slurm status SWEEP_DIR    # each cell's SLURM state, finished or not
    python -m cms.slurm collect SWEEP_DIR   # summary.csv/md from the finished cells

Preemption and time limits: submitit catches the signal, calls the launcher's
``checkpoint`` and requeues the cell, which resumes from what it saved (sample
shards, ``finetune/last.ckpt``, finished evaluations). Lightning's own SLURM
auto-requeue is turned off in fine-tuning, so only submitit acts on the signal.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


log = logging.getLogger(__name__)
MANIFEST = "jobs.json"


def _states(folder: str, ids: list[str]) -> dict[str, str]:
    import submitit

    watcher = submitit.SlurmJob(folder, ids[0]).watcher if ids else None
    out = {}
    for i in ids:
        job = submitit.SlurmJob(folder, i)
        try:
            out[i] = job.state
        except Exception as e:  # sacct unreachable: say so, do not fail the status
            out[i] = f"UNKNOWN ({type(e).__name__})"
    if watcher:
        watcher.clear()
    return out


def status(sweep_dir: str | Path) -> list[dict]:
    """One row per cell: job id, SLURM state, whether results.json is there."""
    sweep_dir = Path(sweep_dir)
    manifest = sweep_dir / MANIFEST
    if not manifest.exists():
        if not sweep_dir.is_dir():
            raise FileNotFoundError(f"{sweep_dir} is not a directory: give the sweep directory of a grid submitted to SLURM")
        raise FileNotFoundError(f"{sweep_dir} holds no {MANIFEST}: it was not submitted with hydra/launcher=submitit_slurm "
                                f"(a grid run here has all its cells in it: python -m cms.report {sweep_dir} summarises it)")
    m = json.loads(manifest.read_text())
    states = _states(m["folder"], [c["job_id"] for c in m["cells"]])
    return [{"num": c["num"], "job_id": c["job_id"], "state": states[c["job_id"]],
             "finished": (Path(c["dir"]) / "results.json").exists(), "dir": c["dir"]} for c in m["cells"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cms.slurm", description="Follow a grid submitted to SLURM.")
    ap.add_argument("command", choices=["status", "collect"])
    ap.add_argument("sweep_dir")
    a = ap.parse_args(argv)
    try:
        rows = status(a.sweep_dir)
    except FileNotFoundError as err:
        ap.exit(2, f"error: {err}\n")
    for r in rows:
        print(f"{r['num']:>4}  {r['job_id']:<14} {r['state']:<24} {'finished' if r['finished'] else '-':<9} {r['dir']}")
    done = sum(r["finished"] for r in rows)
    print(f"{done}/{len(rows)} cells finished")
    if a.command == "collect":
        from cms import report

        if not done:
            print("nothing to collect yet")
            return 1
        report.write_summary(a.sweep_dir)
        print(f"wrote {Path(a.sweep_dir) / 'summary.csv'} and summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
