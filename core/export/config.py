"""What an export makes: `ExportConfig` (one dataclass, YAML round-trip) and the one table of quant types."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from core.access import check_hub_repo
from core.config import check_types, in_range, one_of
from core.errors import IrisError
from core.paths import check_name


@dataclass(frozen=True)
class Quant:
    name: str
    ftype: str
    """the llama_cpp constant `llama_model_quantize` takes"""
    bytes_per_param: float
    """GGUF bytes per parameter (K-quants keep the tied embedding / output in q6_K)"""
    seconds_per_b: float
    """quantize seconds per billion parameters on 2 cores (bench/export.py); threads scale it"""
    help: str


QUANT_TABLE: dict[str, Quant] = {q.name: q for q in (
    Quant("q4_k_m", "LLAMA_FTYPE_MOSTLY_Q4_K_M", 0.62, 31.0, "smallest and fastest on CPU; a little drift"),
    Quant("q5_k_m", "LLAMA_FTYPE_MOSTLY_Q5_K_M", 0.72, 31.0, "a bit larger than q4_k_m, closer to f16"),
    Quant("q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0", 1.07, 7.5, "near-lossless, twice q4_k_m's size"),
    Quant("f16", "LLAMA_FTYPE_MOSTLY_F16", 2.0, 0.5, "the converter's output itself: the reference"),
)}
QUANTS = tuple(QUANT_TABLE)
MODES = ("merged", "lora")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass
class ExportConfig:
    source: str
    """A run (name under IRIS_HOME/runs or its folder) or any transformers model folder."""
    checkpoint: int | None = None
    """Export this checkpoint of the run instead of its final adapter."""
    quants: list[str] = field(default_factory=lambda: ["q4_k_m"])
    """Any of q4_k_m, q5_k_m, q8_0, f16; the f16 GGUF is converted once and quantized to each."""
    name: str = ""
    """Folder under IRIS_HOME/exports; empty → the run name (+ `-ckpt<N>`) or the model folder's name."""
    mode: str = "merged"
    """'merged': one GGUF per quant with the LoRA merged in; 'lora': base GGUFs + a LoRA GGUF applied at load."""
    merge_dtype: str = "f16"
    """16-bit type of the merged safetensors: f16 (the converter keeps it as is) or bf16 (wider range)."""
    verify: bool = True
    """Compare each GGUF with the merged model on the fixed prompts (needs the model in fp32 in RAM)."""
    keep_merged: bool = False
    """Keep the merged 16-bit safetensors as `merged/` in the export (usable by transformers)."""
    threads: int = 0
    """Quantize / verify threads; 0 → every core."""
    ram_budget_gb: float | None = None
    """RAM the export may use; empty → what is free now."""
    disk_budget_gb: float | None = None
    """Disk the export may use; empty → what is free now."""
    push_repo: str = ""
    """Hub repo (user/name) to upload the GGUFs to; needs a token in HF_TOKEN (never logged)."""
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_types(self)
        if not self.source.strip():
            raise IrisError("`source` is empty: choose a run or a model folder to export.")
        self.quants = list(dict.fromkeys(q.lower() for q in self.quants))
        if not self.quants:
            raise IrisError(f"`quants` is empty: choose at least one of {', '.join(QUANTS)}.")
        for i, quant in enumerate(self.quants):
            one_of(f"quants[{i}]", quant, QUANTS)
        one_of("mode", self.mode, MODES)
        one_of("merge_dtype", self.merge_dtype, ("f16", "bf16"))
        if self.name:
            check_name(self.name, "`name` (the export folder)")
        if self.checkpoint is not None:
            in_range("checkpoint", self.checkpoint, 0, why="a checkpoint's step number")
        in_range("threads", self.threads, 0, 1024, why="0 = every core")
        for budget in ("ram_budget_gb", "disk_budget_gb"):
            if getattr(self, budget) is not None:
                in_range(budget, getattr(self, budget), 0, low_open=True, why="GB")
        if self.push_repo and not _REPO_RE.match(self.push_repo):
            raise IrisError(f"`push_repo` is {self.push_repo!r}: a hub repo is written namespace/name "
                            "(letters, digits, '.', '_', '-').")
        if self.push_repo and os.environ.get("IRIS_HUB_NAMESPACES"):  # the token's own user is checked at push
            check_hub_repo(self.push_repo)
