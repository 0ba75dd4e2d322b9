"""The README's figures come from the code it ships with: the default grid, run fresh exactly as the
README says, writes the tables the README shows. ``CMS_README_UPDATE=1 pytest tests/test_readme.py``
rewrites the README's copy instead (then read the text around it again)."""

import difflib
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

BLOCK = re.compile(r"(<!-- default-grid:[^\n]*-->\n)(.*?)(\n<!-- /default-grid -->)", re.S)
COMMAND = ["-m", "model=wc,se", "setting=kd,self,w2s"]  # the README's command, nothing added


def tables(summary: str) -> str:
    """The tables of a summary.md (from its first section on)."""
    return summary[summary.index("## "):].strip()


@pytest.mark.slow
def test_the_readme_shows_what_the_default_grid_writes(env, tmp_path):
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = BLOCK.search(text)
    assert block, "README.md has no <!-- default-grid --> block"
    sweep = tmp_path / "sweep"
    run_env = {**env, "CMS_CACHE_DIR": str(tmp_path / "fresh-cache")}  # fresh: the toy models are trained as a newcomer's are
    proc = subprocess.run([sys.executable, "-m", "cms.run", *COMMAND, f"hydra.sweep.dir={sweep}"], env=run_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    fresh = tables((sweep / "summary.md").read_text())
    if os.environ.get("CMS_README_UPDATE") == "1":
        readme.write_text(text[: block.start(2)] + fresh + text[block.end(2):])
        return
    shown = block.group(2).strip()
    assert shown == fresh, ("README.md's default-grid tables differ from a fresh run of its command; regenerate them with "
                            "CMS_README_UPDATE=1 pytest tests/test_readme.py and reread the text around them:\n"
                            + "\n".join(difflib.unified_diff(shown.splitlines(), fresh.splitlines(), "README.md", "fresh run", lineterm="")))
