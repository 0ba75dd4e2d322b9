"""The bad-input matrix: each mistake a user can make, through the route a user takes
(config composition, then one cell), ends in a message naming the cause and the fix,
and whatever was already computed survives it. (The SLURM refusal is in test_slurm.py,
wandb failing in test_run.py.)"""

import errno
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from cms import sampling
from cms import cell as cell_module
from cms.cell import run_cell
from cms.budget import BudgetError
from cms.data import DataError
from cms.models import ModelError
from conftest import DATA, ROOT

SMOKE = ["family=tiny", "dataset=gsm8k", "debug=smoke", "logger=none"]


def cell(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[*SMOKE, *overrides])


@pytest.fixture(autouse=True)
def own_cache(env, tmp_path, monkeypatch):
    """A cache of this test's own, so that what it finds there is what it did."""
    monkeypatch.setenv("CMS_CACHE_DIR", str(tmp_path / "cache"))
    env["CMS_CACHE_DIR"] = str(tmp_path / "cache")


def samples_in(cache: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(cache.glob("samples/*/shard-*.jsonl"))}


@pytest.mark.parametrize("override,options", [("model=strong", "wc"), ("family=gemma3", "gemma2"), ("setting=distill", "kd")])
def test_unknown_group_option_lists_the_valid_ones(override, options):
    with pytest.raises(ConfigCompositionException, match=rf"(?s)Could not find '\w+/\w+'.*Available options.*{options}"):
        cell(override)


def test_misspelt_key_is_refused_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="num_shot"):
        cell("dataset.num_shot=3")


def test_missing_model_path_names_the_key_and_keeps_the_samples(env, tmp_path):
    cache = Path(env["CMS_CACHE_DIR"])
    with pytest.raises(ModelError, match=r"does not exist or holds no config.json: fix family.<role>.path"):
        run_cell(cell("setting=kd", "family.student.tiny=null", "family.student.path=/no/such/model"), tmp_path / "a")
    drawn = samples_in(cache)
    assert drawn  # sampling came first and its samples are stored
    run_cell(cell("setting=kd"), tmp_path / "b")  # fixed: the samples are reused as they are
    assert all(samples_in(cache)[k] == v for k, v in drawn.items())


def test_missing_dataset_file_says_where_to_point(env, tmp_path):
    (tmp_path / "empty").mkdir()
    start = time.monotonic()
    with pytest.raises(DataError, match=r"gsm8k/train.jsonl not found, and the hub is unreachable \(HF_HUB_OFFLINE=1\): "
                                         r"set paths.data_dir \(or CMS_DATA_DIR\) to a folder holding gsm8k/train.jsonl, each one "
                                         r"JSON object per line with 'question' and 'answer'.*datasets.load_dataset\('openai/gsm8k'"):
        run_cell(cell(f"paths.data_dir={tmp_path / 'empty'}"), tmp_path / "run")
    assert time.monotonic() - start < 20  # no hub retries
    assert not (tmp_path / "run" / "results.json").exists()


def _dataset_with(tmp_path, bad_line: str) -> Path:
    root = tmp_path / "data"
    (root / "gsm8k").mkdir(parents=True)
    lines = (DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[:30]
    lines[17] = bad_line
    (root / "gsm8k" / "train.jsonl").write_text("\n".join(lines) + "\n")
    (root / "gsm8k" / "test.jsonl").write_bytes((DATA / "gsm8k" / "test.jsonl").read_bytes())
    return root


@pytest.mark.parametrize("bad,message", [
    ('{"question": "2+2?", "answer": ', r"train.jsonl:18: not valid JSON .*fix or remove that line"),
    ('{"question": "2+2?", "answer": "four, obviously"}', r"train.jsonl:18: no gold answer .*fix or remove that line"),
])
def test_bad_dataset_row_names_file_and_line(env, tmp_path, bad, message):
    root = _dataset_with(tmp_path, bad)
    with pytest.raises(DataError, match=message):
        run_cell(cell(f"paths.data_dir={root}"), tmp_path / "run")


def test_budget_too_small_for_one_sample_names_the_smallest(env, tmp_path):
    with pytest.raises(BudgetError, match=r"smallest budget"):
        run_cell(cell("budget=flops", "budget.flops_per_question=10"), tmp_path / "run")


def test_absurd_budget_is_refused_before_any_sampling(env, tmp_path):
    with pytest.raises(BudgetError, match=r"max_samples_per_question.*lower the budget"):
        run_cell(cell("budget=flops", "budget.flops_per_question=1e30"), tmp_path / "run")
    assert not samples_in(Path(env["CMS_CACHE_DIR"]))


def test_prompt_longer_than_the_context_names_the_fix(env, tmp_path):
    with pytest.raises(ValueError, match=r"exceeds the model's context of \d+: lower dataset.num_shots or dataset.max_new_tokens"):
        run_cell(cell("dataset.num_shots=8", "+family.wc.tiny.max_position_embeddings=512"), tmp_path / "run")


def test_unwritable_output_directory_names_the_key(env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match=r"cannot write .*point paths.output_dir \(CMS_OUTPUT_DIR\) or hydra.run.dir at a writable"):
        run_cell(cell(), blocker / "run")
    with pytest.raises(PermissionError, match=r"point paths.cache_dir \(CMS_CACHE_DIR\)"):
        run_cell(cell(f"paths.cache_dir={blocker / 'cache'}"), tmp_path / "run")
    assert blocker.read_text() == "not a directory"


def test_full_disk_while_writing_samples_keeps_what_was_written(env, tmp_path, monkeypatch):
    real, calls = sampling._append, []

    def fills_up(f, text):
        calls.append(text)
        if len(calls) == 2:  # the second write gets half way, then the disk is full
            f.write(text[: len(text) // 2])
            f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, text)

    monkeypatch.setattr(sampling, "_append", fills_up)
    cfg = cell("model=wc", "sampler.batch_size=4", "stop_after=sampling")
    with pytest.raises(OSError, match=r"disk full while writing samples .*move paths.cache_dir .*samples stored before are kept"):
        run_cell(cfg, tmp_path / "a")
    monkeypatch.setattr(sampling, "_append", real)
    first = calls[0].splitlines()
    out = run_cell(cfg, tmp_path / "b")  # space freed: the torn half-batch is cut, the rest drawn
    rows = [json.loads(line) for text in samples_in(Path(env["CMS_CACHE_DIR"])).values() for line in text.splitlines()]
    assert out["samples"] == len(rows) == len({(r["qid"], r["index"]) for r in rows})
    assert [json.loads(line) for line in first] == [r for r in rows if (r["qid"], r["index"]) in {(json.loads(x)["qid"], json.loads(x)["index"]) for x in first}]


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_damaged_cache_shard_keeps_its_good_rows(env, tmp_path, damage, caplog):
    cfg = cell("model=wc", "stop_after=sampling")
    run_cell(cfg, tmp_path / "a")
    [(path, good)] = samples_in(Path(env["CMS_CACHE_DIR"])).items()
    lines = good.decode().splitlines(keepends=True)
    broken = lines[:3] + ["\x00\x17garbage{\n"] + lines[3:] if damage == "corrupt" else lines[:-1] + [lines[-1][:20]]
    Path(path).write_text("".join(broken))
    out = run_cell(cfg, tmp_path / "b")
    assert "unreadable line(s)" in caplog.text and "drawn again" in caplog.text
    assert out["samples"] == len(lines)
    assert sorted(Path(path).read_text().splitlines()) == sorted(good.decode().splitlines())  # same samples, nothing lost


def test_nan_loss_stops_with_the_fix_and_keeps_the_data(env, tmp_path):
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at step \d+: lower finetune.lr"):
        run_cell(cell("data.source=reference", "finetune.lr=1e30", "finetune.grad_clip=0", "finetune.steps=8"), tmp_path / "run")
    assert len((tmp_path / "run" / "kept.jsonl").read_text().splitlines()) == 8
    assert not (tmp_path / "run" / "results.json").exists()


def test_ctrl_c_in_the_middle_of_a_grid_keeps_the_finished_cells(env, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "cms.run", "-m", "model=wc,se", "setting=kd,self", *SMOKE, f"hydra.sweep.dir={sweep}"]
    # Ctrl-C works even where this test runs with SIGINT ignored (a background job of a non-interactive shell)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list(sweep.glob("*/results.json")) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    finished = {p: p.read_text() for p in sweep.glob("*/results.json")}
    assert 1 <= len(finished) < 4
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("cell already finished") == len(finished)
    assert all(p.read_text() == text for p, text in finished.items())
    assert len(list(sweep.glob("*/results.json"))) == 4


def test_secrets_never_reach_outputs(env, tmp_path):
    secrets = {"WANDB_API_KEY": "wandb-secret-0123456789abcdef", "HF_TOKEN": "hf_secretTOKEN0123456789",
               "OPENAI_API_KEY": "sk-secret-0123456789"}
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "cms.run", "-m", "model=wc", "setting=self", "family=tiny", "dataset=gsm8k",
                           "debug=smoke", "data.source=reference", f"hydra.sweep.dir={sweep}"],
                          env={**env, **secrets}, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in list(sweep.rglob("*")) + list(Path(env["CMS_CACHE_DIR"]).rglob("*")) if p.is_file()]
    assert any(p.name == "results.json" for p in files) and any(".wandb" in p.name for p in files)
    for p in files:
        blob = p.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in blob, f"{name} leaked into {p}"
    for value in secrets.values():
        assert value not in proc.stdout + proc.stderr


def test_unknown_transfer_dataset_fails_before_any_work(env, tmp_path):
    with pytest.raises(ValueError, match=r"evaluation.transfer names 'gsm9k'.*use some of arith, gsm8k, math"):
        run_cell(cell("evaluation.transfer=[gsm9k]"), tmp_path / "run")
    assert not (tmp_path / "run" / "kept.jsonl").exists()


def test_unknown_judge_role_and_keep_name_the_choices(env, tmp_path):
    with pytest.raises(ValueError, match=r"judge.role='strong' is not one of null, wc, se, student"):
        run_cell(cell("judge.role=strong"), tmp_path / "run")
    with pytest.raises(ValueError, match=r"data.keep='best' is not one of all, one"):
        run_cell(cell("data.keep=best"), tmp_path / "run")


def test_cells_sharing_a_directory_check_it_writable_at_once(tmp_path):
    """Six SLURM cells start together and each checks the shared cache: the check must not trip over
    the others' (before: one probe name for all, so a cell's unlink or write failed and it stopped)."""
    errors = []

    def check():
        for _ in range(300):
            try:
                cell_module._writable(tmp_path, "the cache")
            except PermissionError as err:
                errors.append(err)

    workers = [threading.Thread(target=check) for _ in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[0]
    assert not list(tmp_path.iterdir())  # nothing left behind
