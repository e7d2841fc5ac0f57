"""Model text for display, so that nothing the model wrote is lost: split into Markdown-safe text, code
blocks, display math and tables, each shown as what it is.

Answers are not Markdown a person wrote: `84 = 2*17 + 3 * 5` must not turn into italics, `**kwargs`
must not turn into bold, `# comment` into a heading, `<b>` into HTML. So plain text is shown with every
Markdown character escaped and its line breaks and indentation kept; fenced code blocks (```lang) are
shown as code; display math ($$...$$, \\[...\\]) as LaTeX and inline math ($x^2$, \\(...\\)) as math;
a Markdown table (a header row, a |---| row, body rows) as a table whose cells are escaped text.

    for kind, body, lang in segments(answer): ...   # kind: "text" (Markdown-safe), "code", "latex"
"""
from __future__ import annotations

import re

_FENCE = re.compile(r"^[ \t]*(```|~~~)([^\n`]*)\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)", re.S | re.M)
_DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]", re.S)
# Inline math as pandoc reads it: $ right before and after non-space, closing $ not followed by a digit
# (so "$5 and $10" stays money); \( ... \) too.
_INLINE_MATH = re.compile(r"\$(?=[^\s$])([^$\n]+?)(?<=[^\s\\$])\$(?!\d)|\\\((.+?)\\\)")
_MD_CHARS = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$&:=])")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def escape(text: str, line_start: bool = True) -> str:
    """Markdown that shows `text` as written: punctuation escaped, line breaks and leading spaces kept
    (`line_start`: whether `text` begins a line, so that its leading spaces are indentation)."""
    lines = []
    for n, line in enumerate(text.split("\n")):
        body = line.lstrip(" ") if (n or line_start) else line
        indent = "\u00a0" * (len(line) - len(body))  # non-breaking spaces survive Markdown
        lines.append(indent + _MD_CHARS.sub(r"\\\1", body))
    return "  \n".join(lines)  # two spaces: a hard line break


def _escape_with_math(text: str) -> str:
    out, pos = [], 0
    for hit in _INLINE_MATH.finditer(text):
        out.append(escape(text[pos:hit.start()], line_start=pos == 0))
        out.append(f"${hit.group(1) if hit.group(1) is not None else hit.group(2)}$")
        pos = hit.end()
    out.append(escape(text[pos:], line_start=pos == 0))
    return "".join(out)


def _table(lines: list[str]) -> str:
    """A Markdown table whose cells are escaped text."""
    def row(line: str) -> str:
        cells = line.strip().strip("|").split("|")
        return "| " + " | ".join(_escape_with_math(c.strip()) for c in cells) + " |"
    return "\n".join([row(lines[0]), lines[1].strip()] + [row(x) for x in lines[2:]])


def _text_blocks(text: str) -> list[tuple[str, str, str]]:
    """Plain text with its tables found: [("text", markdown, "")], tables as separate blocks."""
    lines, out, buf, i = text.split("\n"), [], [], 0
    while i < len(lines):
        if ("|" in lines[i] and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1])
                and lines[i].count("|") >= 1):
            j = i + 2
            while j < len(lines) and "|" in lines[j] and lines[j].strip():
                j += 1
            if buf:
                out.append(("text", _escape_with_math("\n".join(buf)), ""))
                buf = []
            out.append(("text", _table(lines[i:j]), ""))
            i = j
            continue
        buf.append(lines[i])
        i += 1
    if buf:
        out.append(("text", _escape_with_math("\n".join(buf)), ""))
    return [b for b in out if b[1].strip()]


def segments(text: str) -> list[tuple[str, str, str]]:
    """[(kind, body, language)] in order: kind "text" (Markdown-safe, ready for st.markdown), "code"
    (raw code, with its fence's language) or "latex" (a display formula)."""
    out: list[tuple[str, str, str]] = []

    def prose(part: str) -> None:
        pos = 0
        for hit in _DISPLAY_MATH.finditer(part):
            out.extend(_text_blocks(part[pos:hit.start()]))
            out.append(("latex", (hit.group(1) or hit.group(2) or "").strip(), ""))
            pos = hit.end()
        out.extend(_text_blocks(part[pos:]))

    pos = 0
    for hit in _FENCE.finditer(text):
        prose(text[pos:hit.start()])
        out.append(("code", hit.group(3).rstrip("\n"), hit.group(2).strip()))
        pos = hit.end()
    prose(text[pos:])
    return out
