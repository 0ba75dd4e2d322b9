"""The Hydra entry point: compose one cell's config and run it (``cms.cell``).

    python -m cms.run -m model=wc,se setting=kd,self,w2s      # the grid; --help says more

Before any cell starts, ``cms.preflight`` checks every cell's inputs; a user's
mistake ends in one line that names the cause and the fix. The pipeline's
modules are imported only when a cell runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cms import config

log = logging.getLogger("cms")
# conf/hydra/launcher/submitit_*.yaml extend the plugin's presets of the same name on purpose (same fields)
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")


def main() -> None:
    """``python -m cms.run`` and ``cms-run``: a misspelt key ends in one line before Hydra composes anything."""
    problem = config.unknown_override(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    run()


@hydra.main(config_path=str(config.CONF), config_name="config", version_base="1.3")
def run(cfg: DictConfig) -> dict:
    from cms import cell, progress

    progress.quiet()
    hc = HydraConfig.get()
    group = Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None
    try:
        return cell.run_cell(cfg, Path(hc.runtime.output_dir), group)
    except cell.USER_ERRORS as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        log.error("interrupted: what this cell finished is kept (samples, verdicts, training state); "
                  "the same command resumes it (%s)", hc.runtime.output_dir)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
