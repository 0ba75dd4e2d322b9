"""cms's SLURM launcher: the submitit plugin's, plus a jobs.json manifest, ``detach=true``
(submit and return) and a refused submission that names its fix. See cms.slurm."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf, open_dict

from cms import preflight
from cms.slurm import MANIFEST

log = logging.getLogger(__name__)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs_params, cells = [], []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            jobs_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
            cells.append({"num": idx, "overrides": list(overrides), "dir": str(sweep_dir / self._subdir(overrides, idx))})
        try:
            jobs = executor.map_array(self, *zip(*jobs_params))
        except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as e:
            if preflight.new_folder is not None:  # leave nothing behind: the folders this command made
                shutil.rmtree(preflight.new_folder, ignore_errors=True)
            print(f"error: SLURM refused the grid's submission: {' '.join(str(e).split())[-600:]}. "
                  "Fix the launcher settings it names: hydra.launcher.partition (`sinfo -s` lists partitions; or "
                  "CMS_SLURM_PARTITION), hydra.launcher.account, hydra.launcher.timeout_min, hydra.launcher.gpus_per_node. "
                  "Nothing was queued; results of earlier runs are untouched.", file=sys.stderr)
            raise SystemExit(2) from None
        for cell, job in zip(cells, jobs):
            cell["job_id"] = job.job_id
        manifest = sweep_dir / MANIFEST
        previous = json.loads(manifest.read_text()) if manifest.exists() else {"cells": []}
        manifest.write_text(json.dumps({"folder": str(executor.folder), "cells": previous["cells"] + cells}, indent=2))
        log.info("submitted %d cells (%s); follow them with: python -m cms.slurm status %s",
                 len(jobs), ", ".join(j.job_id for j in jobs), sweep_dir)
        if self.config.get("detach"):
            return []
        return [j.results()[0] for j in jobs]

    def _subdir(self, overrides: Sequence[str], idx: int) -> str:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        return str(cfg.hydra.sweep.subdir)


