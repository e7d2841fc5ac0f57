"""Serve Iris models over an OpenAI-compatible API (llama-cpp-python's server plus Iris's gate), as a job,
and write self-contained deploy bundles.

Run as: python -m core.serve [MODEL ...] [--port 8000] [--host 127.0.0.1] [--api-key KEY]
        python -m core.serve MODEL --bundle DIR [--hub-id USER/REPO]

  app      the API itself (llama_cpp.server + the gate and /v1/models it lacks); imports nothing from Iris,
           so bundles ship it verbatim
  server   ServeConfig, serve.yaml/models.json, launch/run as a job, list_servers (Home, the Serve panel)
  bundle   write_bundle: the deploy folder (GGUF, API, chat page, pinned requirements, Dockerfile, Space card)
"""
from core.serve.bundle import write_bundle  # noqa: F401
from core.serve.server import KEY_ENV, ServeConfig, job_dir_for, launch, list_servers, run, serve_dir  # noqa: F401
