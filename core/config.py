"""YAML round-trip for the job dataclasses (`TrainConfig`, `ExportConfig`, `DataRecipe`, ...).

Every job has one dataclass; the page form, the CLI and the tests all build that same object, and
it is written beside the job's outputs as YAML so every folder describes itself.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Any, Type, TypeVar

import yaml

from core.errors import IrisError

T = TypeVar("T")


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def from_dict(cls: Type[T], data: dict | None) -> T:
    """Build `cls` from a dict, refusing unknown keys (a typo in a YAML should not pass silently).

    Nested dataclass fields (and lists of them) are rebuilt recursively.
    """
    data = dict(data or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise IrisError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}. Known: {', '.join(names)}.")
    hints = typing.get_type_hints(cls)
    for key, value in list(data.items()):
        data[key] = _coerce(hints.get(key), value)
    try:
        return cls(**data)
    except TypeError as err:  # a required field missing
        raise IrisError(f"{cls.__name__}: {err}") from None


def _coerce(hint: Any, value: Any) -> Any:
    if value is None or hint is None:
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]) and isinstance(value, list):
        return [from_dict(args[0], v) if isinstance(v, dict) else v for v in value]
    if origin is typing.Union:  # Optional[X]
        for arg in args:
            if arg is not type(None):
                return _coerce(arg, value)
    return value


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)


def from_yaml(cls: Type[T], text: str) -> T:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise IrisError(f"not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise IrisError(f"expected a mapping of {cls.__name__} fields, got {type(data).__name__}.")
    return from_dict(cls, data)


def save_yaml(obj: Any, path: Path) -> None:
    from core.paths import write_text

    write_text(Path(path), to_yaml(obj))


def load_yaml(cls: Type[T], path: Path) -> T:
    path = Path(path)
    if not path.exists():
        raise IrisError(f"{path} does not exist.")
    return from_yaml(cls, path.read_text(encoding="utf-8"))


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: its docstring} for a dataclass whose fields carry one (the string right under the field), so
    pages take their help text from the one place that documents each setting."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
