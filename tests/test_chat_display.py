"""Model answers are shown with nothing lost: the Markdown Iris hands to Streamlit, rendered by a CommonMark
renderer, reads back as exactly what the model wrote; code blocks, tables and LaTeX still come out as such."""
from __future__ import annotations

import html
import re

from markdown_it import MarkdownIt

from core.chat.display import escape, segments

ARITHMETIC = "84 = 2*17 + 3 * 5, then 36 = 2*5 + 6"
PYTHON = "def f(*args, **kwargs):\n    return g(**kwargs)  # __init__ and 2*3"
TABLE = "| op | result |\n|---|---|\n| 2*17 | 34 |\n| a_b | <i> |"
HTML_TAG = "Use <b>bold</b> & <script>x</script> here; # not a heading\n_stray_ underscores and *stars*"
MD = MarkdownIt("commonmark").enable("table")


def _text_of(markdown: str) -> str:
    """What a reader sees: the rendered HTML without tags, entities decoded, whitespace collapsed."""
    rendered = MD.render(markdown)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", rendered)).replace("\u00a0", " ").split())


def _words(text: str) -> str:
    return " ".join(text.replace("|", " ").split())


def test_plain_text_reads_back_exactly_with_no_formatting():
    for original in (ARITHMETIC, HTML_TAG, "**kwargs and __dunder__ and `tick` [link](x) ~~no~~ 1. two\n- three"):
        [(kind, body, _)] = segments(original)
        assert kind == "text"
        rendered = MD.render(body)
        assert not re.search(r"<(em|strong|h\d|b|i|script|a|code|ol|ul|del)\b", rendered), rendered
        assert _text_of(body) == " ".join(original.split())


def test_code_block_latex_and_table_render_as_themselves():
    answer = (f"Sum: {ARITHMETIC}\n\n```python\n{PYTHON}\n```\n\n{TABLE}\n\n"
              "Energy $E = mc^2$ costs $5 and $10.\n$$\\int_0^1 x\\,dx = 1/2$$\ndone")
    kinds = [(k, b, lang) for k, b, lang in segments(answer)]
    assert [k for k, _, _ in kinds] == ["text", "code", "text", "text", "latex", "text"]
    assert kinds[1][1:] == (PYTHON, "python")  # the code exactly as written
    assert kinds[4][1] == "\\int_0^1 x\\,dx = 1/2"
    table_html = MD.render(kinds[2][1])
    assert "<table>" in table_html and "<i>" not in table_html.replace("&lt;i&gt;", "")
    assert _words(_text_of(kinds[2][1])) == _words("op result 2*17 34 a_b <i>")
    money = kinds[3][1]
    assert "$E = mc^2$" in money and "\\$5 and \\$10" in money  # inline math kept for Streamlit, money escaped
    assert _text_of(kinds[0][1]) == f"Sum: {ARITHMETIC}"


def test_line_breaks_and_indentation_are_kept():
    body = escape("line one\n    indented two\nthree")
    assert MD.render(body).count("<br") == 2
    assert "\u00a0" * 4 + "indented" in body
