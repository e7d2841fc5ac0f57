"""Shared fixtures: a fresh IRIS_HOME per test, with the embedded model materialised once per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("iris_session_home")


@pytest.fixture(scope="session")
def embedded_model_dir(session_home) -> Path:
    """The embedded SmolLM2 as a transformers folder, materialised once (≈1 min) for the whole session."""
    old = os.environ.get("IRIS_HOME")
    os.environ["IRIS_HOME"] = str(session_home)
    try:
        from core import models

        return models.materialise_embedded()
    finally:
        if old is None:
            os.environ.pop("IRIS_HOME", None)
        else:
            os.environ["IRIS_HOME"] = old


_MAIN = sys.modules["__main__"]


@pytest.fixture(autouse=True)
def _restore_main_module():
    """AppTest runs a page as `__main__` and leaves it there; a later test whose code starts `spawn` worker
    processes (the DuckDB engine's pool) would then re-run that page in every worker. Put pytest's back."""
    yield
    sys.modules["__main__"] = _MAIN


@pytest.fixture(autouse=True)
def iris_home(tmp_path, monkeypatch, request) -> Path:
    """Every test gets an empty workspace. Tests that need the embedded model ask for `embedded_model_dir`
    (or `home_with_model`), which links the session's materialised copy in."""
    home = tmp_path / "iris_home"
    monkeypatch.setenv("IRIS_HOME", str(home))
    monkeypatch.setenv("IRIS_WARM_START", "0")  # no idle warm training process per test (core.train.launch)
    return home


@pytest.fixture
def home_with_model(iris_home, embedded_model_dir) -> Path:
    from core.paths import models_dir

    link = models_dir() / embedded_model_dir.name
    if not link.exists():
        link.symlink_to(embedded_model_dir, target_is_directory=True)
    return iris_home


@pytest.fixture(scope="session")
def tiny_llama3_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with the real Llama-3 tokenizer and chat template."""
    from tests.helpers import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama3") / "model", tokenizer="llama-3")


@pytest.fixture(scope="session")
def llama3_256_dir(tmp_path_factory) -> Path:
    """Tiny Llama with the real Llama-3 vocab and rows of 256 (K-quants need multiples of 256), built once:
    the export, chat and evaluate tests read it, none writes it."""
    from tests.helpers import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("llama3_256") / "model", hidden=256, intermediate=512,
                           heads=4, kv_heads=2)


@pytest.fixture(scope="session")
def sharp_llama3_dir(tmp_path_factory) -> Path:
    """Tiny untied Llama-3 with large weights (init 0.3): varied tokens with clear winners, so greedy output is
    stable and a LoRA visibly moves the loss. Built once; read only."""
    from tests.helpers import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("sharp_llama3") / "model", tie_embeddings=False, init_std=0.3)


@pytest.fixture(scope="session")
def lora_only_export_home(tmp_path_factory, llama3_256_dir) -> Path:
    """A workspace holding run `lo` (a random LoRA on `llama3_256_dir`) and its LoRA-only f16 export `lo`
    (base GGUF + LoRA GGUF, verified), made once through `core.export.gguf.main`. Tests copy it in with
    `copy_lora_only_export`; none should change it."""
    from core.export.config import ExportConfig
    from core.export.gguf import main
    from tests.export_helpers import make_run

    home = tmp_path_factory.mktemp("lora_only_export") / "iris_home"
    old = os.environ.get("IRIS_HOME")
    os.environ["IRIS_HOME"] = str(home)
    try:
        from core.paths import runs_dir

        make_run(runs_dir(), "lo", str(llama3_256_dir), llama3_256_dir, checkpoints=(), final=True)
        main(ExportConfig(source="lo", quants=["f16"], mode="lora"))
    finally:
        if old is None:
            os.environ.pop("IRIS_HOME", None)
        else:
            os.environ["IRIS_HOME"] = old
    return home


@pytest.fixture
def copy_lora_only_export(iris_home, lora_only_export_home) -> Path:
    """This test's workspace with its own copy of run `lo` and export `lo` (≈65 MB: a copy, so a test that
    writes there cannot change what the next one reads); returns the export folder."""
    import shutil

    for part in ("runs/lo", "exports/lo"):
        shutil.copytree(lora_only_export_home / part, iris_home / part)
    return iris_home / "exports" / "lo"


def pytest_sessionfinish(session, exitstatus):
    """Free loaded llama.cpp models while the interpreter is still whole: a `Llama` collected during
    shutdown prints a harmless but alarming traceback (its C bindings are already gone)."""
    import gc
    import sys

    if "core.inference" in sys.modules:
        cache = sys.modules["core.inference"].default_cache()
        for entry in cache.loaded():
            cache.unload(entry["id"])
    if "streamlit" in sys.modules:
        import streamlit as st

        st.cache_resource.clear()
    gc.collect()
