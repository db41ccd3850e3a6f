"""Strict conversion of plain mappings (parsed YAML, `a.b=value` overrides) into config dataclasses.

Kept apart from the sections so that the knobs read as a list there, and the machinery lives here.
"""

from __future__ import annotations

import dataclasses
import types

from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from sdft.config.renamed import renamed_hint
from sdft.config.yamlfile import load_yaml_text
from sdft.errors import UserError
from sdft.suggest import did_you_mean


def from_mapping(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise UserError naming `source`."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            # an old section's first key names the most precise new home (eval.generation.top_p -> eval.sampling.top_p)
            inner = next(iter(value), None) if isinstance(value, dict) else None
            dotted = prefix + str(key) + (f".{inner}" if inner is not None and renamed_hint(f"{prefix}{key}.{inner}") else "")
            raise _unknown_key(source, dotted, [prefix + name for name in names])
    values = {key: _convert(hints[key], value, source, prefix + key) for key, value in data.items()}
    return _build(cls, source, prefix, **values)


def _convert(hint: Any, value: Any, source: str, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{key}' must be a mapping of keys, got {value!r}")
        return from_mapping(hint, value, source, key + ".")
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return _convert_union(hint, value, source, key)
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(c) for c in get_args(hint))
            raise UserError(f"{source}: '{key}' must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{source}: '{key}' must be a list, got {value!r}")
        (item,) = get_args(hint)
        return [_convert(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{key}' must be a mapping, got {value!r}")
        _, item = get_args(hint)
        if dataclasses.is_dataclass(item):  # e.g. task_sources: {science: {source: hub}}
            return {k: _convert(item, v, source, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    return _convert_scalar(hint, value, source, key)


def _convert_union(hint: Any, value: Any, source: str, key: str) -> Any:
    options = [a for a in get_args(hint) if a is not type(None)]
    if value is None:
        if type(None) in get_args(hint):
            return None
        raise UserError(f"{source}: '{key}' must not be null")
    errors = []
    for option in options:
        try:
            return _convert(option, value, source, key)
        except UserError as err:
            errors.append(err)
    raise errors[0]


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _convert_scalar(hint: Any, value: Any, source: str, key: str) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, str):
        value = _float_or_none(value) if _float_or_none(value) is not None else value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise UserError(f"{source}: '{key}' must be {_TYPE_WORDS.get(hint, hint.__name__)}, got {value!r}")


def _float_or_none(text: str) -> float | None:
    # PyYAML reads '1e-5' (no dot) as a string; accept it where a number is expected.
    try:
        return float(text)
    except ValueError:
        return None


def apply_override(cfg: Any, override: str) -> Any:
    """The config with one `a.b.c=value` override applied; the value is parsed as YAML ('1e-5', 'true',
    '[a, b]'). Sections are rebuilt with dataclasses.replace, so frozen sections validate the new value."""
    source = f"override '{override}'"
    if "=" not in override:
        raise UserError(f"{source}: expected KEY=VALUE, e.g. train.learning_rate=1e-5")
    dotted, raw = override.split("=", 1)
    renamed = renamed_hint(dotted.strip())
    if renamed:
        raise UserError(f"{source}: {renamed}")
    return _with_value(cfg, dotted.strip().split("."), _parse_value(raw, source), source, "")


def _with_value(obj: Any, path: list[str], value: Any, source: str, prefix: str) -> Any:
    name, rest = path[0], path[1:]
    _check_field(obj, name, source, prefix)
    entry = _dataclass_entry(get_type_hints(type(obj))[name])
    if rest and entry is not None:  # a key of a dict of sections, e.g. task_sources.science.source=hub
        sections = dict(getattr(obj, name))
        key, inner = rest[0], rest[1:]
        where = f"{prefix}{name}.{key}"
        if inner:
            sections[key] = _with_value(sections.get(key, entry()), inner, value, source, where + ".")
        else:
            sections[key] = _convert(entry, value, source, where)
        new = sections
    elif rest:
        new = _with_value(getattr(obj, name), rest, value, source, prefix + name + ".")
    else:
        new = _convert(get_type_hints(type(obj))[name], value, source, prefix + name)
    return _build(dataclasses.replace, source, prefix, obj, **{name: new})


def _build(factory: Any, source: str, prefix: str, /, *args: Any, **kwargs: Any) -> Any:
    """Call a dataclass constructor; a section's own validation error gets the file and key prefixed."""
    try:
        return factory(*args, **kwargs)
    except UserError as err:
        where = f" ({prefix.rstrip('.')})" if prefix else ""
        raise UserError(f"{source}{where}: {err}") from err


def _dataclass_entry(hint: Any) -> Any:
    """The section type V of a `dict[str, V]` field whose values are dataclasses; None otherwise."""
    if get_origin(hint) is not dict:
        return None
    _, item = get_args(hint)
    return item if dataclasses.is_dataclass(item) else None


def _check_field(obj: Any, name: str, source: str, prefix: str) -> None:
    names = [f.name for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj) else []
    if name not in names:
        raise _unknown_key(source, prefix + name, [prefix + n for n in names])


def _unknown_key(source: str, dotted: str, known: list[str]) -> UserError:
    """A key of an older config names its new key; any other unknown key gets a did-you-mean."""
    renamed = renamed_hint(dotted)
    if renamed:
        return UserError(f"{source}: {renamed}")
    return UserError(f"{source}: unknown key '{dotted}'{did_you_mean(dotted, known)}")


def _parse_value(raw: str, source: str) -> Any:
    return load_yaml_text(raw, source) if raw.strip() else ""


__all__ = ["from_mapping", "apply_override"]
