"""YAML round-trip and the generic checks of the job dataclasses (`TrainConfig`, `ExportConfig`, `DataRecipe`, ...).

Every job has one dataclass; the page form, the CLI and the tests all build that same object, and
it is written beside the job's outputs as YAML so every folder describes itself.

Checking happens in two layers, so page, CLI and job agree:
  1. here, generically: unknown keys (with the closest known name), missing required keys, YAML syntax
     errors (file, line, column) and each value against its field's type hint (`check_types`, which every
     dataclass's `__post_init__` calls first, so objects built directly by pages are checked too);
  2. in each dataclass's `__post_init__`: ranges and the names of things that must exist.
Every refusal is one `IrisError` sentence naming the field, the value found and what is allowed.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Type, TypeVar

import yaml

from core.errors import IrisError

T = TypeVar("T")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def from_dict(cls: Type[T], data: Any, where: str = "") -> T:
    """Build `cls` from a dict, refusing unknown keys (a typo in a YAML should not pass silently) and naming
    missing required ones. Nested dataclass fields (and lists of them) are rebuilt recursively; `where` is
    the path of this object inside its parent (`sources[1].`), so nested messages name the exact field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise IrisError(f"{where.rstrip('.') or cls.__name__} must be a mapping of {cls.__name__} fields, "
                        f"got {_shown(data)}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise IrisError(f"`{where}{key}` is not a {cls.__name__} field{hint}; known fields: {', '.join(fields)}.")
    for name, f in fields.items():
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            doc = field_docs(cls).get(name)
            raise IrisError(f"the required field `{where}{name}` is missing" + (f" ({doc})." if doc else "."))
    hints = _hints(cls)
    values = {key: coerce(hints.get(key), value, f"{where}{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except IrisError as err:
        if not where:
            raise
        raise IrisError(f"{where.rstrip('.')}: {err}") from None


def check_types(obj: Any, where: str = "") -> None:
    """Coerce every field of a dataclass instance to its type hint in place, or raise one sentence naming
    the field. Call it first in `__post_init__`: numbers typed as text ("2e-4", which YAML reads as a
    string) become numbers; text where a number belongs ("fast") is refused before any range check."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        new = coerce(hints.get(f.name), value, f"{where}{f.name}")
        if new is not value:
            object.__setattr__(obj, f.name, new)  # frozen dataclasses too


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def coerce(hint: Any, value: Any, name: str) -> Any:
    """`value` as `hint` (bool, int, float, str, list[X], dict[str, X], X | None, a dataclass), else IrisError."""
    if hint is None or hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        return coerce(real[0], value, name) if len(real) == 1 else value
    if value is None:
        raise IrisError(f"`{name}` is empty: give it a value ({_describe(hint)}).")
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, f"{name}.")
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and args and args[0] is str:
            value = [value]  # `target_modules: q_proj` means the list of that one name
        if not isinstance(value, (list, tuple)):
            raise IrisError(f"`{name}` must be a list ({_describe(hint)}), got {_shown(value)}.")
        return [coerce(args[0] if args else None, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise IrisError(f"`{name}` must be a mapping of names to values, got {_shown(value)}.")
        if len(args) == 2:
            return {k: coerce(args[1], v, f"{name}.{k}") for k, v in value.items()}
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise IrisError(f"`{name}` must be true or false, got {_shown(value)}.")
    if hint is int:
        number = _number(value)
        if number is None or number != int(number):
            raise IrisError(f"`{name}` must be a whole number, got {_shown(value)}.")
        return value if type(value) is int else int(number)
    if hint is float:
        number = _number(value)
        if number is None:
            raise IrisError(f"`{name}` must be a number (e.g. 0.5 or 2e-4), got {_shown(value)}.")
        return value if isinstance(value, (int, float)) else float(number)  # an int is a fine float
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a run named 2024 in YAML is the text "2024"
        raise IrisError(f"`{name}` must be text, got {_shown(value)}.")
    if hint is Path:
        return value if isinstance(value, Path) else Path(coerce(str, value, name))
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return None if value != value or value in (float("inf"), float("-inf")) else value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return None if number != number or number in (float("inf"), float("-inf")) else number
    return None


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)


def parse_yaml(text: str, source: str = "the YAML") -> Any:
    """YAML text as data, or one sentence with the file, line and column of the syntax error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise IrisError(f"{source}{where}: YAML syntax error ({problem}); fix that spot "
                        "(indent with spaces, `key: value`, quote text with ':' or '#').") from None


def from_yaml(cls: Type[T], text: str, source: str = "") -> T:
    data = parse_yaml(text, source or f"the {cls.__name__} YAML")
    if data is not None and not isinstance(data, dict):
        raise IrisError(f"{source or 'the YAML'} must be a mapping of {cls.__name__} fields (`key: value` lines), "
                        f"got {type(data).__name__}.")
    return from_dict(cls, data)


def save_yaml(obj: Any, path: Path) -> None:
    from core.paths import write_text

    write_text(Path(path), to_yaml(obj))


def load_yaml(cls: Type[T], path: Path) -> T:
    path = Path(path)
    if not path.is_file():
        raise IrisError(f"{path} does not exist" + (" (it is a folder)." if path.exists() else "."))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise IrisError(f"{path} is not UTF-8 text: re-save it as UTF-8.") from None
    return from_yaml(cls, text, source=str(path))


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


def one_of(name: str, value: Any, allowed: typing.Iterable[str]) -> None:
    """Refuse `value` for field `name` unless it is one of `allowed`, listing them (and the closest one)."""
    allowed = list(allowed)
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        raise IrisError(f"`{name}` is {_shown(value)}, which is not one of {', '.join(allowed)}"
                        + (f" (did you mean {close[0]!r}?)." if close else "."))


def in_range(name: str, value: float, low: float | None = None, high: float | None = None,
             low_open: bool = False, high_open: bool = False, why: str = "") -> None:
    """Refuse a number outside [low, high] (open ends with *_open) in one sentence naming the field."""
    bad = (low is not None and (value <= low if low_open else value < low)) or \
          (high is not None and (value >= high if high_open else value > high))
    if bad:
        left = "" if low is None else ("above " if low_open else "at least ") + f"{low:g}"
        right = "" if high is None else ("below " if high_open else "at most ") + f"{high:g}"
        allowed = " and ".join(x for x in (left, right) if x)
        raise IrisError(f"`{name}` is {value!r}, out of range: it must be {allowed}" + (f" ({why})." if why else "."))
