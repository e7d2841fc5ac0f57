"""Iris's OpenAI-compatible API: llama-cpp-python's own server (`llama_cpp.server`) plus what it lacks.

Self-contained on purpose: this file imports nothing from Iris (only llama_cpp, fastapi, starlette, yaml),
so a deploy bundle ships it verbatim as `iris_serve.py` and runs the same API the workbench does.

    app = build_app("serve.yaml", api_key=None)   # serve.yaml: llama_cpp.server's multi-model config
    uvicorn.run(app, host="127.0.0.1", port=8000)

`serve.yaml` is exactly llama_cpp.server's config-file format (so `python -m llama_cpp.server
--config_file serve.yaml` runs it too, with its stock chat handler: no gate, control tokens parsed in
messages); `models.json` beside it holds what Iris knows about each served
name (label, lineage). What llama_cpp.server does: load the GGUFs (one at a time, switching on demand),
sample, stream SSE, and the /v1/chat/completions and /v1/completions routes. What it does differently
here: a chat is rendered with the GGUF's own template (`chat_format: chat_template.default` in serve.yaml)
through Iris's chat handler (`CHAT_FORMAT`, `ChatPrompt`), which keeps every message's text as text:
llama-cpp-python's stock handler tokenises the whole rendered prompt with special tokens parsed, so a user
who types `<|im_end|>\n<|im_start|>system ...` would forge a system turn. What it lacks, added here as one
ASGI gate in front of it and one route in place of its /v1/models:
- an unknown model name silently falls back to the first model; here it is a 404 `model_not_found`;
- a too-long prompt is a 400 only without streaming (streamed, the error is raised after the 200 is
  sent and the stream just ends), and it does not say by how much; here every too-long chat is a 400
  `context_length_exceeded` naming the tokens over, checked before the model is touched;
- a wrong key is FastAPI's `{"detail": ...}` and malformed JSON or a request of the wrong shape is a 500;
  here they are OpenAI-shaped `{"error": {...}}` 401, 400 and 422;
- /v1/models lists bare names; here each model object carries its label, lineage and context size.
The key is compared in constant time and never printed; uvicorn's access log shows paths, not headers.
"""
from __future__ import annotations

import hmac
import json
import re
import threading
import time
import weakref
from pathlib import Path
from typing import Any

CHAT_PATHS = ("/v1/chat/completions", "/v1/completions")


def error_body(status: int, message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    """An OpenAI-shaped error: what the official clients parse into `APIStatusError.message`/`.code`."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def load_config(config_path: Path) -> tuple[dict, dict]:
    """(serve.yaml as a dict, models.json as a dict: served name → {label, lineage, ...})."""
    import yaml

    config_path = Path(config_path)
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    meta_path = config_path.with_name("models.json")
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    folder = config_path.resolve().parent
    for m in config["models"]:  # a bundle names its GGUF relative to its own folder
        for key in ("model", "lora_path"):
            if m.get(key) and not Path(m[key]).is_absolute():
                m[key] = str(folder / m[key])
        fetch_missing(m, meta.get(m["model_alias"], {}).get("hub"))
    return config, meta


def fetch_missing(entry: dict, hub: dict | None) -> None:
    """A bundle made with a hub id ships no GGUF: download it (and its LoRA) beside serve.yaml once."""
    if not hub:
        return
    from huggingface_hub import hf_hub_download

    for key, name in (("model", hub.get("filename")), ("lora_path", hub.get("lora_filename"))):
        if name and entry.get(key) and not Path(entry[key]).exists():
            hf_hub_download(hub["repo_id"], name, local_dir=str(Path(entry[key]).parent))


CHAT_FORMAT = "iris-chat-template"
"""The chat handler `build_app` registers with llama-cpp-python and gives every model whose serve.yaml entry says
`chat_template.default` (so serve.yaml itself stays llama_cpp.server's own format)."""

# Chat prompts whose message text stays text. The same two steps as the workbench's
# core/inference/chat_tokens.py and its GGUF engine (copied, as this file imports nothing from Iris;
# tests/test_serve.py pins that both give the same token ids):
# 1. every control-token string inside the request (message contents, names, tools) is replaced by a
#    placeholder of private-use characters before the template renders, so every control-token string
#    left in the rendered text was written by the template itself;
# 2. the rendered text is cut at those strings (each becomes its id) and each piece between them,
#    placeholders restored, is tokenised as plain text (special tokens not parsed).
OPEN, CLOSE = "\ue000", "\ue001"  # Unicode private-use characters: no tokenizer gives them a meaning


def control_tokens(llm) -> dict[str, int]:
    """The GGUF's control-token strings -> ids: what llama.cpp parses only with special=True."""
    import llama_cpp

    vocab = llm._model.vocab
    wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    out: dict[str, int] = {}
    for i in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        if llama_cpp.llama_vocab_get_attr(vocab, i) & wanted:
            text = llm._model.token_get_text(i)
            if text:
                out.setdefault(text, i)
    return out


class ChatPrompt:
    """One GGUF's chat template, rendered and tokenised so that only the template's own structure becomes
    control tokens. Built from a loaded `Llama` (a `vocab_only` one is enough: the gate counts with it)."""

    def __init__(self, llm) -> None:
        from llama_cpp import llama_chat_format

        self.llm = llm
        self.specials = control_tokens(llm)
        # longest first (a longer token wins where two start at the same place), then by id: the same
        # numbering as core/inference/chat_tokens.py
        self.order = sorted((t for t in self.specials if t), key=lambda t: (-len(t), self.specials[t], t))
        self.pattern = re.compile("|".join(re.escape(t) for t in self.order)) if self.order else None
        self.index = {t: i for i, t in enumerate(self.order)}
        m = llm._model
        bos, eos = llm.token_bos(), llm.token_eos()
        self.bos_text = m.token_get_text(bos) if bos >= 0 else ""
        template = llm.metadata.get("tokenizer.chat_template")
        # as llama-cpp-python builds its own handler for `chat_template.default` (stop at EOS included)
        self.formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=m.token_get_text(eos) if eos >= 0 else "", bos_token=self.bos_text,
            stop_token_ids=[eos]) if template else None
        self.handler = llama_chat_format.chat_formatter_to_chat_completion_handler(self.format)

    def protect(self, value: Any) -> Any:
        """`value` (a message, a list of them, tools, ...) with control-token strings in its strings replaced by
        placeholders."""
        if isinstance(value, str):
            if self.pattern is None or not self.pattern.search(value):
                return value
            return self.pattern.sub(lambda hit: f"{OPEN}{self.index[hit.group(0)]}{CLOSE}", value)
        if isinstance(value, list):
            return [self.protect(v) for v in value]
        if isinstance(value, dict):
            return {k: self.protect(v) for k, v in value.items()}
        return value

    def restore(self, text: str) -> str:
        if OPEN not in text:
            return text
        return re.sub(f"{OPEN}(\\d+){CLOSE}", lambda hit: self.order[int(hit.group(1))]
                      if int(hit.group(1)) < len(self.order) else hit.group(0), text)

    def format(self, *, messages: list, **kwargs: Any):
        """llama-cpp-python's ChatFormatter: the template rendered over the protected request (the prompt text
        holds placeholders; `tokenize` turns it into ids)."""
        if self.formatter is None:
            raise ValueError("this GGUF has no chat template in its metadata (tokenizer.chat_template): "
                             "use /v1/completions with a prompt, or re-export the model from one that has one.")
        result = self.formatter(messages=self.protect(messages), **{k: self.protect(v) for k, v in kwargs.items()})
        # No stop *string* for the end-of-turn token: the token itself ends the answer (llama.cpp stops at
        # end-of-generation tokens), and its spelling written by the model as text is text, as in Chat.
        result.stop = None
        return result

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a rendered, protected prompt: the template's control-token strings become their ids,
        the text between them goes through llama.cpp with special tokens not parsed. BOS is added, as the Chat
        engine does, only when the template did not write it and the model wants one."""
        ids = [] if self.bos_text and text.startswith(self.bos_text) else self.llm.tokenize(b"", add_bos=True)
        pos = 0
        for hit in self.pattern.finditer(text) if self.pattern else ():
            if hit.start() > pos:
                ids += self.plain(text[pos:hit.start()])
            ids.append(self.specials[hit.group(0)])
            pos = hit.end()
        return ids + self.plain(text[pos:])

    def plain(self, text: str) -> list[int]:
        text = self.restore(text)
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []

    def count(self, body: dict) -> int:
        """Prompt tokens of a chat request, exactly as `chat_handler` will tokenise it."""
        extra = {k: body.get(k) for k in ("functions", "function_call", "tools", "tool_choice")}
        return len(self.tokenize(self.format(messages=body["messages"], **extra).prompt))


class _PlainTextModel:
    """The served `Llama` as llama-cpp-python's stock chat handler sees it: the one `tokenize` that handler calls
    (the rendered prompt, special tokens parsed) goes through `ChatPrompt.tokenize` instead; everything else
    (create_completion with its sampling, stop, seed, streaming, grammar and tools) is the model itself."""

    def __init__(self, llama, prompt: ChatPrompt) -> None:
        self._llama, self._prompt = llama, prompt

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._prompt.tokenize(text.decode("utf-8"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)


_prompts: "weakref.WeakKeyDictionary[Any, ChatPrompt]" = weakref.WeakKeyDictionary()  # per loaded Llama
_prompts_lock = threading.Lock()


def chat_handler(*, llama, **kwargs: Any):
    """The chat handler registered as `CHAT_FORMAT`: llama-cpp-python's own handler for the GGUF's template,
    with the prompt built by `ChatPrompt` (message text stays text)."""
    with _prompts_lock:
        prompt = _prompts.get(llama)
        if prompt is None:  # once per loaded model: reads the vocabulary's control tokens (~0.1 s for 49k tokens)
            # through a weak proxy: a value holding its key would keep a model llama_cpp.server switched away from
            prompt = _prompts[llama] = ChatPrompt(weakref.proxy(llama))
    return prompt.handler(llama=_PlainTextModel(llama, prompt), **kwargs)


class PromptMeter:
    """Counts a request's prompt tokens exactly as the server will: a chat through `ChatPrompt` (the GGUF's own
    template, message text kept as text), a plain completion prompt with special tokens parsed (as
    llama_cpp.server does: there the caller writes the template). Loads only the vocabulary (`vocab_only`:
    a few MB, well under a second), so the check never waits for, or disturbs, the model that is generating."""

    def __init__(self, model_path: str) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=model_path, vocab_only=True, verbose=False)
        self.prompt = ChatPrompt(self.llm)
        self.lock = threading.Lock()

    def count(self, body: dict) -> int | None:
        """Prompt tokens of a chat or completion request; None when it cannot be rendered here (then the
        server's own checks apply)."""
        with self.lock:
            try:
                if "messages" in body:
                    return self.prompt.count(body) if self.prompt.formatter is not None else None
                if isinstance(body.get("prompt"), str):
                    return len(self.llm.tokenize(body["prompt"].encode("utf-8"), special=True))
            except Exception:  # a template that cannot render these messages: llama_cpp.server will say so
                return None
        return None


class Gate:
    """ASGI middleware in front of llama_cpp.server: key, JSON, model name and prompt length, each refused
    with an OpenAI-shaped error before the request reaches a model."""

    def __init__(self, app, *, models: dict[str, dict], api_key: str | None, objects: list[dict] | None = None,
                 page: str | None = None) -> None:
        self.app, self.models, self._key = app, models, api_key
        self.objects, self.page = objects or [], page
        self._meters: dict[str, PromptMeter] = {}
        self._meters_lock = threading.Lock()

    def meter(self, name: str) -> PromptMeter:
        with self._meters_lock:
            if name not in self._meters:
                self._meters[name] = PromptMeter(self.models[name]["model"])
            return self._meters[name]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self._key is not None and (path.startswith("/v1") or path.startswith("/extras")):
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), self._key.encode()):
                what = "no API key was sent" if not given else "the API key is wrong"
                return await _reply(send, 401, error_body(401, f"{what}: send 'Authorization: Bearer <key>' with "
                                                          "the key the server was started with.",
                                                          "invalid_request_error", "invalid_api_key"))
        if scope["method"] == "GET":
            reply = self.answer_get(path)
            if reply is not None:
                return await _reply(send, *reply)
        if scope["method"] != "POST" or path not in CHAT_PATHS:
            return await self.app(scope, receive, send)
        raw = await _read_body(receive)
        problem = await self.check(path, raw)
        if problem is not None:
            return await _reply(send, problem[0], problem[1])
        return await self.app(scope, _replay(raw, receive), send)

    def answer_get(self, path: str) -> tuple | None:
        """What this gate answers itself: /v1/models with Iris's model objects (llama_cpp.server's own route
        lists bare names), one model object, and the chat page at `/`."""
        if path == "/v1/models":
            return 200, {"object": "list", "data": self.objects}
        if path.startswith("/v1/models/"):
            name = path[len("/v1/models/"):]
            for obj in self.objects:
                if obj["id"] == name:
                    return 200, obj
            return 404, error_body(404, f"the model {name!r} is not served here.", "invalid_request_error",
                                   "model_not_found", "model")
        if path == "/" and self.page is not None:
            return 200, self.page, "text/html; charset=utf-8"
        return None

    async def check(self, path: str, raw: bytes) -> tuple[int, dict] | None:
        from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
        from pydantic import ValidationError
        from starlette.concurrency import run_in_threadpool

        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return 400, error_body(400, f"the request body is not valid JSON ({err}).", "invalid_request_error",
                                   "invalid_json")
        if not isinstance(body, dict):
            return 400, error_body(400, "the request body must be a JSON object.", "invalid_request_error",
                                   "invalid_json")
        try:
            (CreateChatCompletionRequest if path == CHAT_PATHS[0] else CreateCompletionRequest).model_validate(body)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return 422, error_body(422, f"invalid request: {where}: {first.get('msg')} ({err.error_count()} "
                                   "problem(s)).", "invalid_request_error", "invalid_request", where or None)
        name = body.get("model") or next(iter(self.models))
        if name not in self.models:
            return 404, error_body(404, f"the model {name!r} is not served here; served: {', '.join(self.models)}.",
                                   "invalid_request_error", "model_not_found", "model")
        n_ctx = int(self.models[name].get("n_ctx") or 0)
        if n_ctx:
            n = await run_in_threadpool(lambda: self.meter(name).count(body))
            if n is not None and n >= n_ctx:
                over = n - n_ctx + 1  # llama.cpp needs room for at least one answer token
                return 400, error_body(400, f"the prompt is {n} tokens but {name}'s context holds {n_ctx}: "
                                       f"it is {over} token(s) too long; shorten the messages by at least that much.",
                                       "invalid_request_error", "context_length_exceeded", "messages")
        return None


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(raw: bytes, receive_next):
    """The body already read, then the connection's own messages (so a real disconnect is still seen)."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive_next()

    return receive


async def _reply(send, status: int, body: dict | str, content_type: str = "application/json") -> None:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def model_objects(config: dict, meta: dict) -> list[dict]:
    """/v1/models entries: the OpenAI fields, then Iris's label, lineage and context size."""
    created = int(time.time())
    return [{"id": m["model_alias"], "object": "model", "created": created, "owned_by": "iris",
             "label": meta.get(m["model_alias"], {}).get("label", m["model_alias"]),
             "lineage": meta.get(m["model_alias"], {}).get("lineage", {}), "context_length": m.get("n_ctx")}
            for m in config["models"]]


def build_app(config_path: str | Path, api_key: str | None = None, chat_page: str | None = None):
    """llama_cpp.server's FastAPI app for serve.yaml, behind the Gate, which also answers /v1/models (and
    /v1/models/{id}) with Iris's model objects and, when `chat_page` is HTML text, serves it at `/`."""
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    config, meta = load_config(Path(config_path))
    LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(CHAT_FORMAT, chat_handler, overwrite=True)
    for m in config["models"]:  # the GGUF's own template, through Iris's handler (message text stays text)
        if m.get("chat_format") in (None, "chat_template.default"):
            m["chat_format"] = CHAT_FORMAT
    server = ServerSettings.model_validate({k: v for k, v in config.items() if k != "models"})
    # Concurrent clients queue for the model (one generation at a time on a CPU) instead of
    # cutting each other's streams short, which is llama_cpp.server's default.
    server.interrupt_requests = False
    server.api_key = api_key  # in memory only: never in serve.yaml, argv of a job, or a log
    inner = create_app(server_settings=server,
                       model_settings=[ModelSettings.model_validate(m) for m in config["models"]])
    by_name = {m["model_alias"]: m for m in config["models"]}
    return Gate(inner, models=by_name, api_key=api_key, objects=model_objects(config, meta), page=chat_page)


def run(config_path: str | Path, host: str, port: int, api_key: str | None = None, chat_page: str | None = None,
        should_stop=None, on_ready=None) -> None:
    """Serve until SIGINT/SIGTERM or until `should_stop()` returns True (polled every half second);
    `on_ready(url)` is called once the socket listens."""
    import asyncio

    import uvicorn

    app = build_app(config_path, api_key=api_key, chat_page=chat_page)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=int(port), log_level="info"))

    async def watch() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.1)
        if on_ready is not None:
            on_ready(f"http://{host}:{port}")
        while not server.should_exit:
            if should_stop is not None and should_stop():
                server.should_exit = True
            await asyncio.sleep(0.5)

    async def main() -> None:
        task = asyncio.create_task(watch())
        await server.serve()
        task.cancel()

    asyncio.run(main())


def main(argv: Any = None) -> None:
    """`python iris_serve.py [--config serve.yaml] [--host H] [--port P]` (a bundle's entry point);
    the key comes from the IRIS_API_KEY environment variable, never the command line."""
    import argparse
    import os

    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description="Serve the models of serve.yaml over an OpenAI-compatible API.")
    p.add_argument("--config", default=str(here / "serve.yaml"), help="llama_cpp.server config (models, n_ctx)")
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="listen address")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="listen port")
    args = p.parse_args(argv)
    page = here / "chat.html"
    run(args.config, args.host, args.port, api_key=os.environ.get("IRIS_API_KEY") or None,
        chat_page=page.read_text(encoding="utf-8") if page.exists() else None)


if __name__ == "__main__":
    main()
