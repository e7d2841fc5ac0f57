"""Merge a LoRA adapter into its base model tensor by tensor, never holding the whole model.

    merged W = W + scale · B @ A        scale = alpha / r   (rsLoRA: alpha / sqrt(r))

The base's safetensors are read one tensor at a time through a memory map of just that tensor's byte
range (released before the next one), and the merged model is written as 16-bit safetensors shards
by a streaming writer: header first (every shape and offset is known up front), then each tensor's
bytes as soon as it is merged. Peak memory is the adapter (a few MB) plus one base tensor in fp32
and its delta, so a 1B model merges in a few hundred MB where `merge_and_unload` needs ~3 GB.

Config, generation config, tokenizer and chat template are copied beside the weights (the adapter's
tokenizer wins: training may have changed the template or the pad token).

Used by `core.export`: `merge_lora(base_dir, adapter_dir, out_dir)` writes the merged folder; `plan_merge` gives the
same tensors lazily, for the converter to merge on the fly (`python -m core.export.convert --merge`).
"""
from __future__ import annotations

import json
import math
import re
import shutil
import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from core.errors import IrisError
from core.templates import folder_has_markers, plain_template_files

# safetensors dtype names ↔ bytes per element
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
OUT_DTYPES = {"f16": "F16", "bf16": "BF16"}
SHARD_BYTES = 2 * 1024**3  # one shard per ~2 GiB, like transformers' default max_shard_size
ROW_CHUNK_BYTES = 64 * 1024**2  # tensors without LoRA are cast in slabs of ~64 MB
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "added_tokens.json")
MODEL_FILES = ("config.json", "generation_config.json")


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    """Absolute byte offset of the tensor's data in `file`."""
    nbytes: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor name → where its bytes live, from a safetensors header (no weights read)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100 * 1024**2:
                raise ValueError("header length beyond the file")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as err:
        raise IrisError(f"{path} is not a readable safetensors file ({err}): it is torn or not a weights file; "
                        "pick another checkpoint or re-save it.") from None
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        if 8 + n + end > size:
            raise IrisError(f"{path.name} is truncated ({size} bytes, tensor {name} ends at {8 + n + end}): "
                            "the checkpoint is torn; pick an earlier checkpoint.")
        out[name] = TensorInfo(path, meta["dtype"], tuple(meta["shape"]), 8 + n + start, end - start)
    return out


def model_index(model_dir: Path) -> dict[str, TensorInfo]:
    """Every weight of a transformers folder (single file or shards), by name."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors") if not p.name.startswith("adapter"))
    if not files:
        raise IrisError(f"{model_dir} has no .safetensors weights: re-save the model with safetensors "
                        "(transformers' save_pretrained does).")
    tensors: dict[str, TensorInfo] = {}
    for name in files:
        tensors.update(read_header(model_dir / name))
    return tensors


def load_tensor(info: TensorInfo, rows: tuple[int, int] | None = None):
    """One tensor (or rows [start, stop) of it) read through a memory map of just that byte range.

    The data is copied out so the mapped pages are released when the map is, not kept by the tensor.
    """
    import numpy as np
    import torch

    np_dtype = {2: np.uint16, 4: np.uint32, 8: np.uint64, 1: np.uint8}[DTYPE_BYTES[info.dtype]]
    torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                   "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                   "U8": torch.uint8, "BOOL": torch.bool}[info.dtype]
    shape, offset, nbytes = info.shape, info.offset, info.nbytes
    if rows is not None:
        row_bytes = info.nbytes // shape[0]
        shape = (rows[1] - rows[0], *shape[1:])
        offset, nbytes = info.offset + rows[0] * row_bytes, (rows[1] - rows[0]) * row_bytes
    if nbytes == 0:
        return torch.empty(shape, dtype=torch_dtype)
    mapped = np.memmap(info.file, mode="r", dtype=np_dtype, offset=offset, shape=(nbytes // np_dtype().itemsize,))
    tensor = torch.from_numpy(np.array(mapped)).view(torch_dtype).reshape(shape)
    del mapped
    return tensor


@dataclass
class LoraSpec:
    """What an adapter_config.json says about how to merge."""
    r: int
    alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    rank_pattern: dict
    alpha_pattern: dict

    def scale(self, module: str) -> float:
        r = _pattern(self.rank_pattern, module, self.r)
        alpha = _pattern(self.alpha_pattern, module, self.alpha)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _pattern(patterns: dict, module: str, default):
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def read_adapter(adapter_dir: Path) -> tuple[LoraSpec, dict[str, tuple[TensorInfo, TensorInfo]], dict[str, TensorInfo]]:
    """(spec, base weight name → (A, B), base weight name → full replacement) from a peft adapter folder."""
    adapter_dir = Path(adapter_dir)
    cfg_path, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not cfg_path.exists() or not weights.exists():
        raise IrisError(f"{adapter_dir} has no LoRA adapter (adapter_config.json + adapter_model.safetensors): "
                        "the run has not saved one yet; pick a completed checkpoint or the final adapter.")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
        raise IrisError(f"{cfg_path} is torn (not valid JSON): pick another checkpoint.") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise IrisError(f"{adapter_dir} holds a {cfg.get('peft_type')} adapter; only LoRA adapters can be merged.")
    if cfg.get("use_dora"):
        raise IrisError("DoRA adapters are not supported by the streaming merge: train with plain LoRA.")
    spec = LoraSpec(int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"])), bool(cfg.get("use_rslora")),
                    bool(cfg.get("fan_in_fan_out")), cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {})
    pairs: dict[str, dict[str, TensorInfo]] = {}
    full: dict[str, TensorInfo] = {}
    for key, info in read_header(weights).items():
        name = key.removeprefix("base_model.model.")
        m = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", name)
        if m:
            pairs.setdefault(f"{m.group(1)}.weight", {})[m.group(2)] = info
        elif "lora_" in name:
            raise IrisError(f"adapter tensor {key} is not a plain LoRA weight (lora biases or embeddings are not "
                            "supported): train with plain LoRA on linear layers.")
        else:  # modules_to_save: a fully trained copy that replaces the base tensor
            full[name.replace(".modules_to_save.default", "")] = info
    broken = [k for k, v in pairs.items() if set(v) != {"A", "B"}]
    if broken:
        raise IrisError(f"adapter {weights} lacks lora_A or lora_B for {broken[0]}: the checkpoint is torn.")
    if not pairs and not full:
        raise IrisError(f"{weights} holds no LoRA weights.")
    return spec, {k: (v["A"], v["B"]) for k, v in pairs.items()}, full


def merged_tensor(base, a, b, scale: float, fan_in_fan_out: bool):
    """W + scale · B @ A in fp32 (the delta of one projection is a few tens of MB at most)."""
    import torch

    shape = (a.shape[1], b.shape[0]) if fan_in_fan_out else (b.shape[0], a.shape[1])
    if a.shape[0] != b.shape[1] or tuple(shape) != tuple(base.shape):
        raise IrisError(f"LoRA shape {tuple(shape)} does not fit base weight {tuple(base.shape)}: "
                        "this adapter was trained on a different base model.")
    if fan_in_fan_out:
        return base.to(torch.float32) + (b.to(torch.float32) @ a.to(torch.float32)).T * scale
    # one fused pass: W + scale · (B @ A) without a separate delta tensor
    return torch.addmm(base.to(torch.float32), b.to(torch.float32), a.to(torch.float32), alpha=scale)


class ShardWriter:
    """Writes safetensors shards whose headers are computed before any data (so data streams in order)."""

    def __init__(self, out_dir: Path, plan: list[tuple[str, str, tuple[int, ...]]], shard_bytes: int = SHARD_BYTES):
        self.out_dir = Path(out_dir)
        self.shards: list[list[tuple[str, str, tuple[int, ...], int]]] = [[]]
        size = 0
        for name, dtype, shape in plan:
            nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
            if self.shards[-1] and size + nbytes > shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append((name, dtype, shape, nbytes))
            size += nbytes
        n = len(self.shards)
        self.names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._shard, self._file, self._left = -1, None, []

    def write(self, name: str, parts) -> None:
        """Write one tensor's bytes, given as an iterable of byte chunks (slabs of rows)."""
        if not self._left:
            self._next()
        expect_name, _, _, nbytes = self._left.pop(0)
        written = 0
        for part in parts:
            written += len(part)
            self._file.write(part)
        if expect_name != name or written != nbytes:
            raise RuntimeError(f"writer expected {expect_name} ({nbytes} bytes), got {name} ({written})")

    def _next(self) -> None:
        if self._file:
            self._file.close()
        self._shard += 1
        entries, header, offset = self.shards[self._shard], {"__metadata__": {"format": "pt"}}, 0
        for name, dtype, shape, nbytes in entries:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data must start 8-byte aligned
        self._file = open(self.out_dir / self.names[self._shard], "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._left = list(entries)

    def close(self) -> None:
        if self._file:
            self._file.close()
        if len(self.names) > 1:
            weight_map = {e[0]: self.names[i] for i, shard in enumerate(self.shards) for e in shard}
            total = sum(e[3] for shard in self.shards for e in shard)
            (self.out_dir / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


@dataclass(frozen=True)
class MergedTensor:
    """One tensor of the merged model, computed only when `slabs()` is iterated."""
    name: str
    dtype: str
    """safetensors dtype name of the output (F16/BF16 for float weights, else the base's own)."""
    shape: tuple[int, ...]
    slabs: object
    """() -> iterator of torch tensors: the whole merged tensor, or consecutive slabs of its rows."""
    cast_of: TensorInfo | None = None
    """The base tensor this one is a plain cast of (None when the LoRA or a replacement changes it): its
    values are known before the merge runs (`core.export.predict`)."""


def plan_merge(base_dir: Path, adapter_dir: Path, dtype: str = "f16",
               slab_bytes: int = ROW_CHUNK_BYTES) -> tuple[list[MergedTensor], dict]:
    """Every tensor of base + LoRA as a lazy MergedTensor, in the base's order, and the merge summary.

    Nothing is read here beyond headers: `merge_lora` streams the tensors into safetensors shards, and
    `python -m core.export.convert --merge` feeds them straight into llama.cpp's converter (no merged copy).
    Tensors without LoRA come in slabs of ≈ `slab_bytes` (each slab's source bytes, a copy and its cast are
    alive at once: ≈ 2.5 × slab_bytes on top of whatever the caller keeps)."""
    if dtype not in OUT_DTYPES:
        raise IrisError(f"merge dtype {dtype!r} is not one of {', '.join(OUT_DTYPES)}.")
    out_st = OUT_DTYPES[dtype]
    base = model_index(base_dir)
    spec, pairs, full = read_adapter(adapter_dir)
    missing = sorted(set(pairs) - set(base))
    if missing:
        raise IrisError(f"adapter targets {missing[0]}, which base {base_dir} does not have: this adapter was "
                        "trained on a different base model.")
    dropped = _tied_copies(Path(base_dir), base, set(pairs) | set(full))
    for name in dropped:
        del base[name]

    def merged(name: str, info: TensorInfo):
        import torch  # here, not above: planning (the export job's own process) never loads torch

        tensor = load_tensor(full[name]).to(torch.float32) if name in full else load_tensor(info)
        if name in pairs:
            a, b = (load_tensor(t) for t in pairs[name])
            tensor = merged_tensor(tensor, a, b, spec.scale(name.removesuffix(".weight")), spec.fan_in_fan_out)
        yield _cast(tensor, dtype, name)

    tensors = []
    for name, info in base.items():
        floating = info.dtype in ("F32", "F16", "BF16", "F64")
        if name in pairs or name in full:
            slabs = partial(merged, name, info)
        else:  # untouched: cast (or copy) a slab of rows at a time; the embedding alone is 0.5–1 GB
            slabs = partial(_slabs, info, dtype if floating else None, name, slab_bytes)
        plain = floating and name not in pairs and name not in full
        tensors.append(MergedTensor(name, out_st if floating else info.dtype, info.shape, slabs, info if plain else None))
    summary = {"tensors": len(base), "merged": len(pairs), "replaced": len(full), "dropped": dropped, "dtype": dtype,
               "r": spec.r, "alpha": spec.alpha, "rslora": spec.use_rslora}
    return tensors, summary


def merge_lora(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str = "f16",
               shard_bytes: int = SHARD_BYTES, progress=None) -> dict:
    """Write base + LoRA as 16-bit safetensors into `out_dir` (which must exist). Returns a summary.

    `progress(done, total)` is called after each tensor.
    """
    tensors, summary = plan_merge(base_dir, adapter_dir, dtype)
    out_dir = Path(out_dir)
    writer = ShardWriter(out_dir, [(t.name, t.dtype, t.shape) for t in tensors], shard_bytes)
    for i, t in enumerate(tensors):
        writer.write(t.name, (_bytes(slab) for slab in t.slabs()))
        if progress:
            progress(i + 1, len(tensors))
    writer.close()
    write_side_files(Path(base_dir), Path(adapter_dir), out_dir, dtype)
    return {**summary, "shards": len(writer.names)}


def _tied_copies(base_dir: Path, base: dict[str, TensorInfo], trained: set[str]) -> list[str]:
    """`lm_head.weight` when the config ties it to the input embedding and the base stores it anyway.

    Tied means equal: transformers rebuilds it from embed_tokens on load, and llama.cpp uses token_embd
    as the output when the GGUF has no output tensor. Written out, it would be a second 128k × hidden
    tensor (0.5 GB for Llama-3.2-1B) for the converter to map and write and the GGUF to carry.
    Kept when the adapter trained it (modules_to_save), since then it is no longer a copy.
    """
    try:
        config = json.loads((base_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    tied = config.get("tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings"))
    head, embed = "lm_head.weight", "model.embed_tokens.weight"
    if tied is True and head in base and embed in base and not {head, embed} & trained:
        return [head]
    return []


def _cast(tensor, dtype: str, name: str):
    """`tensor` as 16-bit `dtype` ('f16' or 'bf16'); refuses values that overflow it."""
    import torch

    out = tensor.to(torch.float16 if dtype == "f16" else torch.bfloat16).contiguous()
    if out.is_floating_point() and out.numel():
        lo, hi = torch.aminmax(out)  # one pass; inf or NaN anywhere makes these non-finite
        if not (torch.isfinite(lo) and torch.isfinite(hi)):
            raise IrisError(f"{name} overflows float16 after merging: export with merge dtype bf16.")
    return out


def _bytes(tensor) -> memoryview:
    import torch

    return memoryview(tensor.contiguous().view(torch.uint8).numpy()).cast("B") if tensor.numel() else memoryview(b"")


def _slabs(info: TensorInfo, dtype: str | None, name: str, slab_bytes: int = ROW_CHUNK_BYTES):
    """Yield a tensor a slab of rows (≈ `slab_bytes`) at a time, cast to 16-bit `dtype` unless None."""
    if not info.shape or info.nbytes <= slab_bytes:
        tensor = load_tensor(info)
        yield _cast(tensor, dtype, name) if dtype is not None else tensor
        return
    n_rows = info.shape[0]
    step = max(1, slab_bytes // (info.nbytes // n_rows))
    for start in range(0, n_rows, step):
        tensor = load_tensor(info, (start, min(n_rows, start + step)))
        yield _cast(tensor, dtype, name) if dtype is not None else tensor


def write_side_files(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str) -> None:
    """Config (dtype set to the merge's), generation config and tokenizer (the adapter's wins, plain template)."""
    for name in MODEL_FILES:
        if (base_dir / name).exists():
            shutil.copy2(base_dir / name, out_dir / name)
    config_path = out_dir / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        config["dtype"] = config["torch_dtype"] = "float16" if dtype == "f16" else "bfloat16"
        config.pop("quantization_config", None)
        config_path.write_text(json.dumps(config, indent=2))
    tok_source = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else base_dir
    for name in TOKENIZER_FILES:
        if (tok_source / name).exists():
            shutil.copy2(tok_source / name, out_dir / name)
    # a Trainer checkpoint's tokenizer keeps the training template ({% generation %} markers): plain Jinja,
    # llama.cpp and every other runtime reject that tag, so the merged folder (and its GGUFs) get it plain
    plain_template_files(out_dir)


def plain_view(model_dir: Path, work: Path, tokenizer_from: Path | None = None) -> Path:
    """`model_dir` itself when its chat template is plain; else a folder in `work` whose weights are
    links to `model_dir`'s and whose tokenizer files carry the plain template (nothing big is copied).
    `tokenizer_from` (a run's adapter, for a LoRA-only export) supplies the tokenizer files when it has them,
    so the base GGUF renders prompts exactly as the merged export of the same adapter does."""
    model_dir = Path(model_dir)
    tok = Path(tokenizer_from) if tokenizer_from and (Path(tokenizer_from) / "tokenizer_config.json").exists() else None
    if tok is None and not folder_has_markers(model_dir):
        return model_dir
    view = Path(work) / "plain-source"
    view.mkdir()
    for item in model_dir.iterdir():
        if item.name in TOKENIZER_FILES and tok is not None:
            continue
        if item.name in TOKENIZER_FILES or item.name in MODEL_FILES:
            shutil.copy2(item, view / item.name)
        else:
            (view / item.name).symlink_to(item.resolve())
    for name in TOKENIZER_FILES if tok is not None else ():
        if (tok / name).exists():
            shutil.copy2(tok / name, view / name)
    plain_template_files(view)
    return view


def main(argv: list[str] | None = None) -> None:
    """Run as: python -m core.export.merge BASE_DIR ADAPTER_DIR OUT_DIR [--dtype f16]

    `core.export` runs the merge this way, in its own process, so torch's memory is returned to the
    system before llama.cpp's converter starts.
    """
    import argparse

    from core.errors import cli_exit

    parser = argparse.ArgumentParser(prog="python -m core.export.merge", description="Merge a LoRA into its base, streaming.")
    parser.add_argument("base", help="transformers folder of the base model")
    parser.add_argument("adapter", help="peft adapter folder (adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("out", help="output folder (created; must not exist or be empty)")
    parser.add_argument("--dtype", choices=list(OUT_DTYPES), default="f16", help="16-bit type of the merged weights")
    parser.add_argument("--shard-gb", type=float, default=SHARD_BYTES / 1024**3, help="max shard size in GiB")
    args = parser.parse_args(argv)
    try:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise IrisError(f"{out} is not empty: choose a new output folder.")
        summary = merge_lora(Path(args.base), Path(args.adapter), out, args.dtype, int(args.shard_gb * 1024**3))
        print(json.dumps(summary))
    except IrisError as err:
        cli_exit(err)


if __name__ == "__main__":
    main()
