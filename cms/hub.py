"""Whether the Hugging Face hub can be reached, asked once per process with a short
timeout: without it, a missing dataset file or model fails at once with the fix
instead of after minutes of the hub clients' retries."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
TIMEOUT_S = 3.0


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def unreachable() -> str | None:
    """Why the hub cannot be reached (an offline variable, no connection), or None when it answers."""
    for var in OFFLINE_VARS:
        if _truthy(os.environ.get(var)):
            return f"{var}={os.environ[var]}"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=TIMEOUT_S).close()
    except OSError as err:
        return f"no connection to {url.hostname} ({err.__class__.__name__})"
    return None


def cached(repo_id: str, filename: str = "config.json") -> bool:
    """Whether the hub cache on this machine holds ``filename`` of ``repo_id`` (usable offline)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # an id the hub client rejects is not cached either
        return False
