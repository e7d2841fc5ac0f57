"""Where warm processes (core.train.launch) leave their marks, and what a Launch now would find: shared by the
launcher and the estimate without either importing the other."""
from __future__ import annotations

import os
from pathlib import Path

from core import jobs


def warm_dir() -> Path:
    from core.paths import iris_home

    return iris_home() / "cache" / "warm"


def warm_enabled() -> bool:
    """IRIS_WARM_START=0 turns warm processes off (the tests do: each would hold ~0.5 GB for 30 min)."""
    return os.environ.get("IRIS_WARM_START", "1") != "0"


def warm_ready(base_model: str = "") -> str:
    """What a Launch now would find: "model" (a warm process ready with `base_model` loaded: the embedded one),
    "imports" (one ready), or "" (none: a new Python starts). For the estimate; claims nothing."""
    from core.models import is_embedded

    folder = warm_dir()
    ready = warm_enabled() and folder.exists() and any(jobs.pid_alive(int(m.stem)) for m in folder.glob("*.ready"))
    return ("model" if is_embedded(base_model) else "imports") if ready else ""
