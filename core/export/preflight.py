"""Before an export starts: how much RAM, disk and time will it need here, and does that fit?

Sizes come from the safetensors headers (no weights read); the per-step memory and time models are
calibrated on measured exports on a 2-core machine (see FIXED_S and bench/export.py):

  merge     one base tensor in fp32 + its LoRA delta, or a 64 MB slab of an untouched one
  convert   llama.cpp's converter: Python, torch and the tokenizer, then one tensor memory-mapped
            (a bf16 source widens its largest tensor to f32 and back: ~3× more)
  quantize  llama_model_quantize: the largest f16 tensor mapped, plus fixed-size slabs of rows
  verify    transformers holds the whole merged model in fp32; each GGUF is mapped in turn

When the chosen path does not fit, `check` refuses with the reason and the first cheaper path that
does (no verification, fewer quants, LoRA-only GGUF).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import IrisError
from core.export.config import QUANT_TABLE
from core.export.merge import DTYPE_BYTES, model_index, read_header
from core.export.stream_quant import STREAMED

GB = 1024**3
MB = 1024**2
PYTHON_TORCH = 400 * MB  # RSS of a Python process that imported torch (+ numpy, safetensors)
# llama.cpp's converter (run through core.export.convert, which returns the heap the tokenizer freed to the OS):
# while it reads the vocab, torch + transformers + the live 128k-vocab tokenizer (measured 0.91 GB);
# while it writes tensors, torch + transformers + the vocab for the header (0.56 GB) + the tensor mapped.
CONVERTER_VOCAB = 870 * MB
CONVERTER = 530 * MB
PYTHON_LLAMA = 80 * MB  # RSS of the quantizing process (ctypes llama.cpp, no torch needed)
QUANT_BUF = 64 * MB  # max_buf_size handed to llama_model_quantize (rows kept in memory at once)
BYTES_PER_PARAM = {q.name: q.bytes_per_param for q in QUANT_TABLE.values()}
# Time model: fixed start-up seconds per step + seconds per billion parameters on 2 cores; threads scale
# the quantizers. Calibrated (2026-11-29) on two measured exports, which the old constants overestimated
# (~46 s shown for a 12 s export): the Llama-3.2-1B config, q4_k_m, no verify, 45.8 s = merge + convert
# 18.3 s (the converter imports torch/transformers while the merge runs, so its fixed cost mostly hides)
# + quantize 27.5 s (bench/export.py); and the embedded SmolLM2-135M, q4_k_m + verify, 12 s (#18).
# tests/test_export.py::test_time_estimate_matches_measured_exports pins both within ±40%.
SECONDS_PER_B = {"merge": 5.0, "convert": 8.0, "verify_load": 12.0, "verify_gguf": 8.0,
                 **{q.name: q.seconds_per_b for q in QUANT_TABLE.values()}}
# fixed seconds per step: a Python start (merge); the converter's imports + tokenizer when it cannot start
# during a merge (convert_alone) and what is left of them when it can (convert); the verifier's imports
FIXED_S = {"merge": 1.5, "convert": 2.0, "convert_alone": 12.0, "quantize": 0.5, "verify": 3.0}
STUDY_FIXED_S = 4.0  # per GGUF: a fresh process imports llama_cpp and maps the file, twice (perplexity, speed)


@dataclass
class Step:
    name: str
    peak_ram: int
    """bytes resident at the step's worst moment"""
    disk: int
    """bytes on disk at the end of the step, counting what earlier steps left there"""
    time_s: float


@dataclass
class Plan:
    path: str
    """what this plan does, in words ('merge → f16 GGUF → q4_k_m, q8_0 → verify')"""
    steps: list[Step] = field(default_factory=list)
    ram_available: int = 0
    disk_available: int = 0

    @property
    def peak_ram(self) -> int:
        return max((s.peak_ram for s in self.steps), default=0)

    @property
    def disk(self) -> int:
        return max((s.disk for s in self.steps), default=0)

    @property
    def time_s(self) -> float:
        return sum(s.time_s for s in self.steps)

    @property
    def reason(self) -> str:
        """Why it does not fit ('' when it does)."""
        parts = []
        if self.peak_ram > self.ram_available:
            worst = max(self.steps, key=lambda s: s.peak_ram)
            parts.append(f"{worst.name} needs ~{gb(self.peak_ram)} of RAM but {gb(self.ram_available)} is free")
        if self.disk > self.disk_available:
            parts.append(f"it needs ~{gb(self.disk)} of disk but {gb(self.disk_available)} is free")
        return " and ".join(parts)

    @property
    def fits(self) -> bool:
        return not self.reason

    def summary(self) -> dict:
        return {"path": self.path, "peak_ram_bytes": self.peak_ram, "disk_bytes": self.disk,
                "time_s": round(self.time_s, 1), "ram_available_bytes": self.ram_available,
                "disk_available_bytes": self.disk_available, "fits": self.fits, "reason": self.reason,
                "steps": [asdict(s) for s in self.steps]}


def gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


@dataclass(frozen=True)
class ModelSize:
    params: int
    largest: int
    """elements of the largest tensor (the embedding, for Llama-3's 128k vocab)"""
    largest_linear: int
    """elements of the largest 2-D tensor that is not an embedding (what LoRA merges)"""
    dtype_bytes: int
    """bytes per element of the source weights (4 for fp32, 2 for bf16/f16)"""
    src_dtype: str


def model_size(model_dir: Path) -> ModelSize:
    tensors = model_index(model_dir)
    sizes = {name: math.prod(t.shape) for name, t in tensors.items()}
    linear = [n for name, n in sizes.items() if "embed" not in name and "lm_head" not in name]
    big = max(tensors.values(), key=lambda t: t.nbytes)
    return ModelSize(sum(sizes.values()), max(sizes.values()), max(linear, default=0), DTYPE_BYTES[big.dtype], big.dtype)


def adapter_bytes(adapter_dir: Path | None) -> int:
    if adapter_dir is None:
        return 0
    return sum(t.nbytes for t in read_header(Path(adapter_dir) / "adapter_model.safetensors").values())


def estimate(size: ModelSize, quants: list[str], mode: str, merge: bool, verify: bool, adapter: int = 0,
             threads: int = 2, ram_available: int = 0, disk_available: int = 0, keep_merged: bool = False,
             study: bool = False) -> Plan:
    """The steps of one export path with their peak RAM, disk and time.

    `merge`: a LoRA is merged into a 16-bit copy first (else the source folder is converted as is).
    `mode`: 'merged' or 'lora' (base GGUF + a LoRA GGUF that llama.cpp applies at load time).
    """
    b = size.params / 1e9
    speed = 2 / max(1, threads)
    f16_file = size.params * 2
    steps, disk = [], 0
    if merge:
        disk += size.params * 2
        steps.append(Step("merge", PYTHON_TORCH + 3 * size.largest_linear * 4 + 3 * QUANT_BUF + 2 * adapter,
                          disk, FIXED_S["merge"] + SECONDS_PER_B["merge"] * b))
        src_bytes = 2
    else:
        src_bytes = size.dtype_bytes
    # the converter maps one tensor at a time; f16 is written as is, bf16 widens to f32 then narrows to
    # f16, f32 narrows to an f16 copy (measured on Llama-3.2-1B: 1.07 GB from f16; from bf16 2.23 GiB
    # before core.export.convert trimmed the heap)
    extra = 0 if (merge or size.src_dtype == "F16") else size.largest * (4 if size.src_dtype == "BF16" else 2)
    # without verification or study the converter merges on the fly and q4_k_m / q5_k_m is quantized while it
    # writes (core.export.stream_quant): that file sits beside the f16 (and when llama.cpp's dry run disagrees
    # with its types, so does the quant made again from the f16: counted by the quantize step)
    on_the_fly = merge and not verify and not keep_merged and not study and mode == "merged"
    streamed_q = next((q for q in STREAMED if q in quants), None) if on_the_fly else None
    streamed = int(size.params * BYTES_PER_PARAM[streamed_q]) if streamed_q else 0
    disk += f16_file + streamed
    steps.append(Step("convert", max(CONVERTER_VOCAB, CONVERTER + size.largest * src_bytes + extra), disk,
                      FIXED_S["convert" if merge else "convert_alone"] + SECONDS_PER_B["convert"] * b))
    if merge and not verify and not keep_merged:
        disk -= size.params * 2  # the merged copy is deleted once converted (verification would need it)
    for q in quants:
        if q == "f16":
            continue
        disk += int(size.params * BYTES_PER_PARAM[q])
        steps.append(Step(f"quantize {q}", PYTHON_LLAMA + size.largest * 2 + 3 * QUANT_BUF, disk,
                          FIXED_S["quantize"] + SECONDS_PER_B[q] * b * speed))
        if q == streamed_q:
            disk -= streamed
    if mode == "lora":
        disk += 2 * adapter
        steps.append(Step("convert LoRA", PYTHON_TORCH + 3 * adapter, disk, FIXED_S["convert_alone"]))
    checked = (["f16"] if study and "f16" not in quants else []) + quants  # a study measures f16 too
    if "f16" not in checked:
        disk -= f16_file  # the intermediate f16 GGUF is deleted
    if verify:
        biggest_gguf = max(int(size.params * BYTES_PER_PARAM[q]) for q in checked)
        ram = PYTHON_TORCH + size.params * 4 + 2 * adapter + biggest_gguf + 200 * MB
        steps.append(Step("verify", ram, disk, FIXED_S["verify"] + SECONDS_PER_B["verify_load"] * b
                          + SECONDS_PER_B["verify_gguf"] * b * len(checked) * speed))
    if study:
        steps.append(study_step(size, checked, disk))
    words = ("merge → " if merge else "") + "f16 GGUF → " + ", ".join(quants) + (" + LoRA GGUF" if mode == "lora" else "")
    return Plan(words + (" → verify" if verify else "") + (" → study" if study else ""), steps, ram_available,
                disk_available)


def study_step(size: ModelSize, quants: list[str], disk: int) -> Step:
    """Each GGUF: held-out perplexity (prompt reading, ~110 tok/s per billion parameters on 2 threads) and
    speed (one process per GGUF; generation reads the whole file per token: ~23 GB/s effective here)."""
    from core.export.study import GEN_TOKENS, PPL_MAX_TOKENS, PPL_ROWS

    b = size.params / 1e9
    per_quant = [STUDY_FIXED_S + PPL_ROWS * PPL_MAX_TOKENS * b / 110 + 9 * GEN_TOKENS * size.params
                 * BYTES_PER_PARAM[q] / 23e9 for q in quants]
    ram = PYTHON_LLAMA + max(int(size.params * BYTES_PER_PARAM[q]) for q in quants) + 300 * MB
    return Step("study", ram, disk, sum(per_quant))


def available(ram_budget_gb: float | None, disk_budget_gb: float | None, where: Path) -> tuple[int, int]:
    """(RAM, disk) this export may use: the budgets when given, else what is free now."""
    import psutil

    from core.paths import free_disk_bytes

    ram = int(ram_budget_gb * GB) if ram_budget_gb else psutil.virtual_memory().available
    disk = int(disk_budget_gb * GB) if disk_budget_gb else free_disk_bytes(where)
    return ram, disk


def alternatives(size: ModelSize, quants: list[str], mode: str, merge: bool, verify: bool, adapter: int,
                 threads: int, ram: int, disk: int, keep_merged: bool = False, study: bool = False) -> list[Plan]:
    """The chosen path first, then cheaper ones in the order a user would give things up."""
    plans = [estimate(size, quants, mode, merge, verify, adapter, threads, ram, disk, keep_merged, study)]
    if verify:
        plans.append(estimate(size, quants, mode, merge, False, adapter, threads, ram, disk))
    smallest = min(quants, key=lambda q: BYTES_PER_PARAM[q])
    if quants != [smallest]:
        plans.append(estimate(size, [smallest], mode, merge, False, adapter, threads, ram, disk))
    if mode != "lora" and adapter:
        plans.append(estimate(size, [smallest], "lora", False, False, adapter, threads, ram, disk))
    return plans


def check(plans: list[Plan]) -> Plan:
    """The chosen plan if it fits; otherwise IrisError with the reason and the first path that fits."""
    chosen = plans[0]
    if chosen.fits:
        return chosen
    fitting = next((p for p in plans[1:] if p.fits), None)
    hint = (f"choose {fitting.path} instead (~{gb(fitting.peak_ram)} RAM, ~{gb(fitting.disk)} disk)"
            if fitting else "free memory or disk (close other apps, delete old exports), or export on a larger machine")
    raise IrisError(f"this export would not fit: {chosen.reason}; {hint}.")


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)
