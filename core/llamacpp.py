"""Locate llama.cpp's own Python tools: the HF→GGUF converter, the LoRA converter, gguf-py, vocab GGUFs.

They ship inside the llama-cpp-python sdist of the pinned version (the installed wheel has none of
them). On first use we `pip download --no-binary :all:` that sdist into `~/.cache/iris/` and
extract only the parts we need; nothing of llama.cpp's is ever committed here. Set
`IRIS_LLAMA_CPP_DIR` to an existing llama.cpp checkout to use it instead.

Run as: python -m core.llamacpp setup    (fetch + extract + install gguf-py into this venv)
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import IrisError, cli_exit
from core.paths import cache_dir

PINNED_VERSION = "0.3.36"  # keep equal to requirements.txt's llama-cpp-python pin
# What we extract from vendor/llama.cpp/ of the sdist (prefix match).
WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/",
          "models/ggml-vocab-", "models/templates/", "LICENSE")


@dataclass(frozen=True)
class LlamaCppTools:
    root: Path

    @property
    def convert_hf(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    @property
    def convert_lora(self) -> Path:
        return self.root / "convert_lora_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.root / "gguf-py"

    @property
    def vocab_dir(self) -> Path:
        return self.root / "models"

    def vocab(self, name: str = "llama-bpe") -> Path:
        path = self.vocab_dir / f"ggml-vocab-{name}.gguf"
        if not path.exists():
            raise IrisError(f"no vocab GGUF named {name!r} in {self.vocab_dir}.")
        return path

    def template(self, name: str) -> str:
        """A chat template (Jinja) that llama.cpp ships, e.g. 'meta-llama-Llama-3.2-3B-Instruct'."""
        path = self.vocab_dir / "templates" / f"{name}.jinja"
        if not path.exists():
            raise IrisError(f"llama.cpp ships no template {name!r}.")
        return path.read_text(encoding="utf-8")


def installed_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return PINNED_VERSION


def _complete(root: Path) -> bool:
    return root.joinpath("convert_hf_to_gguf.py").exists() and root.joinpath("gguf-py", "gguf").is_dir()


def tools(fetch: bool = True) -> LlamaCppTools:
    """The llama.cpp tools, fetching and extracting the sdist on first use when `fetch`."""
    override = os.environ.get("IRIS_LLAMA_CPP_DIR")
    if override:
        root = Path(override).expanduser()
        if not _complete(root):
            raise IrisError(f"IRIS_LLAMA_CPP_DIR={root} is not a llama.cpp checkout "
                            "(convert_hf_to_gguf.py and gguf-py/ not found).")
        return LlamaCppTools(root)
    version = installed_version()
    root = cache_dir() / f"llama.cpp-{version}"
    if _complete(root):
        return LlamaCppTools(root)
    if not fetch:
        raise IrisError("llama.cpp's converter is not set up yet: run `python -m core.llamacpp setup`.")
    _extract(_sdist(version), root)
    return LlamaCppTools(root)


def _sdist(version: str) -> Path:
    target = cache_dir() / f"llama_cpp_python-{version}.tar.gz"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={version}", "-d", tmp],
            capture_output=True, text=True,
        )
        found = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not found:
            raise IrisError(f"could not download the llama-cpp-python {version} sdist (needed for llama.cpp's "
                            f"converter): {proc.stderr.strip()[-300:]}. Set IRIS_LLAMA_CPP_DIR to a llama.cpp "
                            "checkout instead.")
        os.replace(found[0], target)
    return target


def _extract(sdist: Path, root: Path) -> None:
    prefix = f"llama_cpp_python-{sdist.name.split('-')[1].removesuffix('.tar.gz')}/vendor/llama.cpp/"
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".tmp-{root.name}-"))
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                if not m.name.startswith(prefix):
                    continue
                rel = m.name[len(prefix):]
                if rel and rel.startswith(WANTED) and (m.isfile() or m.isdir()):
                    m.name = rel
                    members.append(m)
            tar.extractall(tmp, members=members, filter="data")
        if not _complete(tmp):
            raise IrisError(f"{sdist.name} does not contain llama.cpp's converter.")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_gguf_importable() -> None:
    """Make `import gguf` give llama.cpp's own gguf-py (transformers' GGUF loader needs it too)."""
    try:
        import gguf  # noqa: F401
        return
    except ImportError:
        pass
    sys.path.insert(0, str(tools().gguf_py))


def install_gguf_py() -> str:
    """pip-install the sdist's gguf-py into the current environment (so transformers sees `gguf`)."""
    t = tools()
    try:
        have = importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:
        have = None
    want = _gguf_py_version(t)
    if have != want:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", str(t.gguf_py)], check=True)
    return want


def _gguf_py_version(t: LlamaCppTools) -> str:
    for line in (t.gguf_py / "pyproject.toml").read_text().splitlines():
        if line.strip().startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="llama.cpp tools for Iris")
    parser.add_argument("command", choices=["setup", "where"], help="setup: fetch+extract+install gguf-py; where: print paths")
    args = parser.parse_args(argv)
    try:
        t = tools()
        if args.command == "setup":
            print(f"llama.cpp tools in {t.root}; gguf-py {install_gguf_py()} installed")
        else:
            print(t.root)
    except IrisError as err:
        cli_exit(err)


if __name__ == "__main__":
    main()
