"""`TrainConfig`: every setting of one LoRA run, the object the Train page, the CLI and the tests build.

It is written as `config.yaml` into the run directory (so the folder describes itself) and read back
by `python -m core.train CONFIG.yaml`. Presets are YAML files under `presets/`.

Checks that need nothing but the numbers live in `__post_init__`; checks that need the disk, the model
or the dataset (does the version exist, is the sequence length within the model's) live in
`core.train.preflight`, because a config is also built for runs on other machines.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.access import check_hub_repo
from core.config import check_types, in_range, load_yaml, one_of
from core.errors import IrisError
from core.paths import REPO_ROOT, check_name

PRESETS_DIR = REPO_ROOT / "presets"
BACKENDS = ("auto", "unsloth", "transformers")
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
MAX_LORA_R = 4096  # wider than any small model's hidden size; the estimate checks the real one
LAB_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
METHODS = ("sft", "dpo")
# trl's DPO loss names (DPOConfig.loss_type) that need nothing beyond beta; "sigmoid" is the paper's DPO.
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down",
              "sigmoid_norm")


@dataclass
class TrainConfig:
    base_model: str
    """Registry id (`smollm2-135m-instruct`), hub id (`unsloth/Llama-3.2-1B-Instruct`) or a model folder."""
    dataset: str
    """Dataset version name (see the Data page); rows in canonical `messages` form."""
    run_name: str = ""
    """Folder name under IRIS_HOME/runs; empty → `<dataset>-<yyyymmdd-hhmmss>`."""
    use_eval_split: bool = True
    """Evaluate on the version's eval split when it has one (every `eval_steps`)."""
    lora_r: int = 16
    """LoRA rank: size of the low-rank update per adapted matrix (the lab: 16); memory and time grow with it."""
    lora_alpha: int = 16
    """LoRA scaling numerator: the update is multiplied by alpha / r (alpha = r keeps the scale at 1)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input during training, in [0, 1) (0 is what unsloth optimises for)."""
    target_modules: list[str] = field(default_factory=lambda: list(LAB_TARGETS))
    """Linear layers that get a LoRA adapter, by module name (the lab: q, k, v, o, up, down projections)."""
    max_seq_length: int = 2048
    """Tokens per sample; longer conversations are truncated."""
    batch_size: int = 2
    """Samples per device per step (micro-batch)."""
    grad_accum: int = 4
    """Micro-batches per optimizer step: effective batch = batch_size × grad_accum × processes."""
    learning_rate: float = 2e-4
    """Peak learning rate after warm-up (the lab: 2e-4; LoRA usually 1e-4 to 3e-4)."""
    warmup_steps: int = 5
    """Optimizer steps over which the learning rate rises linearly from 0 to its peak."""
    max_steps: int = 100
    """Optimizer steps; 0 → train for `epochs` instead."""
    epochs: float = 1.0
    """Passes over the train split, used only when max_steps is 0."""
    save_steps: int = 10
    """Checkpoint every N steps (the lab saved every 10 to survive a dying runtime)."""
    eval_steps: int = 0
    """Eval loss every N steps; 0 → no evaluation during training."""
    logging_steps: int = 1
    """Write loss, learning rate and speed to metrics.jsonl every N steps."""
    seed: int = 3407
    """Seed of data order, LoRA initialisation and dropout: the same seed gives the same run."""
    packing: bool = False
    """Pack several short conversations into one max_seq_length row (fewer pad tokens, faster)."""
    assistant_only_loss: bool = True
    """Train on the assistant's replies only (the lab's train_on_responses_only)."""
    load_in_4bit: bool = False
    """QLoRA: 4-bit base weights (CUDA only)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: far less memory, ~30% slower."""
    optimizer: str = "adamw_torch"
    """adamw_torch, adamw_8bit / paged_adamw_8bit (bitsandbytes, CUDA: the lab's) or sgd."""
    weight_decay: float = 0.01
    """AdamW weight decay on the LoRA weights."""
    lr_scheduler: str = "linear"
    """How the learning rate falls after warm-up: linear, cosine, constant, constant_with_warmup."""
    backend: str = "auto"
    """'auto' → unsloth when CUDA is there and unsloth imports, else transformers+peft+trl."""
    mirror_dir: str = ""
    """Copy every complete checkpoint here too (e.g. a mounted drive); resume can start from it."""
    mirror_hub_repo: str = ""
    """Also upload every complete checkpoint to this hub repo (only when online)."""
    method: str = "sft"
    """sft: learn the assistant replies of `messages` rows; dpo: prefer `chosen` over `rejected` (a preference version)."""
    beta: float = 0.1
    """DPO only: how far the model may move from the reference (trl's beta; smaller = further; 0.1 is common)."""
    loss_type: str = "sigmoid"
    """DPO only: trl's loss name; sigmoid is the DPO paper's loss, ipo/hinge/robust/... its variants."""
    parent_run: str = ""
    """DPO only: an SFT run whose adapter this run continues (and whose adapter is the reference); empty → a new
    adapter on the base model, with the base (adapter disabled) as the reference."""

    def __post_init__(self) -> None:
        check_types(self)  # wrong types first: `learning_rate: fast` is refused here, naming the field
        if not self.base_model.strip():
            raise IrisError("`base_model` is empty: choose a registry id, a hub id or a model folder.")
        if not self.dataset.strip():
            raise IrisError("`dataset` is empty: choose a saved dataset version (see the Data page).")
        check_name(self.dataset, "`dataset` (a dataset version)")
        if self.run_name:
            check_name(self.run_name, "`run_name`")
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "save_steps", "logging_steps"):
            in_range(name, getattr(self, name), 1, why="batch size × gradient accumulation must be at least 1"
                     if name in ("batch_size", "grad_accum") else "")
        for name in ("max_steps", "warmup_steps", "eval_steps", "seed"):
            in_range(name, getattr(self, name), 0)
        in_range("lora_r", self.lora_r, 1, MAX_LORA_R, why="a rank past the model's hidden size adds nothing")
        in_range("lora_alpha", self.lora_alpha, 1, 16 * MAX_LORA_R)
        in_range("max_seq_length", self.max_seq_length, 16, 1 << 20, why="16 tokens hold one short turn")
        in_range("batch_size", self.batch_size, 1, 4096)
        if self.max_steps == 0:
            in_range("epochs", self.epochs, 0, 1000, low_open=True, why="max_steps is 0, so epochs sets the length")
        in_range("learning_rate", self.learning_rate, 0, 1, low_open=True, high_open=True,
                 why="typical LoRA: 1e-4 to 3e-4")
        in_range("lora_dropout", self.lora_dropout, 0, 1, high_open=True)
        in_range("weight_decay", self.weight_decay, 0, 1)
        if not self.target_modules or not all(m.strip() for m in self.target_modules):
            raise IrisError(f"`target_modules` is {self.target_modules!r}: name at least one linear layer "
                            "(e.g. q_proj, v_proj).")
        one_of("backend", self.backend, BACKENDS)
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        one_of("lr_scheduler", self.lr_scheduler, SCHEDULERS)
        if self.mirror_hub_repo and os.environ.get("IRIS_HUB_NAMESPACES"):  # else checked at upload
            check_hub_repo(self.mirror_hub_repo, "mirror_hub_repo")
        one_of("method", self.method, METHODS)
        one_of("loss_type", self.loss_type, DPO_LOSSES)
        in_range("beta", self.beta, 0, 100, low_open=True, why="0.1 is common; smaller lets the model move further")
        if self.parent_run:
            check_name(self.parent_run, "`parent_run`")
            if self.method != "dpo":
                raise IrisError(f"`parent_run` is {self.parent_run!r} but `method` is {self.method}: continuing an "
                                "adapter is for DPO runs; set method to dpo or clear parent_run.")
        if self.load_in_4bit and self.backend == "transformers":
            raise IrisError("`load_in_4bit` is true but `backend` is transformers: 4-bit loading runs through "
                            "unsloth on CUDA, so set backend to auto or unsloth.")

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    def with_run_name(self) -> "TrainConfig":
        """The run name, filled in from the dataset and the time when left empty."""
        if not self.run_name:
            self.run_name = f"{self.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        return self


def list_presets() -> dict[str, Path]:
    """Preset label (the YAML's first comment line, else its file name) → path."""
    out = {}
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        out[first.lstrip("# ").strip() if first.startswith("#") else path.stem] = path
    return out


def load_preset(name_or_path: str | Path) -> TrainConfig:
    """A preset by label, file stem, or path."""
    presets = list_presets()
    path = presets.get(str(name_or_path)) or PRESETS_DIR / f"{name_or_path}.yaml"
    if not Path(path).exists():
        path = Path(name_or_path)
    if not path.exists():
        raise IrisError(f"no preset {name_or_path!r}; presets: {', '.join(presets)}.")
    return load_yaml(TrainConfig, path)
