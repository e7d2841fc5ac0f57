"""Long jobs (training, export, evaluation) run as subprocesses; their folder is the interface.

The launcher writes nothing but the command; the job itself keeps `status.json` up to date:

    {"state": "running", "pid": 1234, "step": 40, "total": 100, "eta_s": 312.5,
     "started": 1764000000.0, "updated": 1764000042.1, "message": "...", "error": null}

Before its first step a job may say what it is doing in `phase` (e.g. "tokenising"), with `phase_done` /
`phase_total` when that phase counts something (120 of 86892 rows); `progress_line` shows them.

`state` is one of queued, running, stopping, stopped, completed, failed. A job killed hard cannot
say so itself; `read_status` notices that its pid is gone and reports it as `died`, so a browser
refresh or an app restart always shows the truth on disk.

A graceful stop is a file (`STOP`) the job polls between steps; it then saves and exits. A hard
stop is SIGKILL to the job's whole process session.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from core.errors import IrisError, redact
from core.paths import REPO_ROOT, disk_full_error, is_disk_full, read_json, write_json

STATUS = "status.json"
STOP_FILE = "STOP"
LOG = "job.log"
ACTIVE = {"queued", "running", "stopping"}
FINAL = {"stopped", "completed", "failed", "died"}


def launch(job_dir: Path, argv: Sequence[str], log_name: str = LOG, env: dict | None = None) -> int:
    """Start `argv` (e.g. [sys.executable, "-m", "core.train", ...]) in its own process session.

    stdout and stderr go to `job_dir/log_name`. Returns the pid. Never uses a shell.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    current = read_status(job_dir)
    if current.get("state") in ACTIVE:
        raise IrisError(f"{job_dir.name} is already {current['state']}; stop it first.")
    (job_dir / STOP_FILE).unlink(missing_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # The job must find `core` however the app was started.
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
    log = open(job_dir / log_name, "ab")
    proc = subprocess.Popen(
        list(argv), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=full_env,
    )
    log.close()
    update_status(job_dir, state="queued", pid=proc.pid, started=time.time(), error=None,
                  message="starting", launched_argv=list(argv))
    return proc.pid


def python_module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def update_status(job_dir: Path, **fields: Any) -> dict:
    """Merge `fields` into status.json (atomic). Called by the job process, and by `launch`."""
    path = Path(job_dir) / STATUS
    status = read_json(path, default={}) or {}
    status.update(fields)
    status["updated"] = time.time()
    write_json(path, status)
    return status


def mark_failed(job_dir: Path, err: BaseException) -> None:
    """Record why a job ended: a user error's own sentence, the disk-full sentence when a writer ran out of
    space (core.paths.disk_full_error), or the exception's type and text."""
    if is_disk_full(err) and not isinstance(err, IrisError):
        err = disk_full_error(Path(job_dir), f"{Path(job_dir).name} (writing {_written_by(err)})")
    error = str(err) if isinstance(err, IrisError) else f"{type(err).__name__}: {err}"
    error = redact(error)  # a library's message may quote a token it was given
    update_status(job_dir, state="failed", error=error, message="failed")


def _written_by(err: BaseException) -> str:
    """The file a full disk stopped, when the error names one, else 'its files'."""
    name = getattr(err, "filename", None)
    return Path(name).name if name else "its files"


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def own_peak_rss_bytes() -> int | None:
    """This process's own peak resident memory (VmHWM), or None where /proc is missing. getrusage's ru_maxrss
    is not its own: Linux carries the parent's peak over exec, so a measuring child would report the peak of
    whatever started it."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), None)  # kB
    except OSError:
        return None


def read_status(job_dir: Path) -> dict:
    """status.json, with `state` corrected to `died` when an active job's process is gone."""
    status = read_json(Path(job_dir) / STATUS, default={}) or {}
    if status.get("state") in ACTIVE and not pid_alive(status.get("pid")):
        # Re-read: the job may have written its final state between our read and the pid check.
        status = read_json(Path(job_dir) / STATUS, default={}) or {}
        if status.get("state") in ACTIVE and not pid_alive(status.get("pid")):
            status["state"] = "died"
            status.setdefault("error", "the process ended without saying why (killed, or out of memory)")
    return status


# where each kind of job keeps its folder under IRIS_HOME, and the page that watches it
JOB_KINDS = (("training run", "runs", "*", "train"), ("export", "exports", "*", "export"),
             ("evaluation", "evals", "*", "evaluate"), ("data filter", "work", "job-filter-*", "data"))


def active_jobs() -> list[dict]:
    """Every job queued, running or stopping now, of every kind (training runs, exports, evaluations, data
    filter jobs), read from their folders: an app started after them finds them all. Each is {kind, name,
    state, progress, page, path}; a job whose process is gone is `died`, so it is not listed."""
    from core.paths import iris_home

    out = []
    for kind, sub, pattern, page in JOB_KINDS:
        root = iris_home() / sub
        for folder in sorted(root.glob(pattern)) if root.is_dir() else []:
            if not (folder / STATUS).is_file():
                continue
            status = read_status(folder)
            if status.get("state") in ACTIVE:
                out.append({"kind": kind, "name": folder.name.removeprefix("job-filter-"),
                            "state": status["state"], "progress": progress_line(status)[1], "page": page,
                            "path": str(folder)})
    return out


def active_job(kind: str) -> dict | None:
    """The first active job of `kind` (see `active_jobs`), for pages that reattach to it after a restart."""
    return next((j for j in active_jobs() if j["kind"] == kind), None)


def request_stop(job_dir: Path) -> None:
    """Ask a job to stop gracefully: it finishes the current step, saves, and exits."""
    # 'stopping' first, then the STOP file: the other way round a job that stops at once wrote 'stopped' and
    # exited before this wrote 'stopping' over it, and then read as died
    if read_status(job_dir).get("state") in ACTIVE:
        update_status(job_dir, state="stopping")
    (Path(job_dir) / STOP_FILE).write_text(str(time.time()))


def stop_requested(job_dir: Path) -> bool:
    return (Path(job_dir) / STOP_FILE).exists()


def kill(job_dir: Path) -> None:
    """Hard stop: SIGKILL the job's process session. The last complete checkpoint survives."""
    status = read_status(job_dir)
    pid = status.get("pid")
    if pid and pid_alive(pid):
        try:
            os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(50):
            if not pid_alive(pid):
                break
            time.sleep(0.1)
    if status.get("state") in ACTIVE:
        update_status(job_dir, state="stopped", message="killed", error=None)


def wait(job_dir: Path, timeout_s: float = 600, poll_s: float = 0.5) -> dict:
    """Block until the job reaches a final state (tests and CLIs use this)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = read_status(job_dir)
        if status.get("state") in FINAL:
            return status
        time.sleep(poll_s)
    raise TimeoutError(f"{job_dir} still {read_status(job_dir).get('state')} after {timeout_s:.0f} s")


def tail(path: Path, max_bytes: int = 8000) -> str:
    """The end of a log file, for the pages' log view."""
    path = Path(path)
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - max_bytes))
        return f.read().decode("utf-8", errors="replace")


def progress_line(status: dict, unit: str = "steps") -> tuple[float, str]:
    """(fraction done, one line) for a job's status: state, step/total in `unit`, ETA while running, message.
    Every page's progress bar says the same things the same way."""
    state, step, total = status.get("state", "not started"), status.get("step") or 0, status.get("total") or 0
    unit = status.get("unit") or unit  # a job whose passes count different things says which (rows, bands, pairs)
    text = f"{state}: {step}/{total or '?'} {unit}"
    phase = status.get("phase") if state in ACTIVE else None  # what a job does before its first step
    if phase:
        done, of = status.get("phase_done"), status.get("phase_total")
        text += f" · {phase}" + (f" {done:,}/{of:,}" if of else "")
        if of and not total:
            return min(1.0, (done or 0) / of), text
    if status.get("eta_s") and state == "running":
        text += f", ETA {status['eta_s'] / 60:.1f} min"
    if status.get("message") and status.get("message") != state:
        text += f" · {status['message']}"
    return (min(1.0, step / total) if total else 0.0), text
