"""Chat sessions on disk: transcripts with lineage, and blind votes on comparisons.

Transcripts are JSON files in IRIS_HOME/transcripts/<id>.json:
  chat:    {id, kind: "chat", created, title, system, model: {id, label, kind, lineage}, settings,
            messages: [{role, content} | {role: "assistant", content, stats, note, model, settings, preset}]}
           Every answer records the model (with lineage) and the settings that wrote it, so a chat that
           switched models keeps each turn's own; the top-level model and settings are the last answer's.
           Files written before answers carried their own are read as if every answer had the top-level one.
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


def stats_line(stats: dict | None, show_cache: bool = True) -> str:
    """Speed and token counts of one answer. `show_cache=False` leaves out the reused-prompt count, which
    tells blind answers apart (the second setting on a model reuses the first one's prompt)."""
    if not stats:
        return ""
    reused = f" ({stats.get('cached_tokens', 0)} reused)" if show_cache else ""
    return (f"{stats.get('gen_tok_s', 0):.1f} tok/s · TTFT {stats.get('ttft_s', 0):.2f} s · "
            f"prompt {stats.get('prompt_tokens', 0)} tok{reused} · "
            f"answer {stats.get('completion_tokens', 0)} tok · {stats.get('finish_reason', '')}")


CHAT_MAX_NEW_TOKENS = 512  # chat answers: room for a worked explanation; a cut one offers Continue
CONTINUE = "Continue."  # the message the Continue button sends after a cut answer


def chat_settings(name: str, custom: dict | None = None) -> inference.DecodingSettings:
    """Chat's settings for preset `name` ('A', 'B') or 'custom' (from `custom`, else A): max new tokens 512
    unless custom values say otherwise (Evaluate keeps the lab's 128)."""
    if name == "custom" and custom:
        return inference.DecodingSettings(**custom)
    base = inference.preset("A" if name == "custom" else name)
    return inference.DecodingSettings(**{**asdict(base), "max_new_tokens": CHAT_MAX_NEW_TOKENS})


CUT_NOTE = "the answer reached the max new tokens limit and was cut: press Continue (or raise the limit)."


def answer_message(text: str, stats: dict, note: str, model_id: str, settings: inference.DecodingSettings,
                   preset_name: str = "custom") -> dict:
    """An assistant turn as the page and transcripts keep it: the text, its stats and note, and the model
    (with lineage) and settings that wrote it. A cut answer (finish_reason 'length') says so in its note."""
    if stats.get("finish_reason") == "length" and CUT_NOTE not in note:
        note = f"{note} {CUT_NOTE}".strip()
    return {"role": "assistant", "content": text, "stats": stats, "note": note, "model": model_record(model_id),
            "settings": asdict(settings), "preset": preset_name}


def answered_by(messages: list[dict]) -> list[str | None]:
    """For each message, the label of a model that took over the chat at that answer (None elsewhere):
    the first answer's model, then each switch to another."""
    out, last = [], None
    for m in messages:
        model = (m.get("model") or {}).get("id") if m.get("role") == "assistant" else None
        out.append(m["model"].get("label", model) if model and model != last else None)
        last = model or last
    return out


def reopen_state(t: dict) -> dict:
    """What the page restores from a chat transcript: the last answer's model id, settings and preset name
    ('A', 'B' or 'custom'), and the system prompt."""
    answers = [m for m in t.get("messages", []) if m.get("role") == "assistant"]
    last = answers[-1] if answers else {}
    settings = last.get("settings") or t.get("settings") or {}
    name = last.get("preset") or next((n for n, p in inference.PRESETS.items() if asdict(p) == settings), "custom")
    return {"model_id": (last.get("model") or t.get("model") or {}).get("id"), "settings": settings,
            "preset": name, "system": t.get("system", "")}


def new_id(kind: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{uuid.uuid4().hex[:6]}"


def title_of(text: str) -> str:
    text = " ".join(text.split())
    return text[:60] + ("…" if len(text) > 60 else "")


def save_chat(model_id: str, system: str, settings: inference.DecodingSettings, messages: list[dict],
              transcript_id: str | None = None) -> str:
    """Write (or rewrite, as the chat grows) a chat transcript; returns its id. Answers that carry their
    model and settings (`answer_message`) keep them; bare ones get `model_id` and `settings`."""
    first_user = next((m["content"] for m in messages if m.get("role") == "user"), "")
    tid = check_name(transcript_id or new_id("chat"), "transcript id")
    path = transcripts_dir() / f"{tid}.json"
    old = read_json(path, default=None) if transcript_id else None
    kept = []
    for m in messages:
        if m.get("role") == "assistant" and not m.get("model"):
            m = {**m, "model": model_record(model_id), "settings": asdict(settings)}
        if m.get("role") != "system":
            kept.append(m)
    last = next((m for m in reversed(kept) if m.get("role") == "assistant"), None)
    write_json(path, {
        "id": tid, "kind": "chat", "created": (old or {}).get("created") or time.strftime("%Y-%m-%dT%H:%M:%S"),
        "title": title_of(first_user), "system": system,
        "model": last["model"] if last else model_record(model_id),
        "settings": last["settings"] if last else asdict(settings), "messages": kept})
    return tid


def list_transcripts() -> list[dict]:
    """[{id, kind, title, created, models}] newest first."""
    out = []
    for path in sorted(transcripts_dir().glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        t = read_json(path, default=None)
        if not isinstance(t, dict) or "kind" not in t:
            continue
        models = (list(dict.fromkeys(m["model"]["label"] for m in t["messages"] if m.get("model")))
                  or [t["model"]["label"]]) if t["kind"] == "chat" else sorted({c["model"]["label"] for c in t["cells"]})
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
    if t["kind"] == "chat":  # written before answers carried their model: every answer had the top-level one
        t["messages"] = [{**m, "model": t.get("model"), "settings": t.get("settings")}
                         if m.get("role") == "assistant" and not m.get("model") else m for m in t["messages"]]
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
