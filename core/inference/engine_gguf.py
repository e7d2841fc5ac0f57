"""GGUF models through llama-cpp-python, with the chat template from the GGUF and KV-cache reuse.

Follow-up turns: `Llama.generate` reuses the KV cache for the longest token prefix the new prompt
shares with what it last evaluated. Re-tokenising the rendered history would break that prefix at
the previous answer: the answer's generated token ids are often not what tokenising its text gives
(a random-weight model, or any model, may spell a word in other pieces), and templates such as
Llama-3's write `content | trim`, so an answer that began with a space reads differently. So each
answered turn is remembered as (chat, rendered prompt, prompt tokens, answer text, answer tokens as
generated). A new chat that continues a remembered one (same messages, then that answer) and whose
rendered text starts with the remembered prompt and then the answer (as generated, or with the
whitespace the template trimmed) gets the remembered prompt + answer tokens followed by the
tokenised rest, so only the new turn is evaluated (a 700-token history becomes ~30 new tokens).
The KV cache then holds the answer exactly as the model produced it; the only difference from a
cold tokenisation of the rendered text is that token split and the trimmed whitespace. Anything
else (an edited answer, a template that renders history differently) falls back to the remembered
prompt's tokens or to plain tokenisation, which is always correct.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from core.errors import IrisError
from core.inference.chat_tokens import protect, restore
from core.inference.engine import MAX_CTX, Engine, Stream, _check_ram, cpu_threads
from core.inference.threads import FIRST_WINDOW_S, CoreShare

if TYPE_CHECKING:
    from core.inference.catalog import ChatModel
    from core.inference.settings import DecodingSettings

GGUF_MAGIC = b"GGUF"
REMEMBERED_TURNS = 8  # answered turns whose exact tokens are kept (several sessions share one engine)


def check_gguf(path: Path) -> None:
    """Refuse files llama.cpp would choke on before handing them to it."""
    if not path.is_file():
        raise IrisError(f"{path} does not exist (deleted?): pick another model.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise IrisError(f"{path.name} is not a GGUF model (the file does not start with 'GGUF'): "
                        "re-export it, or pick another model.")


def _control_tokens(llm) -> dict[str, int]:
    """The GGUF's control-token strings → ids: what llama.cpp parses only with special=True."""
    import llama_cpp

    vocab, model = llm._model.vocab, llm._model
    wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    out: dict[str, int] = {}
    for i in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        if llama_cpp.llama_vocab_get_attr(vocab, i) & wanted:
            text = model.token_get_text(i)
            if text:
                out.setdefault(text, i)
    return out


@dataclass
class _Turn:
    """An answered turn, as the KV cache saw it."""

    messages: list[dict]
    """The chat as prompted (after trimming to the context)."""
    text: str
    """Its prompt as rendered by the template, message contents protected (core.inference.chat_tokens)."""
    prompt_tokens: list[int]
    answer: str
    """The answer's text as generated (and shown)."""
    answer_tokens: list[int]
    """The answer's token ids as generated (end-of-turn token excluded)."""

    def continued_by(self, messages: list[dict]) -> bool:
        """True when `messages` is this turn's chat, then this answer, then more."""
        n = len(self.messages)
        return messages[:n + 1] == self.messages + [{"role": "assistant", "content": self.answer}]

    def written_answer(self, after: str, specials: dict[str, int]) -> str | None:
        """How the template wrote this answer (protected) at the start of `after` (the rendered text following
        this turn's prompt): as generated, or with its leading/trailing whitespace trimmed; None if neither."""
        answer = protect([{"content": self.answer}], specials)[0]["content"]
        for written in (answer, answer.strip(), answer.lstrip(), answer.rstrip()):
            if written and after.startswith(written):
                return written
        return None


class GGUFEngine(Engine):
    def __init__(self, model: "ChatModel", n_ctx: int | None = None) -> None:
        super().__init__(model)
        path = Path(model.path)
        check_gguf(path)
        lora = Path(model.lora) if model.lora else None  # a LoRA-only export's adapter, applied at load
        if lora is not None:
            check_gguf(lora)
        size = path.stat().st_size + (lora.stat().st_size if lora else 0)
        # Weights are memory-mapped and read in full while generating; the KV cache and buffers add
        # ~10% + 64 MiB for the models Iris makes (the exact KV size is known only after loading).
        _check_ram(int(size * 1.1) + (64 << 20), path.name)
        from llama_cpp import Llama, llama_chat_format

        threads = self.threads = self._threads_now = cpu_threads()
        self._share = CoreShare(threads)  # the cores other processes leave free (core.inference.threads)
        try:
            self.llm = Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=n_ctx or MAX_CTX,
                             n_threads=threads, n_threads_batch=threads, verbose=False)
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
        self.specials = _control_tokens(self.llm)
        self.formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=m.token_get_text(eos) if eos >= 0 else "", bos_token=self.bos_text)
        self.n_ctx = min(self.llm.n_ctx(), m.n_ctx_train() or self.llm.n_ctx())
        self.ram_bytes = size + self._kv_bytes(md)
        self._turns: list[_Turn] = []  # oldest first; guarded by self._turns_lock
        self._turns_lock = threading.Lock()  # prompts are prepared while another answer generates
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
        with self.lock, self._turns_lock:
            self.llm.reset()
            self._turns.clear()

    # -- prompt --
    def render(self, messages: list[dict]) -> str:
        return self.formatter(messages=messages).prompt

    def tokenize(self, text: str) -> list[int]:
        """Tokenisation of template text (special-token strings parsed), with BOS as `bos_prefix` says."""
        return self.bos_prefix(text) + self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def tokenize_plain(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def bos_prefix(self, text: str) -> list[int]:
        # The template usually writes BOS itself; add it only when it did not and the model wants one
        # (llama.cpp adds BOS to an empty text exactly when the GGUF asks for it).
        if self.bos_text and text.startswith(self.bos_text):
            return []
        return self.llm.tokenize(b"", add_bos=True, special=False)

    def encode(self, messages: list[dict]) -> tuple[str, list[int]]:
        """(rendered prompt, its tokens), starting with a remembered turn's exact tokens where the chat
        continues it (see the module docstring); contents are protected as in Engine.encode."""
        text = self.render(protect(messages, self.specials))
        best: tuple[list[int], str] | None = None  # (reused tokens, text still to tokenise)
        with self._turns_lock:
            turns = list(self._turns)
        for turn in turns:
            if not text.startswith(turn.text):
                continue
            after = text[len(turn.text):]
            written = turn.written_answer(after, self.specials) if turn.continued_by(messages) else None
            if written is None:
                reused, rest = turn.prompt_tokens, after
            else:
                reused, rest = turn.prompt_tokens + turn.answer_tokens, after[len(written):]
            if best is None or len(reused) > len(best[0]):
                best = (reused, rest)
        if best is None:
            return restore(text, self.specials), self.bos_prefix(text) + self.tokenize_protected(text)
        reused, rest = best
        return restore(text, self.specials), reused + (self.tokenize_protected(rest) if rest else [])

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
        self._use_threads(self._share.threads(FIRST_WINDOW_S))
        gen = self.llm.generate(tokens, top_k=int(settings.top_k), top_p=float(settings.top_p), min_p=0.0,
                                temp=float(settings.temperature), repeat_penalty=float(settings.repeat_penalty))
        vocab = self.llm._model.vocab
        try:
            for tok in gen:
                if llama_cpp.llama_vocab_is_eog(vocab, tok):
                    self.last_finish = "stop"
                    return
                self._out.append(tok)
                self._use_threads(self._share.threads())
                yield self.llm.detokenize([tok])
                if len(self._out) >= limit:
                    self.last_finish = "length"
                    return
        finally:
            gen.close()

    def _use_threads(self, n: int) -> None:
        if n != self._threads_now:
            self.llm._ctx.set_n_threads(n, n)
            self._threads_now = n

    def finish(self, stream: Stream) -> None:
        # Remember this turn's exact tokens for the next prompt (see the module docstring); the turns
        # this one continues are covered by it and go, and the least recently answered beyond
        # REMEMBERED_TURNS go too.
        text = self.render(protect(stream.messages, self.specials))  # as encode matches it
        turn = _Turn(list(stream.messages), text, list(stream.tokens), stream.text, list(self._out))
        with self._turns_lock:
            kept = [t for t in self._turns if not t.continued_by(turn.messages)
                    and not (t.messages == turn.messages and t.answer == turn.answer)]
            self._turns = kept[-(REMEMBERED_TURNS - 1):] + [turn]
