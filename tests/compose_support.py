"""Helpers of the compose tests (tests/integration/test_compose*.py): the
compose files parsed, .env.example filled in as a site would, compose's
interpolation, and Debian's docker-compose (v1) for `config`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.stack_support import ROOT

__all__ = ["binds", "docker_compose", "dotenv", "filled_env", "interpolate", "load_compose"]


def load_compose(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def filled_env(tmp_path: Path) -> Path:
    """.env.example with every required value set, as a site would."""
    lines = []
    for ln in (ROOT / ".env.example").read_text().splitlines():
        if re.match(r"^[A-Z_]+=(change-me)?$", ln) and not ln.startswith("FARMEDGE_"):
            ln = ln.split("=")[0] + "=s3cret-" + ln.split("=")[0].lower()
        lines.append(ln)
    env = tmp_path / ".env"
    env.write_text("\n".join(lines) + "\n")
    return env


def binds(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """target -> long-syntax bind mount of a service."""
    return {v["target"]: v for v in svc.get("volumes", [])
            if isinstance(v, dict) and v["type"] == "bind"}


def docker_compose() -> str:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (scripts/bootstrap installs Debian's)")
    return tool


def dotenv(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for ln in path.read_text().splitlines():
        if ln and not ln.startswith("#") and "=" in ln:
            k, v = ln.split("=", 1)
            out[k] = v
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} interpolation."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"{name} unset: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)
