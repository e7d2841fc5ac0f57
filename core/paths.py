"""Where every user artifact lives: one root, `IRIS_HOME` (default `./workspace`).

    IRIS_HOME/
      datasets/<version>/     immutable dataset versions (train.parquet, eval.parquet, recipe.yaml, manifest.json)
      runs/<run>/             training runs (config.yaml, status.json, metrics.jsonl, train.log, checkpoints/)
      exports/<export>/       GGUF exports (*.gguf, export.json, report.json)
      models/<name>/          base models materialised as transformers checkpoints
      transcripts/            saved chats (JSON)
      evals/<plan>/           evaluation plans, answers and scores
      uploads/                files uploaded through the UI

This module owns those paths and the small atomic-write helpers every writer uses, so a crash never
leaves a half-written file that looks complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from core.errors import IrisError

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBDIRS = ("datasets", "runs", "exports", "models", "transcripts", "evals", "uploads")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def iris_home() -> Path:
    """The workspace root; created on first use. Read from the environment each call (tests change it)."""
    home = Path(os.environ.get("IRIS_HOME") or REPO_ROOT / "workspace").expanduser().resolve()
    for sub in SUBDIRS:
        (home / sub).mkdir(parents=True, exist_ok=True)
    return home


def datasets_dir() -> Path:
    return iris_home() / "datasets"


def runs_dir() -> Path:
    return iris_home() / "runs"


def exports_dir() -> Path:
    return iris_home() / "exports"


def models_dir() -> Path:
    return iris_home() / "models"


def transcripts_dir() -> Path:
    return iris_home() / "transcripts"


def evals_dir() -> Path:
    return iris_home() / "evals"


def uploads_dir() -> Path:
    return iris_home() / "uploads"


def cache_dir() -> Path:
    """Downloaded tools (llama.cpp's converter) live outside git and outside the workspace."""
    path = Path(os.environ.get("IRIS_CACHE") or Path.home() / ".cache" / "iris")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str, what: str = "name") -> str:
    """Names become folder names: letters, digits, '.', '_' and '-' only, at most 100 characters."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise IrisError(
            f"{what} {shown} is not usable: use letters, digits, '.', '_' or '-' "
            "(start with a letter or digit, at most 100 characters)."
        )
    return name


def allowed_roots() -> list[Path]:
    """Folders the pages may read or write: IRIS_HOME plus the roots in IRIS_ALLOWED_DIRS (os.pathsep-separated)."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get("IRIS_ALLOWED_DIRS", "").split(os.pathsep)
             if p.strip()]
    return [iris_home(), *extra]


def check_folder(path: str | Path, what: str = "folder") -> Path:
    """A folder typed into a page, resolved (symlinks followed) and refused unless it lies under IRIS_HOME or
    an IRIS_ALLOWED_DIRS root. A relative path is taken from IRIS_HOME. The CLIs, run by the owner, skip this."""
    text = str(path)
    if not text.strip() or any(c in text for c in "\0\n\r"):
        raise IrisError(f"{what} {text!r} is not a usable path: give a folder under {iris_home()}.")
    given = Path(text.strip()).expanduser()
    if not given.is_absolute():
        given = iris_home() / given
    resolved = given.resolve()
    roots = allowed_roots()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        via = f" (it leads to {resolved} through a symlink)" if resolved != Path(os.path.abspath(given)) else ""
        raise IrisError(f"{what} {text!r} is outside the folders this app may use{via}: use a folder under "
                        f"{' or '.join(str(r) for r in roots)}; the owner can allow more roots in IRIS_ALLOWED_DIRS.")
    return resolved


def safe_filename(name: str, what: str = "file name") -> str:
    """An uploaded file's name made safe to store: no folders, no control characters, at most 100 characters,
    only letters, digits, '.', '_' and '-' (others become '_'); the suffix (.jsonl, ...) is kept."""
    base = Path(str(name).replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    suffix = suffix[:16]
    stem = stem[: 100 - len(suffix) - 1] if suffix else stem[:100]
    safe = f"{stem}.{suffix}" if suffix and stem else (stem or "")
    if not safe or safe in (".", ".."):
        raise IrisError(f"{what} {name!r} has no usable characters: rename the file (letters, digits, '.', '_', '-').")
    return check_name(safe, what)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, fsync, then rename over `path`."""
    write_text(path, json.dumps(data, indent=2, default=str))


def write_text(path: Path, text: str) -> None:
    """Write `path` atomically (see write_json). The temporary file's name carries the writer's pid
    (`.NAME.PID.RANDOM.tmp`), so what a killed writer left can be told from a live writer's (`writer_pid`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def writer_pid(tmp: Path) -> int | None:
    """The writer's pid in a write_text temporary file's name (`.NAME.PID.RANDOM.tmp`), None for other files."""
    parts = Path(tmp).name.split(".")  # ["", NAME..., PID, RANDOM, "tmp"]
    return int(parts[-3]) if len(parts) >= 5 and parts[-1] == "tmp" and parts[-3].isdigit() else None


def read_json(path: Path, default: Any = None) -> Any:
    """Read JSON; a missing or torn file gives `default` (writers are atomic, so torn means foreign)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def read_jsonl(path: Path) -> list[dict]:
    """Every complete JSON line of an append-only log (a line torn by a killed writer is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# what writers say when the file system is full: errno 28 from Python, Arrow ("[errno 28] No space left on
# device"), safetensors' Rust error ("StorageFull"), a llama.cpp tool's last log line
_DISK_FULL = re.compile(r"No space left on device|StorageFull|errno 28\b|Disk quota exceeded", re.IGNORECASE)


def is_disk_full(err: BaseException | str | None) -> bool:
    """Did `err` (or an exception it was raised from) come from a full disk? A string is a log line or message."""
    import errno

    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, str):
            return bool(_DISK_FULL.search(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _DISK_FULL.search(str(err)):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def disk_full_error(where: Path, what: str, needs: int | None = None, at_least: bool = False) -> IrisError:
    """The one sentence for a full disk: what needed space, about how much (bytes; `at_least` when only the
    part written before the disk ran out is known), and how much is free now on the disk holding `where`."""
    free = free_disk_bytes(where)
    need = "" if needs is None else f" needs {'more than' if at_least else 'about'} {needs / 1e6:,.1f} MB"
    return IrisError(f"the disk is full: {what}{need}, {free / 1e6:,.1f} MB free on the disk holding {where}. "
                     "Free some space, then try again.")


def tree_bytes(folder: Path) -> int:
    """Bytes in the files under `folder` (0 when it is gone)."""
    folder = Path(folder)
    if folder.is_file():
        return folder.stat().st_size
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False, what: str | None = None) -> Iterator[Path]:
    """Build a folder under a hidden temporary name and rename it into place only if the block succeeds.

    A failure (or a kill) leaves at most a `.tmp-*` folder, which listings ignore, and never a
    partial `final`. Existing folders are refused unless `overwrite`. A full disk while the block writes
    becomes one IrisError (`disk_full_error`) naming `what` was saved (default: the folder's name).
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise IrisError(f"{final.name} already exists in {final.parent}: choose another name.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        yield tmp
        if final.exists() and overwrite:
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as err:
        written = tree_bytes(tmp) if is_disk_full(err) and not isinstance(err, IrisError) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if written is not None:
            raise disk_full_error(final.parent, f"saving {what or final.name}", written, at_least=True) from err
        raise


def listed(folder: Path) -> list[Path]:
    """Visible sub-folders (hidden temporaries excluded), newest first."""
    if not folder.exists():
        return []
    items = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(items, key=lambda p: p.stat().st_mtime, reverse=True)


def free_disk_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line with a single write + fsync; a torn tail from a kill is closed off first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = "\n" + line  # the previous writer died mid-line; that fragment is ignored on read
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
