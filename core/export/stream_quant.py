"""Quantize an f16 GGUF while llama.cpp's converter is still writing it (#25).

The converter writes its f16 GGUF header first and then each tensor in turn on one core; quantizing
(≈ 80% of an export's CPU) used to start only once the whole file was done. `follow` runs beside it,
in the export process: it parses the header as soon as it is on disk and quantizes each tensor as soon
as its bytes are, with ggml's own `ggml_quantize_chunk` (the libggml llama-cpp-python ships: f16 → f32
→ quantize, exactly what `llama_model_quantize` does), into the GGUF that llama.cpp's `llama_model_quantize` would write from the finished f16: its metadata (the
f16's keys, then `general.quantization_version` and `general.file_type` moved to the end, as llama.cpp
sets them), its tensor order (layer number, then name: `llama_model_loader`'s weights_map) and offsets,
each tensor written at its final place as soon as it is quantized. So there is no pass after the last
tensor (llama.cpp's copy of the 0.8 GB was ≈ 2–4 s on one core after everything else, on a 1B model).
When not every tensor's type is reproduced here (`final_types`), the file keeps the f16's order and
llama.cpp's quantize makes the real file from it, only copying the tensors that already have their type.

The per-tensor types are llama.cpp's `llama_tensor_get_type` for q4_k_m / q5_k_m (llama-quant.cpp,
llama-cpp-python 0.3.36): tied embedding → q6_K, every other attn_v / ffn_down by `use_more_bits`
(counted in llama.cpp's tensor order: layer number, then name), the rest the ftype's K type, with its
fallback when a row is not a multiple of 256 (q4_K → q5_0, q5_K → q5_1, q6_K → q8_0, else f16).
Only the matrices of a plain transformer block and the embeddings are quantized here; 1-D tensors are
copied as llama.cpp copies them. A wrong guess cannot reach the user: once the f16 is complete, a dry run
of llama.cpp's quantize on it (`core.export.convert.planned_types`: every tensor's type, nothing written)
must give every tensor the type it has here, else the export quantizes from the f16 as before; in the
f16-order case llama.cpp also refuses to re-quantize a tensor whose type differs from its choice. The
q4_k_m / q5_k_m hash tests against llama.cpp's own quantize pin the bytes.
"""
from __future__ import annotations

import ctypes
import os
import re
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

F32, F16, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = 0, 1, 6, 7, 8, 12, 13, 14  # ggml_type ids
BLOCK = {F32: 1, F16: 1, Q5_0: 32, Q5_1: 32, Q8_0: 32, Q4_K: 256, Q5_K: 256, Q6_K: 256}  # elements per block
FALLBACK = {Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}  # llama.cpp's tensor_type_fallback for these
STREAMED = {"q4_k_m": Q4_K, "q5_k_m": Q5_K}  # quant → its default tensor type
FTYPE = {"q4_k_m": 15, "q5_k_m": 17}  # llama.h's LLAMA_FTYPE_MOSTLY_Q4_K_M / _Q5_K_M: general.file_type
QNT_VERSION = 2  # ggml's GGML_QNT_VERSION: general.quantization_version
GGUF_VERSION = 3  # the GGUF version ggml writes
# keys llama.cpp's quantize sets last (in this order) or drops, whatever the f16 had
SET_LAST, DROPPED = ("general.quantization_version", "general.file_type"), ("split.no", "split.count", "split.tensors.count")
ARCHS = ("llama", "qwen2", "qwen3")  # no arch-specific rules for these in llama_tensor_get_type_impl
MATRIX = re.compile(r"blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_up|ffn_gate|ffn_down)\.weight")
SLAB_BYTES = 2 * 1024**2  # f16 source bytes quantized at a time (+2× that as f32): the export process stays small
CHUNK_ELEMENTS = 256 * 1024  # elements quantized per ggml call (≈ 10–40 ms of one core): one slab is many calls
POLL_S = 0.05  # how often the file being written is looked at again
META_KEYS = ("general.architecture", "tokenizer.chat_template", "tokenizer.ggml.pre")  # what export.json reports
# GGUF value type → bytes (8 = string and 9 = array are parsed)
VALUE_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


@dataclass
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    """ggml's ne: dims[0] is the row length."""
    type: int
    offset: int
    """From the start of the data section."""


class Incomplete(Exception):
    """The header is not all on disk yet."""


def parse_header(f, spans: dict | None = None) -> tuple[int, dict, list[TensorInfo], int]:
    """(end of the KV section, the scalar KV values, tensor infos, start of the data section), read from the
    binary file `f` at its start in small buffered reads: the ≈ 10 MB of a 128k vocabulary are never held
    at once (this runs while the converter is at its peak). `spans`, when given, gets key → (start, end)
    of each KV entry's bytes in the file."""
    def read(n: int) -> bytes:
        nonlocal pos
        out = f.read(n)
        if len(out) < n:
            raise Incomplete
        pos += n
        return out

    def take(fmt: str):
        out = struct.unpack(fmt, read(struct.calcsize(fmt)))
        return out[0] if len(out) == 1 else out

    def string() -> str:
        return read(take("<Q")).decode("utf-8", "replace")

    def value(vtype: int):
        if vtype == 8:
            return string()
        if vtype == 9:
            etype, n = take("<I"), take("<Q")
            for _ in range(n):
                value(etype)
            return None
        return take({0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                     10: "<Q", 11: "<q", 12: "<d"}[vtype])

    pos = 0
    f.seek(0)
    magic, _version, n_tensors, n_kv = take("<4sIQQ")
    if magic != b"GGUF":
        raise ValueError("not a GGUF file")
    kv = {}
    for _ in range(n_kv):
        start = pos
        key = string()
        kv[key] = value(take("<I"))
        if spans is not None:
            spans[key] = (start, pos)
    kv_end = pos
    tensors = []
    for _ in range(n_tensors):
        name = string()
        dims = tuple(take("<Q") for _ in range(take("<I")))
        tensors.append(TensorInfo(name, dims, take("<I"), take("<Q")))
    align = kv.get("general.alignment") or 32
    return kv_end, kv, tensors, -(-pos // align) * align


def target_types(kv: dict, tensors: list[TensorInfo], quant: str) -> dict[str, int] | None:
    """Tensor name → the type llama.cpp's quantize gives it, for the tensors quantized here (the rest are
    copied); None when this model is not one whose types are reproduced here."""
    arch = kv.get("general.architecture")
    n_layer = kv.get(f"{arch}.block_count")
    if quant not in STREAMED or arch not in ARCHS or not n_layer or (kv.get(f"{arch}.expert_count") or 0) > 1 \
            or (arch == "llama" and n_layer == 80):  # 70B: llama.cpp bumps attn_v by model size
        return None
    default = STREAMED[quant]
    names = {t.name for t in tensors}
    tied = "output.weight" not in names
    n_attn_v = sum("attn_v.weight" in n or "attn_qkv.weight" in n or "attn_kv_b.weight" in n for n in names)
    if any("attn_qkv.weight" in n or "attn_kv_b.weight" in n for n in names):
        return None

    def more_bits(i: int, n: int) -> bool:
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    out, i_attn_v, i_ffn_down = {}, 0, 0
    for t in llama_order(tensors):  # use_more_bits counts attn_v / ffn_down in this order
        if len(t.dims) != 2 or t.dims[1] == 1:  # 1-D (norms) are never quantized; 3-D (experts) not here
            continue
        new = default
        if t.name == "output.weight" or (tied and t.name == "token_embd.weight"):
            new = Q8_0 if t.dims[0] % BLOCK[default] else Q6_K
        elif t.name == "token_embd.weight":
            pass
        elif not MATRIX.fullmatch(t.name):
            continue
        elif "attn_v.weight" in t.name:
            new = Q6_K if more_bits(i_attn_v, n_attn_v) else default
            i_attn_v += 1
        elif "ffn_down" in t.name:
            new = Q6_K if more_bits(i_ffn_down, n_layer) else default
            i_ffn_down += 1
        if t.dims[0] % BLOCK[new]:
            new = FALLBACK.get(new, new)
            if t.dims[0] % BLOCK[new]:
                new = F16
        if new != t.type and t.type in (F16, F32):  # other sources (bf16) are left to llama.cpp's pass
            out[t.name] = new
    return out


def final_types(tensors: list[TensorInfo], types: dict[str, int]) -> dict[str, int] | None:
    """Every tensor's type in llama.cpp's quantized file, when `types` (`target_types`) covers every tensor
    llama.cpp would quantize: the rest are 1-D (never quantized) or already of the type llama.cpp keeps
    (a row length no K- or legacy type fits: f16 stays f16). None when some tensor is not reproduced here."""
    out = {}
    for t in tensors:
        if t.name in types:
            out[t.name] = types[t.name]
        elif len(t.dims) < 2 or all(d == 1 for d in t.dims[1:]) or \
                (t.type == F16 and (MATRIX.fullmatch(t.name) or t.name in ("token_embd.weight", "output.weight"))):
            out[t.name] = t.type
        else:
            return None
    return out


def llama_order(tensors: list[TensorInfo]) -> list[TensorInfo]:
    """llama.cpp's tensor order in a quantized file: `llama_model_loader`'s weights_map, sorted by layer
    number (-1 outside the blocks), then by name."""
    def key(t: TensorInfo):
        m = re.match(r"blk\.(\d+)\.", t.name)
        return (int(m.group(1)) if m else -1, t.name.encode())
    return sorted(tensors, key=key)


def ggml() -> ctypes.CDLL:
    """libggml-base from llama-cpp-python's package, without importing llama_cpp (the export process stays lean)."""
    import importlib.util

    lib = Path(importlib.util.find_spec("llama_cpp").submodule_search_locations[0]) / "lib" / "libggml-base.so"
    dll = ctypes.CDLL(str(lib))
    dll.ggml_quantize_chunk.restype = ctypes.c_size_t
    dll.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    dll.ggml_row_size.restype = ctypes.c_size_t
    dll.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    dll.ggml_type_name.restype = ctypes.c_char_p
    dll.ggml_type_name.argtypes = [ctypes.c_int]
    # f16 → f32 with the CPU backend's SIMD row conversion (exact, like every f16 → f32): ≈ 1.8 G values/s
    # where numpy's astype manages ≈ 0.12 G, which was ≈ 10 s of CPU on a 1B model
    cpu = ctypes.CDLL(str(lib.with_name("libggml-cpu.so")))
    cpu.ggml_cpu_init()
    cpu.ggml_cpu_fp16_to_fp32.restype = None
    cpu.ggml_cpu_fp16_to_fp32.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    dll.fp16_to_fp32 = cpu.ggml_cpu_fp16_to_fp32
    cpu.ggml_cpu_fp32_to_fp16.restype = None  # the other way (round to nearest even), for core.export.predict
    cpu.ggml_cpu_fp32_to_fp16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    dll.fp32_to_fp16 = cpu.ggml_cpu_fp32_to_fp16
    return dll


def follow(src: Path, out: Path, quant: str, threads: int, done: threading.Event, predictor=None) -> dict | None:
    """Quantize `src` (an f16 GGUF being written) into `out` tensor by tensor as its bytes land.

    `done` is set once the writer has finished or failed. `predictor`: a `core.export.predict.Predictor` whose
    blocks are reused for a tensor whose written bytes hash-equal its prediction. Returns {"path", "final",
    "types", "quantized", "predicted", "tensors", "meta", "seconds"} (final: `out` is llama.cpp's quantized file
    itself, else it is in the f16's order for llama.cpp's pass; types: tensor name → ggml type name in `out`;
    predicted: tensors whose blocks came from the predictor; meta: the header's META_KEYS; seconds: from the
    start until the header was on disk, spent waiting for the writer's bytes after it, and in all) or None
    when nothing can be streamed (unsupported model, or the writer failed first)."""
    started = time.time()
    while not src.exists():
        if done.is_set():
            return None
        time.sleep(POLL_S)
    with open(src, "rb") as f:
        header = _wait_for_header(f, done)
        if header is None:
            return None
        (kv_end, kv, tensors, data_start), spans = header
        types = target_types(kv, tensors, quant)
        if not types:
            return None
        header_at, waited = time.time(), [0.0]
        result = _write(f, spans, tensors, data_start, types, quant, out, max(1, threads), done,
                        kv.get("general.alignment") or 32, waited, predictor)
    if result:  # the f16's metadata is the quants' too (llama.cpp's quantize copies it): no second read
        result["meta"] = {k: kv[k] for k in META_KEYS if kv.get(k) is not None}
        result["seconds"] = {"header": round(header_at - started, 1), "waiting": round(waited[0], 1),
                             "total": round(time.time() - started, 1)}
    return result


def _wait_for_header(f, done: threading.Event):
    """Parse the header once it is all on disk (the converter writes it in one go before any tensor)."""
    while True:
        size = os.fstat(f.fileno()).st_size
        if size:
            try:
                spans = {}
                return parse_header(f, spans), spans
            except Incomplete:
                pass
        if done.is_set() and os.fstat(f.fileno()).st_size == size:
            return None
        time.sleep(0.2)


def _write(f, spans: dict, tensors: list[TensorInfo], data_start: int, types: dict[str, int], quant: str, out: Path,
           threads: int, done: threading.Event, align: int, waited: list[float], predictor=None) -> dict | None:
    import numpy as np

    lib = ggml()
    final = final_types(tensors, types)
    layout = llama_order(tensors) if final else tensors  # the order of the tensors' data in `out`
    kv_keys = list(spans)
    if final:  # llama.cpp's quantize: the f16's keys, these two set again (so last), split keys removed
        kv_keys = [k for k in kv_keys if k not in SET_LAST + DROPPED]
    head = struct.pack("<4sIQQ", b"GGUF", GGUF_VERSION, len(tensors), len(kv_keys) + (len(SET_LAST) if final else 0))
    tail = b"".join(_kv_u32(k, v) for k, v in zip(SET_LAST, (QNT_VERSION, FTYPE.get(quant)))) if final else b""
    ti, offset, sizes, at = bytearray(), 0, {}, {}
    for t in layout:  # same names and dims
        new = types.get(t.name, t.type)
        sizes[t.name] = lib.ggml_row_size(new, t.dims[0]) * int(np.prod(t.dims[1:]))
        name = t.name.encode()
        ti += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(t.dims))
        ti += struct.pack(f"<{len(t.dims)}Q", *t.dims) + struct.pack("<IQ", new, offset)
        at[t.name] = offset
        offset += -(-sizes[t.name] // align) * align
    meta_bytes = len(head) + sum(spans[k][1] - spans[k][0] for k in kv_keys) + len(tail) + len(ti)
    out_start = -(-meta_bytes // align) * align
    assert final or out_start == data_start, "tensor info changed length"
    pool, predicted = ThreadPoolExecutor(threads), 0
    with open(out, "wb") as dst:
        dst.write(head)
        for key in kv_keys:  # each entry's bytes verbatim (≈ 10 MB with a 128k vocab), 1 MB at a time
            start, end = spans[key]
            for pos in range(start, end, 1 << 20):
                dst.write(os.pread(f.fileno(), min(1 << 20, end - pos), pos))
        dst.write(tail + bytes(ti) + bytes(out_start - meta_bytes))
        for t in sorted(tensors, key=lambda t: t.offset):  # as the converter writes them
            src_bytes = lib.ggml_row_size(t.type, t.dims[0]) * int(np.prod(t.dims[1:]))
            t0 = time.time()
            if not _wait_for(f, data_start + t.offset + src_bytes, done):
                return None
            waited[0] += time.time() - t0
            new = types.get(t.name, t.type)
            guess = predictor.take(t.name) if predictor and new != t.type else None
            dst.seek(out_start + at[t.name])  # the padding after each tensor stays a hole: zeros when read
            if new == t.type:
                dst.write(os.pread(f.fileno(), src_bytes, data_start + t.offset))
            elif guess and _predicted(f, data_start + t.offset, src_bytes, t, new, sizes[t.name], guess):
                predictor.blocks(guess, dst)
                predicted += 1
            else:
                if guess:  # a wrong guess: this model's bytes are not predicted right, so spend no more CPU on them
                    predictor.stop.set()
                _quantize(f, data_start + t.offset, t, new, lib, pool, dst)
        dst.truncate(out_start + offset)  # up to the last tensor's padding
    pool.shutdown()
    return {"path": out, "final": bool(final), "quantized": len(types), "predicted": predicted, "tensors": len(tensors),
            "types": {t.name: lib.ggml_type_name(types.get(t.name, t.type)).decode() for t in tensors}}


def _kv_u32(key: str, value: int) -> bytes:
    """One KV entry of GGUF type uint32 (4)."""
    name = key.encode()
    return struct.pack("<Q", len(name)) + name + struct.pack("<II", 4, value)


def _predicted(f, start: int, nbytes: int, t: TensorInfo, new: int, size: int, guess) -> bool:
    """Whether the written f16 bytes of `t` are the ones `guess` (a core.export.predict.Prediction) quantized."""
    import hashlib

    if t.type != F16 or guess.type != new or guess.nbytes != size:
        return False
    digest = hashlib.sha256()
    for at in range(0, nbytes, 1 << 24):  # 16 MB at a time: the embedding alone is 0.5 GB
        digest.update(os.pread(f.fileno(), min(1 << 24, nbytes - at), start + at))
    return digest.digest() == guess.digest


def _wait_for(f, end: int, done: threading.Event) -> bool:
    while os.fstat(f.fileno()).st_size < end:
        if done.is_set() and os.fstat(f.fileno()).st_size < end:
            return False
        time.sleep(POLL_S)
    return True


def _quantize(f, start: int, t: TensorInfo, new: int, lib, pool, dst) -> None:
    """One tensor, a slab of rows at a time: f16/f32 → f32 (exact) → ggml_quantize_chunk on the pool's threads.

    Two sets of slab buffers: this thread reads and converts the next slab while the pool quantizes the
    current one, so the pool's threads do not wait on it between slabs."""
    import numpy as np

    n_per_row, rows = t.dims[0], int(np.prod(t.dims[1:]))
    row_src, row_dst = n_per_row * (2 if t.type == F16 else 4), lib.ggml_row_size(new, n_per_row)
    slab = max(1, SLAB_BYTES // row_src)
    # many small parts taken in turn (as llama.cpp's workers take chunks): on a shared machine a fixed
    # half per thread leaves one core idle whenever the other half is descheduled
    step = max(1, CHUNK_ELEMENTS // n_per_row)
    buffers = []
    for _ in range(2):
        raw = np.empty(min(slab, rows) * row_src, dtype=np.uint8)
        buffers.append((raw, raw.view(np.float32) if t.type == F32 else np.empty(min(slab, rows) * n_per_row, np.float32)))
    pending = None
    for i, first in enumerate(range(0, rows, slab)):
        raw, x = buffers[i % 2]  # the slab two back, which last used these, was written out below
        n = min(slab, rows - first)
        got = os.preadv(f.fileno(), [memoryview(raw)[: n * row_src]], start + first * row_src)
        assert got == n * row_src, f"{t.name}: read {got} of {n * row_src} bytes"
        if t.type == F16:
            lib.fp16_to_fp32(raw.ctypes.data, x.ctypes.data, n * n_per_row)
        y = np.empty(n * row_dst, dtype=np.uint8)
        # ctypes releases the GIL for the call: the parts run in parallel
        parts = [pool.submit(lib.ggml_quantize_chunk, new, x.ctypes.data + a * n_per_row * 4,
                             y.ctypes.data + a * row_dst, 0, min(n, a + step) - a, n_per_row, None)
                 for a in range(0, n, step)]
        if pending:
            _write_slab(*pending, dst, t.name)
        pending = parts, y
    _write_slab(*pending, dst, t.name)


def _write_slab(parts, y, dst, name: str) -> None:
    written = sum(part.result() for part in parts)
    assert written == y.nbytes, f"{name}: ggml wrote {written} bytes, expected {y.nbytes}"
    dst.write(y.data)
