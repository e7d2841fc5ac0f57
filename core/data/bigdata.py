"""Which engine filters a version, and filtering as a job the page can launch, follow and stop.

    filter_any(version, recipe, name, engine=None, ...) -> Path   memory up to IRIS_INMEMORY_ROWS rows,
                                                                 duckdb above (or the engine asked for)
    launch_filter(version, recipe, name, engine, address) -> job folder    `python -m core.data filter ...
                                                                 --job-dir` in its own process session
    job_dir(name)                                                that job's folder (status.json, job.log)

The job outlives the browser: its status.json says the pass, rows done, rows/s and ETA (core.data.progress);
Stop writes the STOP file, the job ends between pieces and keeps what it finished, and launching the same
filter again resumes from there.
"""
from __future__ import annotations

from pathlib import Path

from core import jobs, versions
from core.data import shards
from core.data.filters import DataRecipe
from core.data.progress import Stopped
from core.errors import IrisError
from core.paths import iris_home

ENGINES = ("memory", "duckdb", "ray")


def version_rows(version: str) -> int:
    rows = versions.load_manifest(version).get("rows", {})
    return int(rows.get("train", 0)) + int(rows.get("eval", 0))


def choose_engine(version: str, engine: str | None = None) -> str:
    if engine:
        if engine not in ENGINES:
            raise IrisError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}.")
        return engine
    return "duckdb" if version_rows(version) > shards.inmemory_rows() else "memory"


def filter_any(version: str, recipe: DataRecipe, name: str, eval_fraction: float | None = None,
               engine: str | None = None, address: str | None = None, chunk_rows: int | None = None,
               workers: int | None = None, job_dir: Path | None = None) -> Path:
    """Filter `version` into `name` with the chosen engine; with `job_dir`, keep its status.json current."""
    from core.data import engine_duckdb, store

    engine = choose_engine(version, engine)
    if job_dir is not None:
        jobs.update_status(job_dir, state="running", message=f"filtering with {engine}", error=None)
    try:
        if engine == "memory":
            if address:
                raise IrisError("--address is for --engine ray.")
            out = store.filter_version(version, recipe, name, eval_fraction)
        else:
            out = engine_duckdb.filter_big(version, recipe, name, eval_fraction, engine=engine, address=address,
                                           chunk_rows=chunk_rows or shards.CHUNK_ROWS, workers=workers,
                                           job_dir=job_dir)
    except Stopped as stop:
        if job_dir is not None:
            jobs.update_status(job_dir, state="stopped", message=f"{stop}; run it again to resume")
        raise IrisError(f"{stop}; finished pieces are kept: run the same command again to resume.") from None
    except BaseException as err:
        if job_dir is not None:
            jobs.mark_failed(job_dir, err)
        raise
    if job_dir is not None:
        jobs.update_status(job_dir, state="completed", message=f"saved version {name}", version=name)
    return out


def job_dir(name: str) -> Path:
    return iris_home() / "work" / f"job-filter-{name}"


def launch_filter(version: str, recipe: DataRecipe, name: str, engine: str | None = None,
                  address: str | None = None, eval_fraction: float | None = None) -> Path:
    """Start the filter as its own process (it survives the browser closing) and return its job folder."""
    versions.version_dir(name)
    if versions.exists(name):
        raise IrisError(f"dataset version {name!r} already exists (versions are immutable): choose another name.")
    folder = job_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    args = ["filter", version, "--recipe", folder / "recipe.yaml", "--name", name, "--job-dir", folder,
            "--engine", choose_engine(version, engine)]
    if address:
        args += ["--address", address]
    if eval_fraction is not None:
        args += ["--eval-fraction", eval_fraction]
    jobs.launch(folder, jobs.python_module_argv("core.data", *args))
    return folder
