"""A deploy bundle: one model version in a self-contained folder that runs anywhere with Python or Docker.

    write_bundle("smollm2-135m-instruct", Path("deploy/smollm2"))            # copies the GGUF in
    write_bundle("export:x/x-q4_k_m.gguf", Path("deploy/x"), hub_id="me/x")  # fetches it from the hub

The folder: `iris_serve.py` (core/serve/app.py verbatim: llama_cpp.server + Iris's gate, no import from
Iris), `serve.yaml` + `models.json` (the same config the workbench serves from, paths relative),
`chat.html` (a minimal chat page at `/`), the GGUF (or, with a hub id, where to fetch it at start),
`requirements.txt` pinned to the versions this workbench runs, a `Dockerfile`, and a `README.md` whose
YAML header is a Hugging Face Space card (Docker SDK, port 7860) and whose body carries the lineage.
"""
from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

from core.errors import IrisError
from core.paths import write_json, write_text
from core.serve.server import ServeConfig, model_settings, served_models

SPACE_PORT = 7860  # what a Hugging Face Docker Space routes to
# The API's runtime: llama-cpp-python and its `[server]` extra, pinned to what this workbench runs.
RUNTIME = ("llama-cpp-python", "fastapi", "uvicorn", "sse-starlette", "pydantic-settings", "starlette-context",
           "pyyaml")


def pinned(names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise IrisError(f"{name} is not installed here, so the bundle cannot pin it: "
                            "pip install -r requirements.txt first.") from None
    return out


def write_bundle(model_id: str, out: Path, hub_id: str = "", n_ctx: int = 0) -> Path:
    """Write the bundle for one model into `out` (which must not exist or be empty); returns `out`."""
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise IrisError(f"{out} already exists and is not empty: pick a new folder for the bundle.")
    (model,) = served_models([model_id])
    gguf = Path(model.path).name
    out.mkdir(parents=True, exist_ok=True)
    cfg = ServeConfig(models=[model.id], host="0.0.0.0", port=SPACE_PORT, **({"n_ctx": n_ctx} if n_ctx else {}))
    entry = model_settings(model, cfg, path=gguf)
    entry["n_threads"] = entry["n_threads_batch"] = -1  # llama_cpp.server: every core of the host it lands on
    meta = {"label": model.label, "lineage": model.lineage}
    if hub_id:
        meta["hub"] = {"repo_id": hub_id, "filename": gguf}
    else:
        shutil.copy2(model.path, out / gguf)
    if model.lora:
        entry["lora_path"] = Path(model.lora).name
        if not hub_id:
            shutil.copy2(model.lora, out / entry["lora_path"])
        else:
            meta["hub"]["lora_filename"] = entry["lora_path"]
    import yaml

    write_text(out / "serve.yaml", yaml.safe_dump({"host": cfg.host, "port": cfg.port, "models": [entry]},
                                                  sort_keys=False))
    write_json(out / "models.json", {model.id: meta})
    here = Path(__file__).parent
    shutil.copy2(here / "app.py", out / "iris_serve.py")
    shutil.copy2(here / "chat.html", out / "chat.html")
    reqs = pinned(RUNTIME + (("huggingface-hub",) if hub_id else ()))
    write_text(out / "requirements.txt", "# pinned to the Iris workbench that wrote this bundle\n" + "\n".join(reqs) + "\n")
    write_text(out / "Dockerfile", DOCKERFILE.format(port=SPACE_PORT))
    write_text(out / "README.md", readme(model, gguf, hub_id))
    return out


DOCKERFILE = """\
FROM python:3.11-slim
# llama-cpp-python compiles from source (a few minutes): it needs a C++ toolchain and cmake.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
EXPOSE {port}
# The API key, if any, comes from the IRIS_API_KEY environment variable (a Space secret), never a file.
CMD ["python", "iris_serve.py", "--host", "0.0.0.0", "--port", "{port}"]
"""


def readme(model, gguf: str, hub_id: str) -> str:
    lineage = "\n".join(f"| {k} | {v} |" for k, v in model.lineage.items() if v) or "| (none recorded) | |"
    source = (f"The GGUF `{gguf}` is fetched from the hub repo `{hub_id}` when the server starts."
              if hub_id else f"The GGUF `{gguf}` is in this folder.")
    title = model.label.replace('"', "'")[:60]
    return f"""---
title: "{title}"
emoji: 💬
colorFrom: indigo
colorTo: gray
sdk: docker
app_port: {SPACE_PORT}
pinned: false
---

# {model.label}

A chat model made with Iris, served on CPU over an OpenAI-compatible API
(llama-cpp-python's server) with a minimal chat page at `/`. {source}

## Lineage

| | |
|---|---|
{lineage}

Served name: `{model.id}`.

## Run it

```bash
pip install -r requirements.txt          # llama-cpp-python compiles (a few minutes)
python iris_serve.py --port 8000         # chat page: http://127.0.0.1:8000/  API: http://127.0.0.1:8000/v1
# or: docker build -t iris-model . && docker run -p {SPACE_PORT}:{SPACE_PORT} iris-model
```

Set `IRIS_API_KEY` to require `Authorization: Bearer <key>` on every API request.

```python
from openai import OpenAI
client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
reply = client.chat.completions.create(model="{model.id}", messages=[{{"role": "user", "content": "Hello!"}}])
print(reply.choices[0].message.content)
```
"""
