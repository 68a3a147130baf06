"""Adding and removing gateways in the registry YAML while keeping its comments.

The file is edited as text at the places YAML's own parser points to (the
farm's ``gateways:`` mapping, the end of ``farms:``), and the result is loaded
again with the registry model. Only when that check fails (an unusual layout,
such as flow-style collections) is the file rewritten from the parsed data,
which loses the comments; the caller is told.

Each edit holds a lock (``.registry.yaml.lock`` beside the file) from reading
to writing, so two operators provisioning at once both get their gateway in,
and the new file keeps the mode and owner of the one it replaces (the
registry holds farmers' phone numbers: a ``640 root:farmedge`` file stays so).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from farmedge.config import ConfigError
from farmedge.registry import Registry, load_registry

from .errors import ProvisionError

__all__ = ["add_gateway", "farm_block", "gateway_block", "remove_gateway"]


def _last_line(node: yaml.Node) -> int:
    """0-based index of the last line a block node's content occupies."""
    if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
        return _last_line(node.value[-1][1])
    if isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
        return _last_line(node.value[-1])
    end = node.end_mark
    return end.line - 1 if end.column == 0 and end.line > node.start_mark.line else end.line


def _scalar(node: yaml.Node | None) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _get(mapping: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    for k, v in mapping.value:
        if _scalar(k) == key:
            return k, v
    return None


def _farm_node(root: yaml.Node | None, county: str, farm: str) -> yaml.MappingNode | None:
    if not isinstance(root, yaml.MappingNode):
        return None
    farms = _get(root, "farms")
    if farms is None or not isinstance(farms[1], yaml.SequenceNode):
        return None
    for item in farms[1].value:
        if not isinstance(item, yaml.MappingNode):
            continue
        c, f = _get(item, "county"), _get(item, "farm")
        if c and f and _scalar(c[1]) == county and _scalar(f[1]) == farm:
            return item
    return None


def _yaml_key(value: str) -> str:
    """A plain YAML key when safe, else a double-quoted one."""
    dumped: str = yaml.safe_dump({value: 1}, allow_unicode=True, default_flow_style=True,
                                 width=1000).strip()
    return dumped[1:].rsplit(":", 1)[0]


def _load(path: Path) -> tuple[str, Registry]:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if not text.strip():
        return text, Registry()
    try:
        return text, load_registry(path)
    except ConfigError as exc:
        raise ProvisionError(f"the registry is not valid, fix it first:\n{exc}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One edit of ``path`` at a time (a lock file beside it: the registry
    itself is replaced by each edit, so it cannot carry the lock)."""
    try:
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        # A folder we may not write: reading works unlocked, and an edit
        # would fail anyway when writing.
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _temp(path: Path, suffix: str) -> Path:
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise ProvisionError(f"{path}: cannot write in {path.parent}: "
                             f"{exc.strerror or exc}") from None
    os.close(fd)
    return Path(name)


def _verify(path: Path, text: str, check: Any) -> bool:
    tmp = _temp(path, ".check")
    try:
        tmp.write_text(text, encoding="utf-8")
        try:
            reg = load_registry(tmp)
        except ConfigError:
            return False
        return bool(check(reg))
    finally:
        tmp.unlink(missing_ok=True)


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically, keeping its mode and (as root) its owner;
    a new file gets mode 644 less the umask, like any file created here."""
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    tmp = _temp(path, ".new")
    try:
        tmp.write_text(text, encoding="utf-8")
        if st is not None:
            os.chmod(tmp, st.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o644 & ~umask)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _dump(reg: Registry) -> str:
    data = reg.model_dump(mode="json", exclude_defaults=True)
    return "## farmedge gateway registry (rewritten by farmedge provision).\n" + yaml.safe_dump(
        data, allow_unicode=True, sort_keys=False)


def add_gateway(path: Path, county: str, farm: str, gateway: str) -> tuple[bool, bool]:
    """Add ``gateway`` to the farm (created when missing).

    Returns (added, comments_kept): added is False when the gateway was
    already listed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        return _add_gateway(path, county, farm, gateway)


def _add_gateway(path: Path, county: str, farm: str, gateway: str) -> tuple[bool, bool]:
    text, reg = _load(path)
    if (county, farm, gateway) in reg.index():
        return False, True

    def has(r: Registry) -> bool:
        return (county, farm, gateway) in r.index()

    new = _insert_text(text, county, farm, gateway)
    if new is not None and _verify(path, new, has):
        _write(path, new)
        return True, True
    # Fall back to rewriting the parsed data.
    data = reg.model_dump(mode="json", exclude_defaults=True)
    farms = data.setdefault("farms", [])
    for f in farms:
        if f["county"] == county and f["farm"] == farm:
            f.setdefault("gateways", {})[gateway] = {}
            break
    else:
        farms.append({"county": county, "farm": farm, "gateways": {gateway: {}}})
    out = Registry.model_validate(data)
    _write(path, _dump(out))
    return True, False


def gateway_block(indent: str, gateway: str) -> list[str]:
    """A new gateway's entry, with commented placeholders for what only the
    center knows (docs/registry.md)."""
    i = indent + "  "
    return [f"{indent}{_yaml_key(gateway)}:",
            f"{i}## interval_s: seconds between its messages (gateway-offline alert);",
            f"{i}## sensors: one line each in place of {{}} (docs/registry.md), e.g.",
            f"{i}##   soil-1: {{plot: field-1, crop: maize, interval_s: 600}}",
            f"{i}# interval_s: 600",
            f"{i}sensors: {{}}"]


def farm_block(dash: str, ind: str, county: str, farm: str, gateway: str) -> list[str]:
    """A new farm with one gateway, with commented placeholders for its
    contacts and plots: without contacts nobody hears of its alerts."""
    return [f"{dash}- county: {_yaml_key(county)}",
            f"{ind}farm: {_yaml_key(farm)}",
            f"{ind}## Who hears of this farm's alerts; without contacts nobody does",
            f"{ind}## (docs/registry.md, docs/alerts.md).",
            f"{ind}# contacts:",
            f"{ind}#   - name: 王建国",
            f"{ind}#     language: zh",
            f'{ind}#     notify: ["json://127.0.0.1:8000/sms"]',
            f"{ind}## Its plots: crop and soil constants for the soil water alerts.",
            f"{ind}# plots:",
            f"{ind}#   field-1: {{name: 1号地, crop: maize, field_capacity: 36, "
            "wilting_point: 19}",
            f"{ind}gateways:",
            *gateway_block(ind + "  ", gateway)]


def _insert_text(text: str, county: str, farm: str, gateway: str) -> str | None:
    lines = text.splitlines()
    if not text.strip():
        return "\n".join(["farms:", *farm_block("  ", "    ", county, farm, gateway)]) + "\n"
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    node = _farm_node(root, county, farm)
    if node is not None:
        if node.flow_style:
            return None
        gws = _get(node, "gateways")
        if gws is None:
            indent = " " * node.value[0][0].start_mark.column
            at = _last_line(node) + 1
            add = [f"{indent}gateways:", *gateway_block(indent + "  ", gateway)]
        else:
            gv = gws[1]
            if isinstance(gv, yaml.MappingNode) and not gv.flow_style and gv.value:
                indent = " " * gv.value[0][0].start_mark.column
                at = _last_line(gv) + 1
                add = gateway_block(indent, gateway)
            else:
                return None  # "gateways: {}" or similar: let the rewrite handle it
        return "\n".join([*lines[:at], *add, *lines[at:]]) + "\n"
    if not isinstance(root, yaml.MappingNode):
        return None
    farms = _get(root, "farms")
    if farms is None:
        return text.rstrip("\n") + "\n" + "\n".join(
            ["farms:", *farm_block("  ", "    ", county, farm, gateway)]) + "\n"
    seq = farms[1]
    if not isinstance(seq, yaml.SequenceNode) or seq.flow_style or not seq.value:
        return None
    col = seq.value[0].start_mark.column
    dash = " " * (col - 2)
    ind = " " * col
    at = _last_line(seq) + 1
    add = farm_block(dash, ind, county, farm, gateway)
    return "\n".join([*lines[:at], *add, *lines[at:]]) + "\n"


def remove_gateway(path: Path, county: str, farm: str, gateway: str) -> tuple[bool, bool]:
    """Take ``gateway`` out of the registry (its farm stays). Returns
    (removed, comments_kept)."""
    if not path.exists():
        return False, True
    with _locked(path):
        return _remove_gateway(path, county, farm, gateway)


def _remove_gateway(path: Path, county: str, farm: str, gateway: str) -> tuple[bool, bool]:
    text, reg = _load(path)
    if (county, farm, gateway) not in reg.index():
        return False, True

    def gone(r: Registry) -> bool:
        return (county, farm, gateway) not in r.index() and len(r.index()) == len(
            reg.index()) - 1

    new = _remove_text(text, county, farm, gateway)
    if new is not None and _verify(path, new, gone):
        _write(path, new)
        return True, True
    data = reg.model_dump(mode="json", exclude_defaults=True)
    for f in data.get("farms", []):
        if f["county"] == county and f["farm"] == farm:
            f.get("gateways", {}).pop(gateway, None)
    _write(path, _dump(Registry.model_validate(data)))
    return True, False


def _remove_text(text: str, county: str, farm: str, gateway: str) -> str | None:
    lines = text.splitlines()
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    node = _farm_node(root, county, farm)
    if node is None or node.flow_style:
        return None
    gws = _get(node, "gateways")
    if gws is None or not isinstance(gws[1], yaml.MappingNode) or gws[1].flow_style:
        return None
    gk, gv = gws
    assert isinstance(gv, yaml.MappingNode)
    for k, v in gv.value:
        if _scalar(k) == gateway:
            first, last = k.start_mark.line, _last_line(v)
            kept = [*lines[:first], *lines[last + 1:]]
            if len(gv.value) == 1:  # the farm's last gateway: keep an empty mapping
                kl = gk.start_mark.line
                kept[kl] = kept[kl].rstrip() + " {}"
            return "\n".join(kept) + "\n"
    return None
