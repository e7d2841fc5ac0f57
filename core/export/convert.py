"""llama.cpp's own tools, driven from Python: HF folder → f16 GGUF, LoRA → GGUF, GGUF → quantized GGUF.

The converters are llama.cpp's scripts (`core.llamacpp.tools()`), run as subprocesses with this
venv's python; they import the gguf-py that sits beside them. Quantization is llama.cpp's C
`llama_model_quantize` through llama-cpp-python, with a cap on the rows it keeps in memory
(`max_buf_size`), so even a 128k-vocab embedding is quantized in slabs instead of as one 1 GB f32 copy.

The scripts run unmodified through `python -m core.export.convert SCRIPT ARGS` (see `run_script`), which only
adds allocator housekeeping: it hands the heap the tokenizer freed back to the OS before the tensors
are written, which is where the converter peaks.

Every output is written under a hidden temporary name and renamed only when complete.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

from core.errors import IrisError
from core.paths import disk_full_error, free_disk_bytes, is_disk_full

QUANT_BUF_BYTES = 64 * 1024**2  # rows of one tensor kept in memory while quantizing
DISK_SLACK_BYTES = 64 * 1024**2  # a failed quantize with less free than this beside its output ran out of disk
MERGE_SLAB_BYTES = 8 * 1024**2  # rows of an untouched tensor cast at a time while merging on the fly
TRIM_EVERY_S = 0.5  # how often a running llama.cpp script's free heap pages are returned to the OS
# glibc's mallopt: blocks under this many bytes come from the heap and are reused (see run_script)
HEAP_BLOCK_BYTES = 256 * 1024**2
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)


def tmp_name(final: Path) -> Path:
    """Hidden and not ending in .gguf, so nothing lists a partial file as a model."""
    return final.with_name(f".{final.name}.tmp")


def run_merge(base_dir: Path, adapter_dir: Path, out: Path, dtype: str = "f16") -> dict:
    """`python -m core.export.merge` in its own process (its torch memory is gone before the converter starts)."""
    import json

    lines = _run_tool([sys.executable, "-m", "core.export.merge", str(base_dir), str(adapter_dir), str(out), "--dtype", dtype],
                      "merging the LoRA")
    return json.loads(lines[-1])


def _run_tool(argv: list[str], what: str, out: Path | None = None, threads: int | None = None) -> list[str]:
    """Run a llama.cpp script, echoing its output into our log; one IrisError sentence on failure (the
    disk-full one when the script ran out of space writing `out`). `threads`: its OpenMP / MKL threads."""
    from core.llamacpp import tools
    from core.paths import REPO_ROOT

    path = [str(tools().gguf_py), str(REPO_ROOT), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    env.pop("HF_TOKEN", None)  # the converter needs no token; keep it out of its environment and log
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=_die_with_parent)
    tail: list[str] = []
    for line in proc.stdout:
        sys.stdout.write(line)
        tail = (tail + [line.rstrip()])[-20:]
    sys.stdout.flush()
    if proc.wait() != 0:
        text = "\n".join(tail)
        last = tail[-1] if tail else ""
        if last.startswith("error: "):  # an IrisError from our own CLI (python -m core.export.merge)
            raise IrisError(last.removeprefix("error: "))
        if is_disk_full(text):
            raise disk_full_error(Path(out).parent if out else Path.cwd(), what + (f" ({Path(out).name})" if out else ""))
        if "pre-tokenizer was not recognized" in text:
            raise IrisError(f"{what}: llama.cpp does not recognise this model's tokenizer (BPE pre-tokenizer); "
                            "export a model whose tokenizer llama.cpp knows (Llama-3, SmolLM2, ...).")
        if "not supported" in text.lower():
            raise IrisError(f"{what}: llama.cpp cannot convert this architecture ({_last_error(tail)}).")
        raise IrisError(f"{what} failed ({_last_error(tail)}); the full output is in the job log.")
    return tail


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL me when the export process dies (Linux PR_SET_PDEATHSIG), so a
    kill -9 of the export never leaves a converter writing into the work folder the next run deletes."""
    try:
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG = 1, SIGKILL = 9
    except (OSError, AttributeError):
        pass


def _last_error(tail: list[str]) -> str:
    for line in reversed(tail):
        if "Error" in line or "error" in line:
            return line.strip()[-300:]
    return (tail[-1] if tail else "no output")[-300:]


def script_argv(*args) -> list[str]:
    """The command that runs llama.cpp's script (the first argument after the optional `--after MARKER` and
    `--merge BASE ADAPTER DTYPE`) with the rest as its arguments, through `run_script` (this venv's python)."""
    return [sys.executable, "-m", "core.export.convert", *map(str, args)]


def run_script(argv: list[str]) -> None:
    """Run as: python -m core.export.convert SCRIPT [ARGS...]

    Runs llama.cpp's SCRIPT exactly as `python SCRIPT ARGS` would (its own `__main__`, `sys.argv` and
    script folder first on `sys.path`), with one addition: a daemon thread that calls glibc's
    `malloc_trim(0)` every TRIM_EVERY_S seconds. With `--merge BASE ADAPTER DTYPE` the converter also
    reads its tensors merged on the fly (`merge_on_the_fly`) instead of from the model folder's weights.

    Why: convert_hf_to_gguf.py loads the model's tokenizer through transformers before it writes any
    tensor. For Llama-3's 128k vocab that is ~0.25 GB of small C allocations (tokenizers' maps, Python
    objects over 512 bytes); once freed they sit between live allocations, so glibc keeps them and RSS
    still counts them while the 0.5 GB embedding is memory-mapped for writing: that sum is the whole
    export's peak. `malloc_trim(0)` returns every free page inside the heap to the OS (madvise), which
    glibc never does by itself. Measured on the Llama-3.2-1B config: converter peak 1.33 → 1.07 GB,
    byte-identical GGUF, same wall time.

    And with `--merge`, every merged tensor passes through a few temporaries of 32–64 MB (bf16 rows, their
    fp32 copy, the addmm result, the f16 cast): glibc maps blocks that big afresh for each one and unmaps
    them on free, so the kernel faults in and zeroes ≈ 8 GB of new pages for a 1B model (≈ 1.7 M faults,
    most of the converter's 12 s of system CPU). `mallopt` keeps blocks under HEAP_BLOCK_BYTES in the heap,
    where the next tensor reuses them, and leaves returning them to `malloc_trim` (the 0.5 GB embedding
    is still mapped and unmapped on its own). Measured on the 1B bench, converter alone: faults 1.72 M →
    0.92–1.16 M, system CPU 12.9 → 8.8–10.3 s (three runs), peak 1.10–1.12 GB, byte-identical GGUF.
    """
    import ctypes
    import runpy
    import threading
    import time

    merge = None
    while argv[:1] in (["--after"], ["--merge"]):
        if argv[0] == "--after":
            _warm_up_and_wait(Path(argv[1]))
            argv = argv[2:]
        else:
            merge, argv = argv[1:4], argv[4:]
    if not argv:
        raise SystemExit("usage: python -m core.export.convert [--after MARKER] [--merge BASE ADAPTER DTYPE] "
                         "SCRIPT [ARGS...]")
    try:
        libc = ctypes.CDLL(None)
        trim = getattr(libc, "malloc_trim", None)  # glibc only; elsewhere the script runs as is
    except (OSError, TypeError):
        trim = None
    if trim is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, HEAP_BLOCK_BYTES)

    def trim_forever() -> None:
        while True:
            time.sleep(TRIM_EVERY_S)
            trim(0)

    if trim is not None:
        threading.Thread(target=trim_forever, name="malloc_trim", daemon=True).start()
    script = str(Path(argv[0]).resolve())
    sys.argv = [script, *argv[1:]]
    sys.path[0] = str(Path(script).parent)  # what `python SCRIPT` puts first (llama.cpp's `conversion` package)
    _without_sklearn()
    if merge:
        merge_on_the_fly(*merge)
    runpy.run_path(script, run_name="__main__")


def _without_sklearn() -> None:
    """Tell transformers scikit-learn is absent: it imports scikit-learn (and scipy) whenever it is installed,
    for assisted generation's candidate tuning, which a converter never runs; that import is ≈ 3.5 s of CPU
    on 2 cores, in the converter's start (scikit-learn is here for sentence-transformers)."""
    try:
        import transformers.utils as utils
    except ImportError:
        return
    utils.is_sklearn_available = lambda: False


def merge_on_the_fly(base_dir: str, adapter_dir: str, dtype: str) -> None:
    """Make llama.cpp's converter read base + LoRA merged, tensor by tensor (`core.export.merge.plan_merge`),
    instead of the weights of the folder it is given (which then only needs config and tokenizer files).

    Why: merging into a folder first writes the whole model once more (2.5 GB for a 1B model in f16) only
    for the converter to read it back; here each merged tensor goes from the base's bytes to the GGUF.
    The converter sees exactly the tensors (names, order, f16 values) the merged folder would hold, so
    the GGUF is byte-identical to converting that folder (pinned by a test). Patched: its one reader of
    weights, `ModelBase.index_tensors` (name → a lazy tensor, evaluated when the writer reaches it).
    """
    from functools import partial

    from conversion.base import LazyTorchTensor, ModelBase  # llama.cpp's, next to the script

    from core.export.merge import plan_merge

    # the converter holds a whole tensor while writing it (the 0.5 GB embedding of a 1B model is the export's
    # peak), so the slabs cast into it stay small: measured on the 1B bench, 64 MB slabs 1.34 GB, 8 MB 1.16 GB
    tensors, _ = plan_merge(Path(base_dir), Path(adapter_dir), dtype, slab_bytes=MERGE_SLAB_BYTES)
    dtypes = LazyTorchTensor._dtype_str_map  # safetensors dtype name → torch dtype

    def index_tensors(self, remote_hf_model_id=None) -> dict:
        out = {}
        for t in tensors:
            meta = LazyTorchTensor.meta_with_dtype_and_shape(dtypes[t.dtype], t.shape)
            gen = partial(LazyTorchTensor, meta=meta, args=(t,), func=_whole) if self.lazy else partial(_whole, t)
            if item := self.filter_tensors((t.name, gen)):
                out[item[0]] = item[1]
        return out

    ModelBase.index_tensors = index_tensors


def _whole(t):
    """A MergedTensor's value as one torch tensor: its slabs of rows copied into one buffer (no concat copy)."""
    import torch

    slabs = t.slabs()
    first = next(slabs)
    if tuple(first.shape) == tuple(t.shape):
        return first
    out = torch.empty(t.shape, dtype=first.dtype)
    out[: len(first)] = first
    row = len(first)
    for slab in slabs:
        out[row: row + len(slab)] = slab
        row += len(slab)
    return out


def _warm_up_and_wait(marker: Path) -> None:
    """Import what the converter imports first (torch, transformers: ≈ 10 s on 2 cores), then wait for
    `marker` (its input is complete) or `marker`.failed (it will never be: exit quietly). While it
    waits it holds ≈ 0.45 GB beside the merge's ≈ 0.5 GB peak: under the converter's own later peak."""
    import time

    import torch  # noqa: F401
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401

    failed = marker.with_name(marker.name + ".failed")
    while not marker.exists():
        if failed.exists():
            raise SystemExit(3)
        time.sleep(0.1)


def convert_hf(model_dir: Path, out: Path, outtype: str = "f16", after: Path | None = None,
               merge: tuple[Path, Path, str] | None = None, torch_threads: int | None = None) -> Path:
    """`convert_hf_to_gguf.py model_dir --outtype f16` into `out` (atomic).

    `after`: start now, but convert only once the file `after` exists (the merge writing `model_dir`
    creates it when done): the converter's imports then overlap the merge. If `after`.failed appears
    instead, the converter exits and this raises.
    `merge`: (base folder, adapter folder, merge dtype): convert base + LoRA merged on the fly; `model_dir`
    then only needs the merged model's config and tokenizer files (`core.export.merge.write_side_files`).
    `torch_threads`: the converter's torch threads (its merges and casts), when other work holds the other cores."""
    from core.llamacpp import tools

    tmp = tmp_name(out)
    tmp.unlink(missing_ok=True)
    wait = ["--after", str(after)] if after else []
    wait += ["--merge", *map(str, merge)] if merge else []
    try:
        _run_tool(script_argv(*wait, tools().convert_hf, model_dir, "--outfile", tmp, "--outtype", outtype),
                  "converting to GGUF", out, threads=torch_threads)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def convert_lora(adapter_dir: Path, base_dir: Path, out: Path, outtype: str = "f16") -> Path:
    """`convert_lora_to_gguf.py --base base_dir adapter_dir` into `out` (atomic)."""
    from core.llamacpp import tools

    tmp = tmp_name(out)
    tmp.unlink(missing_ok=True)
    try:
        _run_tool(script_argv(tools().convert_lora, "--base", base_dir, "--outfile", tmp, "--outtype", outtype,
                              adapter_dir), "converting the LoRA adapter to GGUF", out)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def quantize(src: Path, out: Path, quant: str, threads: int = 0) -> Path:
    """`llama_model_quantize(src → out)` to q4_k_m / q5_k_m / q8_0 / f16 (atomic)."""
    import llama_cpp

    from core.export.config import QUANT_TABLE

    if quant not in QUANT_TABLE:
        raise IrisError(f"unknown quant type {quant!r}: choose from {', '.join(QUANT_TABLE)}.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TABLE[quant].ftype)
    params.nthread = threads or (os.cpu_count() or 1)
    params.max_buf_size = QUANT_BUF_BYTES
    tmp = tmp_name(out)
    tmp.unlink(missing_ok=True)
    try:
        sys.stdout.flush()
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.exists():
            written = tmp.stat().st_size if tmp.exists() else 0
            if free_disk_bytes(out.parent) < DISK_SLACK_BYTES:  # llama.cpp says only "failed": look at the disk
                raise disk_full_error(out.parent, f"quantizing to {out.name}", written, at_least=True)
            raise IrisError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc}); see the job log.")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def planned_types(src: Path, quant: str) -> dict[str, str]:
    """Tensor name → the ggml type name llama.cpp's quantize gives it when making `quant` from the GGUF `src`:
    a dry run of `llama_model_quantize` (nothing written; ≈ 0.3 s on a 1B f16), its per-tensor log lines read.

    A tensor it would convert logs "... type = f16, size = 4.00 MiB -> 1.12 MiB (q4_K)"; one it keeps, "...
    type = f32, size = 0.008 MiB"."""
    import re

    import llama_cpp
    import llama_cpp._logger as default_log

    from core.export.config import QUANT_TABLE

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TABLE[quant].ftype)
    params.dry_run = True
    lines: list[bytes] = []

    @llama_cpp.llama_log_callback
    def keep(level, text, user_data):
        lines.append(text)

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp_name(Path(src))).encode(), ctypes.byref(params))
    finally:
        llama_cpp.llama_log_set(default_log.llama_log_callback, ctypes.c_void_p(0))
    log = b"".join(lines).decode("utf-8", "replace")
    found = re.findall(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\w+), size =[^\n]*?(?:\((\w+)\))?$",
                       log, re.MULTILINE)
    if rc != 0 or not found:
        raise IrisError(f"llama.cpp could not plan {quant} for {Path(src).name} (code {rc}).")
    return {name: new or old for name, old, new in found}


def gguf_metadata(path: Path, keys: tuple[str, ...] = ("general.architecture", "general.file_type",
                                                         "tokenizer.chat_template", "tokenizer.ggml.pre")) -> dict:
    """A few metadata fields of a GGUF, read by llama.cpp itself with only the vocabulary loaded
    (≈ 1 s; gguf-py's reader parses every one of a 128k vocabulary's strings first: ≈ 20 s)."""
    import llama_cpp

    try:
        meta = llama_cpp.Llama(str(path), vocab_only=True, verbose=False).metadata
    except Exception as err:  # llama.cpp refuses the file: say which, not a traceback
        raise IrisError(f"{Path(path).name} is not a readable GGUF model ({err}).") from err
    return {k: int(meta[k]) if meta[k].lstrip("-").isdigit() and k != "tokenizer.chat_template" else meta[k]
            for k in keys if k in meta}


if __name__ == "__main__":
    run_script(sys.argv[1:])
