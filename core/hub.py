"""Is the Hugging Face hub reachable? One quick answer before any hub call, so offline costs ≤ 2 s.

    hub.reachable() -> bool          a TCP connect to the hub's host:443, cached for 30 s
    hub.why_unreachable()            the clause every page and CLI puts in its one sentence when it is not

Without this check, `datasets.load_dataset` and `snapshot_download` retry for ~25 s offline before
they fail. HF_HUB_OFFLINE=1 answers False at once; HF_ENDPOINT moves the host checked.
"""
from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlparse

TIMEOUT_S = 2.0  # one connect attempt; the hub answers in well under 1 s where it is reachable
CACHE_S = 30.0   # re-check at most this often (a page rerun must not pay the connect each time)
_last: tuple[float, str, bool] | None = None


def host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def reachable() -> bool:
    global _last
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    now = time.monotonic()
    if _last and _last[1] == host() and now - _last[0] < CACHE_S:
        return _last[2]
    try:
        with socket.create_connection((host(), 443), timeout=TIMEOUT_S):
            ok = True
    except OSError:  # no DNS, refused, timed out: all mean the hub cannot be used now
        ok = False
    _last = (now, host(), ok)
    return ok


def why_unreachable() -> str:
    """'the Hugging Face hub is not reachable from this machine (...)': callers add what and what to do."""
    why = "HF_HUB_OFFLINE=1" if os.environ.get("HF_HUB_OFFLINE") == "1" else f"no connection to {host()}:443"
    return f"the Hugging Face hub is not reachable from this machine ({why})"
