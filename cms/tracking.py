"""wandb logging that can never cost a run its results.

Offline by default (``logger.mode=offline``: files under the run directory, no
network). Every wandb call is guarded: if wandb fails to start or to log, the
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
    def __init__(self, cfg: dict, run_dir: Path, config: dict, name: str, group: Optional[str]):
        self.run = None
        if cfg["backend"] == "none" or cfg["mode"] == "disabled":
            return
        try:
            import wandb

            self.run = wandb.init(
                project=cfg["project"], entity=cfg.get("entity"), mode=cfg["mode"], dir=str(run_dir),
                name=name, group=cfg.get("group") or group, tags=list(cfg.get("tags") or []), config=config,
                # one id per run directory: a requeued job resumes its wandb run instead of starting a second
                id=hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16], resume="allow",
                settings=wandb.Settings(init_timeout=cfg.get("init_timeout_s", 60), silent=True),
            )
        except Exception as err:  # wandb raises many kinds; none may cost the run its results
            log.warning("wandb failed to start (%s: %s); results stay in results.json", err.__class__.__name__, err)

    def _guard(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as err:
            log.warning("wandb %s failed (%s: %s); results stay in results.json", what, err.__class__.__name__, err)

    def curve(self, points: list[dict]) -> None:
        self._guard("log", lambda: [self.run.log({"train/loss": p["loss"], "train/lr": p["lr"]}, step=p["step"]) for p in points])

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
