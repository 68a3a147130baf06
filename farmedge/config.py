"""Loading typed configuration: a TOML file plus ``FARMEDGE_*`` environment
variables, and YAML data files, with errors that name the file, the line and
the key.

Settings classes derive from :class:`FileSettings`; nested sections are plain
pydantic models with ``extra="forbid"`` (derive from :class:`Section`). An
environment variable overrides the file: ``FARMEDGE_MQTT_URL`` sets
``[mqtt] url``, ``FARMEDGE_DATA_DIR`` the top-level ``data_dir``.

A wrong file stops the program at start with :class:`ConfigError`, whose
message reads like ``edge.toml:12: [influx] batch_size: Input should be greater
than 0``. A wrong environment variable names the variable, and
:func:`unknown_env` lists ``FARMEDGE_*`` variables that set nothing, each with
the nearest valid name.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = ["ConfigError", "FileSettings", "Section", "env_names", "load_settings",
           "load_yaml_model", "unknown_env"]

ENV_PREFIX = "FARMEDGE_"
#: FARMEDGE_* variables the command line reads itself (not settings keys).
COMMAND_ENV = frozenset({"FARMEDGE_CONFIG", "FARMEDGE_BROKER_DIR"})

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S", bound="FileSettings")


class ConfigError(Exception):
    """A configuration or data file that cannot be used. ``str()`` is the
    message for the operator: file, line, key and reason, one per line."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class FileSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FARMEDGE_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        validate_default=True,
    )
    _toml_data: ClassVar[dict[str, Any]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Order is priority: explicit arguments, environment, then the file.
        return (init_settings, env_settings, file_secret_settings)


def _loc_str(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) == 1:
        return parts[0]
    return f"[{'.'.join(parts[:-1])}] {parts[-1]}"


_TABLE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)\s*=""")


def toml_line(text: str, loc: Sequence[int | str]) -> int | None:
    """Best-effort line number (1-based) of the key at ``loc`` in TOML ``text``.

    ``[[array]]`` tables are counted, so ``("sensors", 1, "pin")`` finds
    ``pin`` in the second ``[[sensors]]``; a part of ``loc`` that names no
    table in the file (a pydantic union tag after an array index) is skipped.
    """
    parts = list(loc)
    table: list[int | str] = []
    counters: dict[tuple[str, ...], int] = {}
    header: int | None = None
    for n, line in enumerate(text.splitlines(), 1):
        m = _TABLE.match(line)
        if m:
            name = [p.strip().strip("\"'") for p in m.group(1).split(".")]
            if line.lstrip().startswith("[["):
                idx = counters.get(tuple(name), -1) + 1
                counters[tuple(name)] = idx
                table = [*name, idx]
            else:
                table = list(name)
            if header is None and parts[: len(table)] == table:
                header = n
            continue
        k = _KEY.match(line)
        if not k or parts[: len(table)] != table or len(parts) <= len(table):
            continue
        key = k.group(1).strip("\"'")
        rest = parts[len(table):]
        if rest[0] == key:
            return n
        # a union tag between an array index and the key: skip it
        if table and isinstance(table[-1], int) and len(rest) >= 2 and rest[-1] == key:
            return n
    return header


def _format(exc: ValidationError, source: str, text: str | None,
            line_of: Any = None, env_prefix: str = "FARMEDGE_") -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        msg = err.get("msg", "invalid")
        line = line_of(loc) if line_of and text is not None else None
        where = f"{source}:{line}" if line else source
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (check its spelling and its section)"
        lines.append(f"{where}: {_yaml_loc(loc)}: {msg}")
    return "\n".join(lines)


def _yaml_loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _is_complex(annotation: Any) -> bool:
    """Whether pydantic-settings reads this field's environment value as JSON."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_is_complex(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin is typing.Annotated:
        return _is_complex(typing.get_args(annotation)[0])
    if origin in (list, dict, set, tuple, frozenset):
        return True
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _section(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        else None


def env_names(cls: type[FileSettings]) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Every environment variable that sets something in ``cls``: name ->
    (location of the key, whether its value is JSON)."""
    out: dict[str, tuple[tuple[str, ...], bool]] = {}
    for name, f in cls.model_fields.items():
        out[f"{ENV_PREFIX}{name.upper()}"] = ((name,), _is_complex(f.annotation))
        sect = _section(f.annotation)
        if sect is not None:
            for key, sf in sect.model_fields.items():
                out[f"{ENV_PREFIX}{name.upper()}_{key.upper()}"] = (
                    (name, key), _is_complex(sf.annotation))
    return out


def unknown_env(cls: type[FileSettings], environ: Mapping[str, str] | None = None,
                *, also: Sequence[str] = ()) -> list[str]:
    """One message per ``FARMEDGE_*`` variable that sets nothing in ``cls``
    (a misspelt name is otherwise silently ignored), with the nearest valid
    name. ``also``: further names the program reads itself."""
    env = os.environ if environ is None else environ
    valid = set(env_names(cls)) | COMMAND_ENV | set(also)
    out = []
    for var in sorted(env):
        name = var.upper()
        if not name.startswith(ENV_PREFIX) or name in valid:
            continue
        # Compared without the common prefix, which would make anything look near.
        tails = {v[len(ENV_PREFIX):]: v for v in valid if v.startswith(ENV_PREFIX)}
        near = difflib.get_close_matches(name[len(ENV_PREFIX):], sorted(tails), n=1,
                                         cutoff=0.7)
        hint = f" (did you mean {tails[near[0]]}?)" if near else ""
        out.append(f"environment variable {var} is not a setting and is ignored{hint}")
    return out


def _env_json_errors(cls: type[FileSettings], environ: Mapping[str, str]) -> list[str]:
    """The variables whose value must be JSON (lists, sections) and is not."""
    names = env_names(cls)
    out = []
    for var, value in sorted(environ.items()):
        found = names.get(var.upper())
        if found is None or not found[1]:
            continue
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            loc, _ = found
            example = '["farm/v1/+/+/+/telemetry"]' if var.upper().endswith("TOPICS") \
                else '["a", "b"] or {"key": "value"}'
            out.append(f"environment variable {var}: {_loc_str(loc)}: not valid JSON "
                       f"({exc.msg}); write a JSON value, e.g. {example}")
    return out


def load_settings(cls: type[S], path: Path | str | None) -> S:
    """Build ``cls`` from the TOML file at ``path`` (optional) and the
    environment, which wins over the file. Raises ConfigError naming the file
    and line (or the environment variable), the key and the reason."""
    data: dict[str, Any] = {}
    text = ""
    source = "environment"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    from pydantic_settings import EnvSettingsSource, SettingsError

    try:
        env_values = dict(EnvSettingsSource(cls)())
    except SettingsError as exc:
        lines = _env_json_errors(cls, os.environ) or [f"environment: {exc}"]
        raise ConfigError("\n".join(lines)) from None
    try:
        return cls.model_validate(_deep_merge(data, env_values))
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = tuple(err.get("loc", ()))
            msg = err.get("msg", "invalid")
            if err.get("type") == "extra_forbidden":
                msg = "unknown key (check its spelling and its section)"
            merged = _deep_merge(data, env_values)
            if _lookup(merged, loc) and isinstance(_value(merged, loc), dict):
                # A rule over a whole section (e.g. api = "v2" needs a token).
                sect = "[" + ".".join(str(x) for x in loc) + "]"
                line = toml_line(text, loc) if text else None
                where = f"{source}:{line}" if line else (
                    "environment" if _lookup(env_values, loc) else source)
                lines.append(f"{where}: {sect}: {msg}")
                continue
            if _lookup(env_values, loc):
                env_name = "FARMEDGE_" + "_".join(str(x) for x in loc).upper()
                where = f"environment variable {env_name}"
            else:
                line = toml_line(text, loc) if text else None
                where = f"{source}:{line}" if line else source
            lines.append(f"{where}: {_loc_str(loc)}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def _value(values: dict[str, Any], loc: Sequence[int | str]) -> Any:
    node: Any = values
    for part in loc:
        node = node[part]
    return node


def _lookup(values: dict[str, Any], loc: Sequence[int | str]) -> bool:
    node: Any = values
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def yaml_line(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """Line (1-based) of the node at ``loc`` in a composed YAML tree."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    node = v
                    line = k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def load_yaml_model(model: type[M], path: Path | str) -> M:
    """Load a YAML data file (registry, alert rules) into ``model``; errors
    name the file, line and key."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(_format(exc, str(p), text, lambda loc: yaml_line(root, loc))) from None
