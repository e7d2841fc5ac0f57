"""The API server as an Iris job: which models, the config llama_cpp.server reads, launch, run, list.

    cfg = ServeConfig(models=["smollm2-135m-instruct"], port=8000)
    job_dir = launch(cfg, api_key=None)        # a background process; status.json says running + url
    run(cfg, job_dir)                          # what that process does (also `python -m core.serve`)

A server's job folder is `IRIS_HOME/serve/port-<port>/`: `serve.yaml` (llama_cpp.server's own
multi-model config, written by `write_config`), `models.json` (label and lineage per served name),
`status.json` (state, url, models, whether a key is required — never the key), `job.log`.
The key reaches the process through the IRIS_API_KEY environment variable, so it is in no argv that
`core.jobs` records, no config file and no log.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import jobs
from core.config import save_yaml
from core.errors import IrisError
from core.inference import ChatModel, cpu_threads, find_model
from core.inference.engine import MAX_CTX
from core.paths import iris_home, listed, write_json, write_text

KEY_ENV = "IRIS_API_KEY"


@dataclass
class ServeConfig:
    """What one API server serves, and where. YAML round trip through `core.config`."""

    models: list[str] = field(default_factory=list)
    """Iris model ids (see `python -m core.chat --list`); GGUFs only. Empty: the embedded SmolLM2."""
    host: str = "127.0.0.1"
    """Listen address; 127.0.0.1 keeps the API on this machine, 0.0.0.0 opens it to the network."""
    port: int = 8000
    """Listen port."""
    n_ctx: int = MAX_CTX
    """Context size in tokens for every model (capped by nothing else; the Chat page uses the same)."""
    threads: int = 0
    """CPU threads for generation; 0 = as the Chat page (the cores this process may use)."""

    def __post_init__(self) -> None:
        if not 1 <= int(self.port) <= 65535:
            raise IrisError(f"port {self.port} is not a TCP port: use 1-65535 (8000 is the usual one).")
        if int(self.n_ctx) < 64:
            raise IrisError(f"n_ctx {self.n_ctx} is too small: use at least 64 tokens (4096 is the Chat page's).")
        if not str(self.host).strip():
            raise IrisError("host is empty: use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface).")
        self.models = list(self.models or [])


def serve_dir() -> Path:
    return iris_home() / "serve"


def job_dir_for(port: int) -> Path:
    return serve_dir() / f"port-{int(port)}"


def served_models(ids: list[str]) -> list[ChatModel]:
    """The ChatModels for these ids (the embedded model when none), refusing what llama.cpp cannot serve."""
    models = [find_model(i) for i in (ids or ["smollm2-135m-instruct"])]
    for m in models:
        if m.kind != "gguf":
            raise IrisError(f"{m.id} is a {'transformers folder' if m.kind == 'hf' else 'LoRA adapter'}; the API "
                            "serves GGUF files: export it on the Export page first, then serve the export's GGUF.")
    names = [m.id for m in models]
    if len(set(names)) != len(names):
        raise IrisError(f"a model is listed twice ({', '.join(names)}): name each once.")
    return models


def model_settings(m: ChatModel, cfg: ServeConfig, path: str | None = None) -> dict:
    """One entry of serve.yaml: llama_cpp.server's ModelSettings for this model."""
    threads = int(cfg.threads) or cpu_threads()
    entry = {"model": path or m.path, "model_alias": m.id, "n_ctx": int(cfg.n_ctx), "n_threads": threads,
             "n_threads_batch": threads,
             # The template stored in the GGUF, rendered by llama-cpp-python's Jinja2ChatFormatter; app.build_app
             # serves it through Iris's handler, which tokenises message text as text exactly as the Chat page
             # does. Without this llama_cpp.server may swap in a hand-written format it guesses.
             "chat_format": "chat_template.default",
             "logits_all": False,  # llama_cpp.server defaults to True: logits of every prompt token, unused here
             "verbose": False}
    if m.lora:
        entry["lora_path"] = m.lora
    return entry


def write_config(cfg: ServeConfig, folder: Path, models: list[ChatModel] | None = None) -> Path:
    """serve.yaml (llama_cpp.server's config-file format) and models.json (Iris's label and lineage per
    served name) in `folder`; returns serve.yaml's path. The API key is never written."""
    models = models if models is not None else served_models(cfg.models)
    folder.mkdir(parents=True, exist_ok=True)
    import yaml

    server = {"host": cfg.host, "port": int(cfg.port),
              "models": [model_settings(m, cfg) for m in models]}
    write_text(folder / "serve.yaml", yaml.safe_dump(server, sort_keys=False))
    write_json(folder / "models.json", {m.id: {"label": m.label, "lineage": m.lineage} for m in models})
    save_yaml(cfg, folder / "config.yaml")
    return folder / "serve.yaml"


def check_exposure(host: str, api_key: str | None) -> None:
    """An API reachable from other machines needs a key (the app needs a password the same way, core.access)."""
    from core.access import is_loopback

    if not is_loopback(host) and not api_key:
        raise IrisError(f"serving on {host} lets other machines use your models: give an API key (the panel's "
                        f"API key field, --api-key KEY or {KEY_ENV}), or serve on 127.0.0.1.")


def launch(cfg: ServeConfig, api_key: str | None = None) -> Path:
    """Start `python -m core.serve` for `cfg` as a background job; returns its folder."""
    check_exposure(cfg.host, api_key)
    served_models(cfg.models)  # refuse bad ids here, where the page can show the sentence
    job_dir = job_dir_for(cfg.port)
    argv = jobs.python_module_argv("core.serve", *cfg.models, "--host", cfg.host, "--port", str(cfg.port),
                                   "--n-ctx", str(cfg.n_ctx), "--job-dir", str(job_dir))
    jobs.launch(job_dir, argv, env={KEY_ENV: api_key or ""})
    return job_dir


def run(cfg: ServeConfig, job_dir: Path | None = None, api_key: str | None = None) -> Path:
    """Serve until stopped (Ctrl-C, SIGTERM, or the job's STOP file); status.json follows along."""
    from core.serve import app

    check_exposure(cfg.host, api_key)
    job_dir = Path(job_dir or job_dir_for(cfg.port))
    models = served_models(cfg.models)
    config = write_config(cfg, job_dir, models)
    base = {"pid": os.getpid(), "models": [m.id for m in models], "auth": bool(api_key), "error": None}
    jobs.update_status(job_dir, state="queued", message="loading models", started=time.time(), **base)

    came_up = []

    def ready(url: str) -> None:
        came_up.append(url)
        jobs.update_status(job_dir, state="running", url=url, message=f"serving {len(models)} model(s) at {url}/v1")
        print(f"Iris API ready at {url}/v1 (models: {', '.join(m.id for m in models)})", flush=True)

    try:
        app.run(config, cfg.host, cfg.port, api_key=api_key, chat_page=chat_page(),
                should_stop=lambda: jobs.stop_requested(job_dir), on_ready=ready)
    except SystemExit:  # uvicorn exits when it cannot bind; its log line says why
        pass
    except BaseException as err:
        jobs.mark_failed(job_dir, err)
        raise
    if not came_up:
        jobs.update_status(job_dir, state="failed", message="failed",
                           error=f"the server did not start on {cfg.host}:{cfg.port} (port in use?); see the log.")
        raise IrisError(f"the server did not start on {cfg.host}:{cfg.port} (port in use?); see the log above.")
    jobs.update_status(job_dir, state="stopped", message="stopped")
    return job_dir


def chat_page() -> str:
    return (Path(__file__).with_name("chat.html")).read_text(encoding="utf-8")


def list_servers() -> list[dict]:
    """Every server job Iris knows, running or not: [{name, state, url, models, auth, path}]."""
    out = []
    for folder in listed(serve_dir()):
        st = jobs.read_status(folder)
        if st:
            out.append({"name": folder.name, "state": st.get("state"), "url": st.get("url", ""),
                        "models": ", ".join(st.get("models") or []), "auth": bool(st.get("auth")),
                        "path": str(folder)})
    return out
