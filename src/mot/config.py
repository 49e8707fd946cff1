"""One config loader: ``.json`` / ``.hocon`` / ``.conf`` -> a typed, validated pydantic model.

Schemas subclass ``ConfigModel``: unknown keys, wrong types and out-of-range values are errors.
Every error is one line naming the file, the key path and what was expected, e.g.::

    configs/demo.json: mot_config.top_kk: unknown key (did you mean 'top_k'?)
    configs/demo.json: training.learning_rate: expected a number > 0, got -1

``--set a.b.c=value`` overrides are applied before validation; the value is read as JSON when it
parses as JSON (numbers, booleans, null, lists, objects, quoted strings), otherwise as a plain string.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from mot.errors import ConfigError
from mot.io import write_json

SUFFIXES = (".json", ".hocon", ".conf")


class ConfigModel(BaseModel):
    """Base of every config schema: unknown keys are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


T = TypeVar("T", bound=BaseModel)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a config file into plain Python data (no validation)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found (give an existing .json, .hocon or .conf file)")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, expected a .json, .hocon or .conf config file")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"{p}: unsupported config format {suffix or '(none)'!r}; use .json, .hocon or .conf")
    text = _read_text(p)
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    else:
        data = _parse_hocon(text, p)
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be an object of keys, got {type(data).__name__}")
    return data


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; binary content is one ConfigError naming the file and the first bad byte."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text config file (byte 0x{raw[e.start]:02x} at offset {e.start} is not "
                          "UTF-8); give a UTF-8 .json, .hocon or .conf file") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text config file (NUL byte at offset {text.index(chr(0))}); "
                          "give a UTF-8 .json, .hocon or .conf file")
    return text.removeprefix("\ufeff")


def _parse_hocon(text: str, path: Path) -> Any:
    from pyhocon import ConfigFactory, HOCONConverter  # noqa: F401  (converter keeps pyhocon's types plain)
    from pyhocon.exceptions import ConfigException

    try:
        tree = ConfigFactory.parse_string(text, basedir=str(path.parent), resolve=True)
    except ConfigException as e:
        raise ConfigError(f"{path}: invalid HOCON: {_one_line(str(e))}") from None
    except Exception as e:  # pyparsing errors carry the line number in their text
        raise ConfigError(f"{path}: invalid HOCON: {_one_line(str(e))}") from None
    return _plain(tree)


def _plain(value: Any) -> Any:
    """pyhocon ConfigTree / ConfigList -> dict / list, recursively."""
    from pyhocon.config_tree import ConfigTree, NoneValue

    if isinstance(value, ConfigTree):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, NoneValue) or value is NoneValue:
        return None
    return value


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set training.learning_rate=3e-4")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".")]
    if not key.strip() or any(not k for k in keys):
        raise ConfigError(f"--set {item!r}: empty key in {key!r}; expected KEY.PATH=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to parsed config data (a new dict; the input is not changed)."""
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        keys, value = parse_override(item)
        set_key(out, keys, value, f"--set {item!r}")
    return out


def set_key(data: dict[str, Any], keys: Sequence[str], value: Any, source: str) -> None:
    """Set ``data[keys[0]][keys[1]]... = value`` in place, creating missing sections; a key on the way
    that holds a value, not a section, is one ConfigError naming ``source`` (what set it)."""
    node = data
    for depth, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"{source}: {'.'.join(keys[: depth + 1])} is a {type(nxt).__name__}, not a section")
        node = nxt
    node[keys[-1]] = value


def validate_config(data: dict[str, Any], schema: type[T], source: str = "<config>") -> T:
    """Validate plain data against ``schema``; the first problem becomes one ConfigError line."""
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, schema, source)) from None


def load_config(path: str | os.PathLike, schema: type[T], overrides: Sequence[str] = ()) -> T:
    """Read ``path``, apply ``overrides`` (``a.b.c=value``), validate into ``schema``."""
    data = apply_overrides(read_config_file(path), overrides)
    return validate_config(data, schema, str(path))


def save_config(config: BaseModel | dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a config as JSON, atomically (temp file + rename), so a run dir always has a whole one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    return write_json(p, data, indent=2, prefix=".config-", suffix=".json", mode=None)  # mode: owner-only, as before


# -- error messages ------------------------------------------------------------------------------

def _describe(error: ValidationError, schema: type[BaseModel], source: str) -> str:
    errors = error.errors(include_url=False)
    # A misspelt key usually also makes a required key "missing": name the typo, it is the cause.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(x) for x in first["loc"]]
    key = ".".join(loc) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        known = _fields_at(schema, first["loc"][:-1])
        hint = ""
        if known:
            close = difflib.get_close_matches(loc[-1], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(sorted(known))})"
        return f"{source}: {key}: unknown key{hint}"
    if kind == "missing":
        return f"{source}: {key}: required key is missing"
    msg = _one_line(first["msg"])
    msg = msg[0].lower() + msg[1:] if msg else msg
    got = first.get("input")
    return f"{source}: {key}: expected {_expectation(msg)}, got {_short(got)}"


def _expectation(msg: str) -> str:
    for prefix in ("input should be ", "value error, ", "assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _fields_at(schema: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Field names of the (nested) model found by walking ``loc`` through ``schema``."""
    import typing

    model: Any = schema
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        model = _model_in(annotation, typing)
        if model is None:
            return []
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _model_in(annotation: Any, typing: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg, typing)
        if found is not None:
            return found
    return None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())
