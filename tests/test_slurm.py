"""The grid on a real SLURM cluster (bash ../shared/slurm/up.sh): submission, equality with a
local run, one sampling pass per sample set, preemption in mid-sampling and mid-training,
submit-and-return, and a refused submission. Skipped where no `sinfo` answers."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]
GRID = ["-m", "model=wc,se", "setting=kd,self,w2s", "family=tiny", "debug=smoke"]
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=60"]
# what may differ between two runs of the same cell: where things are, how fast they went
VOLATILE = {"checkpoint", "tokens_per_s", "config"}


def cms(args, env, cwd, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "cms.run", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def results_of(sweep: Path) -> dict:
    out = {}
    for p in sorted(sweep.glob("*/results.json")):
        r = json.loads(p.read_text())
        out[(r["model"], r["setting"])] = {k: v for k, v in r.items() if k not in VOLATILE}
    return out


def wait_for(predicate, timeout=300, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def slurm_env(env, tmp_path, name):
    return {**env, "CMS_CACHE_DIR": str(tmp_path / f"cache-{name}"), "PYTHONPATH": str(ROOT)}


def test_grid_on_slurm_equals_the_local_grid_and_samples_each_set_once(env, tmp_path):
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    cms(GRID + [f"hydra.sweep.dir={local}"], slurm_env(env, tmp_path, "local"), tmp_path)
    started = time.time()
    cms(GRID + SLURM + [f"hydra.sweep.dir={cluster}"], slurm_env(env, tmp_path, "slurm"), tmp_path)
    print(f"six cells on SLURM: {time.time() - started:.1f} s")
    manifest = json.loads((cluster / "jobs.json").read_text())
    assert len(manifest["cells"]) == 6 and len({c["job_id"] for c in manifest["cells"]}) == 6
    # the launcher returns once each job has written its result; a job's process may still be
    # exiting then, so SLURM can show it RUNNING for a moment longer
    for _ in range(60):
        state = subprocess.run([sys.executable, "-m", "cms.slurm", "status", str(cluster)], capture_output=True, text=True).stdout
        if state.count("COMPLETED") == 6:
            break
        time.sleep(1)
    print(state)
    assert state.count("COMPLETED") == 6 and "6/6 cells finished" in state
    # every cell ran as a SLURM job, and the numbers are the local run's
    assert all(Path(c["dir"], "results.json").exists() for c in manifest["cells"])
    assert results_of(cluster) == results_of(local)
    # six cells started together: each of the two sample sets was drawn once
    logs = "".join(p.read_text() for p in cluster.glob("*/run.log"))
    assert logs.count("sampling pass:") == 2 and logs.count("cache hit:") == 4, logs[-3000:]
    assert (cluster / "summary.md").exists()


def _submit_one_cell(tmp_path, env, name, extra):
    sweep = tmp_path / name
    args = ["-m", "model=wc", "setting=self", "family=tiny", "debug=smoke", "detach=true", *SLURM, f"hydra.sweep.dir={sweep}", *extra]
    out = cms(args, slurm_env(env, tmp_path, name), tmp_path, timeout=120)
    assert "python -m cms.slurm status" in out  # it returned at once and said how to follow the grid
    [cell] = json.loads((sweep / "jobs.json").read_text())["cells"]
    return sweep, cell, json.loads((sweep / "jobs.json").read_text())["folder"]


def _reference(tmp_path, env, extra):
    sweep = tmp_path / "reference"
    cms(["-m", "model=wc", "setting=self", "family=tiny", "debug=smoke", f"hydra.sweep.dir={sweep}", *extra],
        slurm_env(env, tmp_path, "reference"), tmp_path)
    return results_of(sweep)


def _finished(cell, folder):
    import submitit

    wait_for(lambda: Path(cell["dir"], "results.json").exists(), 600, "the requeued cell to finish")
    job = submitit.SlurmJob(folder, cell["job_id"])
    wait_for(lambda: job.state == "COMPLETED", 60, "COMPLETED in sacct")
    return Path(cell["dir"], "run.log").read_text()


SLOW_SAMPLING = ["dataset.train_limit=48", "dataset.max_new_tokens=48", "sampler.batch_size=1"]


def test_preempted_in_mid_sampling_resumes_its_samples_and_ends_the_same(env, tmp_path):
    import submitit

    sweep, cell, folder = _submit_one_cell(tmp_path, env, "preempt-sampling", SLOW_SAMPLING)
    store = tmp_path / "cache-preempt-sampling" / "samples"
    rows = lambda: sum(len(p.read_text().splitlines()) for p in store.glob("*/shard-*.jsonl"))
    wait_for(lambda: rows() >= 12, 300, "the first samples")
    assert not list(store.glob("*/verdicts.json")), "sampling was over before the preemption"
    submitit.SlurmJob(folder, cell["job_id"])._interrupt()  # what SLURM does to a preempted job
    print(f"preempted {cell['job_id']} after {rows()} of 288 samples")
    log = _finished(cell, folder)
    print("\n".join(line for line in log.splitlines() if "sampling pass" in line or "requeue" in line.lower()))
    assert "were already stored" in log  # the requeued job drew only what was missing
    assert log.count("sampling pass:") == 1 and len(list(Path(cell["dir"]).glob("wandb/offline-run-*"))) == 1
    assert results_of(sweep) == _reference(tmp_path, env, SLOW_SAMPLING)
    assert rows() == 288


# the reference solutions: tiny random models write no '#### N', so sampled data would leave nothing to train on
SLOW_TRAINING = ["data.source=reference", "finetune.steps=300", "finetune.save_every=10", "finetune.checkpoints=2"]


def test_preempted_in_mid_training_resumes_from_its_checkpoint_and_ends_the_same(env, tmp_path):
    sweep, cell, folder = _submit_one_cell(tmp_path, env, "preempt-training", SLOW_TRAINING)
    ckpt = Path(cell["dir"], "finetune", "last.ckpt")
    wait_for(ckpt.exists, 300, "the first training checkpoint")
    subprocess.run(["scontrol", "requeue", cell["job_id"]], check=True)  # SIGTERM, kill, requeue: only saved state survives
    print(f"requeued {cell['job_id']} in mid-training")
    log = _finished(cell, folder)
    print("\n".join(line for line in log.splitlines() if "resuming" in line or "fine-tuned" in line))
    assert "resuming fine-tuning from" in log
    assert "SLURM auto-requeueing enabled" not in log  # Lightning leaves the signal to submitit
    # one wandb run across requeues: offline, each attempt writes a directory, all with the run's one id
    runs = list(Path(cell["dir"]).glob("wandb/offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1
    finetune = json.loads(Path(cell["dir"], "finetune", "finetune.json").read_text())
    assert finetune["steps"] == 300 and [p["step"] for p in finetune["curve"]] == list(range(300))
    assert results_of(sweep) == _reference(tmp_path, env, SLOW_TRAINING)


def test_a_refused_submission_names_the_partition_and_keeps_nothing_half_done(env, tmp_path):
    sweep = tmp_path / "refused"
    proc = subprocess.run([sys.executable, "-m", "cms.run", *GRID, "hydra/launcher=submitit_slurm", "hydra.launcher.partition=nope",
                           f"hydra.sweep.dir={sweep}"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "SLURM refused the grid's submission" in proc.stderr and "invalid partition" in proc.stderr.lower()
    assert "hydra.launcher.partition" in proc.stderr and "sinfo" in proc.stderr
    assert not (sweep / "jobs.json").exists()


def test_nested_srun_starts_every_rank_inside_the_cells_allocation(tmp_path):
    """Multi-device fine-tuning inside a cell's job: the cell runs as submitit's job step (1 task), and
    ``finetuning.srun_command`` starts 2 ranks inside that 2-CPU allocation. The control, the same srun
    without --overlap/--mem=0, cannot create its step (it waits for resources the cell's step holds)."""
    import submitit

    from cms import finetuning

    probe = [sys.executable, "-c", "import os; print('rank', os.environ['SLURM_PROCID'], 'of', os.environ['SLURM_NTASKS'])"]
    nested = finetuning.srun_command({"num_nodes": 1, "devices": 2}, probe)
    control = ["timeout", "15"] + [a for a in nested if a not in ("--overlap", "--mem=0")]
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(slurm_partition="debug", nodes=1, tasks_per_node=1, cpus_per_task=2, timeout_min=60)
    jobs = [executor.submit(subprocess.run, cmd, capture_output=True, text=True) for cmd in (nested, control)]
    done, refused = (job.result() for job in jobs)
    assert done.returncode == 0, done.stderr
    assert sorted(line for line in done.stdout.splitlines() if line.startswith("rank")) == ["rank 0 of 2", "rank 1 of 2"]
    assert refused.returncode != 0 and "rank 1 of 2" not in refused.stdout
