"""The pipeline end to end: the six-cell grid on CPU with tiny models."""

import csv
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cms import budget, cell, data
from conftest import DATA, ROOT

KEYS = ["model", "setting", "dataset", "budget", "generator", "finetuned", "generator_params", "finetuned_params",
        "samples_per_question", "planned_flops", "spent_flops", "mean_solution_tokens", "coverage", "diversity",
        "n_train_examples", "baseline_accuracy", "accuracy"]
GRID = ["-m", "model=wc,se", "setting=kd,self,w2s", "family=tiny", "debug=smoke"]


def cms_run(args, env, cwd):
    proc = subprocess.run([sys.executable, "-m", "cms.run", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def compose_cell(*overrides):
    """One cell on the real benchmarks with tiny random models (overrides come last and win)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["family=tiny", "dataset=gsm8k", *overrides])


@pytest.mark.parametrize("dataset", ["gsm8k", pytest.param("math", marks=pytest.mark.slow)])
def test_six_cell_grid_samples_twice_and_summarises(dataset, env, tmp_path):
    sweep = tmp_path / "sweep"
    log = cms_run(GRID + [f"dataset={dataset}", f"hydra.sweep.dir={sweep}"], env, tmp_path)
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(results) == 6
    for r in results:
        assert not [k for k in KEYS if k not in r], r
        assert r["dataset"] == dataset and r["spent_flops"] > 0 and r["mean_solution_tokens"] > 0
        # where the questions came from: the local file, by its hash
        train = DATA / dataset / "train.jsonl"
        assert r["data"]["train"] == {"source": "file", "path": str(train.resolve()), "rows": len(train.read_text().splitlines()),
                                      "sha256": hashlib.sha256(train.read_bytes()).hexdigest()}
    assert {(r["model"], r["setting"]) for r in results} == {(m, s) for m in ("wc", "se") for s in ("kd", "self", "w2s")}
    wc = next(r for r in results if r["model"] == "wc")
    se = next(r for r in results if r["model"] == "se")
    assert wc["samples_per_question"] == round(se["generator_params"] / wc["generator_params"]) and se["samples_per_question"] == 1
    assert {r["finetuned"] for r in results} == {"tiny-student", "tiny-wc", "tiny-se"}
    # two sample sets drawn, four cells served from the cache
    assert log.count("sampling pass:") == 2 and log.count("cache hit:") == 4
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert sorted(r["setting"] for r in rows) == ["kd", "self", "w2s"]
    assert "relative gain" in (sweep / "summary.md").read_text()
    assert len(list(sweep.glob("*/wandb/offline-run-*/*.wandb"))) == 6
    # a second run of the same grid does no work
    again = cms_run(GRID + [f"dataset={dataset}", f"hydra.sweep.dir={sweep}"], env, tmp_path)
    assert again.count("cell already finished") == 6 and "sampling pass" not in again


def offline_runs(cell_dir: Path) -> list[Path]:
    """A cell's offline wandb files, complete: run.finish() returns before wandb's service has flushed
    them (right after finish, 3 of 40 runs here lacked their records), so wandb is torn down first."""
    import wandb

    wandb.teardown()
    return sorted(cell_dir.glob("wandb/offline-run-*/*.wandb"))


def test_reference_finetuning_cell_trains_evaluates_and_logs(env, tmp_path):
    cfg = compose_cell("setting=self", "debug=smoke", "data.source=reference", "finetune.steps=12")
    results = cell.run_cell(cfg, tmp_path / "cell")
    assert results["n_train_examples"] == 8 and results["coverage"] == 1.0 and results["spent_flops"] == 0.0
    assert results["train_loss_last"] < results["train_loss_first"]
    assert results["accuracy"] is not None and results["baseline_accuracy"] is not None
    assert (Path(results["checkpoint"]) / "config.json").exists()
    assert len((tmp_path / "cell" / "eval_finetuned.jsonl").read_text().splitlines()) == 8
    # the checkpoint protocol: 2 checkpoints (smoke), each scored on 4 validation questions, the best one evaluated
    assert [v["step"] for v in results["val_accuracy"]] == [6, 12] and results["n_val"] == 4
    best = max(results["val_accuracy"], key=lambda v: (v["accuracy"], v["step"]))
    assert results["selected_step"] == best["step"] and results["checkpoint"].endswith(f"step-{best['step']:06d}")
    assert len(list((tmp_path / "cell" / "validation").glob("step-*.jsonl"))) == 2
    assert results["tokens_per_s"] > 0 and 0 <= results["padding_waste"] < 1
    [log] = offline_runs(tmp_path / "cell")
    blob = log.read_bytes()
    for key in (b"train/loss", b"baseline_accuracy", b"coverage", b"samples_per_question"):
        assert key in blob, key


def test_wandb_failure_never_loses_results(env, tmp_path, monkeypatch, caplog):
    import wandb

    def broken(*args, **kwargs):
        raise TimeoutError("wandb init timed out")

    monkeypatch.setattr(wandb, "init", broken)
    cfg = compose_cell("setting=kd", "debug=smoke", "data.source=reference", "logger.mode=online")
    results = cell.run_cell(cfg, tmp_path / "cell")
    assert json.loads((tmp_path / "cell" / "results.json").read_text()) == results
    assert "wandb failed to start (TimeoutError" in caplog.text


def test_zero_kept_solutions_is_a_message_not_a_crash(env, tmp_path, caplog):
    cfg = compose_cell("model=se", "setting=kd", "debug=smoke", "logger=none")
    results = cell.run_cell(cfg, tmp_path / "cell")
    assert results["n_train_examples"] == 0 and results["accuracy"] is None
    assert "nothing to fine-tune on" in caplog.text and "data.source=reference" in caplog.text


TOY_SMALL = ["debug=smoke"] + [f"family.{r}.train.{k}={v}" for r in ("wc", "se", "student") for k, v in (("steps", 20), ("corpus_size", 400))]


def test_default_toy_grid_trains_models_once_and_reports(env, tmp_path):
    """The default (family=toy dataset=arith), at a reduced size: toy models are
    trained on the first run, reused on the second, and the summary answers."""
    sweep = tmp_path / "sweep"
    log = cms_run(["-m", "model=wc,se", "setting=kd,self,w2s", f"hydra.sweep.dir={sweep}"] + TOY_SMALL, env, tmp_path)
    assert log.count("training toy model") == 3
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(results) == 6 and {r["family"] for r in results} == {"toy"} and {r["dataset"] for r in results} == {"arith"}
    assert all(r["fpr"] is None or 0.0 <= r["fpr"] <= 1.0 for r in results)
    summary = (sweep / "summary.md").read_text()
    for part in ("## The data", "per-sample accuracy", "coverage", "diversity", "FPR (exact)", "relative gain", "toy-student"):
        assert part in summary
    again = cms_run(["model=se", "setting=kd", "seed=1"] + TOY_SMALL, env, tmp_path)
    assert "training toy model" not in again


def test_a_cell_of_other_settings_is_refused_and_rerun_recomputes_it(env, tmp_path):
    """Seed 0 into a sweep dir, then the same dir with seed=1 budget=high finetune.lr=5e-4: the old
    results are never returned; the message names what differs and both fixes; the cell's record
    (.hydra/config.yaml) still matches its results; rerun=true recomputes and keeps the old outputs."""
    sweep = tmp_path / "sweep"
    base = ["-m", "model=wc", "setting=kd", "family=tiny", "debug=smoke", "dataset=gsm8k", "logger=none", f"hydra.sweep.dir={sweep}"]
    cms_run(base, env, tmp_path)
    cell = sweep / "0_wc_kd"
    first = (cell / "results.json").read_text()
    record = (cell / ".hydra" / "config.yaml").read_text()
    assert json.loads(first)["config"]["seed"] == 0 and json.loads(first)["fingerprint"]["budget.name"] == "low"
    assert "cell already finished" in cms_run(base, env, tmp_path)  # the same settings: reused
    changed = ["seed=1", "budget=high", "finetune.lr=5e-4"]
    proc = subprocess.run([sys.executable, "-m", "cms.run", *base, *changed], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    message = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in message  # one message, no traceback
    for part in ("seed: 0 -> 1", "budget.name: 'low' -> 'high'", "finetune.lr: 0.001 -> 0.0005", "new directory", "rerun=true"):
        assert part in message, part
    assert (cell / "results.json").read_text() == first and (cell / ".hydra" / "config.yaml").read_text() == record
    cms_run(base + changed + ["rerun=true"], env, tmp_path)
    now = json.loads((cell / "results.json").read_text())
    assert (now["seed"], now["budget"], now["lr"]) == (1, "high", 5e-4)
    [kept] = (cell / "previous").glob("*/results.json")
    assert kept.read_text() == first
    assert OmegaConf.load(cell / ".hydra" / "config.yaml").budget.name == "high"


def _logged_steps(path: Path) -> list[int]:
    """The trainer/global_step values of the history rows in a wandb offline run file (protobuf: the
    key, then value_json as field 16: bytes 0x82 0x01, a length byte and the digits)."""
    import re

    blob, steps = path.read_bytes(), []
    for m in re.finditer(rb"trainer/global_step\x82\x01([\x01-\x7f])", blob):
        value = blob[m.end():m.end() + m.group(1)[0]]
        if value.isdigit():
            steps.append(int(value))
    return sorted(set(steps))


def test_training_curves_reach_wandb_while_the_cell_trains(env, tmp_path):
    run_dir = tmp_path / "cell"
    cmd = [sys.executable, "-m", "cms.run", "family=tiny", "dataset=gsm8k", "debug=smoke", "setting=kd", "data.source=reference",
           "finetune.steps=300", "finetune.log_every=1", "finetune.checkpoints=1", "finetune.val_size=0", "evaluation.baseline=false",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = []  # (steps logged so far, max step) while fine-tuning has not finished
    try:
        while proc.poll() is None:
            files = list(run_dir.glob("wandb/offline-run-*/*.wandb"))
            if files and not (run_dir / "finetune" / "finetune.json").exists():
                steps = _logged_steps(files[0])
                if steps and not (run_dir / "finetune" / "finetune.json").exists():
                    seen.append((len(steps), max(steps)))
            time.sleep(0.1)
    finally:
        proc.kill()
    assert proc.returncode == 0 or (run_dir / "results.json").exists()
    mid = [s for s in seen if 0 < s[1] < 299]
    assert len({s for s in mid}) >= 2, seen  # several snapshots, growing, before training ended
    assert 299 in _logged_steps(next(run_dir.glob("wandb/offline-run-*/*.wandb")))


def test_a_tiny_card_with_a_path_names_both_keys(env, tmp_path):
    cfg = compose_cell("family.student.path=/some/model", "debug=smoke")
    with pytest.raises(ValueError, match=r"family.student.path='/some/model' and family.student.tiny are both set.*family.student.tiny=null"):
        cell.run_cell(cfg, tmp_path / "cell")


def test_evaluation_batch_size_and_card_dtype_reach_the_sampler(env, tmp_path, monkeypatch):
    from cms import sampling

    seen = []
    real = sampling.from_config

    def spy(sampler, path, **extra):
        seen.append((path, sampler["batch_size"], sampler["dtype"]))
        return real(sampler, path, **extra)

    monkeypatch.setattr(sampling, "from_config", spy)
    cfg = compose_cell("setting=kd", "debug=smoke", "data.source=reference", "evaluation.batch_size=3", "sampler.batch_size=5",
                       "family.student.dtype=bfloat16", "logger=none", "finetune.steps=2", "finetune.checkpoints=1")
    cell.run_cell(cfg, tmp_path / "cell")
    baseline = [s for s in seen if "tiny-student" in s[0]]
    finetuned = [s for s in seen if "finetune" in s[0]]
    assert baseline and all(b == 3 and d == "bfloat16" for _, b, d in baseline)  # the card's weights dtype
    assert finetuned and all(b == 3 and d == "auto" for _, b, d in finetuned)  # the fp32 export as saved


def test_multi_device_training_logs_to_the_cells_wandb_run(env, tmp_path, monkeypatch):
    """DDP trains in processes of its own: they log to the cell's run id under the cell's directory and
    let go of it, so the cell reopens the same run for its results."""
    monkeypatch.chdir(tmp_path)
    cfg = compose_cell("setting=kd", "debug=smoke", "data.source=reference", "finetune/strategy=ddp", "finetune.accelerator=cpu",
                       "finetune.steps=6")
    results = cell.run_cell(cfg, tmp_path / "cell")
    assert results["accuracy"] is not None and not (tmp_path / "wandb").exists()
    runs = offline_runs(tmp_path / "cell")
    assert len({p.name for p in runs}) == 1  # one run id
    blobs = [p.read_bytes() for p in runs]
    assert any(b"train/loss" in b for b in blobs) and any(b"baseline_accuracy" in b for b in blobs)


def test_the_baseline_cache_key_holds_what_the_evaluation_depends_on(tiny_family, tmp_path):
    """A cached baseline is never served for other weights at the same path, another token limit, grader,
    time limit or dtype."""
    from cms import data, grading, models

    model = tmp_path / "learner"
    models.build_tiny(tiny_family["student"], model)
    card = {"name": "learner", "path": str(model)}
    test = data.load("gsm8k", "test", "gsm8k", DATA)[:4]
    ds = {"name": "gsm8k"}
    args = dict(fmt="gsm8k", prompt_format=data.PromptFormat("Q: {question}\nA:", " {solution}\n\n"), stop=["Q:"],
                sampler={"backend": "hf", "dtype": "auto"}, max_new_tokens=32, grading_cfg={"timeout_s": 5.0})
    key = lambda **changed: cell.baseline_path(tmp_path, card, str(model), ds, test, [], {**args, **changed})  # noqa: E731
    base = key()
    assert key() == base
    others = [key(max_new_tokens=64), key(grading_cfg={"timeout_s": 20.0}), key(sampler={"backend": "hf", "dtype": "bfloat16"})]
    assert len({base, *others}) == 4
    grading.GRADER_VERSION, version = grading.GRADER_VERSION + 1, grading.GRADER_VERSION
    try:
        assert key() != base  # another grader
    finally:
        grading.GRADER_VERSION = version
    import shutil

    shutil.rmtree(model)
    models.build_tiny(tiny_family["student"], model, seed=1)  # retrained at the same path
    assert key() != base


def test_mixed_data_draws_each_share_from_the_generators_stores(env, tmp_path, caplog):
    """data.source=mix takes a prefix of each generator's stored samples: at mix_se=0 it is WC's data and at 1
    SE's, sample for sample; in between SE's share of the FLOPs buys SE samples and the rest WC's, and the
    report gives each share's gain over all-SE and all-WC data."""
    from cms import report

    common = ("setting=kd", "debug=smoke", "logger=none", "finetune.steps=2", "evaluation.baseline=false")
    wc = cell.run_cell(compose_cell("model=wc", *common), tmp_path / "wc")
    se = cell.run_cell(compose_cell("model=se", *common), tmp_path / "se")
    kept = lambda d: sorted((k["qid"], k["solution"]) for k in data.read_rows(d / "kept.jsonl"))  # noqa: E731
    mixes = {}
    for share in (0.0, 0.5, 1.0):
        caplog.clear()
        mixes[share] = cell.run_cell(compose_cell("data.source=mix", f"data.mix_se={share}", *common), tmp_path / f"mix{share}")
        assert "sampling pass" not in caplog.text  # every sample comes from the stores the wc and se cells filled
    assert kept(tmp_path / "mix0.0") == kept(tmp_path / "wc") and kept(tmp_path / "mix1.0") == kept(tmp_path / "se")
    assert mixes[0.0]["mix_samples"] == {"se": 0, "wc": 8 * wc["samples_per_question"]} and mixes[1.0]["mix_samples"] == {"se": 8, "wc": 0}
    half = mixes[0.5]
    assert half["model"] == "mix" and half["generator"] == "tiny-se+tiny-wc" and half["n_samples"] == 4 + 4 * wc["samples_per_question"]
    assert half["mix_samples"] == {"se": 4, "wc": 4 * wc["samples_per_question"]}
    graded = {r: data.read_rows(tmp_path / r / "graded.jsonl") for r in ("wc", "se")}
    counts = budget.mix({"se": 1, "wc": wc["samples_per_question"]}, 0.5, list(dict.fromkeys(g["qid"] for g in graded["se"])), seed=0)
    used = {r: sum(g["tokens"] for g in graded[r] if g["index"] < counts[r][g["qid"]]) for r in graded}
    assert half["spent_flops"] == pytest.approx(sum(budget.sample_flops(x["generator_params"], used[x["model"]]) for x in (wc, se)))
    results = report.load_results(tmp_path)
    rows = report.mix_rows(results)
    assert [r["mix_se"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[2]["vs_se"] is None and rows[0]["vs_wc"] is None and rows[1]["vs_se"] == report.gain(half["accuracy"], mixes[1.0]["accuracy"])
    text = report.markdown(results)
    assert "## Mixed data: a share of the budget to SE samples" in text and "MIX 0.5 SE (tiny-se+tiny-wc)" in text
    assert [r["setting"] for r in report.accuracy_rows(results)] == ["kd"]  # the wc/se pair alone; mixed cells are not paired
