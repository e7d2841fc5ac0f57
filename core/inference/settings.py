"""Decoding settings: how the next token is drawn, with the lab's two presets (A focused, B varied)."""
from __future__ import annotations

from dataclasses import dataclass

from core.config import from_yaml, to_yaml
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
        problems = []
        if not 0.0 <= float(self.temperature) <= 5.0:
            problems.append("temperature must be between 0 and 5")
        if not 0.0 < float(self.top_p) <= 1.0:
            problems.append("top_p must be in (0, 1]")
        if int(self.top_k) < 0:
            problems.append("top_k must be ≥ 0")
        if not 0.5 <= float(self.repeat_penalty) <= 2.0:
            problems.append("repeat_penalty must be between 0.5 and 2")
        if not 1 <= int(self.max_new_tokens) <= 8192:
            problems.append("max_new_tokens must be between 1 and 8192")
        if int(self.seed) < 0:
            problems.append("seed must be ≥ 0")
        if problems:
            raise IrisError("decoding settings: " + "; ".join(problems) + ".")

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
