"""Pre-launch estimate of a LoRA run's memory and time, and the choices that fill a given card.

Run nothing heavy here: the Train page calls it on every form change, so it reads model sizes from
`config.json` or `core.models.LLAMA_CONFIGS`, the device from `nvidia-smi` / psutil, and sample
lengths from the dataset's characters (≈3.6 characters per token for English chat text).

Memory model (bytes), calibrated on an H100 with the Llama-3.2-1B config, batch 2 × 2048 tokens
(STACK.md: 2.9–3.5 GiB with gradient checkpointing, ~10 GiB without):
  weights      params × 2 (bf16 on CUDA) or × 4 (fp32 on CPU); 4-bit ≈ 0.56 B/param outside embeddings
  LoRA         trainable × 16 (fp32 weight + grad + two Adam moments; 8-bit Adam: × 10)
  activations  per token: layers × hidden × dtype (checkpointed layer inputs) + one layer's internals,
               or layers × (16·hidden + 5·intermediate) × dtype without checkpointing
Time model: 6 × params FLOPs per token (× 4/3 with recomputation) at an assumed sustained rate.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from core import hub
from core.errors import IrisError
from core.train.config import TrainConfig

GIB = 1024**3
CHARS_PER_TOKEN = 3.6
# Sustained training FLOP/s: H100 bf16 ≈ 790e12 peak at ~30% MFU for a 1B LoRA run (measured
# 29k tok/s); 2 CPU cores ≈ 2e11 (SmolLM2: ~1 s per 184-token step; Llama-1B: ~35 s per 1262 tokens).
CUDA_RATE = 0.30 * 790e12
CPU_RATE_PER_CORE = 1.0e11
FIT_FRACTION = 0.85  # leave room for the allocator's fragmentation and the CUDA context


@dataclass
class Device:
    kind: str  # "cuda" or "cpu"
    count: int
    mem_bytes: int  # per device: GPU memory, or the machine's RAM
    name: str = ""
    cores: int = 1


@dataclass
class Estimate:
    params: int
    trainable: int
    memory_bytes: int
    tokens_per_step: int
    steps: int
    seconds: float
    device: Device
    processes: int
    parts: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    eval_passes: int = 0
    eval_seconds: float = 0.0
    """of `seconds`, the eval-loss passes' share (forward passes over the whole eval split)"""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        where = f"{self.processes} × {self.device.name or self.device.kind}"
        return (f"~{self.memory_bytes / GIB:.1f} GiB per device of {self.device.mem_bytes / GIB:.0f} GiB; "
                f"{self.steps} steps × ~{self.tokens_per_step:,} tokens"
                + (f" + {self.eval_passes} eval passes (≈ {_duration(self.eval_seconds)})" if self.eval_passes else "")
                + f" ≈ {_duration(self.seconds)} on {where}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def detect_device() -> Device:
    """GPUs from nvidia-smi (no torch import), else the CPU and its RAM."""
    import os

    import psutil

    smi = shutil.which("nvidia-smi")
    if smi and os.environ.get("CUDA_VISIBLE_DEVICES", None) != "":
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
            gpus = [line.rsplit(",", 1) for line in out if line.strip()]
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # nvidia-smi lists every GPU regardless
            count = len([d for d in visible.split(",") if d.strip()]) if visible else len(gpus)
            if gpus and count:
                return Device("cuda", min(count, len(gpus)), int(float(gpus[0][1])) * 1024**2, gpus[0][0].strip())
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    cores = len(os.sched_getaffinity(0))
    return Device("cpu", 1, psutil.virtual_memory().total, f"CPU ({cores} cores)", cores)


def model_architecture(model_id: str) -> dict | None:
    """config.json fields for a model without loading it (registry table, a folder, or a local copy)."""
    from core import models

    if models.is_embedded(model_id):
        return models.LLAMA_CONFIGS[models.EMBEDDED_ID]
    if model_id in models.LLAMA_CONFIGS:
        return models.LLAMA_CONFIGS[model_id]
    for folder in (Path(model_id).expanduser(), models.models_dir() / model_id.replace("/", "--")):
        if (folder / "config.json").exists():
            return json.loads((folder / "config.json").read_text())
    return None


LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


def linear_module_names(model_dir: Path) -> set[str]:
    """Names of the model's weight matrices (`q_proj`, `down_proj`, ...), read from the safetensors headers
    (8-byte length + JSON, a few kB): what LoRA's `target_modules` can name. No weights are loaded."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        keys = json.loads(index.read_text())["weight_map"].keys()
    else:
        keys = []
        for path in sorted(model_dir.glob("*.safetensors")):
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                keys += [k for k, v in json.loads(f.read(size)).items()
                         if k != "__metadata__" and len(v.get("shape", ())) == 2]
    return {k.rsplit(".", 2)[-2] for k in keys if k.endswith(".weight") and k.count(".") >= 1}


def check_target_modules(cfg: TrainConfig, model_dir: Path | None = None) -> None:
    """Refuse a `target_modules` entry the base model does not have (peft would skip it silently when another
    entry matches), listing the ones it has. Uses the model folder when there is one, else the known
    Llama layout of registry models; a hub model not yet downloaded is checked after it is."""
    from core import models

    if model_dir is not None:
        have = linear_module_names(model_dir)
    elif cfg.base_model in models.LLAMA_CONFIGS or models.is_embedded(cfg.base_model):
        have = set(LLAMA_LINEAR)
    else:
        arch_dir = next((d for d in (Path(cfg.base_model).expanduser(),
                                     models.models_dir() / cfg.base_model.replace("/", "--"))
                         if (d / "config.json").exists()), None)
        if arch_dir is None:
            return
        have = linear_module_names(arch_dir)
    if not have:
        return  # no safetensors to read (e.g. a .bin checkpoint): peft reports it at load
    missing = [m for m in cfg.target_modules if m not in have]
    if missing:
        raise IrisError(f"`target_modules` names {', '.join(repr(m) for m in missing)}, which "
                        f"{cfg.base_model} does not have; its linear layers are "
                        f"{', '.join(sorted(have - {'lm_head', 'embed_tokens'}))}.")


def count_params(arch: dict) -> int:
    h, i, n = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    hd = arch.get("head_dim") or h // arch["num_attention_heads"]
    q, kv = arch["num_attention_heads"] * hd, arch.get("num_key_value_heads", arch["num_attention_heads"]) * hd
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
    embed = arch["vocab_size"] * h * (1 if arch.get("tie_word_embeddings") else 2)
    return n * per_layer + embed + h


def count_lora(arch: dict, cfg: TrainConfig) -> int:
    h, i, n = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    hd = arch.get("head_dim") or h // arch["num_attention_heads"]
    q, kv = arch["num_attention_heads"] * hd, arch.get("num_key_value_heads", arch["num_attention_heads"]) * hd
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return n * sum(cfg.lora_r * sum(dims[m]) for m in cfg.target_modules if m in dims)


def mean_sample_tokens(dataset: str, limit: int = 2000) -> tuple[float, int] | None:
    """(average conversation length in tokens, from the characters of the first `limit` rows; train row count),
    or None if the version is missing. Reads only those rows' `messages` from the Parquet file and the count from
    its footer: loading a 100k-row version through pandas took ~52 s on 2 busy cores, at every Launch."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from core import versions

    try:
        versions.load_manifest(dataset)
    except IrisError:
        return None
    parquet = pq.ParquetFile(versions.version_dir(dataset) / versions.TRAIN)
    batch = next(parquet.iter_batches(batch_size=limit, columns=["messages"]), None)
    if batch is None or not len(batch):
        return 1.0, parquet.metadata.num_rows
    turns = pc.list_flatten(batch.column(0))
    chars = (pc.sum(pc.utf8_length(pc.fill_null(turns.field("content"), ""))).as_py() or 0) + 8 * len(turns)
    return max(1.0, chars / len(batch) / CHARS_PER_TOKEN), parquet.metadata.num_rows


def memory_bytes(arch: dict, cfg: TrainConfig, device: Device, tokens_per_micro: int,
                 gradient_checkpointing: bool | None = None) -> dict:
    gc = cfg.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    params, lora = count_params(arch), count_lora(arch, cfg)
    dtype = 2 if device.kind == "cuda" else 4
    embed = arch["vocab_size"] * arch["hidden_size"]
    weights = (params - embed) * 0.5625 + embed * 2 if cfg.load_in_4bit else params * dtype
    states = lora * (10 if "8bit" in cfg.optimizer else 16)
    h, i, n = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    per_token = (n * h + 12 * h + 4 * i) * dtype if gc else n * (16 * h + 5 * i) * dtype
    acts = per_token * tokens_per_micro
    overhead = 0.6 * GIB if device.kind == "cuda" else 0.8 * GIB  # CUDA context / python + libraries
    return {"weights": weights, "lora+optimizer": states, "activations": acts, "overhead": overhead,
            "total": int(weights + states + acts + overhead)}


def estimate(cfg: TrainConfig, device: Device | None = None, rows: tuple[float, int] | None = None) -> Estimate:
    """Memory per device and wall time for `cfg`; `problems` lists what makes it impossible."""
    device = device or detect_device()
    processes = device.count if device.kind == "cuda" else 1
    problems, notes = [], []
    arch = model_architecture(cfg.base_model)
    if arch is None:
        arch = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072}
        notes.append(f"{cfg.base_model}'s size is unknown until it is downloaded; estimated as a 1B Llama.")
    try:
        check_target_modules(cfg)
    except IrisError as err:
        problems.append(str(err))
    max_pos = arch.get("max_position_embeddings")
    if max_pos and cfg.max_seq_length > max_pos:
        problems.append(f"max_seq_length {cfg.max_seq_length} is beyond the model's {max_pos} positions: lower it.")
    from core import models

    if not models.is_local(cfg.base_model) and not hub.reachable():
        problems.append(models.offline_sentence(cfg.base_model))  # the sentence the run would fail with
    rows = rows or mean_sample_tokens(cfg.dataset)
    if rows is None:
        problems.append(f"dataset version {cfg.dataset!r} does not exist: pick a saved version.")
        mean_tokens, n_rows = float(cfg.max_seq_length), 0
    else:
        mean_tokens, n_rows = rows
    # DPO reads a pair as two sequences (prompt + chosen, prompt + rejected; a preference version's `messages`
    # is the first) and adds the reference's forward pass over both: 2 of training's 6 FLOPs per token.
    seqs, ref = (2, 4 / 3) if cfg.method == "dpo" else (1, 1.0)
    sample_tokens = seqs * (cfg.max_seq_length if cfg.packing else min(cfg.max_seq_length, int(mean_tokens)))
    tokens_per_micro = seqs * cfg.batch_size * cfg.max_seq_length
    # Without packing a batch pads to its longest sample; budget memory for full-length rows.
    mem = memory_bytes(arch, cfg, device, tokens_per_micro)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * processes * sample_tokens
    if cfg.max_steps:
        steps = cfg.max_steps
    else:
        total_tokens = n_rows * min(mean_tokens, cfg.max_seq_length) * cfg.epochs
        steps = max(1, int(total_tokens // max(1, tokens_per_step)) if cfg.packing
                    else int(-(-n_rows * cfg.epochs // (cfg.batch_size * cfg.grad_accum * processes))))
    params = count_params(arch)
    rate = CUDA_RATE * processes if device.kind == "cuda" else CPU_RATE_PER_CORE * max(1, device.cores)
    flops = 6 * ref * params * tokens_per_step * steps * (4 / 3 if cfg.gradient_checkpointing else 1)
    passes, eval_s = eval_passes(cfg, steps), 0.0
    if passes:  # forward only: 2 × params FLOPs per token over the whole eval split, each pass
        eval_tokens = eval_rows(cfg.dataset) * min(mean_tokens, cfg.max_seq_length)
        eval_s = passes * 2 * params * eval_tokens / rate
    if device.kind != "cuda":
        if cfg.load_in_4bit:
            problems.append("4-bit loading needs a CUDA GPU: turn it off on this machine.")
        if "8bit" in cfg.optimizer:
            problems.append(f"{cfg.optimizer} needs a CUDA GPU (bitsandbytes): use adamw_torch here.")
        if cfg.backend == "unsloth":
            problems.append("the unsloth backend needs a CUDA GPU here: use auto or transformers.")
    smallest = min(arch["hidden_size"], arch.get("num_key_value_heads", arch["num_attention_heads"])
                   * (arch.get("head_dim") or arch["hidden_size"] // arch["num_attention_heads"]))
    if cfg.lora_r > smallest:
        problems.append(f"lora_r {cfg.lora_r} is above {smallest}, the narrowest adapted layer of "
                        f"{cfg.base_model}: a rank past a layer's width adds nothing, so lower lora_r (the lab: 16).")
    if mem["total"] > FIT_FRACTION * device.mem_bytes:
        problems.append(f"needs ~{mem['total'] / GIB:.1f} GiB but the {device.kind.upper()} has "
                        f"{device.mem_bytes / GIB:.0f} GiB; {_blame(mem, cfg)}")
    if processes > 1:
        notes.append(f"Processes: {processes} (DDP): {processes} GPUs visible, launched with `accelerate launch`; "
                     f"memory is per GPU, effective batch {cfg.effective_batch * processes}.")
    seconds = flops / rate
    if rows is not None:
        seconds, timing = _measured_seconds(cfg, arch, params, device, processes, n_rows, seconds, mean_tokens)
        mem.update(timing)
        notes.extend(timing.pop("notes", []))
    return Estimate(params, count_lora(arch, cfg), mem["total"], int(tokens_per_step), steps, seconds + eval_s,
                    device, processes, mem, problems, notes, eval_passes=passes, eval_seconds=eval_s)


def eval_rows(dataset: str) -> int:
    from core import versions
    from core.errors import IrisError

    try:
        return int(versions.load_manifest(dataset).get("rows", {}).get("eval") or 0)
    except IrisError:
        return 0


def eval_passes(cfg: TrainConfig, steps: int) -> int:
    """Eval-loss passes the run makes: one every eval_steps (when the version has an eval split)."""
    if not (cfg.eval_steps and cfg.use_eval_split and eval_rows(cfg.dataset)):
        return 0
    return steps // cfg.eval_steps


def _blame(mem: dict, cfg: TrainConfig) -> str:
    """Name the setting that drives the largest part of the memory estimate."""
    part = max(("weights", "lora+optimizer", "activations"), key=lambda k: mem[k])
    gib = mem[part] / GIB
    if part == "lora+optimizer":
        return (f"the LoRA weights and their optimizer state take {gib:.1f} GiB: lower lora_r ({cfg.lora_r}) "
                f"or adapt fewer target_modules ({len(cfg.target_modules)}).")
    if part == "activations":
        return (f"activations take {gib:.1f} GiB: lower batch_size ({cfg.batch_size}) or max_seq_length "
                f"({cfg.max_seq_length})" + (", or turn gradient_checkpointing on." if not cfg.gradient_checkpointing
                                             else "."))
    return f"the base weights take {gib:.1f} GiB: pick a smaller base_model" + (
        "." if cfg.load_in_4bit else ", or load_in_4bit on a CUDA GPU.")


def _measured_seconds(cfg, arch, params, device, processes, n_rows, seconds, mean_tokens) -> tuple[float, dict]:
    """Training time from bench/train_gpu.py's measured rates on this version's lengths (CUDA), plus the phases
    before step 1 (core.train.throughput owns both)."""
    from core import models
    from core.train import throughput, warm

    out = {"notes": []}
    if device.kind == "cuda":
        backend = "transformers" if cfg.backend == "transformers" else "unsloth"
        got = throughput.cuda_seconds(cfg, arch, params, throughput.version_lengths(cfg.dataset, cfg.max_seq_length),
                                      n_rows, processes, backend)
        seconds = got["seconds"]
        out["real_tokens_per_s"] = got["real_tokens_per_s"]
        out["notes"].append(f"Expected ~{got['real_tokens_per_s']:,.0f} real tokens/s ({got['pad_share']:.0%} padding) "
                            f"on this version's lengths (mean {got['mean_tokens']:.0f} tokens): one epoch ≈ "
                            f"{_duration(got['epoch_seconds'])}.")
    ready = not models.is_embedded(cfg.base_model) or models.materialised_embedded() is not None
    startup = throughput.startup_seconds(cfg, device.kind, n_rows, ready, cached=False,
                                         warm=warm.warm_ready(cfg.base_model) if processes == 1 else "",
                                         mean_tokens=mean_tokens)
    out["startup_s"] = startup
    return seconds + sum(startup.values()), out


def fill_card(cfg: TrainConfig, device: Device, target_tokens: int | None = None) -> dict:
    """Batch size, packing and checkpointing that keep a GPU busy: Iris's own choice for a card.

    Packing makes every row max_seq_length long (no pad tokens). Micro-batches of ~32k tokens
    (core.train.throughput.TOKEN_BUDGET, measured) keep an H200 busy for a 1B model; recomputation (gradient checkpointing) costs ~1/3 more
    FLOPs, so it stays off whenever that micro-batch fits without it. Gradient accumulation keeps the
    effective batch (in conversations) near the config's.
    """
    from core.train.throughput import TOKEN_BUDGET  # what bench/train_gpu.py found fastest

    target_tokens = target_tokens or TOKEN_BUDGET
    arch = model_architecture(cfg.base_model)
    best = None
    for gc in (False, True):
        bs = max(1, target_tokens // cfg.max_seq_length)
        while bs >= 1:
            mem = memory_bytes(arch, cfg, device, bs * cfg.max_seq_length, gradient_checkpointing=gc)["total"]
            if mem <= FIT_FRACTION * device.mem_bytes:
                best = {"batch_size": bs, "gradient_checkpointing": gc, "packing": True,
                        "grad_accum": max(1, cfg.effective_batch // bs), "memory_bytes": mem}
                break
            bs //= 2
        if best:
            return best
    return {"batch_size": 1, "gradient_checkpointing": True, "packing": True, "grad_accum": cfg.effective_batch,
            "memory_bytes": None}
