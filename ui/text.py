"""Model and dataset text on a page, with nothing lost: Markdown characters stay characters (`**kwargs` is not
bold, `# x` is not a heading), fenced code shows as code, display math as LaTeX (core.chat.display owns the rules).
Chat answers, dataset turns and preference pairs all go through `show_text`."""
from __future__ import annotations

import streamlit as st

from core.chat.display import segments

EMPTY_TURN = "*(empty turn)*"


def show_text(text: str, where=None, empty: str | None = None) -> None:
    """`text` as what it is: escaped prose, code blocks, formulas. `empty`: what an empty text shows (a dataset's
    empty turn says so; a streaming answer that has not started shows nothing)."""
    where = where or st
    if not text and empty:
        where.markdown(empty)
        return
    for kind, body, lang in segments(text):
        if kind == "code":
            where.code(body, language=lang or None)
        elif kind == "latex":
            where.latex(body)
        else:
            where.markdown(body)
