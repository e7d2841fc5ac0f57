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
    pass_top1: float
    """verification passes when top-1 agreement with the merged model is at least this ..."""
    pass_corr: float
    """... and the logit correlation at least this"""
    warn_top1: float
    """below this top-1 agreement (or below `warn_corr`) the GGUF fails verification; between: warn"""
    warn_corr: float

    def verdict(self, top1: float, corr: float) -> tuple[str, str]:
        """('pass' | 'warn' | 'fail', why) for a GGUF's agreement with the model it came from."""
        if top1 >= self.pass_top1 and corr >= self.pass_corr:
            return "pass", f"top-1 ≥ {self.pass_top1:.2f} and correlation ≥ {self.pass_corr:.3f}"
        if top1 < self.warn_top1 or corr < self.warn_corr:
            return "fail", (f"top-1 {top1:.3f} < {self.warn_top1:.2f}" if top1 < self.warn_top1
                            else f"correlation {corr:.4f} < {self.warn_corr:.3f}") + ": the GGUF does not behave like its source"
        return "warn", f"below pass (top-1 {self.pass_top1:.2f}, correlation {self.pass_corr:.3f}): more drift than {self.name} usually shows"


# Verification thresholds (top-1 agreement, logit correlation vs the merged model on the fixed prompts):
# f16 only rounds the 16-bit merge again, so anything short of near-identity is a broken export; q8_0 is
# near-lossless (a trained 1B agrees on ~99% of positions); K-quants drift more, q4_k_m most. A failing
# GGUF (wrong tokenizer, lost adapter, transposed weights) falls far below: top-1 near chance, correlation
# near 0. Random-weight test models have near-flat logits, so their 4-bit near-ties flip: warn/fail there is honest.
QUANT_TABLE: dict[str, Quant] = {q.name: q for q in (
    Quant("q4_k_m", "LLAMA_FTYPE_MOSTLY_Q4_K_M", 0.62, 22.0, "smallest and fastest on CPU; a little drift",
          0.85, 0.98, 0.70, 0.95),
    Quant("q5_k_m", "LLAMA_FTYPE_MOSTLY_Q5_K_M", 0.72, 23.0, "a bit larger than q4_k_m, closer to f16",
          0.90, 0.99, 0.80, 0.97),
    Quant("q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0", 1.07, 7.5, "near-lossless, twice q4_k_m's size",
          0.95, 0.995, 0.90, 0.99),
    Quant("f16", "LLAMA_FTYPE_MOSTLY_F16", 2.0, 0.5, "the converter's output itself: the reference",
          0.98, 0.999, 0.95, 0.995),
)}
VERIFY_MEANING = ("top-1 agreement: the share of positions where the GGUF's most likely next token is the "
                  "merged model's (1.0 = always the same); logit correlation: how closely the whole next-token "
                  "score vectors move together (1.0 = identical up to scale). The verdict compares both "
                  "with the thresholds for that quant.")
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
    """Replace an existing export of the same name."""
    study: bool = False
    """Quant study: verify every GGUF (f16 too, as the reference), score held-out perplexity on the run's
    eval split, and measure each on this machine (tok/s, TTFT, peak RSS) into study.json + a chart."""
    study_threads: int = 2
    """Threads for the study's speed measurement (2: what a laptop chat gets; compare studies at equal threads)."""

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
        if self.study and self.mode != "merged":
            raise IrisError("`study` compares merged GGUFs: set `mode` to 'merged' (not 'lora') to study quants.")
        if self.study:
            self.verify = True  # the study's quality columns are the verification's numbers
        in_range("study_threads", self.study_threads, 1, 1024, why="threads for the speed measurement")
        for budget in ("ram_budget_gb", "disk_budget_gb"):
            if getattr(self, budget) is not None:
                in_range(budget, getattr(self, budget), 0, low_open=True, why="GB")
        if self.push_repo and not _REPO_RE.match(self.push_repo):
            raise IrisError(f"`push_repo` is {self.push_repo!r}: a hub repo is written namespace/name "
                            "(letters, digits, '.', '_', '-').")
        if self.push_repo and os.environ.get("IRIS_HUB_NAMESPACES"):  # the token's own user is checked at push
            check_hub_repo(self.push_repo)
