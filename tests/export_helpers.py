"""Run directories for export tests: a real peft adapter on a tiny model, laid out as core.train writes it."""
from __future__ import annotations

from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def save_adapter(base_dir: Path, out: Path, r: int = 8, alpha: int = 16, seed: int = 1, rslora: bool = False,
                 targets: list[str] | None = None, b_std: float = 0.05) -> Path:
    """A LoRA on `base_dir` with random (non-zero) B weights, saved with peft's save_pretrained."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora,
                                            target_modules=targets or TARGETS))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, b_std)
    peft.save_pretrained(out)
    return Path(out)


def make_run(runs: Path, name: str, base_model: str, base_dir: Path, checkpoints: tuple[int, ...] = (2,),
             final: bool = True, dataset: str = "tiny-v1", b_std: float = 0.05) -> Path:
    """runs/<name>/config.yaml + checkpoints/checkpoint-N/ (with COMPLETE) + adapter/ (with tokenizer).

    Each checkpoint also holds the tokenizer as trl's Trainer saves it: with Iris's *training* chat
    template (`{% generation %}` markers), which the final adapter's plain template replaces."""
    import shutil

    from transformers import AutoTokenizer

    from core.train.backends import inference_template, set_training_template

    run = Path(runs) / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"base_model: {base_model}\ndataset: {dataset}\nlora_r: 8\nlora_alpha: 16\n")
    for i, step in enumerate(checkpoints):
        ckpt = save_adapter(base_dir, run / "checkpoints" / f"checkpoint-{step}", seed=10 + i)
        (ckpt / "trainer_state.json").write_text('{"global_step": %d}' % step)
        tok = AutoTokenizer.from_pretrained(base_dir)
        set_training_template(tok, assistant_only_loss=True)
        tok.save_pretrained(ckpt)
        (ckpt / "COMPLETE").write_text("")
    if final:
        save_adapter(base_dir, run / "adapter", seed=1, b_std=b_std)
        tok = AutoTokenizer.from_pretrained(base_dir)  # as core.train.lora.save_adapter leaves it
        set_training_template(tok, assistant_only_loss=True)
        tok.chat_template = inference_template(tok.chat_template)
        tok.save_pretrained(run / "adapter")
    if not checkpoints and not final:
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
    return run
