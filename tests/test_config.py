"""farmedge.config: errors name the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from farmedge.config import ConfigError, load_yaml_model, toml_line

TOML = """data_dir = "x"
url = "top"

[mqtt]
url = "mqtt://a"

[[sensors]]
id = "a"
pin = 1

[[sensors]]
id = "b"
bogus = 2

[influx]
# a comment
batch_size = 0
"""


@pytest.mark.parametrize(("loc", "line"), [
    (("data_dir",), 1),
    (("mqtt", "url"), 5),
    (("sensors", 0, "pin"), 9),
    (("sensors", 1, "bogus"), 13),
    (("sensors", 1, "ds18b20", "bogus"), 13),  # a union tag pydantic adds
    (("influx", "batch_size"), 17),
    (("influx",), 15),
    (("influx", "missing"), 15),  # a missing key: the table's header
])
def test_toml_line(loc: tuple[int | str, ...], line: int) -> None:
    assert toml_line(TOML, loc) == line


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    size: int


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[_Item]


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "doc.yaml"
    f.write_text("items:\n  - name: a\n    size: 1\n  - name: b\n    size: big\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_model(_Doc, f)
    assert str(info.value).startswith(f"{f}:5: items[1].size: Input should be a valid integer")
    f.write_text("items:\n  - name: a\n   size: 1\n")
    with pytest.raises(ConfigError, match=r"doc.yaml:3: not valid YAML"):
        load_yaml_model(_Doc, f)
