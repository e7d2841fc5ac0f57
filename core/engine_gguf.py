"""GGUF models through llama-cpp-python, with the chat template from the GGUF and KV-cache reuse.

Follow-up turns: the previous prompt plus the answer, exactly as generated, is remembered as
(text → token ids). When the next prompt's text starts with one of those texts, its tokens are
those ids plus the tokenised remainder, so `Llama.generate`'s prefix match finds the whole history
already in the KV cache and evaluates only the new turn (not the history: a cold prompt of 700
tokens becomes ~30 new ones).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from core.engines import MAX_CTX, Engine, Stream, _check_ram, cpu_threads, fit_history
from core.errors import IrisError

if TYPE_CHECKING:
    from core.inference import ChatModel, DecodingSettings

GGUF_MAGIC = b"GGUF"
REMEMBERED_TURNS = 8  # conversations whose exact tokens we keep for splicing (several sessions share one engine)


def check_gguf(path: Path) -> None:
    """Refuse files llama.cpp would choke on before handing them to it."""
    if not path.is_file():
        raise IrisError(f"{path} does not exist (deleted?): pick another model.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise IrisError(f"{path.name} is not a GGUF model (the file does not start with 'GGUF'): "
                        "re-export it, or pick another model.")


class GGUFEngine(Engine):
    def __init__(self, model: "ChatModel", n_ctx: int | None = None) -> None:
        super().__init__(model)
        path = Path(model.path)
        check_gguf(path)
        size = path.stat().st_size
        # Weights are memory-mapped and read in full while generating; the KV cache and buffers add
        # ~10% + 64 MiB for the models Iris makes (the exact KV size is known only after loading).
        _check_ram(int(size * 1.1) + (64 << 20), path.name)
        from llama_cpp import Llama, llama_chat_format

        threads = cpu_threads()
        try:
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx or MAX_CTX, n_threads=threads,
                             n_threads_batch=threads, verbose=False)
        except (ValueError, RuntimeError) as err:
            raise IrisError(f"llama.cpp could not load {path.name} ({err}): the file is truncated or not a "
                            "valid model; re-export it or pick another model.") from None
        md = self.llm.metadata
        template = md.get("tokenizer.chat_template")
        if not template:
            raise IrisError(f"{path.name} has no chat template in its metadata (tokenizer.chat_template): "
                            "re-export it from a model whose tokenizer has one.")
        m = self.llm._model
        bos, eos = self.llm.token_bos(), self.llm.token_eos()
        self.bos_text = m.token_get_text(bos) if bos >= 0 else ""
        self.formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=m.token_get_text(eos) if eos >= 0 else "", bos_token=self.bos_text)
        self.n_ctx = min(self.llm.n_ctx(), m.n_ctx_train() or self.llm.n_ctx())
        self.ram_bytes = size + self._kv_bytes(md)
        self._turns: OrderedDict[str, list[int]] = OrderedDict()
        self._out: list[int] = []

    def _kv_bytes(self, md: dict) -> int:
        """f16 K and V for every layer and context position."""
        arch = md.get("general.architecture", "llama")
        try:
            layers = int(md[f"{arch}.block_count"])
            heads = int(md[f"{arch}.attention.head_count"])
            kv_heads = int(md.get(f"{arch}.attention.head_count_kv", heads))
            head_dim = int(md.get(f"{arch}.attention.key_length", int(md[f"{arch}.embedding_length"]) // heads))
        except (KeyError, ValueError, ZeroDivisionError):
            return 0
        return self.llm.n_ctx() * layers * kv_heads * head_dim * 2 * 2

    def reset_cache(self) -> None:
        """Forget the KV cache and remembered turns: the next prompt is evaluated cold."""
        with self.lock:
            self.llm.reset()
            self._turns.clear()

    # -- prompt --
    def render(self, messages: list[dict]) -> str:
        return self.formatter(messages=messages).prompt

    def tokenize(self, text: str) -> list[int]:
        best = ""
        for known in self._turns:
            if len(known) > len(best) and text.startswith(known):
                best = known
        if best:
            rest = text[len(best):]
            return self._turns[best] + (self.llm.tokenize(rest.encode("utf-8"), add_bos=False, special=True) if rest else [])
        # The template usually writes BOS itself; add it only when it did not and the model wants one.
        add_bos = not (self.bos_text and text.startswith(self.bos_text))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def prepare(self, messages, settings):
        reserve = min(int(settings.max_new_tokens), self.n_ctx // 2)
        with self.lock:  # the remembered turns are shared
            kept, dropped = fit_history(messages, lambda ms: len(self.tokenize(self.render(ms))), self.n_ctx - reserve)
            text = self.render(kept)
            return kept, self.tokenize(text), text, dropped

    # -- generation (called under self.lock) --
    def _cached_prefix(self, tokens: list[int]) -> int:
        n = 0
        for a, b in zip(self.llm._input_ids, tokens):
            if a != b:
                break
            n += 1
        return min(n, len(tokens) - 1)  # llama-cpp replays the last prompt token to get fresh logits

    def generate_bytes(self, stream: Stream, settings: "DecodingSettings") -> Iterator[bytes]:
        import llama_cpp

        self.last_finish = ""
        self._out = []
        tokens = stream.tokens
        stream.stats.cached_tokens = self._cached_prefix(tokens) if self.llm.n_tokens else 0
        limit = min(int(settings.max_new_tokens), self.n_ctx - len(tokens))
        self.llm.set_seed(int(settings.seed))
        gen = self.llm.generate(tokens, top_k=int(settings.top_k), top_p=float(settings.top_p), min_p=0.0,
                                temp=float(settings.temperature), repeat_penalty=float(settings.repeat_penalty))
        vocab = self.llm._model.vocab
        try:
            for tok in gen:
                if llama_cpp.llama_vocab_is_eog(vocab, tok):
                    self.last_finish = "stop"
                    return
                self._out.append(tok)
                yield self.llm.detokenize([tok])
                if len(self._out) >= limit:
                    self.last_finish = "length"
                    return
        finally:
            gen.close()

    def finish(self, stream: Stream) -> None:
        # Remember prompt + answer as generated, for the next turn's prefix (see module docstring).
        self._turns[stream.prompt_text + stream.text] = list(stream.tokens) + self._out
        self._turns.move_to_end(stream.prompt_text + stream.text)
        while len(self._turns) > REMEMBERED_TURNS:
            self._turns.popitem(last=False)
