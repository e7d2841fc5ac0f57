"""Decoding settings: how the next token is drawn, with the lab's two presets (A focused, B varied)."""
from __future__ import annotations

from dataclasses import dataclass

from core.config import check_types, from_yaml, in_range, to_yaml
from core.errors import IrisError


@dataclass
class DecodingSettings:
    """How the next token is drawn. YAML round-trip: `to_yaml(s)` / `DecodingSettings.from_yaml(text)`."""

    temperature: float = 0.2
    """Softmax temperature; 0 means greedy (always the most likely token)."""
    top_p: float = 0.7
    """Nucleus sampling: keep the smallest set of tokens whose probability sums to top_p (0 < top_p ≤ 1)."""
    top_k: int = 40
    """Keep only the k most likely tokens before top_p (0 = no limit)."""
    repeat_penalty: float = 1.1
    """Divide logits of recently seen tokens by this (1.0 = off)."""
    max_new_tokens: int = 128
    """Answer length limit in tokens (the lab's Space used 128)."""
    seed: int = 0
    """Sampling seed, so the same prompt and settings give the same answer."""

    def __post_init__(self) -> None:
        check_types(self)
        in_range("temperature", self.temperature, 0.0, 5.0, why="0 is greedy")
        in_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        in_range("top_k", self.top_k, 0, why="0 = no limit")
        in_range("repeat_penalty", self.repeat_penalty, 0.5, 2.0, why="1.0 = off")
        in_range("max_new_tokens", self.max_new_tokens, 1, 8192)
        in_range("seed", self.seed, 0)

    def to_yaml(self) -> str:
        return to_yaml(self)

    @classmethod
    def from_yaml(cls, text: str) -> "DecodingSettings":
        return from_yaml(cls, text)


# The lab's decoding study: Setting A (focused) and Setting B (more varied).
PRESETS: dict[str, DecodingSettings] = {
    "A": DecodingSettings(temperature=0.2, top_p=0.7),
    "B": DecodingSettings(temperature=0.7, top_p=0.9),
}


def preset(name: str) -> DecodingSettings:
    if name not in PRESETS:
        raise IrisError(f"unknown decoding preset {name!r}: use {', '.join(PRESETS)} or custom values.")
    p = PRESETS[name]
    return DecodingSettings(**vars(p))
