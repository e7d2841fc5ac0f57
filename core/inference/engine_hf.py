"""transformers models on CPU (fp32): merged folders, local models, and peft adapters on their base.

The prompt comes from the tokenizer's own chat template (`apply_chat_template`). `model.generate`
runs in a worker thread and hands each new token to the caller through a queue, so the answer
streams; a stopping criterion watches the stream's stop flag.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from core.errors import IrisError
from core.inference.chat_tokens import hf_specials
from core.inference.engine import MAX_CTX, Engine, Stream, _check_ram

if TYPE_CHECKING:
    from core.inference.catalog import ChatModel
    from core.inference.settings import DecodingSettings

_DONE = object()


def _weights_bytes_fp32(folder: Path) -> int:
    """RAM for the weights once loaded in fp32: on-disk size scaled by 4 / bytes per stored value."""
    import json

    size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) or sum(
        p.stat().st_size for p in folder.glob("*.bin"))
    try:
        dtype = json.loads((folder / "config.json").read_text()).get("dtype") or \
            json.loads((folder / "config.json").read_text()).get("torch_dtype") or "float32"
    except (OSError, ValueError):
        dtype = "float32"
    return size * (2 if dtype in ("bfloat16", "float16") else 1)


class HFEngine(Engine):
    def __init__(self, model: "ChatModel", n_ctx: int | None = None) -> None:
        super().__init__(model)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from core import models

        path = Path(model.path)
        if not path.exists():
            raise IrisError(f"{path} does not exist (deleted?): pick another model.")
        folder = models.resolve(model.base) if model.kind == "adapter" else path
        if model.kind == "adapter" and not model.base:
            raise IrisError(f"{model.label}: its base model is unknown (no base_model in the run's config.yaml).")
        _check_ram(int(_weights_bytes_fp32(Path(folder)) * 1.2) + (256 << 20), model.label)
        tok_dir = path if (path / "tokenizer_config.json").exists() else folder
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
            net = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            if model.kind == "adapter":
                from peft import PeftModel

                # Merged once at load: generation then costs the same as the base model.
                net = PeftModel.from_pretrained(net, str(path)).merge_and_unload()
        except (OSError, ValueError) as err:
            raise IrisError(f"{model.label} could not be loaded ({str(err)[:200]}): the folder is incomplete "
                            "or not a causal language model.") from None
        if not self.tokenizer.chat_template:
            raise IrisError(f"{model.label} has no chat template in its tokenizer: train from an instruct model.")
        self.net = net.eval()
        self.specials = hf_specials(self.tokenizer)
        # The Rust tokenizer is shared by prompt preparation and the generating thread, and
        # split_special_tokens flips a flag on it: one call at a time.
        self._tok_lock = threading.Lock()
        limits = [n_ctx or MAX_CTX, getattr(net.config, "max_position_embeddings", MAX_CTX) or MAX_CTX]
        if self.tokenizer.model_max_length and self.tokenizer.model_max_length < 10**7:
            limits.append(self.tokenizer.model_max_length)
        self.n_ctx = int(min(limits))
        self.ram_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
        eos = net.generation_config.eos_token_id if net.generation_config is not None else None
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = set(eos) | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())

    def render(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def tokenize(self, text: str) -> list[int]:
        # The template writes any BOS itself (as apply_chat_template(tokenize=True) assumes).
        with self._tok_lock:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]

    def tokenize_plain(self, text: str) -> list[int]:
        with self._tok_lock:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _decode(self, ids: list[int]) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate_bytes(self, stream: Stream, settings: "DecodingSettings") -> Iterator[bytes]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        self.last_finish = ""
        q: queue.Queue = queue.Queue()
        halt = threading.Event()  # set when the caller stops reading (stop button, closed generator)

        class _Ids(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:  # generate() first hands over the prompt
                    self.first = False
                    return
                for t in value.reshape(-1).tolist():
                    q.put(t)

            def end(self):
                pass

        class _Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                stop = halt.is_set() or stream.should_stop()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool)

        ids = torch.tensor([stream.tokens])
        sample = float(settings.temperature) > 0
        kwargs = dict(max_new_tokens=min(int(settings.max_new_tokens), self.n_ctx - len(stream.tokens)),
                      do_sample=sample, repetition_penalty=float(settings.repeat_penalty),
                      pad_token_id=self.tokenizer.pad_token_id or next(iter(self.eos_ids), None),
                      eos_token_id=sorted(self.eos_ids) or None, streamer=_Ids(),
                      stopping_criteria=StoppingCriteriaList([_Halt()]))
        if sample:
            kwargs.update(temperature=float(settings.temperature), top_p=float(settings.top_p),
                          top_k=int(settings.top_k) or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        errors: list[BaseException] = []

        def work():
            try:
                torch.manual_seed(int(settings.seed))
                with torch.inference_mode():
                    self.net.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            except BaseException as err:  # handed to the caller's thread
                errors.append(err)
            finally:
                q.put(_DONE)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        out: list[int] = []
        text = ""
        try:
            while (tok := q.get()) is not _DONE:
                if tok in self.eos_ids:
                    self.last_finish = "stop"
                    continue
                out.append(tok)
                # Decode the whole answer and hand over what is new (one item per token; a split
                # multi-byte character shows up once its last token arrives).
                full = self._decode(out)
                new, text = (full[len(text):], full) if not full.endswith("\ufffd") else ("", text)
                yield new.encode("utf-8")
            if errors:
                raise errors[0]
            self.last_finish = self.last_finish or "length"
        finally:
            halt.set()
            worker.join()
