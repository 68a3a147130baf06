"""farmedge and its dev tooling use only paho's public API: no attribute of
a paho client whose name starts with an underscore is touched (those change
between paho releases without notice). No servers."""

from __future__ import annotations

import re
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[3]


def _private_names() -> set[str]:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    names = {n for n in (*dir(type(c)), *vars(c)) if n.startswith("_") and not n.startswith("__")}
    assert {"_packet_read", "_sock_close", "_loop_rc_handle", "_sock"} <= names
    return names


def test_no_private_paho_client_attribute_is_used() -> None:
    names = "|".join(sorted(map(re.escape, _private_names()), key=len, reverse=True))
    # what farmedge calls its paho clients: client, c, _client, _c, counter
    use = re.compile(rf"\b(?:client|c|_client|_c|counter)\.({names})\b")
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
             for top in ("farmedge", "tools/farmedge_dev")
             for p in sorted((ROOT / top).rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if use.search(line) or re.search(r"getattr\([^)]*\"_(packet|sock|loop)", line)]
    assert found == []
