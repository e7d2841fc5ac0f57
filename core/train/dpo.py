"""The DPO path of the training job: preference pairs → trl's DPOTrainer, in the same run directory as SFT.

`core.train.lora.main` calls `build(...)` instead of the SFT trainer when `cfg.method == "dpo"`; everything else
(status, metrics.jsonl, checkpoints, stop, kill -9 and resume, mirrors, the final adapter) is the SFT job's.

- Rows come from a preference version (core.data.preference: `prompt` turns, `chosen`, `rejected`). Iris
  tokenises them itself so that text stays text: the prompt through `core.inference.chat_tokens` (only the chat
  template's own structure becomes control tokens, with the generation prompt), each answer as plain text plus
  the template's end-of-turn token. trl 1.16 gets `prompt_ids / chosen_ids / rejected_ids` columns and its own
  tokenising step is skipped (`IrisDPOTrainer._prepare_dataset`).
- The reference model is the policy with its LoRA adapter switched off (trl does this for a peft model when
  `ref_model` is None): one model in memory. Continuing an SFT run's adapter (`parent_run`), trl keeps a frozen
  copy of that adapter as the reference ("ref"), so the reference is the SFT model, as in the DPO paper.
- unsloth on CUDA: the same backend switch as SFT; unsloth's `PatchDPOTrainer` is applied before trl's class
  is imported.
"""
from __future__ import annotations

import json
from pathlib import Path

from core import runs
from core.errors import IrisError
from core.train.config import TrainConfig


def end_of_turn_ids(tokenizer) -> list[int]:
    """The token(s) the chat template closes an assistant answer with (<|eot_id|>, <|im_end|>): rendered from a
    one-turn chat, everything after the answer's text up to and including the first special token."""
    from core.inference.chat_tokens import hf_specials

    mark = "\ue010"  # a private-use character: no template writes it
    text = tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}],
                                         tokenize=False)
    tail = text[text.rindex(mark) + 1:]
    specials = hf_specials(tokenizer)
    first = min(((tail.find(s), s) for s in specials if s and s in tail), default=None)
    if first is None:
        raise IrisError("this model's chat template ends an answer with no special token: Iris cannot mark the end "
                        "of a DPO answer; pick a Llama-3 or ChatML model.")
    return [specials[first[1]]]


def tokenise_pair(tokenizer, prompt: list[dict], chosen: str, rejected: str, max_length: int,
                  eot: list[int] | None = None) -> dict:
    """{prompt_ids, chosen_ids, rejected_ids} of one pair; control-token strings in any text stay plain text.
    Longer than `max_length`: the prompt keeps its last tokens (at most half of max_length when the answers
    need the room), then each answer is cut to what is left."""
    from core.inference.chat_tokens import hf_plain, tokenize_chat

    eot = end_of_turn_ids(tokenizer) if eot is None else eot
    plain = hf_plain(tokenizer)
    prompt_ids = tokenize_chat(tokenizer, prompt, add_generation_prompt=True)
    # trimmed like the templates trim a stored answer (Llama-3's `| trim`): the model learns to stop after the text
    answers = [plain(text.strip()) + eot for text in (chosen, rejected)]
    longest = max(len(a) for a in answers)
    if len(prompt_ids) + longest > max_length:
        keep = max(max_length // 2, max_length - longest)
        prompt_ids = prompt_ids[-keep:]
        answers = [a[:max_length - len(prompt_ids)] for a in answers]
    return {"prompt_ids": prompt_ids, "chosen_ids": answers[0], "rejected_ids": answers[1]}


def load_pairs(name: str, split: str = "train") -> list[dict]:
    """A preference version's pairs as plain dicts (prompt as a list of turns): the columns core.data.preference
    writes, read through core.versions (core.train does not import core.data)."""
    from core import versions

    df = versions.load(name, split)
    if not {"prompt", "chosen", "rejected"} <= set(df.columns):
        raise IrisError(f"dataset version {name!r} has no preference pairs (columns {', '.join(df.columns)}): "
                        "DPO needs `prompt`, `chosen` and `rejected`; make one with python -m core.data prefs.")
    return versions.to_records(df[["prompt", "chosen", "rejected"]])


def pair_dataset(name: str, split: str, tokenizer, max_length: int, progress=None):
    """A datasets.Dataset of tokenised pairs of version `name`'s split."""
    from datasets import Dataset

    pairs = load_pairs(name, split)
    eot = end_of_turn_ids(tokenizer)
    rows = []
    for i, p in enumerate(pairs):
        rows.append(tokenise_pair(tokenizer, p["prompt"], p["chosen"], p["rejected"], max_length, eot))
        if progress and (i % 200 == 0 or i == len(pairs) - 1):
            progress(i + 1, len(pairs))
    return Dataset.from_list(rows)


def parent_adapter(cfg: TrainConfig) -> Path | None:
    """The SFT run's final adapter (else its latest checkpoint) that this DPO run continues, or None. The adapter's
    shape (r, alpha, target modules) is the parent's: it is written into `cfg` here, before config.yaml is saved
    (core.train.lora's preflight), so the run's config says what was trained."""
    if not cfg.parent_run:
        return None
    run_dir = runs.find_run(cfg.parent_run)
    if run_dir is None:
        raise IrisError(f"parent run {cfg.parent_run!r} does not exist (anymore): pick one of the runs on the Train "
                        "page, or leave the parent empty to start a new adapter on the base model.")
    parent_base = runs.read_config(run_dir).get("base_model")
    if parent_base != cfg.base_model:
        raise IrisError(f"parent run {cfg.parent_run!r} trained {parent_base!r}, not {cfg.base_model!r}: set the "
                        "base model to the parent's.")
    adapter = runs.adapter_dir(run_dir)
    shape = json.loads((adapter / "adapter_config.json").read_text())
    cfg.lora_r, cfg.lora_alpha = int(shape["r"]), int(shape["lora_alpha"])
    cfg.target_modules = sorted(shape["target_modules"])
    return adapter


def continue_adapter(cfg: TrainConfig, model, adapter: Path, backend: str):
    """The model with the parent's LoRA weights loaded as its trainable "default" adapter; the adapter's shape
    (r, alpha, target modules) is the parent's, whatever the form says."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    if backend != "unsloth":  # unsloth's get_peft_model has run already in backends.load_model
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules=cfg.target_modules, bias="none", task_type="CAUSAL_LM"))
    state = load_file(str(adapter / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state)
    if getattr(result, "unexpected_keys", None):
        raise IrisError(f"the parent adapter in {adapter} does not fit this model ({len(result.unexpected_keys)} "
                        "weights without a place): pick the parent's base model.")
    return model


def load_model(cfg: TrainConfig, model_dir: Path, backend: str):
    """(model, tokenizer, peft_config or None): a fresh adapter, or the parent run's adapter to continue."""
    from core.train import backends

    adapter = parent_adapter(cfg)  # sets cfg's LoRA shape to the parent's (unsloth builds its LoRA in load_model)
    model, tokenizer, peft_config = backends.load_model(cfg, model_dir, backend)
    if adapter is not None:
        model, peft_config = continue_adapter(cfg, model, adapter, backend), None
    return model, tokenizer, peft_config


def dpo_config(cfg: TrainConfig, output_dir: Path, backend: str, has_eval: bool):
    """trl's DPOConfig for `cfg`: the SFT job's schedule, checkpoints and logging, plus beta and the loss."""
    from trl import DPOConfig

    from core.train.backends import common_args

    return DPOConfig(**common_args(cfg, output_dir, backend, has_eval), beta=cfg.beta, loss_type=[cfg.loss_type])


class PlainLogProbs:
    """What trl's chunked log-prob kernel returns, in plain torch: trl 1.16's DPOTrainer computes every
    log-probability through that Triton kernel, which does not exist without Triton and fails on CPU tensors.
    Full logits are materialised here: fine for the small models that train on CPUs."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs):
        import torch
        import torch.nn.functional as F

        logits = F.linear(hidden, weight, bias).float() * logit_scale
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        logp_all = (logits / temperature).log_softmax(-1)
        log_probs = logp_all.gather(-1, targets[:, None]).squeeze(-1)
        with torch.no_grad():  # the rest feeds trl's logged metrics only
            extra = {"entropy": -(logp_all.exp() * logp_all).sum(-1), "log_sum_sq_probs": (2 * logp_all).logsumexp(-1),
                     "mean_logits": logits.mean(-1), "is_top1": logits.argmax(-1) == targets}
        return (log_probs, *(extra[k] if k in outputs else None
                             for k in ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")))


def trainer_class(backend: str):
    """trl's DPOTrainer (patched by unsloth on its backend) that takes Iris's tokenised pairs as they are."""
    if backend == "unsloth":
        import unsloth

        if hasattr(unsloth, "PatchDPOTrainer"):
            unsloth.PatchDPOTrainer()
    from trl import DPOTrainer
    from trl.trainer import utils as trl_utils

    from core.train.backends import cuda_available

    if hasattr(trl_utils, "_ChunkedLogProbFunction") and (trl_utils._ChunkedLogProbFunction is None
                                                          or not cuda_available()):
        trl_utils._ChunkedLogProbFunction = PlainLogProbs  # this training process only

    class IrisDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:  # tokenised by core.train.dpo: text stays text
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return IrisDPOTrainer


def build(cfg: TrainConfig, model_dir: Path, backend: str, run_dir: Path, callbacks: list, set_phase) -> tuple:
    """(trainer, template family) for a DPO run: model (+ parent adapter), tokenised pairs, DPOTrainer."""
    from core import versions
    from core.train.backends import set_training_template

    model, tokenizer, peft_config = load_model(cfg, model_dir, backend)
    family = set_training_template(tokenizer, False)
    train_ds = pair_dataset(cfg.dataset, "train", tokenizer, cfg.max_seq_length,
                            lambda n, total: set_phase(run_dir, "tokenising pairs", n, total))
    eval_ds = None
    if cfg.use_eval_split and cfg.eval_steps and versions.load_manifest(cfg.dataset)["rows"].get("eval"):
        eval_ds = pair_dataset(cfg.dataset, "eval", tokenizer, cfg.max_seq_length)
    args = dpo_config(cfg, run_dir / runs.CHECKPOINTS, backend, eval_ds is not None)
    kwargs = dict(model=model, ref_model=None, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                  processing_class=tokenizer, callbacks=callbacks)
    if peft_config is not None:
        kwargs["peft_config"] = peft_config
    return trainer_class(backend)(**kwargs), family


def check_version(cfg: TrainConfig) -> None:
    """A DPO run needs a preference version (and an SFT run a conversation one): say so before loading a model."""
    from core import versions

    columns = versions.load_manifest(cfg.dataset).get("columns") or []
    has_pairs = {"prompt", "chosen", "rejected"} <= set(columns)
    if cfg.method == "dpo" and not has_pairs:
        raise IrisError(f"dataset version {cfg.dataset!r} has no preference pairs: DPO needs a version with `prompt`, "
                        "`chosen` and `rejected` (python -m core.data prefs), or choose method sft.")
