"""What a newcomer meets first, through the commands they type: --help, both entry points from
outside the checkout, one-line messages for their mistakes (checked before any cell starts,
nothing left behind), progress a log file can follow, no library noise, where the grid ended up."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cms import config, progress
from conftest import ROOT

SMOKE = ["family=tiny", "dataset=gsm8k", "debug=smoke", "logger=none"]


def cms(args, env, cwd, timeout=600, entry=None):
    cmd = entry or [sys.executable, "-m", "cms.run"]
    start = time.monotonic()
    proc = subprocess.run([*cmd, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def test_help_says_what_cms_does_and_answers_fast(env, tmp_path):
    proc, seconds = cms(["--help"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "compute-matched sampling" in out and "weaker-but-cheaper" in out
    assert out.count("python -m cms.run -m") >= 3 and "python -m cms.report" in out
    assert re.search(r"^model: se, wc$", out, re.M) and re.search(r"^setting: kd, self, w2s$", out, re.M)
    assert seconds < 15, f"--help took {seconds:.1f} s"  # it imports no stage (torch, lightning): ~2 s here


@pytest.mark.parametrize("entry", ["module", "script"])
def test_both_entry_points_run_a_cell_from_outside_the_checkout(env, tmp_path, entry):
    script = shutil.which("cms-run")
    if entry == "script" and script is None:
        pytest.skip("the cms-run console script is not installed (pip install -e .)")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cmd = [script] if entry == "script" else [sys.executable, "-m", "cms.run"]
    proc, _ = cms([*SMOKE, "data.source=reference", "setting=self", f"hydra.run.dir={outside / 'run'}"], env, outside, entry=cmd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (outside / "run" / "results.json").exists()


def test_the_cache_is_per_user_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("CMS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config.CONF), version_base="1.3"):
        cfg = compose(config_name="config")
    assert cfg.paths.cache_dir == str(tmp_path / "xdg" / "cms")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert config.user_cache() == str(Path.home() / ".cache" / "cms")


def test_a_grid_without_its_data_fails_once_in_seconds_and_leaves_nothing(env, tmp_path):
    out = tmp_path / "outputs"
    empty = tmp_path / "empty"
    empty.mkdir()
    run_env = {**env, "CMS_DATA_DIR": str(empty), "CMS_OUTPUT_DIR": str(out)}
    run_env.pop("HF_HUB_OFFLINE")  # as a newcomer has it: the hub is tried, and unreachable here
    run_env.pop("HF_DATASETS_OFFLINE")
    proc, seconds = cms(["-m", "model=wc,se", "setting=kd,self,w2s", "dataset=gsm8k", "family=tiny", "debug=smoke"], run_env, tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.count("error: cannot start (6 cells checked, none started)") == 1
    message = proc.stderr
    for part in (f"{empty}/gsm8k/train.jsonl", "gsm8k/test.jsonl", "set paths.data_dir (or CMS_DATA_DIR)",
                 "'question' and 'answer'", "#### <number>", "datasets.load_dataset('openai/gsm8k', 'main', split='train')"):
        assert part in message
    assert seconds < 30, f"took {seconds:.0f} s to fail"
    assert not out.exists()


def test_a_missing_model_path_is_named_before_any_cell_starts(env, tmp_path):
    proc, _ = cms(["-m", "model=wc,se", "setting=kd", *SMOKE, "family.student.tiny=null", "family.student.path=/no/such/model",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}"], env, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "family.student.path=/no/such/model: no HF model directory there (no config.json); fix family.student.path" in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_an_added_key_nothing_reads_is_refused_with_the_near_name(env, tmp_path):
    proc, _ = cms(["+modle=wc", *SMOKE], env, tmp_path)
    assert proc.returncode == 2
    assert "+modle is not a cms setting (did you mean model?)" in proc.stderr and "Traceback" not in proc.stderr
    proc, _ = cms(["+finetune.lr_decay=0.5", *SMOKE], env, tmp_path)
    assert "+finetune.lr_decay is not a cms setting" in proc.stderr


def test_a_misspelt_key_is_one_line_naming_the_near_key(env, tmp_path):
    """Without the '+', Hydra would stop with a schema error and suggest '+modle=wc' (then silently ignored)."""
    for override, near in (("modle=wc", "model"), ("dataset.train_limt=3", "dataset.train_limit")):
        proc, seconds = cms(["-m", override, *SMOKE], env, tmp_path)
        assert proc.returncode == 2 and seconds < 30, proc.stderr
        assert proc.stderr.strip() == (f"error: {override}: cms has no setting {override.split('=')[0]} (did you mean {near}?); "
                                       "`python -m cms.run --help` lists the groups, and conf/ every option")
    assert config.unknown_override(["-m", "model=wc,se", "finetune/strategy=fsdp", "family.wc.tiny.hidden_size=64", "debug=smoke",
                                    "hydra.sweep.dir=x", "+finetune.lr_decay=1", "--config-dir", "sweeps"]) is None


def test_slurm_without_slurm_is_one_line_and_leaves_no_sweep_folder(env, tmp_path):
    bare = tmp_path / "bin"  # a PATH without sbatch, as on a laptop
    bare.mkdir()
    out = tmp_path / "outputs"
    proc, seconds = cms(["-m", "model=wc,se", "setting=kd", *SMOKE, "hydra/launcher=submitit_slurm", "hydra.launcher.partition=YOUR_PARTITION"],
                        {**env, "PATH": str(bare), "CMS_OUTPUT_DIR": str(out)}, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: cannot start (2 cells checked, none started): hydra/launcher=submitit_slurm needs SLURM")
    assert "Traceback" not in proc.stdout + proc.stderr and "schema" not in proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_slurm_status_of_a_local_sweep_is_one_line(tmp_path):
    (tmp_path / "sweep").mkdir()
    proc = subprocess.run([sys.executable, "-m", "cms.slurm", "status", str(tmp_path / "sweep")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "holds no jobs.json: it was not submitted with hydra/launcher=submitit_slurm" in proc.stderr
    assert f"python -m cms.report {tmp_path / 'sweep'}" in proc.stderr


def test_ctrl_c_while_evaluating_is_one_message(env, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "cms.run", *SMOKE, "data.source=reference", "setting=self", "evaluation.baseline=false",
           "finetune.steps=2", "dataset.test_limit=400", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, env={**env, "CMS_PROGRESS_EVERY": "0"}, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:  # progress lines reach a pipe: wait for the test-set evaluation to be under way
        seen.append(line)
        if re.search(r"evaluating: [1-9]\d*/400 prompt", line):
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
            break
    else:
        pytest.fail("no evaluation progress line:\n" + "".join(seen[-30:]))
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == 130, rest[-3000:]
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    assert "interrupted: what this cell finished is kept" in rest
    assert (run_dir / "finetune" / "finetune.json").exists()  # what finished stays


def test_progress_reaches_a_log_file_at_a_steady_interval(monkeypatch, caplog):
    monkeypatch.setenv("CMS_PROGRESS_EVERY", "0.05")
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    with caplog.at_level("INFO", logger="cms.progress"):
        with progress.bar(4, "training toy-wc", unit="step") as bar:
            for _ in range(4):
                time.sleep(0.06)
                bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("training toy-wc: 1/4 step (25%) in 0:00") and "left" in lines[0]
    assert lines[-1].startswith("training toy-wc: 4/4 step (100%)") and lines[-1].endswith("done")
    caplog.clear()
    monkeypatch.setenv("CMS_PROGRESS_EVERY", "30")
    with caplog.at_level("INFO", logger="cms.progress"):
        with progress.bar(4, "grading", unit="answer") as bar:
            bar.update(4)
    assert not caplog.records  # a phase shorter than the interval stays quiet


def test_a_cell_logged_to_a_file_shows_its_phases_without_noise(env, tmp_path):
    """Output going to a pipe (nohup, tee, SLURM logs): training shows steps, not Lightning's epochs,
    the sampling bar comes after the model it samples from exists, and no banner or tip appears."""
    run_dir = tmp_path / "run"
    # trained enough to end some solutions in '#### N' (a solution without one is not kept), so the cell fine-tunes
    small = [f"family.{r}.train.{k}={v}" for r in ("wc", "se", "student") for k, v in (("steps", 500), ("corpus_size", 2000))]
    run_env = {**env, "CMS_PROGRESS_EVERY": "0", "CMS_CACHE_DIR": str(tmp_path / "cache")}
    proc, _ = cms(["debug=smoke", "logger=none", "model=wc", "setting=self", *small, f"hydra.run.dir={run_dir}"], run_env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert re.search(r"training toy-wc: 500/500 step \(100%\) in .* - done", out)
    assert re.search(r"fine-tuning toy-wc: \d+/\d+ step", out) and "Epoch 0/-" not in out
    assert out.index("training toy-wc: 500/500") < out.index("sampling toy-wc:")  # no sampling bar during training
    for noise in ("GPU available", "TPU available", "Tip:", "litmodels", "DeprecationWarning", "FutureWarning",
                  "does not have many workers", "max_steps=", "LeafSpec", "Loading weights", "Writing model shards",
                  "deprecated", "srun"):
        assert noise not in out, noise
    assert re.search(r"using \d+ CPU thread\(s\) \(threads=auto: \d+ usable core", out)


def test_the_end_of_a_grid_says_where_it_is_and_what_next(env, tmp_path):
    sweep = tmp_path / "sweep"
    proc, _ = cms(["-m", "model=wc,se", "setting=self", *SMOKE, "data.source=reference", f"hydra.sweep.dir={sweep}"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"the grid is in {sweep}" in proc.stdout
    assert f"its summary: {sweep / 'summary.md'}" in proc.stdout and f"python -m cms.report {sweep}" in proc.stdout
    assert not [p for p in sweep.rglob("*.lock") if not p.name.startswith(".")]  # evaluation locks are hidden files


@pytest.mark.slow
def test_a_built_wheel_ships_the_configs(tmp_path):
    """pip install . (not -e) gets conf/ inside the package, where cms.run looks for it."""
    import zipfile

    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(".git", "outputs", "build", "*.egg-info", "__pycache__", ".cms_cache", ".pytest_cache", "wandb"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [wheel] = tmp_path.glob("cms-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert {f"cms/{p}" for p in shipped} <= names, sorted({f"cms/{p}" for p in shipped} - names)
    assert "cms/conf/config.yaml" in names and "cms/archs/gemma-2-9b.json" in names


def test_a_dataset_function_that_is_not_there_is_named_before_any_cell_starts(env, tmp_path):
    proc, seconds = cms(["dataset.step_checker=cms.arith.nope", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], env, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and seconds < 30
    assert "dataset.step_checker=cms.arith.nope names no function" in proc.stderr and "module.function" in proc.stderr
    assert not (tmp_path / "run").exists()
