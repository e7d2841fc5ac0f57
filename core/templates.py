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

import json
import re
from pathlib import Path

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
