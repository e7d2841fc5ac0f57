"""Chat templates as training writes them and as every runtime reads them.

Iris trains with templates whose assistant turns sit inside `{% generation %}` … `{% endgeneration %}`
(trl masks everything else from the loss). Only transformers knows that tag: plain Jinja, llama.cpp's
template engine and llama-cpp-python's formatter reject it ("unknown tag 'generation'"). So whatever
leaves training for inference — the final adapter, an export's merged folder, every GGUF's
`tokenizer.chat_template` — carries the same template without the markers (`plain_template`).

Trainer checkpoints keep the training template (they are saved by the Trainer, for resuming); the
export makes them plain on the way out (`plain_template_files`).
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from jinja2.exceptions import TemplateError

# `{% generation %}`, `{%- generation -%}`, `{% endgeneration %}` ... with any whitespace control
MARKER = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
TEMPLATE_FILES = ("tokenizer_config.json", "chat_template.jinja", "chat_template.json")


def plain_template(template: str) -> str:
    """The template without its `{% generation %}` markers: renders the same text in plain Jinja."""
    return MARKER.sub("", template)


def has_markers(template) -> bool:
    """Does a template (a string, or transformers' list of named templates) carry training markers?"""
    if isinstance(template, list):
        return any(has_markers(t.get("template", "")) for t in template if isinstance(t, dict))
    return isinstance(template, str) and bool(MARKER.search(template))


def _plain(value):
    if isinstance(value, list):
        return [{**t, "template": plain_template(t["template"])} if isinstance(t, dict) and "template" in t else t
                for t in value]
    return plain_template(value) if isinstance(value, str) else value


def folder_has_markers(folder: Path) -> bool:
    """Does any tokenizer file of a transformers folder hold a training-only template?"""
    folder = Path(folder)
    for name in TEMPLATE_FILES:
        path = folder / name
        if path.exists() and MARKER.search(path.read_text(encoding="utf-8", errors="replace")):
            return True
    return False


def plain_template_files(folder: Path) -> list[str]:
    """Rewrite a folder's tokenizer files in place so their chat template is plain; returns the files changed."""
    folder, changed = Path(folder), []
    for name in TEMPLATE_FILES:
        path = folder / name
        if not path.exists() or path.is_symlink():
            continue
        text = path.read_text(encoding="utf-8")
        if not MARKER.search(text):
            continue
        if name.endswith(".jinja"):
            path.write_text(plain_template(text), encoding="utf-8")
        else:
            data = json.loads(text)
            data["chat_template"] = _plain(data.get("chat_template"))
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        changed.append(name)
    return changed


class TemplateRefused(TemplateError):
    """A chat template's own raise_exception(...) refused the conversation (e.g. roles that do not alternate)."""


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    """`template` compiled in the Jinja environment transformers' apply_chat_template uses (its
    chat_template_utils._cached_compile_jinja_template): sandboxed, trim_blocks + lstrip_blocks, loop
    controls, its tojson / raise_exception / strftime_now, and {% generation %} blocks rendered as their body.
    Why not transformers itself: importing it costs ≈ 5–10 CPU s, paid by every worker process of the
    out-of-core engines for a handful of renders, and a GGUF's template needs no transformers at all
    (tests/test_token_count.py pins equal output)."""
    import json as _json
    from datetime import datetime

    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise TemplateRefused(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return _json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_template(template: str, messages: list[dict], add_generation_prompt: bool = False, **special) -> str:
    """One conversation rendered by a chat template, as transformers' render_jinja_template renders it
    (no tools, no documents). A template that refuses the conversation (its raise_exception) raises
    TemplateRefused."""
    return _compiled(template).render(messages=messages, tools=None, documents=None,
                                      add_generation_prompt=add_generation_prompt, **special)
