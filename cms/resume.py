"""Reusing finished stages only when they were computed with the same settings.

Every stage that leaves a finished file in a run directory (results.json,
finetune.json and last.ckpt, evaluation summaries, judge verdicts) stores a
fingerprint: the settings that change its output. A later call reuses the file
only when its fingerprint matches; otherwise it stops with ``StaleError``, which
names the keys that differ and the two fixes, and leaves the files alone.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Optional

from cms import data

FIXES = ("To keep both, run into a new directory (another hydra.sweep.dir or hydra.run.dir, or out_dir); "
         "to recompute this cell, add rerun=true (its old outputs move to previous/ inside it).")


class StaleError(RuntimeError):
    """A finished stage computed with other settings than this call's."""


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object (long inputs such as training pairs)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out


# what a setting that one side lacks meant there: a setting added since, at None, is the behaviour from
# before it (off); an older cms wrote sampler.per_index_seed=true for every backend, and only vLLM reads it
SINCE = {"sampler.per_index_seed": True}


def differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every flattened key whose value differs (a key one side lacks counts as
    its ``SINCE`` value, else None)."""
    a, b = flatten(json.loads(json.dumps(old, default=str))), flatten(json.loads(json.dumps(new, default=str)))

    def value(d: dict, k: str):
        return d[k] if k in d else SINCE.get(k)

    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(set(a) | set(b)) if value(a, k) != value(b, k)]


def check(stored: Optional[dict], fingerprint: dict, where: Path, what: str) -> None:
    """Raise ``StaleError`` unless ``stored`` (a finished stage's fingerprint) equals ``fingerprint``."""
    if stored is None:
        raise StaleError(f"{where} holds {what} written without a record of its settings (an older cms), so it cannot "
                         f"be reused safely; it is kept. {FIXES}")
    diff = differences(stored, fingerprint)
    if diff:
        shown = "; ".join(diff[:12]) + (f"; and {len(diff) - 12} more" if len(diff) > 12 else "")
        raise StaleError(f"{where} holds {what} computed with other settings ({shown}); it is kept. {FIXES}")


def reuse(path: Path, fingerprint: dict, what: str) -> Optional[dict]:
    """The finished JSON at ``path`` if its stored ``fingerprint`` matches; None if there is none."""
    path = Path(path)
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    check(stored.get("fingerprint"), fingerprint, path, what)
    return stored


def sidecar(path: Path) -> Path:
    """Where the fingerprint of a file without room for one (jsonl, a checkpoint) is kept."""
    return path.with_name(path.name + ".fingerprint.json")


def reuse_file(path: Path, fingerprint: dict, what: str) -> bool:
    """Whether ``path`` exists and was written with ``fingerprint`` (kept in its sidecar)."""
    path = Path(path)
    if not path.exists():
        return False
    side = sidecar(path)
    check(json.loads(side.read_text())["fingerprint"] if side.exists() else None, fingerprint, path, what)
    return True


def mark(path: Path, fingerprint: dict) -> None:
    """Record the fingerprint of ``path`` in its sidecar (before the file is written)."""
    data.write_json(sidecar(Path(path)), {"fingerprint": fingerprint})


KEEP = (".hydra", "previous")  # what stays in a cell directory when its outputs are set aside (and the job's *.log)


def set_aside(run_dir: Path) -> Optional[Path]:
    """Move a cell's outputs to ``run_dir/previous/<time>/`` (``rerun=true``); nothing is deleted."""
    moving = [p for p in run_dir.iterdir() if p.name not in KEEP and p.suffix != ".log"]
    if not moving:
        return None
    dest = run_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for p in moving:
        p.rename(dest / p.name)
    return dest
