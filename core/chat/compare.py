"""Compare: one prompt to a grid of (model × decoding setting) cells, optionally blind, saved as a transcript."""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

from core import inference
from core.chat.transcripts import model_record, new_id, title_of
from core.errors import IrisError
from core.paths import transcripts_dir, write_json

MAX_CELLS = 16  # a grid larger than 4×4 is unreadable and takes minutes on 2 cores


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
    tid = new_id("compare")
    write_json(transcripts_dir() / f"{tid}.json", {
        "id": tid, "kind": "compare", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "title": title_of(prompt),
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
