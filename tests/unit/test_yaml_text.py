"""YAML data files that would load and then mislead. A file whose strings
are not text: a ``"\\ud83c\\udf3e"`` escape, as a JSON writer spells an emoji,
gives two lone surrogates in PyYAML, which no UTF-8 message, SQLite row or
HTTP request can hold (farmedge/config.py, load_yaml_model). A registry
listing an animal in two herds (farmedge/registry.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from farmedge.config import ConfigError
from farmedge.registry import load_registry


def test_a_registry_written_as_json_with_an_emoji_names_the_line(tmp_path: Path) -> None:
    doc = {"farms": [{"county": "c1", "farm": "f1", "name": "王家农场🌾"}]}
    p = tmp_path / "registry.yaml"
    p.write_text(json.dumps(doc, indent=1))  # ensure_ascii: "\ud83c\udf3e"
    assert "\\ud83c\\udf3e" in p.read_text()
    with pytest.raises(ConfigError, match=r"registry\.yaml:6: .*half of a UTF-16 pair"):
        load_registry(p)
    p.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    assert load_registry(p).farms[0].name == "王家农场🌾"
    p.write_text('farms:\n  - {county: c1, farm: f1, name: "\\U0001F33E"}\n')
    assert load_registry(p).farms[0].name == "🌾"


@pytest.mark.parametrize(("herds", "said"), [
    ("{dairy: {animals: [cow-17, cow-17]}}", "(herd dairy)"),
    ("{dairy: {animals: [cow-17]}, beef: {animals: [cow-9, cow-17]}}", "(herds dairy and beef)"),
])
def test_an_animal_belongs_to_one_herd(tmp_path: Path, herds: str, said: str) -> None:
    """Alerts take the first herd listing an animal: the second herd's
    profile would never apply to it."""
    p = tmp_path / "registry.yaml"
    p.write_text(f"farms:\n  - county: c1\n    farm: f1\n    herds: {herds}\n")
    with pytest.raises(ConfigError, match=rf"animal cow-17 is listed twice {re.escape(said)}"):
        load_registry(p)
    p.write_text("farms:\n  - county: c1\n    farm: f1\n"
                 "    herds: {dairy: {animals: [cow-17]}, beef: {animals: [cow-9]}}\n")
    assert len(load_registry(p).farms[0].herds) == 2
