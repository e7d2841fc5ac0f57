"""Quantize, before llama.cpp's converter writes them, the tensors whose f16 bytes are known in advance (#25).

The converter spends its first ≈ 20 s (imports, tokenizer, metadata) on one core before it writes any
tensor byte, so `core.export.stream_quant` has nothing to quantize and the second core idles. Yet the
tensors the LoRA does not touch (the embedding, every projection it was not trained on) reach the GGUF
as a plain cast of the base's values to f16 (`core.export.merge.plan_merge`; the converter keeps f16
as is), so their bytes can be computed now from the base's safetensors. `Predictor` does that on one
thread, tensor by tensor, the converter's last tensors first (so it meets the follower, which starts
at the front, as late as possible): base → f32 → f16 with ggml's row conversions, sha256 of those f16
bytes, then ggml's `ggml_quantize_chunk` of their f32 values to the type llama.cpp will give the tensor
(`stream_quant.target_types`), appended to a file beside the GGUF.

A prediction is only a guess, and never decides a byte: the follower reuses its blocks only when the
sha256 of the f16 bytes the converter actually wrote equals the prediction's (same input bytes, type
and row length → the same ggml output) and quantizes the written bytes itself otherwise. A wrong guess
costs CPU the second core had free; the first one stops the predictor.

Used by `core.export.gguf.convert_streaming`: `Predictor(base, adapter, "f16", quant, path).start()`,
passed to `stream_quant.follow`, which calls `take(name)` per tensor; `close()` at the end.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from core.export import stream_quant as sq

# the converter's names for a llama-style HF model (gguf-py's tensor map, the entries that matter here)
LAYER_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
PERMUTED = (".attn_q.", ".attn_k.")  # the converter reorders these rows (llama's rope layout): not a plain cast
SLAB_ELEMENTS = 512 * 1024  # elements converted and quantized at a time (≈ 5 MB of buffers: the peak is tight)


@dataclass
class Guess:
    name: str
    """The tensor's name in the GGUF."""
    source: object
    """core.export.merge.TensorInfo of the base tensor it is a plain cast of."""
    type: int
    """ggml type llama.cpp's quantize gives it."""


@dataclass
class Prediction:
    type: int
    digest: bytes
    """sha256 of the predicted f16 bytes (the converter's bytes for the tensor, if the guess is right)."""
    offset: int
    """Where its quantized blocks start in the predictions file."""
    nbytes: int


def gguf_name(hf_name: str) -> str | None:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name)
    return f"blk.{m.group(1)}.{LAYER_NAMES[m.group(2)]}.weight" if m and m.group(2) in LAYER_NAMES else None


def plan(base_dir: Path, adapter_dir: Path, dtype: str, quant: str) -> list[Guess]:
    """The tensors worth predicting, in the converter's order (the base's, as `plan_merge` gives it to the
    converter); [] when the merge is not to f16 or the model is not one whose types are reproduced."""
    from core.export.merge import plan_merge

    try:
        config = json.loads((Path(base_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    arch = config.get("model_type")
    if dtype != "f16" or quant not in sq.STREAMED or arch not in sq.ARCHS:
        return []
    tensors, _ = plan_merge(Path(base_dir), Path(adapter_dir), dtype)
    named = [(gguf_name(t.name), t) for t in tensors if len(t.shape) == 2]
    infos = [sq.TensorInfo(name, tuple(reversed(t.shape)), sq.F16, 0) for name, t in named if name]
    kv = {"general.architecture": arch, f"{arch}.block_count": config.get("num_hidden_layers"),
          f"{arch}.expert_count": config.get("num_local_experts") or config.get("num_experts") or 0}
    types = sq.target_types(kv, infos, quant) or {}
    return [Guess(name, t.cast_of, types[name]) for name, t in named
            if name in types and t.cast_of is not None and t.cast_of.dtype in ("BF16", "F16", "F32")
            and not any(p in name for p in PERMUTED)]


class Predictor:
    """Makes `Prediction`s on a thread, last guess first, until every guess is made, claimed or stopped."""

    def __init__(self, guesses: list[Guess], path: Path):
        self.guesses, self.path = guesses, Path(path)
        self.done: dict[str, Prediction] = {}
        self.claimed: set[str] = set()  # names the follower has reached: never started after that
        self.busy: str | None = None
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="predict", daemon=True)

    def start(self) -> Predictor:
        self.thread.start()
        return self

    def take(self, name: str) -> Prediction | None:
        """`name`'s prediction, waiting while it is being made (one tensor at most); None if there is none."""
        with self.changed:
            self.claimed.add(name)
            while self.busy == name:
                self.changed.wait()
            return self.done.get(name)

    def blocks(self, p: Prediction, dst) -> None:
        """Copy a prediction's quantized blocks into the file `dst`, 16 MB at a time."""
        with open(self.path, "rb") as src:
            for at in range(0, p.nbytes, 1 << 24):
                dst.write(os.pread(src.fileno(), min(1 << 24, p.nbytes - at), p.offset + at))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        lib = sq.ggml()
        with open(self.path, "wb") as out:
            for guess in reversed(self.guesses):
                with self.changed:
                    if self.stop.is_set():
                        return
                    if guess.name in self.claimed:
                        continue
                    self.busy = guess.name
                made = None
                try:
                    made = _predict(guess, lib, out, self.stop)
                finally:
                    with self.changed:
                        if made is not None:
                            self.done[guess.name] = made
                        self.busy = None
                        self.changed.notify_all()


def _predict(guess: Guess, lib, out, stop: threading.Event) -> Prediction | None:
    """One tensor, a slab of rows at a time: base → f32 → f16 (hashed) → f32 → ggml_quantize_chunk."""
    import numpy as np

    src = guess.source
    rows, n_per_row = src.shape
    width = {"BF16": 2, "F16": 2, "F32": 4}[src.dtype]
    row_dst = lib.ggml_row_size(guess.type, n_per_row)
    slab = max(1, SLAB_ELEMENTS // n_per_row)
    raw = np.empty(min(slab, rows) * n_per_row * width, dtype=np.uint8)
    x = np.empty(min(slab, rows) * n_per_row, dtype=np.float32)
    half = np.empty(len(x), dtype=np.float16)
    y = np.empty(min(slab, rows) * row_dst, dtype=np.uint8)
    digest, offset = hashlib.sha256(), out.tell()
    with open(src.file, "rb") as f:
        for first in range(0, rows, slab):
            if stop.is_set():
                out.truncate(offset)
                out.seek(offset)
                return None
            n = min(slab, rows - first)
            count = n * n_per_row
            got = os.preadv(f.fileno(), [memoryview(raw)[: count * width]], src.offset + first * n_per_row * width)
            assert got == count * width, f"{guess.name}: read {got} of {count * width} bytes"
            if src.dtype == "BF16":  # bf16 is f32's upper half: exact
                np.left_shift(raw[: count * 2].view(np.uint16), 16, out=x[:count].view(np.uint32), dtype=np.uint32)
            elif src.dtype == "F16":
                lib.fp16_to_fp32(raw.ctypes.data, x.ctypes.data, count)
            else:
                x[:count] = raw[: count * 4].view(np.float32)
            lib.fp32_to_fp16(x.ctypes.data, half.ctypes.data, count)  # round to nearest even, as torch's cast
            digest.update(half[:count].data)
            lib.fp16_to_fp32(half.ctypes.data, x.ctypes.data, count)  # what the follower would quantize
            written = lib.ggml_quantize_chunk(guess.type, x.ctypes.data, y.ctypes.data, 0, n, n_per_row, None)
            assert written == n * row_dst, f"{guess.name}: ggml wrote {written} bytes, expected {n * row_dst}"
            out.write(y[:written].data)
    out.flush()
    return Prediction(guess.type, digest.digest(), offset, rows * row_dst)
