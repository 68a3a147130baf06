"""Values farmedge/config.py refuses, and where it says they are.

Infinity and NaN are no setting's value: TOML (``inf``, ``nan``), the
environment (``FARMEDGE_..._S=inf``) and YAML (``.inf``, ``.nan``) can spell
them, and a bound such as ``gt=0`` lets infinity through (farmedge/config.py's
Section and FileSettings, farmedge/registry.py's models). A rule over the
whole file is the file's error, not the environment's."""

from __future__ import annotations

from pathlib import Path

import pytest

from farmedge.config import ConfigError, load_settings
from farmedge.gateway.settings import GatewaySettings
from farmedge.registry import load_registry

IDS = 'county = "c1"\nfarm = "f1"\ngateway = "gw-1"\n'


def _gateway(tmp_path: Path, text: str) -> GatewaySettings:
    p = tmp_path / "gw.toml"
    p.write_text(IDS + text)
    return load_settings(GatewaySettings, p)


@pytest.mark.parametrize("value", ["inf", "+inf", "nan", "-inf"])
def test_a_setting_in_the_file_is_finite(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        _gateway(tmp_path, f"[mqtt]\nbackoff_max_s = {value}\n")
    assert "gw.toml:5: [mqtt] backoff_max_s:" in str(e.value)


def test_a_setting_from_the_environment_is_finite(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARMEDGE_UPLINK_BATCH_MAX_WAIT_S", "inf")
    with pytest.raises(ConfigError, match=r"FARMEDGE_UPLINK_BATCH_MAX_WAIT_S.*finite"):
        _gateway(tmp_path, "")
    monkeypatch.setenv("FARMEDGE_UPLINK_BATCH_MAX_WAIT_S", "30")
    assert _gateway(tmp_path, "").uplink.batch_max_wait_s == 30


@pytest.mark.parametrize(("where", "value"), [
    ("    gateways: {gw-1: {interval_s: %s}}\n", ".inf"),
    ("    plots: {p1: {params: {depletion_p: %s}}}\n", ".nan"),
    ("    gateways: {gw-1: {sensors: {s1: {interval_s: %s}}}}\n", ".inf"),
])
def test_a_registry_number_is_finite(tmp_path: Path, where: str, value: str) -> None:
    p = tmp_path / "registry.yaml"
    p.write_text("farms:\n  - county: c1\n    farm: f1\n" + where % value)
    with pytest.raises(ConfigError, match=r"registry\.yaml:4: .*finite number"):
        load_registry(p)
    p.write_text("farms:\n  - county: c1\n    farm: f1\n" + where % "600")
    assert load_registry(p).farms[0].farm == "f1"


def test_a_rule_over_the_whole_file_names_the_file(tmp_path: Path) -> None:
    sensor = '[[sensors]]\ndriver = "simulated"\nid = "s1"\n'
    with pytest.raises(ConfigError) as e:
        _gateway(tmp_path, '[mqtt]\nurl = "mqtt://h"\n' + sensor + sensor)
    assert str(e.value) == f"{tmp_path / 'gw.toml'}: Value error, sensor id 's1' is used twice"
