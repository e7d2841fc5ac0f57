"""API server speed: the OpenAI-compatible server (core.serve, streamed through the official openai client)
vs the raw llama-cpp-python loop, same GGUF, same prompt tokens, greedy.

Run as: .venv/bin/python bench/serve.py [--model smollm2-135m-instruct] [--threads 2] [--prompt-tokens 512]
        [--new-tokens 128] [--rounds 3]

The server runs as `python -m core.serve MODEL --threads N` in its own process (a scratch IRIS_HOME); the
raw loop (reset the KV cache, Llama.generate on the prompt's token ids, detokenise each token) runs in this
process with the same n_ctx and threads. The prompt is a system + user chat of `--prompt-tokens` tokens as
the server renders it (the GGUF's template, counted with core.serve.app.PromptMeter, which the raw loop
then tokenises the same way). Raw and server alternate which goes first each round; the ratios are the
median of the per-round server/raw pairs. TTFT through the server is request sent → first streamed text;
generation tok/s is (tokens − 1) / (last − first text), with the token count of the raw run when both
answers are the same text (greedy: they should be). Goals: server gen ≥ 0.9× raw, TTFT ≤ 1.1× raw.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chat_cpu import SAMPLING, first_prompt, raw_run  # noqa: E402  (one prompt search, one raw loop)


def server_run(client, model: str, messages: list[dict], new_tokens: int, raw_tokens: int, meter) -> dict:
    t0 = time.perf_counter()
    t_first, t_last, parts = None, None, []
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, temperature=0.0,
                                            max_tokens=new_tokens, top_p=SAMPLING["top_p"],
                                            extra_body={k: v for k, v in SAMPLING.items() if k != "top_p"})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            t_last = time.perf_counter()
            t_first = t_first or t_last
            parts.append(chunk.choices[0].delta.content)
    text = "".join(parts)
    return {"ttft_s": t_first - t0, "text": text, "t_first": t_first, "t_last": t_last,
            "tokens": raw_tokens if text else 0, "retokenised": len(meter.llm.tokenize(text.encode(), add_bos=False))}


def start_server(model: str, threads: int, home: Path) -> tuple[subprocess.Popen, str]:
    from tests.e2e_harness import free_port

    port = free_port()
    env = {**os.environ, "IRIS_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "core.serve", model, "--port", str(port), "--threads", str(threads)],
                            cwd=Path(__file__).resolve().parent.parent, env=env, stdout=open(home / "serve.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {(home / 'serve.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not come up")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="Iris model id or .gguf path")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    # `timeout` sends SIGTERM: end through `finally`, so the server process goes too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import openai
    from llama_cpp import Llama

    from core.inference import find_model
    from core.inference.engine import MAX_CTX
    from core.serve.app import PromptMeter

    model = find_model(args.model)
    meter = PromptMeter(model.path)
    messages = first_prompt(lambda m: meter.count({"messages": m}), args.prompt_tokens)
    tokens = meter.prompt.tokenize(meter.prompt.format(messages=messages).prompt)  # exactly the server's ids
    llm = Llama(model_path=model.path, n_ctx=MAX_CTX, n_threads=args.threads, n_threads_batch=args.threads,
                verbose=False)
    home = Path(tempfile.mkdtemp(prefix="iris-bench-serve-"))
    proc, url = start_server(model.id, args.threads, home)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    print(f"{model.id}: prompt {len(tokens)} tokens, {args.new_tokens} new, {args.threads} threads, {args.rounds} rounds")
    pairs = []
    try:
        server_run(client, model.id, [{"role": "user", "content": "Hi"}], 4, 4, meter)  # warm-up
        print("  warm-up done", flush=True)
        for r in range(args.rounds):
            order = ("raw", "server") if r % 2 == 0 else ("server", "raw")
            got = {}
            for path in order:
                if path == "raw":
                    got["raw"] = raw_run(llm, tokens, args.new_tokens)
                else:
                    got["server"] = server_run(client, model.id, messages, args.new_tokens, 0, meter)
                print(f"  {path}: TTFT {got[path]['ttft_s'] * 1000:.0f} ms", flush=True)
            raw, srv = got["raw"], got["server"]
            same = srv["text"] == raw["text"]
            n = raw["tokens"] if same else srv["retokenised"]
            srv["gen_tok_s"] = (n - 1) / max(srv["t_last"] - srv["t_first"], 1e-9)
            pairs.append((srv["gen_tok_s"] / raw["gen_tok_s"], srv["ttft_s"] / raw["ttft_s"]))
            print(f"round {r + 1} ({' then '.join(order)}): raw gen {raw['gen_tok_s']:.1f} tok/s TTFT "
                  f"{raw['ttft_s'] * 1000:.0f} ms ({raw['tokens']} tokens) | server gen {srv['gen_tok_s']:.1f} tok/s "
                  f"TTFT {srv['ttft_s'] * 1000:.0f} ms ({n} tokens, same text: {same})", flush=True)
    finally:
        proc.terminate()  # uvicorn lets an answer in flight finish first; do not wait long for it
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    gen, ttft = median(p[0] for p in pairs), median(p[1] for p in pairs)
    print(f"server/raw generation: {gen:.2f}x (goal >= 0.9x) [{min(p[0] for p in pairs):.2f}-"
          f"{max(p[0] for p in pairs):.2f}]")
    print(f"server/raw TTFT:       {ttft:.2f}x (goal <= 1.1x) [{min(p[1] for p in pairs):.2f}-"
          f"{max(p[1] for p in pairs):.2f}]")


if __name__ == "__main__":
    main()
