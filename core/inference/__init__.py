"""Chat inference on CPU, shared by Chat, Evaluate and the API server: which models Iris can talk to,
decoding settings, the engines, and a cache of loaded engines.

    from core import inference
    model = inference.list_chat_models()[0]                 # ChatModel(id, label, kind, path, lineage)
    engine = inference.load_engine(model.id)                # LRU-cached, thread-safe
    stream = engine.stream(messages, inference.PRESETS["A"])  # iterate for text pieces ...
    for piece in stream: print(piece, end="")
    stream.stats                                            # ... then Stats(prompt_tokens, ttft_s, gen_tok_s, ...)
    answer = engine.generate(messages, settings)            # Answer(text, stats, note)

  settings     DecodingSettings, PRESETS
  catalog      ChatModel, list_chat_models, find_model (ids: see its docstring)
  engine       Engine/Stream/Stats/Answer: template, history trimming, streaming, stop, queue of answers
  chat_tokens  tokenize_chat / encode_chat: only the template's structure becomes control tokens
  engine_gguf  llama-cpp-python (KV-cache reuse across turns); engine_hf: transformers fp32 + peft
  cache        EngineCache, load_engine, loaded_engines, open_engine
It is a base package (not a workflow): chat, evaluate and serve import it; it imports none of them.
"""
from core.inference.cache import (  # noqa: F401
                                  DEFAULT_MAX_LOADED,
                                  EngineCache,
                                  default_cache,
                                  load_engine,
                                  loaded_engines,
                                  open_engine,
)
from core.inference.catalog import ChatModel, default_model, embedded_model, find_model, list_chat_models  # noqa: F401
from core.inference.chat_tokens import encode_chat, tokenize_chat  # noqa: F401
from core.inference.engine import Answer, Engine, Stats, Stream, cpu_threads  # noqa: F401
from core.inference.settings import PRESETS, DecodingSettings, preset  # noqa: F401
