"""Chat with an Iris model from the shell (one prompt, streamed).

Run as: python -m core.chat MODEL --prompt "..." [--system TEXT] [--preset A|B] [--temperature T] [--top-p P]
                            [--top-k K] [--repeat-penalty R] [--max-new-tokens N] [--seed S] [--save]
        python -m core.chat --list        (the model ids you can pass)
The answer streams to stdout; the stats line (tokens, TTFT, tokens/s) goes to stderr, so
`answer=$(python -m core.chat MODEL --prompt ...)` captures only the answer.
"""
from __future__ import annotations

import argparse
import sys

from core import inference
from core.chat.compare import compare_messages
from core.chat.transcripts import DEFAULT_SYSTEM, save_chat, stats_line
from core.errors import IrisError, cli_exit
from core.paths import transcripts_dir


def settings_from_args(args: argparse.Namespace) -> inference.DecodingSettings:
    values = vars(inference.preset(args.preset))
    for key in ("temperature", "top_p", "top_k", "repeat_penalty", "max_new_tokens", "seed"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return inference.DecodingSettings(**values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.chat", description="Chat with an Iris model on the CPU (one prompt, streamed).")
    parser.add_argument("model", nargs="?", help="model id (see --list), or a path to a .gguf / model folder")
    parser.add_argument("--prompt", help="the user message")
    parser.add_argument("--system", default=DEFAULT_SYSTEM, help="system prompt ('' for none)")
    parser.add_argument("--preset", default="A", choices=sorted(inference.PRESETS), help="decoding preset to start from")
    parser.add_argument("--temperature", type=float, help="override: 0 = greedy")
    parser.add_argument("--top-p", dest="top_p", type=float, help="override: nucleus sampling mass")
    parser.add_argument("--top-k", dest="top_k", type=int, help="override: 0 = no limit")
    parser.add_argument("--repeat-penalty", dest="repeat_penalty", type=float, help="override: 1.0 = off")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="override: answer length limit")
    parser.add_argument("--seed", type=int, help="override: sampling seed")
    parser.add_argument("--save", action="store_true", help="save a transcript to IRIS_HOME/transcripts/")
    parser.add_argument("--list", action="store_true", help="list the model ids and exit")
    args = parser.parse_args(argv)
    try:
        if args.list:
            for m in inference.list_chat_models():
                print(f"{m.kind:8} {m.id}    {m.label}")
            return 0
        if not args.model or args.prompt is None:
            raise IrisError("give a MODEL and --prompt \"...\" (or --list to see the models).")
        settings = settings_from_args(args)
        messages = compare_messages(args.system, args.prompt)
        stream = inference.load_engine(args.model).stream(messages, settings)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        print(f"[{stats_line(stream.stats.to_dict())}]", file=sys.stderr)
        if args.save:
            tid = save_chat(args.model, args.system, settings, messages + [
                {"role": "assistant", "content": stream.text, "stats": stream.stats.to_dict()}])
            print(f"transcript: {transcripts_dir() / (tid + '.json')}", file=sys.stderr)
    except IrisError as err:
        cli_exit(err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
