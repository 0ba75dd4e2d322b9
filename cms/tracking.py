"""wandb logging that can never cost a run its results.

Offline by default (``logger.mode=offline``: files under the run directory, no
network). The run opens when fine-tuning starts (or, without fine-tuning, at the
end of the cell); fine-tuning logs its loss, lr and tokens/s to it live through Lightning's WandbLogger (every ``finetune.log_every``
steps). Every wandb call is guarded: if wandb fails to start or to log, the
failure is logged as a warning and the run goes on; results.json is written
before anything is sent to wandb.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


class Tracker:
    """The cell's wandb run: opened for fine-tuning, so the training curves arrive live, or at the end."""

    def __init__(self, cfg: dict, run_dir: Path, config: dict, name: str, group: Optional[str], key: str = ""):
        self.run, self.options = None, None
        if cfg["backend"] == "none" or cfg["mode"] == "disabled":
            return
        # one id per (run directory, settings): a requeued job resumes its wandb run instead of starting
        # a second; a rerun with other settings (rerun=true) gets a run of its own
        self.options = dict(
            project=cfg["project"], entity=cfg.get("entity"), mode=cfg["mode"], dir=str(run_dir),
            name=name, group=cfg.get("group") or group, tags=list(cfg.get("tags") or []),
            id=hashlib.sha256(f"{run_dir.resolve()}:{key}".encode()).hexdigest()[:16], resume="allow",
        )
        self.config, self.timeout = config, cfg.get("init_timeout_s", 60)

    def open(self) -> None:
        """Start (or resume) the run, once."""
        if self.options is None or self.run is not None:
            return
        try:
            import wandb

            self.run = wandb.init(**self.options, config=self.config, settings=wandb.Settings(init_timeout=self.timeout, silent=True))
        except Exception as err:  # wandb raises many kinds; none may cost the run its results
            log.warning("wandb failed to start (%s: %s); results stay in results.json", err.__class__.__name__, err)
            self.options = None

    def lightning(self, in_process: bool) -> Optional[dict]:
        """Arguments of Lightning's WandbLogger that log to this run. Fine-tuning in this process
        shares the open run; fine-tuning processes of their own get its id (resume="allow") and
        finish it, and this process opens it again afterwards."""
        if in_process:
            self.open()
            return {"experiment": self.run} if self.run is not None else None
        if self.options is None:
            return None
        spec = {("save_dir" if k == "dir" else k): v for k, v in self.options.items() if k != "entity" or v}
        return spec | {"log_model": False}

    def _guard(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as err:
            log.warning("wandb %s failed (%s: %s); results stay in results.json", what, err.__class__.__name__, err)

    def table(self, key: str, rows: list[dict]) -> None:
        def send():
            import wandb

            columns = list(rows[0]) if rows else []
            self.run.log({key: wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})

        self._guard("table", send)

    def summary(self, metrics: dict) -> None:
        self._guard("summary", lambda: self.run.summary.update({k: v for k, v in metrics.items() if v is not None}))

    def finish(self) -> None:
        self._guard("finish", lambda: self.run.finish())
