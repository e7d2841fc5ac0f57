"""Serve models over an OpenAI-compatible API, or write a deploy bundle.

Run as: python -m core.serve [MODEL ...] [--port 8000] [--host 127.0.0.1] [--api-key KEY]
        python -m core.serve MODEL --bundle DIR [--hub-id USER/REPO]
MODEL is an Iris id (`python -m core.chat --list`; GGUFs only) or a .gguf path; none = the embedded SmolLM2.
The server runs in the foreground until Ctrl-C; its status and config go to IRIS_HOME/serve/port-<port>/.
The key may also come from the IRIS_API_KEY environment variable (how the Chat page's Serve panel passes
it, so it never shows in a process list or a status file).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.errors import IrisError, cli_exit
from core.serve.bundle import write_bundle
from core.serve.server import KEY_ENV, ServeConfig, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.serve", description="Serve Iris models over an OpenAI-compatible "
                                "API (llama-cpp-python's server), or write a deploy bundle for one model.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="model ids or .gguf paths (default: the embedded SmolLM2)")
    p.add_argument("--port", type=int, default=8000, help="listen port")
    p.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1: this machine only)")
    p.add_argument("--api-key", dest="api_key", help=f"require 'Authorization: Bearer KEY' (or set {KEY_ENV})")
    p.add_argument("--n-ctx", dest="n_ctx", type=int, default=ServeConfig.n_ctx, help="context size in tokens")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: as the Chat page)")
    p.add_argument("--bundle", type=Path, help="write a deploy bundle for MODEL into this new folder and exit")
    p.add_argument("--hub-id", dest="hub_id", default="", help="with --bundle: fetch the GGUF from this hub repo "
                   "at start instead of copying it in")
    p.add_argument("--job-dir", dest="job_dir", type=Path, help=argparse.SUPPRESS)  # set by the Serve panel's launch
    args = p.parse_args(argv)
    try:
        if args.bundle:
            if len(args.models) > 1:
                raise IrisError(f"a bundle holds one model; got {len(args.models)}: name one.")
            out = write_bundle(args.models[0] if args.models else "smollm2-135m-instruct", args.bundle,
                               hub_id=args.hub_id, n_ctx=args.n_ctx)
            print(f"Bundle written to {out} (run: cd {out} && python iris_serve.py)")
            return 0
        cfg = ServeConfig(models=args.models, host=args.host, port=args.port, n_ctx=args.n_ctx, threads=args.threads)
        run(cfg, args.job_dir, api_key=args.api_key or os.environ.get(KEY_ENV) or None)
        return 0
    except IrisError as err:
        return cli_exit(err)


if __name__ == "__main__":
    sys.exit(main())
