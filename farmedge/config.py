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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

if TYPE_CHECKING:
    import yaml  # imported where used: the gateway installs without PyYAML

__all__ = ["ConfigError", "FileSettings", "Section", "duplicate_key", "env_names",
           "folder_problem", "load_settings", "load_yaml_model", "unknown_env"]

ENV_PREFIX = "FARMEDGE_"
#: FARMEDGE_* variables the command line reads itself (not settings keys).
COMMAND_ENV = frozenset({"FARMEDGE_CONFIG", "FARMEDGE_BROKER_DIR"})

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S", bound="FileSettings")


class ConfigError(Exception):
    """A configuration or data file that cannot be used. ``str()`` is the
    message for the operator: file, line, key and reason, one per line."""


class Section(BaseModel):
    # allow_inf_nan=False: TOML and the environment spell infinity and NaN
    # ("inf", "nan"), which no setting means (an infinite back-off cap or
    # spool is no cap at all, and NaN passes no bound check).
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class FileSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FARMEDGE_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,
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
            line_of: Any = None, env_prefix: str = "FARMEDGE_", model: Any = None) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        msg = err.get("msg", "invalid")
        line = line_of(loc) if line_of and text is not None else None
        where = f"{source}:{line}" if line else source
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (check its spelling and its section)"
            close = _close_key(model, loc) if model is not None else None
            if close:
                msg = f"unknown key, did you mean {close}?"
        lines.append(f"{where}: {_yaml_loc(loc)}: {msg}")
    return "\n".join(lines)


def _yaml_loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def folder_problem(p: Path) -> str | None:
    """Why ``p`` cannot be (or become) a folder, or None: it is a file, or a
    file stands where one of its parents should be."""
    if p.exists():
        return None if p.is_dir() else f"{p} exists and is not a folder"
    for parent in p.parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} is a file, so {p} cannot be a folder"
    return None


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
            merged = _deep_merge(data, env_values)
            friendly = explain(cls, err, merged)
            if friendly is not None:
                key_loc = loc
                if str(err.get("type", "")).startswith("union_tag"):  # point at driver = ...
                    disc = str((err.get("ctx") or {}).get("discriminator", "")).strip("'")
                    key_loc = (*loc, disc) if disc else loc
                line = toml_line(text, key_loc) if text else None
                if _lookup(env_values, loc):
                    where = "environment variable FARMEDGE_" + "_".join(
                        str(x) for x in loc).upper()
                else:
                    where = f"{source}:{line}" if line else source
                lines.append(f"{where}: {friendly}")
                continue
            if err.get("type") == "extra_forbidden":
                msg = "unknown key (check its spelling and its section)"
            if not loc:  # a rule over the whole file (two sensors with one id)
                lines.append(f"{source}: {msg}")
                continue
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
            lines.append(f"{where}: {toml_loc(cls, loc)}: {msg}")
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
    import yaml

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


def duplicate_key(root: yaml.Node | None) -> tuple[int, str] | None:
    """(line, key) of the first key a mapping of a composed YAML tree holds
    twice (YAML's parser keeps the last silently: a gateway listed twice
    would lose its first entry's sensors, a rule's second ``when`` would
    replace its first); None when there is none."""
    import yaml

    for node in _yaml_nodes(root):
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                    if k.value in keys:
                        return k.start_mark.line + 1, k.value
                    keys.add(k.value)
    return None


def _yaml_nodes(root: Any) -> Iterator[Any]:
    """Every node of a composed YAML tree once (aliases share nodes), depth
    first."""
    import yaml

    seen: set[int] = set()
    todo = [root] if root is not None else []
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                todo.extend((k, v))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)


def load_yaml_model(model: type[M], path: Path | str) -> M:
    """Load a YAML data file (registry, alert rules) into ``model``; errors
    name the file, line and key, and a key given twice in one mapping is
    one (:func:`duplicate_key`)."""
    import yaml

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
    dup = duplicate_key(root)
    if dup is not None:
        raise ConfigError(f"{p}:{dup[0]}: {dup[1]}: listed twice in the same mapping "
                          "(only the last would count): merge the two")
    half = _surrogate(root)
    if half is not None:
        raise ConfigError(f"{p}:{half[0]}: {half[1]!r}: holds half of a UTF-16 pair "
                          "(a \\uD800-\\uDFFF escape, as JSON writers spell an emoji), "
                          "which is not text: write the character itself") from None
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(_format(exc, str(p), text, lambda loc: yaml_line(root, loc),
                                  model=model)) from None


def _surrogate(root: Any) -> tuple[int, str] | None:
    """(line, excerpt) of the first scalar holding a lone surrogate, which a
    YAML ``"\\ud83c\\udf3e"`` escape gives (a code point each, never joined):
    it cannot be written as UTF-8, so every message, row or request holding
    it would fail. None when there is none."""
    import yaml

    for node in _yaml_nodes(root):
        if isinstance(node, yaml.ScalarNode):
            try:
                node.value.encode()
            except UnicodeEncodeError:
                return node.start_mark.line + 1, node.value[:60]
    return None


# -- validation errors in the operator's words -------------------------------
# pydantic speaks of locations like ("sensors", 0, "simulated", "pin") and of
# "Input tag 'x' found using 'driver' does not match ..."; operators read TOML:
# "[[sensors]] entry 1: pin", "unknown driver 'x'; known: ...".


def _step(t: Any, part: int | str) -> tuple[Any, bool] | None:
    """The type one location part below ``t``, and whether the part was a
    union tag (not a key in the file). None when it cannot be followed."""
    import types
    import typing

    origin = typing.get_origin(t)
    if origin is typing.Annotated:
        return _step(typing.get_args(t)[0], part)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(t) if a is not type(None)]
        if len(members) == 1:
            return _step(members[0], part)
        for m in members:  # a discriminated union: the part names a member's tag
            if isinstance(m, type) and issubclass(m, BaseModel):
                for f in m.model_fields.values():
                    ann = f.annotation
                    if typing.get_origin(ann) is typing.Literal and part in typing.get_args(ann):
                        return m, True
        return None
    if origin in (list, tuple, set, frozenset) and isinstance(part, int):
        args = typing.get_args(t)
        return (args[0], False) if args else None
    if origin is dict:
        args = typing.get_args(t)
        return (args[1], False) if len(args) == 2 else None
    if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
        field = t.model_fields.get(part)
        return (field.annotation, False) if field is not None else None
    return None


def _walk(cls: Any, loc: Sequence[int | str]) -> tuple[Any, list[bool]]:
    """The type at ``loc`` (None if lost on the way) and, per part, whether
    it is a union tag."""
    t: Any = cls
    tags: list[bool] = []
    for part in loc:
        step = _step(t, part) if t is not None else None
        if step is None:
            t = None
            tags.append(False)
        else:
            t, is_tag = step
            tags.append(is_tag)
    return t, tags


def _model_of(t: Any) -> type[BaseModel] | None:
    import typing

    while typing.get_origin(t) is typing.Annotated:
        t = typing.get_args(t)[0]
    return t if isinstance(t, type) and issubclass(t, BaseModel) else None


def _close_key(cls: Any, loc: Sequence[int | str]) -> str | None:
    """The known key closest to the unknown last part of ``loc``, if any."""
    import difflib

    model = _model_of(_walk(cls, loc[:-1])[0]) if loc else None
    if model is None:
        return None
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return close[0] if close else None


def toml_loc(cls: Any, loc: Sequence[int | str]) -> str:
    """A location as a TOML reader says it: ``[mqtt] url``,
    ``[[sensors]] entry 2: pin`` (entries of an array of tables count from 1;
    union tags dropped), ``[mqtt] topics item 2`` (an array of values)."""
    _, tags = _walk(cls, loc)
    keep = [i for i, tag in enumerate(tags) if not tag]
    parts = [loc[i] for i in keep]
    if not any(isinstance(p, int) for p in parts):
        return _loc_str(parts)

    def of_tables(i: int) -> bool:  # is loc[: i + 1] an entry of an array of tables?
        import types
        import typing

        t, _ = _walk(cls, loc[: keep[i] + 1])
        while typing.get_origin(t) is typing.Annotated:
            t = typing.get_args(t)[0]
        if _model_of(t) is not None:
            return True
        args = typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) \
            else ()
        return bool(args) and all(_model_of(a) is not None for a in args if a is not type(None))

    out: list[str] = []
    table: list[str] = []
    for i, p in enumerate(parts):
        if isinstance(p, int):
            if of_tables(i):
                out.append(f"[[{'.'.join(table) or '?'}]] entry {p + 1}")
            else:
                out.append(f"{_loc_str(table) if table else '?'} item {p + 1}")
            table = []
        else:
            table.append(p)
    if table:
        out.append(".".join(table))
    return ": ".join(out)


def _sections(model: type[BaseModel]) -> tuple[list[str], list[str]]:
    """(section names, plain key names) of a model."""
    sections: list[str] = []
    keys: list[str] = []
    for name, f in model.model_fields.items():
        (sections if _model_of(f.annotation) is not None else keys).append(name)
    return sections, keys


def explain(cls: Any, err: Any, data: Any = None) -> str | None:
    """The operator's wording of one pydantic error of ``cls`` (location and
    reason), or None to keep pydantic's."""
    import difflib

    loc = tuple(err.get("loc", ()))
    kind = err.get("type")
    if kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        tag = ctx.get("tag")
        disc = str(ctx.get("discriminator", "")).strip("'")
        known = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
        close = difflib.get_close_matches(str(tag), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return (f"{toml_loc(cls, loc)}: unknown {disc or 'kind'} {tag!r}{hint}; "
                f"known: {', '.join(known)}")
    if kind == "union_tag_not_found":
        ctx = err.get("ctx") or {}
        disc = str(ctx.get("discriminator", "")).strip("'")
        return f"{toml_loc(cls, loc)}: {disc} is missing (which kind of entry is this?)"
    if kind != "extra_forbidden" or not loc:
        return None
    parent, _ = _walk(cls, loc[:-1])
    model = _model_of(parent)
    if model is None:
        return None
    name = str(loc[-1])
    sections, keys = _sections(model)
    value: Any = None
    if data is not None:
        try:
            value = _value(data, loc)
        except (KeyError, IndexError, TypeError):
            value = None
    where = toml_loc(cls, loc[:-1]) if loc[:-1] else ""
    if isinstance(value, dict) and not where:
        close = difflib.get_close_matches(name, sections, n=1, cutoff=0.6)
        if close:
            return f"unknown section [{name}], did you mean [{close[0]}]?"
        listed = ", ".join(f"[{x}]" for x in sections)
        return f"unknown section [{name}] (sections: {listed})"
    close = difflib.get_close_matches(name, [*keys, *sections], n=1, cutoff=0.6)
    in_array = any(isinstance(p, int) for p in loc[:-1])
    head = f"{where}: {name}" if in_array else _loc_str(loc)
    if close:
        return f"{head}: unknown key, did you mean {close[0]}?"
    return f"{head}: unknown key (known here: {', '.join(keys + sections)})"
