"""Every sweep file composes cell by cell, a reduced version of each runs on CPU, and the
report turns the reduced sweeps into every table and figure."""

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from cms import config
from conftest import ROOT

SWEEPS = ROOT / "sweeps"
TINY = ["family=tiny", "debug=smoke", "dataset=arith", "logger=none"]  # the report logs to wandb for them
# per sweep file: the overrides that shrink it to a few tiny cells, and the cells expected
REDUCED = {
    "main_grid": (["setting=kd", "budget=low"], 2),
    "number_vs_compute": (["model=wc", "setting=kd"], 2),
    "coverage_diversity": (["setting=kd"], 3),
    "subset_500": (["model=wc", "setting=kd", "dataset.train_limit=6"], 1),
    "price_matched": (["setting=kd", "family.wc.price_per_mtok=1", "family.se.price_per_mtok=3"], 2),
    "crossover": (["budget.se_samples=1,2"], 4),
    # the toy families' own models would be trained: the tiny family stands in, the size ratio varied by budget.ratio
    "phase": (["family=tiny", "budget.ratio=3,9", "budget.se_samples=1,2", "setting=kd", "seed=0"], 8),
    "mix": (["family/student=tiny", "data.mix_se=0,0.5,1", "seed=0"], 3),
    "lr_grid": (["model=wc", "setting=kd", "finetune.lr=1e-3,1e-4", "finetune.steps=4", "finetune.batch_size=4",
                 "finetune.checkpoints=2", "finetune.val_size=4", "finetune.precision=32-true", "finetune.max_length=384"], 2),
    # random tiny models get nothing right, so the protocols train on the reference solutions
    "protocols": (["setting=kd", "data.source=reference", "evaluation.samples=2", "evaluation.maj_k=[1,2]",
                   "evaluation.transfer=[gsm8k]", "evaluation.transfer_test_limit=4", "judge=se", "judge.subset=3",
                   "judge.max_new_tokens=8", "finetune.steps=8"], 2),
}


def test_every_sweep_file_has_a_reduced_run():
    assert sorted(REDUCED) == sorted(p.stem for p in SWEEPS.glob("*.yaml"))


@pytest.mark.parametrize("sweep", sorted(p.stem for p in SWEEPS.glob("*.yaml")))
def test_every_cell_of_every_sweep_composes(sweep):
    """Each cell the sweeper would launch composes and validates (typos in values fail here)."""
    config.register()
    search = [f"hydra.searchpath=[file://{ROOT / 'conf'}]"]  # cms.run's own config dir, behind --config-dir sweeps
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        params = compose(config_name=sweep, overrides=search, return_hydra_config=True).hydra.sweeper.params
        overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        [cells] = BasicSweeper.split_arguments(overrides, None)
        assert len(cells) >= 2
        for cell in cells:
            config.validate(compose(config_name=sweep, overrides=search + cell))
    if sweep == "lr_grid":
        assert str(params["finetune.lr"]) == "1e-7,5e-7,1e-6"
    if sweep == "crossover":
        assert str(params["budget.se_samples"]) == "1,3,9"


@pytest.fixture(scope="module")
def reduced(tmp_path_factory, cache_dir):
    """All the reduced sweeps, each in its folder under one parent (the report's input)."""
    import os

    parent = tmp_path_factory.mktemp("sweeps")
    env = {**os.environ, "CMS_CACHE_DIR": str(cache_dir), "CMS_OUTPUT_DIR": str(parent / "outputs")}

    def launch(sweep):
        overrides = REDUCED[sweep][0]
        return subprocess.run([sys.executable, "-m", "cms.run", "-m", "--config-dir", str(SWEEPS), "--config-name", sweep,
                               *TINY, *overrides, f"hydra.sweep.dir={parent / sweep}"],
                              env=env, cwd=parent, capture_output=True, text=True, timeout=900)

    with ThreadPoolExecutor(2) as pool:  # two at a time: the shared cache's locks keep each sample set drawn once
        procs = dict(zip(REDUCED, pool.map(launch, REDUCED)))
    for sweep, proc in procs.items():
        assert proc.returncode == 0, (sweep, proc.stderr[-3000:])
    return parent, {sweep: proc.stdout + proc.stderr for sweep, proc in procs.items()}


def results(parent: Path, sweep: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((parent / sweep).glob("*/results.json"))]


@pytest.mark.parametrize("sweep", sorted(REDUCED))
def test_reduced_sweep_runs(reduced, sweep):
    parent, _ = reduced
    rs = results(parent, sweep)
    assert len(rs) == REDUCED[sweep][1]
    by = lambda key: sorted(str(r[key]) for r in rs)  # noqa: E731
    if sweep == "number_vs_compute":  # compute-matched WC draws P_SE/P_WC samples, number-matched as many as SE
        low, number = sorted(rs, key=lambda r: r["budget"] != "low")
        assert number["samples_per_question"] == 1 and low["samples_per_question"] > 1
    if sweep == "coverage_diversity":
        assert by("keep") == ["all", "all", "one"] and sorted(r["samples_per_question"] for r in rs)[0] == 1
    if sweep == "subset_500":
        assert rs[0]["n_questions"] == 6
    if sweep == "price_matched":
        assert {r["model"]: r["samples_per_question"] for r in rs} == {"wc": 3, "se": 1}
    if sweep == "crossover":  # WC at 3x SE by budget.ratio
        assert sorted((r["se_samples"], r["model"], r["samples_per_question"]) for r in rs) == [(1, "se", 1), (1, "wc", 3), (2, "se", 2), (2, "wc", 6)]
    if sweep == "phase":  # size ratio x budget: WC draws ratio x SE's samples
        assert sorted((r["ratio_used"], r["se_samples"], r["model"], r["samples_per_question"]) for r in rs) == [
            (3, 1, "se", 1), (3, 1, "wc", 3), (3, 2, "se", 2), (3, 2, "wc", 6), (9, 1, "se", 1), (9, 1, "wc", 9), (9, 2, "se", 2), (9, 2, "wc", 18)]
    if sweep == "mix":  # the SE share of the budget buys SE samples, the rest WC samples: 8 questions, tiny WC draws 6 per SE sample
        assert sorted((r["mix_se"], r["mix_samples"]["se"], r["mix_samples"]["wc"]) for r in rs) == [(0.0, 0, 48), (0.5, 4, 24), (1.0, 8, 0)]
    if sweep == "lr_grid":
        assert by("lr") == ["0.0001", "0.001"]
    if sweep == "protocols":
        for r in rs:
            assert r["eval_samples"] == 2 and 0 <= r["pass1_mean"] <= 1 and r["pass1_ci95"] >= 0
            assert set(r) >= {"maj@1", "maj@2", "test_fpr", "test_fpr_judge"} and r["transfer"]["gsm8k"]["n"] == 4
            assert r["n_judged"] + r["judge_unparsed"] == 3


def test_report_writes_every_table_and_figure(reduced):
    parent, _ = reduced
    proc = subprocess.run([sys.executable, "-m", "cms.report", str(parent), "--wandb-mode", "offline"],
                          capture_output=True, text=True, timeout=600, cwd=parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (parent / "report.md").read_text()
    for title in ("## The data", "## Coverage and diversity at the compute-matched points", "## pass@1 after fine-tuning",
                  "## Evaluation protocols", "## False positives of the fine-tuned models", "## Crossover: accuracy against sampling FLOPs",
                  "## Where WC data wins: size ratio x budget", "## Mixed data: a share of the budget to SE samples", "## Figures", "FPR (judge)", "FPR (people)", "maj@2", "gsm8k (transfer)", "pass@1 (mean of k)", "relative gain"):
        assert title in text, title
    figures = sorted(p.name for p in (parent / "figures").glob("*.png"))
    assert {"accuracy.png", "crossover.png", "quality_curves.png", "phase.png"} <= set(figures)
    assert all((parent / "figures" / f).stat().st_size > 10_000 for f in figures)
    for f in figures:
        assert f"(figures/{f})" in text
    curves = json.loads((parent / "curves.json").read_text())
    arith_levels = {c["level"] for c in curves}
    assert {"all", "Level 1", "Level 4"} <= arith_levels
    assert all(len(c["k"]) == len(c["coverage"]) == len(c["diversity"]) for c in curves)
    # the report run logged to wandb offline under the sweep dir, one run
    assert len(list(parent.glob("wandb/offline-run-*/*.wandb"))) == 1
