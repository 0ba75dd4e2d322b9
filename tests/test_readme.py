"""The README's figures come from the code it ships with: the default grid, run fresh exactly as the
README says, writes the tables the README shows. ``CMS_README_UPDATE=1 pytest tests/test_readme.py``
rewrites the README's copy instead (then read the text around it again)."""

import difflib
import os
import re

import pytest

from conftest import ROOT

BLOCK = re.compile(r"(<!-- default-grid:[^\n]*-->\n)(.*?)(\n<!-- /default-grid -->)", re.S)


def tables(summary: str) -> str:
    """The tables of a summary.md (from its first section on)."""
    return summary[summary.index("## "):].strip()


@pytest.mark.slow
def test_the_readme_shows_what_the_default_grid_writes(readme_grid):
    """The grid (conftest.README_COMMAND, fresh) has run in the background since the session started."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = BLOCK.search(text)
    assert block, "README.md has no <!-- default-grid --> block"
    returncode = readme_grid["proc"].wait(timeout=850)
    stdout, stderr = ((readme_grid["root"] / name).read_text() for name in ("stdout", "stderr"))
    assert returncode == 0, stdout[-2000:] + stderr[-2000:]
    fresh = tables((readme_grid["sweep"] / "summary.md").read_text())
    if os.environ.get("CMS_README_UPDATE") == "1":
        readme.write_text(text[: block.start(2)] + fresh + text[block.end(2):])
        return
    shown = block.group(2).strip()
    assert shown == fresh, ("README.md's default-grid tables differ from a fresh run of its command; regenerate them with "
                            "CMS_README_UPDATE=1 pytest tests/test_readme.py and reread the text around them:\n"
                            + "\n".join(difflib.unified_diff(shown.splitlines(), fresh.splitlines(), "README.md", "fresh run", lineterm="")))
