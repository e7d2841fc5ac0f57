"""Engines that turn a chat (list of {"role", "content"}) into a streamed answer on CPU.

- `GGUFEngine`: llama-cpp-python. The prompt is rendered with the chat template stored in the GGUF
  (`tokenizer.chat_template`) through llama-cpp-python's own Jinja2ChatFormatter. One `Llama` object
  per model is kept, so a follow-up turn re-evaluates only what is new: `Llama.generate` reuses the
  KV cache of the longest matching token prefix, and we splice the previous turn's exact tokens (the
  prompt plus the answer as generated) into the next prompt so the match covers the whole history.
- `HFEngine`: transformers on CPU in fp32 (merged folders, and peft adapters merged onto their base);
  the prompt comes from the tokenizer's `apply_chat_template`.

Common to both: the history is trimmed to the context window (oldest turns after the system prompt
go first, and `Stream.note` says so); message contents are tokenised as plain text, so only the
template's structure becomes control tokens (`core.inference.chat_tokens`); answers to one engine are
generated one at a time, first come first served, each by a worker thread that owns the engine's lock
and feeds the reader through a queue (threads and browser sessions share engines; a reader that stops,
closes or abandons its stream frees the model at the next token); `Stream.stats` holds token counts
and speed once the stream is exhausted. Users of this module go through `core.inference`; `core.inference.cache.open_engine` picks the engine.
"""
from __future__ import annotations

import codecs
import os
import queue
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from core.errors import IrisError
from core.inference.chat_tokens import protect, restore, tokenize_protected

if TYPE_CHECKING:
    from core.inference.catalog import ChatModel
    from core.inference.settings import DecodingSettings

MAX_CTX = int(os.environ.get("IRIS_CHAT_CTX", "4096"))  # tokens; caps the KV cache (1B q4_k_m: 128 MiB at 4096)
ROLES = ("system", "user", "assistant")
# Seconds a generated piece may wait unread before the answer counts as abandoned (a reader that is
# gone without closing its iterator); readers that stop, close or are finalised free the model at once.
ABANDON_S = float(os.environ.get("IRIS_CHAT_ABANDON_S", "2"))
_DONE = object()  # end of a stream's pieces


def cpu_threads() -> int:
    """Threads for generation: the cores this process may run on (IRIS_CHAT_THREADS overrides)."""
    from core.inference.threads import usable_cores

    if os.environ.get("IRIS_CHAT_THREADS"):
        return max(1, int(os.environ["IRIS_CHAT_THREADS"]))
    return max(1, usable_cores())


def available_ram_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def _check_ram(need: int, what: str) -> None:
    free = available_ram_bytes()
    if need > free:
        raise IrisError(f"{what} needs about {need / 2**30:.1f} GiB of RAM but only {free / 2**30:.1f} GiB is free: "
                        "unload other models (fewer loaded engines), close other jobs, or pick a smaller/quantised model.")


@dataclass
class Stats:
    prompt_tokens: int = 0
    """Tokens of the whole prompt (after trimming)."""
    completion_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens whose KV cache was reused from an earlier turn (not evaluated again)."""
    ttft_s: float = 0.0
    """Seconds from the request to the first answer token (prompt rendering + evaluation + first sample)."""
    prompt_tok_s: float = 0.0
    """Prompt tokens evaluated per second (the cached ones excluded)."""
    gen_tok_s: float = 0.0
    """Answer tokens per second after the first one."""
    total_s: float = 0.0
    finish_reason: str = ""
    """'stop' (end of turn), 'length' (max_new_tokens or context full) or 'stopped' (stop button)."""
    trimmed_messages: int = 0
    queued_s: float = 0.0
    """Seconds this answer waited for answers to other requests on the same model (not in ttft_s)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Answer:
    text: str
    stats: Stats
    note: str = ""


def check_messages(messages: list[dict]) -> list[dict]:
    """Validate a chat: roles known, contents strings, and the last message a non-empty user turn."""
    if not messages:
        raise IrisError("empty prompt: type a message first.")
    clean = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise IrisError(f"a chat message needs a role in {ROLES} and text content; got {m!r:.80}.")
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "user" or not clean[-1]["content"].strip():
        raise IrisError("empty prompt: type a message first.")
    return clean


def fit_history(messages: list[dict], count: Callable[[list[dict]], int], limit: int) -> tuple[list[dict], int]:
    """Drop the oldest turns after the system prompt until `count(messages) <= limit` tokens.

    Returns (kept messages, number dropped). Turns go oldest first, and a leading assistant turn left
    behind goes with its user turn, so the history still starts with the user. The system prompt and
    the newest user message are never dropped; if they alone do not fit, the prompt is too long.
    The last call to `count` is always on the messages returned (callers rely on it to keep that encoding).
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    dropped = 0
    n = count(system + rest)
    while n > limit and len(rest) > 1:
        rest = rest[1:]
        dropped += 1
        while len(rest) > 1 and rest[0]["role"] != "user":
            rest = rest[1:]
            dropped += 1
        n = count(system + rest)
    if n > limit:
        raise IrisError(f"the prompt is {n} tokens but this model's context holds {limit} tokens once the answer's "
                        "max_new_tokens are reserved: shorten the message (or the system prompt) or lower max new tokens.")
    return system + rest, dropped


class Stream:
    """An answer being generated: iterate it for text pieces; then read `.text`, `.stats`, `.note`.

    Prompt rendering, trimming and validation happen when the stream is created (so bad input fails
    before anything is shown). Generation runs in a worker thread that waits its turn on the engine
    (first come, first served: `ahead` says how many answers are before this one), holds the engine's
    lock for the whole answer and hands text pieces to the reader through a queue. So no lock is ever
    held by the reader: a reader that stops (`stop()`), closes or drops its iterator (a finalised
    generator, on any thread), or leaves pieces unread for `ABANDON_S`, ends the worker within one token
    and the model is free for the next request.
    """

    def __init__(self, engine: "Engine", messages: list[dict], settings: "DecodingSettings",
                 stop_event: threading.Event | None = None) -> None:
        t0 = time.perf_counter()
        self.engine, self.settings = engine, settings
        self.stop_event = stop_event or threading.Event()
        self.messages, self.tokens, self.prompt_text, dropped = engine.prepare(check_messages(messages), settings)
        self.note = (f"{dropped} earlier message(s) were left out to fit the model's {engine.n_ctx}-token context."
                     if dropped else "")
        self.text = ""
        self.stats = Stats(prompt_tokens=len(self.tokens), trimmed_messages=dropped)
        self._prep_s = time.perf_counter() - t0
        self._halt = threading.Event()  # the reader is gone: stop at the next token
        self._turn = threading.Event()  # the worker has the model (or gave up waiting)
        self._pieces: queue.Queue = queue.Queue()
        self._read_at = 0.0  # time.monotonic() of the reader's last piece
        self._backlog_since = 0.0  # time.monotonic() when unread pieces last started to pile up
        self._worker: threading.Thread | None = None
        # The reader's generator, weakly: the worker thread holds this Stream, so a strong reference
        # would keep a dropped reader alive (never finalised) for as long as the worker runs.
        self._reader: weakref.ref | None = None
        self._error: BaseException | None = None

    def stop(self) -> None:
        """End the answer at the next token (what has arrived is kept; finish_reason 'stopped')."""
        self.stop_event.set()

    def close(self) -> None:
        """The reader is gone: free the model at the next token."""
        self._halt.set()

    def should_stop(self) -> bool:
        return self.stop_event.is_set() or self._halt.is_set()

    def start(self) -> "Stream":
        """Queue this answer on the engine (iterating starts it too); returns self."""
        if self._worker is None:
            self.engine.check_alive()
            self.engine.join_line(self)
            self._worker = threading.Thread(target=self._work, name="iris-generate", daemon=True)
            self._worker.start()
        return self

    @property
    def ahead(self) -> int:
        """Answers on this model before this one (running or queued); 0 once this one is generating."""
        return self.engine.ahead_of(self)

    def wait_turn(self, timeout: float) -> bool:
        """Start, then wait up to `timeout` s for this answer's turn on the model; True once it has it (or ended)."""
        self.start()
        return self._turn.wait(timeout)

    def __iter__(self) -> Iterator[str]:
        # One generation per Stream: iter() again (st.write_stream does) continues the same one; once
        # that reader is gone (dropped, finalised), the answer was abandoned and there is nothing more.
        if self._reader is None:
            reader = self._read()
            self._reader = weakref.ref(reader)
            return reader
        return self._reader() or iter(())

    def _read(self) -> Iterator[str]:
        self.start()
        try:
            while (piece := self._pieces.get()) is not _DONE:
                self._read_at = time.monotonic()
                yield piece
            if self._error is not None:
                raise self._error
        finally:
            self._halt.set()  # closed or finalised early (any thread): the worker ends at the next token

    def _work(self) -> None:
        engine = self.engine
        try:
            waited = time.perf_counter()
            if not engine.take_turn(self):
                return
            try:
                self.stats.queued_s = time.perf_counter() - waited
                self._turn.set()
                with engine.lock:
                    self._generate()
            finally:
                engine.end_turn(self)
        except BaseException as err:  # handed to the reader's thread
            self._error = err
        finally:
            self._turn.set()
            self._pieces.put(_DONE)

    def _put(self, text: str) -> None:
        if self._pieces.qsize() == 0:
            self._backlog_since = time.monotonic()
        self._pieces.put(text)

    def _abandoned(self) -> bool:
        """Pieces are waiting and the reader has taken none for ABANDON_S since they did (it is gone)."""
        return self._pieces.qsize() > 0 and time.monotonic() - max(self._read_at, self._backlog_since) > ABANDON_S

    def _generate(self) -> None:
        engine, st = self.engine, self.stats
        t0 = time.perf_counter() - self._prep_s
        t_first = None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        parts: list[str] = []
        st.finish_reason = "length"
        try:
            for piece in engine.generate_bytes(self, self.settings):
                if t_first is None:
                    t_first = time.perf_counter()
                    st.ttft_s = t_first - t0
                st.completion_tokens += 1
                text = decoder.decode(piece)
                if text:
                    parts.append(text)
                    self._put(text)
                if self.should_stop() or self._abandoned():
                    st.finish_reason = "stopped"
                    break
            else:
                st.finish_reason = engine.last_finish or "length"
            tail = decoder.decode(b"", final=True)
            if tail:
                parts.append(tail)
                self._put(tail)
        finally:
            t_end = time.perf_counter()
            self.text = "".join(parts)
            st.total_s = t_end - t0
            evaluated = max(1, st.prompt_tokens - st.cached_tokens)
            if t_first is not None:
                st.prompt_tok_s = evaluated / max(st.ttft_s, 1e-9)
                if st.completion_tokens > 1:
                    st.gen_tok_s = (st.completion_tokens - 1) / max(t_end - t_first, 1e-9)
            engine.finish(self)


class Engine:
    """A loaded model. `stream()`/`generate()` may be called from many threads; generation is serialised."""

    def __init__(self, model: "ChatModel") -> None:
        self.model = model
        self.lock = threading.RLock()  # held by the generating worker thread for a whole answer
        self._line = threading.Condition()  # guards _waiting and _busy: the queue of answers
        self._waiting: list[Stream] = []
        self._busy: Stream | None = None
        self.specials: dict[str, int] = {}
        """Special-token strings → ids (control tokens); set by each backend (see core.inference.chat_tokens)."""
        self.n_ctx = 0
        self.ram_bytes = 0
        self.last_finish = ""
        self._mtime = self._stamp()

    def _stamp(self) -> float | None:
        try:
            return Path(self.model.path).stat().st_mtime
        except OSError:
            return None

    def stale(self) -> bool:
        """True when the model's files were deleted or replaced since loading."""
        return self._stamp() != self._mtime

    def check_alive(self) -> None:
        if self.stale():
            raise IrisError(f"{self.model.label} was deleted or replaced on disk while loaded: pick the model again "
                            "(or another one) and resend.")

    def stream(self, messages: list[dict], settings: "DecodingSettings",
               stop_event: threading.Event | None = None) -> Stream:
        self.check_alive()
        return Stream(self, messages, settings, stop_event)

    # -- the queue of answers: first come, first served --
    def join_line(self, stream: Stream) -> None:
        """Put `stream` at the end of the line (on the requesting thread, so the line keeps request order)."""
        with self._line:
            self._waiting.append(stream)

    def take_turn(self, stream: Stream) -> bool:
        """Wait until `stream` is first in line and nothing is generating; False if its reader left first."""
        with self._line:
            try:
                while self._busy is not None or self._waiting[0] is not stream:
                    if stream.should_stop():
                        return False
                    self._line.wait(0.1)
                self._busy = stream
                return True
            finally:
                self._waiting.remove(stream)
                self._line.notify_all()

    def end_turn(self, stream: Stream) -> None:
        with self._line:
            if self._busy is stream:
                self._busy = None
            self._line.notify_all()

    def ahead_of(self, stream: Stream) -> int:
        with self._line:
            if stream not in self._waiting:
                return 0
            return self._waiting.index(stream) + (self._busy is not None)

    def queue_length(self) -> int:
        """Answers generating or waiting on this model."""
        with self._line:
            return len(self._waiting) + (self._busy is not None)

    def generate(self, messages: list[dict], settings: "DecodingSettings") -> Answer:
        s = self.stream(messages, settings)
        for _ in s:
            pass
        return Answer(s.text, s.stats, s.note)

    def prepare(self, messages: list[dict], settings: "DecodingSettings") -> tuple[list[dict], list[int], str, int]:
        """(kept messages, prompt token ids, prompt text, messages dropped) for this chat, trimmed so the
        answer's max_new_tokens (at most half the context) still fit."""
        reserve = min(int(settings.max_new_tokens), self.n_ctx // 2)
        last: dict = {}

        def count(ms: list[dict]) -> int:  # fit_history's last count is of the kept chat: encode it once
            last["text"], last["tokens"] = self.encode(ms)
            return len(last["tokens"])

        kept, dropped = fit_history(messages, count, self.n_ctx - reserve)
        return kept, last["tokens"], last["text"], dropped

    def encode(self, messages: list[dict]) -> tuple[str, list[int]]:
        """(rendered prompt, its token ids): only the template's own structure becomes special tokens,
        every message's content is tokenised as plain text (core.inference.chat_tokens)."""
        text = self.render(protect(messages, self.specials))
        return restore(text, self.specials), self.bos_prefix(text) + self.tokenize_protected(text)

    def tokenize_protected(self, text: str) -> list[int]:
        """Token ids of a rendered prompt whose message contents were protected (placeholders)."""
        return tokenize_protected(text, self.specials, self.tokenize_plain)

    def bos_prefix(self, text: str) -> list[int]:
        """The BOS id to put before `text` when the model wants one and the template did not write it."""
        return []

    # -- what each backend provides --
    def render(self, messages: list[dict]) -> str:
        """The prompt text of this chat through the model's own template, ready for the answer."""
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        """Token ids of template text, special-token strings parsed (never for text a user wrote)."""
        raise NotImplementedError

    def tokenize_plain(self, text: str) -> list[int]:
        """Token ids of text as text: special-token strings are not parsed, nothing is added."""
        raise NotImplementedError

    def generate_bytes(self, stream: Stream, settings: "DecodingSettings") -> Iterator[bytes]:
        raise NotImplementedError

    def finish(self, stream: Stream) -> None:
        """Called after each answer (also when stopped), under the lock, on the generating thread."""
