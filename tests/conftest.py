"""Shared fixtures: offline everything, one cache of tiny models per session."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CMS_DATA_DIR", ROOT.parent / "shared" / "data"))


def pytest_configure(config):
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ["WANDB_SILENT"] = "true"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["CMS_DATA_DIR"] = str(DATA)


def _slurm_answers() -> bool:
    """Whether a SLURM controller answers ``sinfo`` (the binary alone is not a cluster)."""
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


README_COMMAND = ["-m", "model=wc,se", "setting=kd,self,w2s"]  # the README's default grid, nothing added
README_GRID = pytest.StashKey[dict]()


def start_readme_grid(config) -> dict:
    """Start the README's default grid, fresh (its own empty cache: the toy models are trained as a
    newcomer's are), in the background at the lowest CPU priority, once per session: it takes about 6
    minutes alone, and so fills the cores that the other tests leave idle (a third of them in CI)."""
    if README_GRID not in config.stash:
        root = Path(tempfile.mkdtemp(prefix="cms-readme-"))
        env = {**os.environ, "CMS_CACHE_DIR": str(root / "fresh-cache"), "CMS_OUTPUT_DIR": str(root / "outputs")}
        with open(root / "stdout", "w") as out, open(root / "stderr", "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "cms.run", *README_COMMAND, f"hydra.sweep.dir={root / 'sweep'}"],
                                    env=env, cwd=root, stdout=out, stderr=err, preexec_fn=lambda: os.nice(19))
        config.stash[README_GRID] = {"proc": proc, "root": root, "sweep": root / "sweep"}
    return config.stash[README_GRID]


def _needs_readme_grid(item) -> bool:
    return "readme_grid" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config, items):
    import torch

    readme = [item for item in items if _needs_readme_grid(item)]
    items[:] = [item for item in items if item not in readme] + readme  # last: its grid runs meanwhile

    no_gpu = pytest.mark.skip(reason="needs CUDA (and vLLM for the vLLM sampler): none on this machine")
    no_slurm = pytest.mark.skip(reason="needs a SLURM cluster: sinfo does not answer (bash ../shared/slurm/up.sh starts one)")
    slurm = None
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "slurm" in item.keywords:
            slurm = _slurm_answers() if slurm is None else slurm
            if not slurm:
                item.add_marker(no_slurm)


def pytest_collection_finish(session):
    if not session.config.option.collectonly and any(map(_needs_readme_grid, session.items)):
        start_readme_grid(session.config)


def pytest_sessionfinish(session):
    grid = session.config.stash.get(README_GRID, None)
    if grid:
        if grid["proc"].poll() is None:  # the session ended early (-x, Ctrl-C)
            grid["proc"].kill()
            grid["proc"].wait()
        shutil.rmtree(grid["root"], ignore_errors=True)


@pytest.fixture(scope="session")
def readme_grid(request) -> dict:
    """The README's default grid, started in the background when the session began."""
    return start_readme_grid(request.config)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cms_cache")


@pytest.fixture
def env(cache_dir, tmp_path, monkeypatch):
    """Environment for a cms run: outputs under tmp_path, the shared session cache."""
    monkeypatch.setenv("CMS_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("CMS_OUTPUT_DIR", str(tmp_path / "outputs"))
    return {**os.environ, "CMS_CACHE_DIR": str(cache_dir), "CMS_OUTPUT_DIR": str(tmp_path / "outputs")}


def composed_family(name: str, *overrides: str) -> dict:
    """A family group as a run composes it (its student comes from the family/student group)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=[f"family={name}", *overrides]).family, resolve=True)


@pytest.fixture(scope="session")
def tiny_family():
    return composed_family("tiny")
