"""Chat sessions on disk: transcripts with lineage, compare grids, blind votes, and a scripting CLI.

Run as: python -m core.chat MODEL --prompt "..." [--system TEXT] [--preset A|B] [--temperature T] [--top-p P]
                            [--top-k K] [--repeat-penalty R] [--max-new-tokens N] [--seed S] [--save]
        python -m core.chat --list        (the model ids you can pass)
The answer streams to stdout; the stats line (tokens, TTFT, tokens/s) goes to stderr, so
`answer=$(python -m core.chat MODEL --prompt ...)` captures only the answer.

Transcripts are JSON files in IRIS_HOME/transcripts/<id>.json:
  chat:    {id, kind: "chat", created, title, system, model: {id, label, kind, lineage}, settings,
            messages: [{role, content, stats?, note?}]}
  compare: {id, kind: "compare", created, title, system, prompt,
            cells: [{model, setting, settings, answer, stats, note}],
            blind: null | {seed, order (cell index shown at each position), choice (position picked),
                           preferred_cell, preferred: {model, setting}}}
Lineage says where a model came from: run, dataset (version), base_model, export, quant.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from core import inference
from core.errors import IrisError, cli_exit
from core.paths import read_json, transcripts_dir, write_json

DEFAULT_SYSTEM = ("You are a FineTome teaching assistant. Explain concepts clearly and accurately, step by step, "
                  "the way a patient teacher would, and keep answers focused on the student's question.")
MAX_CELLS = 16  # a grid larger than 4×4 is unreadable and takes minutes on 2 cores


def model_record(model_id: str) -> dict:
    m = inference.find_model(model_id)
    return {"id": m.id, "label": m.label, "kind": m.kind, "lineage": dict(m.lineage)}


def stats_line(stats: dict | None) -> str:
    if not stats:
        return ""
    return (f"{stats.get('gen_tok_s', 0):.1f} tok/s · TTFT {stats.get('ttft_s', 0):.2f} s · "
            f"prompt {stats.get('prompt_tokens', 0)} tok ({stats.get('cached_tokens', 0)} reused) · "
            f"answer {stats.get('completion_tokens', 0)} tok · {stats.get('finish_reason', '')}")


def _new_id(kind: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{uuid.uuid4().hex[:6]}"


def _title(text: str) -> str:
    text = " ".join(text.split())
    return text[:60] + ("…" if len(text) > 60 else "")


def save_chat(model_id: str, system: str, settings: inference.DecodingSettings, messages: list[dict],
              transcript_id: str | None = None) -> str:
    """Write (or rewrite, as the chat grows) a chat transcript; returns its id."""
    first_user = next((m["content"] for m in messages if m.get("role") == "user"), "")
    tid = transcript_id or _new_id("chat")
    write_json(transcripts_dir() / f"{tid}.json", {
        "id": tid, "kind": "chat", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "title": _title(first_user),
        "system": system, "model": model_record(model_id), "settings": asdict(settings),
        "messages": [m for m in messages if m.get("role") != "system"]})
    return tid


def list_transcripts() -> list[dict]:
    """[{id, kind, title, created, models}] newest first."""
    out = []
    for path in sorted(transcripts_dir().glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        t = read_json(path, default=None)
        if not isinstance(t, dict) or "kind" not in t:
            continue
        models = [t["model"]["label"]] if t["kind"] == "chat" else sorted({c["model"]["label"] for c in t["cells"]})
        out.append({"id": t.get("id", path.stem), "kind": t["kind"], "title": t.get("title", ""),
                    "created": t.get("created", ""), "models": models})
    return out


def load_transcript(transcript_id: str) -> dict:
    path = Path(transcript_id) if transcript_id.endswith(".json") else transcripts_dir() / f"{transcript_id}.json"
    t = read_json(path, default=None)
    if not isinstance(t, dict) or t.get("kind") not in ("chat", "compare"):
        raise IrisError(f"no readable transcript {transcript_id!r} in {transcripts_dir()}: it was deleted or is not "
                        "an Iris transcript.")
    return t


@dataclass(frozen=True)
class Cell:
    model_id: str
    setting: str
    """Preset name ('A', 'B') or 'custom'."""
    settings: inference.DecodingSettings


def compare_grid(model_ids: list[str], settings: dict[str, inference.DecodingSettings]) -> list[Cell]:
    """Every (model, setting) pair, row by row: models are rows, settings are columns."""
    model_ids = list(dict.fromkeys(m for m in model_ids if m))
    if not model_ids or not settings:
        raise IrisError("a comparison needs at least one model and one decoding setting.")
    if len(model_ids) * len(settings) > MAX_CELLS:
        raise IrisError(f"{len(model_ids)} models × {len(settings)} settings is more than {MAX_CELLS} cells: "
                        "pick fewer.")
    return [Cell(m, name, s) for m in model_ids for name, s in settings.items()]


def blind_order(n: int, seed: int) -> list[int]:
    """The cell shown at each position in blind mode: a seeded shuffle, so a reopened comparison keeps it."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def compare_messages(system: str, prompt: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system.strip() else []) + [{"role": "user", "content": prompt}]


def save_compare(prompt: str, system: str, cells: list[Cell], answers: list[inference.Answer],
                 blind_seed: int | None = None) -> str:
    """Write a comparison (answers in cell order) and, when blind, the shuffled display order; returns its id."""
    tid = _new_id("compare")
    write_json(transcripts_dir() / f"{tid}.json", {
        "id": tid, "kind": "compare", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "title": _title(prompt),
        "system": system, "prompt": prompt,
        "cells": [{"model": model_record(c.model_id), "setting": c.setting, "settings": asdict(c.settings),
                   "answer": a.text, "stats": a.stats.to_dict(), "note": a.note} for c, a in zip(cells, answers)],
        "blind": None if blind_seed is None else {"seed": blind_seed, "order": blind_order(len(cells), blind_seed),
                                                  "choice": None, "preferred_cell": None, "preferred": None}})
    return tid


def run_compare(prompt: str, system: str, cells: list[Cell], blind_seed: int | None = None,
                cache: inference.EngineCache | None = None) -> str:
    """Send one prompt to every cell (one after another: the cores are shared) and save the comparison."""
    messages = compare_messages(system, prompt)
    answers = [inference.load_engine(c.model_id, cache).generate(messages, c.settings) for c in cells]
    return save_compare(prompt, system, cells, answers, blind_seed)


def record_vote(transcript_id: str, position: int) -> dict:
    """Record that the answer shown at `position` (0-based) of a blind comparison was preferred."""
    t = load_transcript(transcript_id)
    blind = t.get("blind")
    if t["kind"] != "compare" or not blind:
        raise IrisError("only a blind comparison takes a vote.")
    if not 0 <= position < len(blind["order"]):
        raise IrisError(f"answer {position + 1} does not exist: pick one of 1..{len(blind['order'])}.")
    cell = blind["order"][position]
    blind.update(choice=position, preferred_cell=cell,
                 preferred={"model": t["cells"][cell]["model"]["id"], "setting": t["cells"][cell]["setting"]})
    write_json(transcripts_dir() / f"{t['id']}.json", t)
    return t


def settings_from_args(args: argparse.Namespace) -> inference.DecodingSettings:
    values = vars(inference.preset(args.preset))
    for key in ("temperature", "top_p", "top_k", "repeat_penalty", "max_new_tokens", "seed"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return inference.DecodingSettings(**values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chat with an Iris model on the CPU (one prompt, streamed).")
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
