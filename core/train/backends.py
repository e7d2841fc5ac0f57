"""The two training backends behind one interface: `load_model` then `build_trainer`.

- unsloth (`FastLanguageModel` + its patched trl `SFTTrainer`) when CUDA is available and unsloth imports,
  in one process or one per GPU (DDP): faster kernels and its own offloaded gradient checkpointing;
- transformers + peft + trl `SFTTrainer` everywhere else (CPU, CPU DDP with gloo, no unsloth).

Both train on rows tokenised by `core.train.tokens` from the canonical `messages` column with Iris's own
training-compatible chat templates (pre-rendered text would get a second BOS), whose `{% generation %}`
markers mask everything but the assistant's replies (`assistant_only_loss`) in the rows' labels. The adapter is
saved with the same template minus the markers, which is what inference engines can parse.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.errors import IrisError
from core.train.config import TrainConfig

# Llama-3 turns, without the Llama-3.2 template's injected "Cutting Knowledge Date" system block.
LLAMA3_TRAIN_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# ChatML (SmolLM2, Qwen): the end-of-turn token is part of what the model learns to produce.
CHATML_TRAIN_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def inference_template(template: str) -> str:
    """The training template without `{% generation %}` markers (plain Jinja, for llama.cpp and others)."""
    from core.templates import plain_template

    return plain_template(template)


def set_training_template(tokenizer, assistant_only_loss: bool) -> str:
    """Give `tokenizer` Iris's training template for its family; returns the family name."""
    vocab = tokenizer.get_vocab()
    if "<|start_header_id|>" in vocab:
        tokenizer.chat_template, family = LLAMA3_TRAIN_TEMPLATE, "llama-3"
    elif "<|im_start|>" in vocab:
        tokenizer.chat_template, family = CHATML_TRAIN_TEMPLATE, "chatml"
    elif tokenizer.chat_template and "generation" in tokenizer.chat_template:
        family = "model's own"
    elif assistant_only_loss or not tokenizer.chat_template:
        raise IrisError("this model's tokenizer has no chat template Iris can train with (Llama-3 or ChatML "
                        "tokens): turn 'assistant-only loss' off or pick a Llama-3 / ChatML model.")
    else:
        family = "model's own"
    if tokenizer.pad_token is None:
        pad = "<|finetune_right_pad_id|>" if "<|finetune_right_pad_id|>" in vocab else tokenizer.eos_token
        tokenizer.pad_token = pad
    return family


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def choose(cfg: TrainConfig) -> tuple[str, str]:
    """('unsloth' or 'transformers', why) for this process; imports unsloth (before trl) when it is chosen.

    Under DDP (several processes) unsloth is tried too, each process on its own GPU; when it does not import,
    every process falls back to transformers + peft the same way, and `why` says so.
    """
    if cfg.backend == "transformers":
        return "transformers", "set in the config"
    if not cuda_available():
        if cfg.backend == "unsloth" or cfg.load_in_4bit:
            raise IrisError("unsloth and 4-bit loading need a CUDA GPU, and none is visible: set backend to "
                            "auto or transformers and turn 4-bit off.")
        return "transformers", "no CUDA GPU (unsloth needs one)"
    try:
        import unsloth  # noqa: F401 - must be imported before trl/transformers models to patch them
    except Exception as err:  # unsloth's import fails in many ways (missing kernels, versions)
        if cfg.backend == "unsloth" or cfg.load_in_4bit:
            raise IrisError(f"unsloth does not import here ({type(err).__name__}: {err}); install "
                            "requirements-gpu.txt or set backend to transformers.") from None
        why = f"unsloth does not import ({type(err).__name__}: {str(err)[:200]})"
        print(f"{why}; using transformers+peft+trl", flush=True)
        return "transformers", why
    from core.train.kernels import enable_packed_varlen

    varlen = enable_packed_varlen()  # packed rows: one varlen flash call per layer (2.1× on FineTome lengths)
    print(f"iris: packed-row attention {varlen}", flush=True)
    return "unsloth", f"CUDA and unsloth, {world_size()} process(es); packed attention {varlen}"


# A warm process (core.train.launch.serve_warm) loads the embedded base model while it waits: the run it is
# handed then skips ~1.5 s of reading 538 MB of fp32 weights. Keyed by the resolved model folder; used once.
_PRELOADED: dict[str, tuple] = {}


def preload(model_dir: Path) -> None:
    """Load `model_dir` on the CPU as `load_model` would, for the next run on it in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    _PRELOADED[str(Path(model_dir).resolve())] = (model, AutoTokenizer.from_pretrained(model_dir))


def warm_kernels(rows: int = 2, tokens: int = 256) -> None:
    """A forward and backward pass of each preloaded model on `rows` × `tokens` (the CPU presets' micro-batch),
    its weights frozen meanwhile. The run's step 1 otherwise pays for first calls: ~480k page faults on fresh
    activation memory (which glibc then keeps: core.train.launch.KEEP_FREED_MEMORY) and kernels' first use.
    The warm process holds that memory while it waits (~1.3 GB for SmolLM2: 2.0 GB in all, 0.67 GB before).
    Not on a CUDA machine, whose runs load the model again in bf16 on the GPU."""
    import torch

    if cuda_available():
        return
    for model, _ in _PRELOADED.values():
        trainable = [p for p in model.parameters() if p.requires_grad]
        try:
            for p in trainable:
                p.requires_grad_(False)
            ids = torch.randint(0, model.config.vocab_size, (rows, tokens), generator=torch.Generator().manual_seed(0))
            embeds = model.get_input_embeddings()(ids).requires_grad_()  # gradients reach every layer's input
            hidden = model.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
            logits = model.lm_head(hidden[:, tokens // 4:]).float()  # a labelled share, as core.train.loss projects
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, tokens // 4:].flatten()).backward()
        finally:
            for p in trainable:
                p.requires_grad_(True)


def load_model(cfg: TrainConfig, model_dir: Path, backend: str):
    """(model with LoRA adapters or a peft config to apply, tokenizer, peft_config or None)."""
    import torch

    if backend == "unsloth":
        from unsloth import FastLanguageModel

        extra = {"device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}} if world_size() > 1 else {}
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(model_dir), max_seq_length=cfg.max_seq_length, dtype=None,
            load_in_4bit=cfg.load_in_4bit, local_files_only=True, **extra)  # DDP: each process its own GPU
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules), bias="none", random_state=cfg.seed,
            use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False)
        return model, tokenizer, None
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = cuda_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    model, tokenizer = _PRELOADED.pop(str(Path(model_dir).resolve()), (None, None))
    if model is None or dtype != torch.float32:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        print(f"iris: base model {model_dir} was loaded while the process waited", flush=True)
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    return model, tokenizer, peft_config


def common_args(cfg: TrainConfig, output_dir: Path, backend: str, has_eval: bool) -> dict:
    """The Trainer arguments every method shares (SFT here, DPO in core.train.dpo): schedule, checkpoints,
    evaluation, logging, precision and the data loader."""
    import torch

    cuda = cuda_available()
    return dict(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        max_steps=cfg.max_steps if cfg.max_steps else -1, num_train_epochs=cfg.epochs,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=None,
        eval_strategy="steps" if has_eval else "no", eval_steps=cfg.eval_steps or None,
        logging_steps=cfg.logging_steps, logging_first_step=True, seed=cfg.seed, data_seed=cfg.seed,
        optim=cfg.optimizer, weight_decay=cfg.weight_decay, lr_scheduler_type=cfg.lr_scheduler,
        bf16=bool(cuda and torch.cuda.is_bf16_supported()), fp16=False, use_cpu=not cuda,
        # unsloth applies its own (offloaded) checkpointing inside get_peft_model
        gradient_checkpointing=cfg.gradient_checkpointing and backend != "unsloth",
        max_length=cfg.max_seq_length,
        include_num_input_tokens_seen="non_padding",  # tokens/s in metrics.jsonl, on every backend
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, save_only_model=False,
        ddp_find_unused_parameters=False if world_size() > 1 else None,
    )


def sft_config(cfg: TrainConfig, output_dir: Path, backend: str, has_eval: bool, streaming: bool = False):
    """trl's SFTConfig for `cfg`. Datasets arrive tokenised (core.train.tokens: labels already carry the
    assistant-only mask), so trl neither tokenises nor masks; `streaming` datasets are not prepared at all."""
    from trl import SFTConfig

    return SFTConfig(
        **common_args(cfg, output_dir, backend, has_eval),
        packing=cfg.packing, assistant_only_loss=False,
        dataset_kwargs={"skip_prepare_dataset": True} if streaming else None,
        remove_unused_columns=not streaming,  # the transform needs its `index` column
    )


def trainer_class():
    """trl's SFTTrainer, with the model's own loss where trl 1.15's fused LM head cannot run.

    trl 1.15 computes every loss through a chunked LM head written in Triton (no full 128k-vocab logits:
    a big memory saving on GPUs). Without Triton, or on CPU tensors, that kernel does not exist or
    fails; there the same cross-entropy over the same masked labels is computed with the LM head over
    the labelled positions only (core.train.loss), or by the model itself where that does not apply.
    """
    from transformers import Trainer
    from trl import SFTTrainer
    from trl.trainer import utils as trl_utils

    from core.train import loss as lm_loss

    class IrisSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            on_cpu = self.args.device.type == "cpu"
            if trl_utils._ChunkedLogProbFunction is not None and not on_cpu:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs = {k: v for k, v in inputs.items() if k not in ("completion_mask", "assistant_masks")}
            if return_outputs or self.args.world_size > 1 or "labels" not in inputs or not lm_loss.supports(model):
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            # the same loss, the LM head only over labelled positions (core.train.loss); Trainer divides by
            # the accumulation steps itself when the model takes no num_items_in_batch
            n_items = num_items_in_batch if self.model_accepts_loss_kwargs else None
            return lm_loss.label_positions_loss(model, inputs, n_items)

        def _load_optimizer_and_scheduler(self, checkpoint):
            """Under CPU DDP transformers maps the optimizer state to args.device, torch.device('cpu', 0), whose
            name torch.load cannot restore to ("cpu:0"): read it onto the plain CPU there, as one process does."""
            if not (checkpoint and self.args.device.type == "cpu" and self.args.world_size > 1):
                return super()._load_optimizer_and_scheduler(checkpoint)
            import torch

            load = torch.load
            torch.load = lambda *a, **kw: load(*a, **{**kw, "map_location": "cpu"})
            try:
                return super()._load_optimizer_and_scheduler(checkpoint)
            finally:
                torch.load = load

    return IrisSFTTrainer


def build_trainer(cfg: TrainConfig, model, tokenizer, peft_config, train_ds, eval_ds, output_dir: Path,
                  backend: str, callbacks: list):
    if backend == "unsloth":
        from trl import SFTTrainer  # unsloth has patched this class in place
    else:
        SFTTrainer = trainer_class()
    streaming = train_ds.format["type"] == "custom"  # core.train.tokens' on-demand transform
    args = sft_config(cfg, output_dir, backend, eval_ds is not None, streaming)
    kwargs = dict(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                  processing_class=tokenizer, callbacks=callbacks)
    if peft_config is not None:
        kwargs["peft_config"] = peft_config
    return SFTTrainer(**kwargs)
