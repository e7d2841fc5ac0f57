"""Chat sessions on disk: transcripts with lineage, and blind votes on comparisons.

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

import time
import uuid
from dataclasses import asdict
from pathlib import Path

from core import inference
from core.errors import IrisError
from core.paths import check_name, read_json, transcripts_dir, write_json

DEFAULT_SYSTEM = ("You are a FineTome teaching assistant. Explain concepts clearly and accurately, step by step, "
                  "the way a patient teacher would, and keep answers focused on the student's question.")


def chat_messages(system: str, history: list[dict], prompt: str) -> list[dict]:
    """What the model reads for the next turn: the system prompt (if any), the chat so far (roles and text
    only: stats and notes stay on the page), then the new user message."""
    head = [{"role": "system", "content": system}] if system.strip() else []
    return head + [{"role": m["role"], "content": m["content"]} for m in history] + [{"role": "user", "content": prompt}]


def model_record(model_id: str) -> dict:
    m = inference.find_model(model_id)
    return {"id": m.id, "label": m.label, "kind": m.kind, "lineage": dict(m.lineage)}


def stats_line(stats: dict | None) -> str:
    if not stats:
        return ""
    return (f"{stats.get('gen_tok_s', 0):.1f} tok/s · TTFT {stats.get('ttft_s', 0):.2f} s · "
            f"prompt {stats.get('prompt_tokens', 0)} tok ({stats.get('cached_tokens', 0)} reused) · "
            f"answer {stats.get('completion_tokens', 0)} tok · {stats.get('finish_reason', '')}")


def new_id(kind: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{uuid.uuid4().hex[:6]}"


def title_of(text: str) -> str:
    text = " ".join(text.split())
    return text[:60] + ("…" if len(text) > 60 else "")


def save_chat(model_id: str, system: str, settings: inference.DecodingSettings, messages: list[dict],
              transcript_id: str | None = None) -> str:
    """Write (or rewrite, as the chat grows) a chat transcript; returns its id."""
    first_user = next((m["content"] for m in messages if m.get("role") == "user"), "")
    tid = check_name(transcript_id or new_id("chat"), "transcript id")
    write_json(transcripts_dir() / f"{tid}.json", {
        "id": tid, "kind": "chat", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "title": title_of(first_user),
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
    path = Path(transcript_id) if transcript_id.endswith(".json") else \
        transcripts_dir() / f"{check_name(transcript_id, 'transcript id')}.json"
    t = read_json(path, default=None)
    if not isinstance(t, dict) or t.get("kind") not in ("chat", "compare"):
        raise IrisError(f"no readable transcript {transcript_id!r} in {transcripts_dir()}: it was deleted or is not "
                        "an Iris transcript.")
    return t


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
