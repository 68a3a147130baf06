"""The ``[source]`` section in the edge's settings and check-config."""

from __future__ import annotations

from pathlib import Path

import pytest

from farmedge.checks import check_edge
from farmedge.config import load_settings
from farmedge.edge.settings import EdgeSettings


def _config(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "edge.toml"
    p.write_text(f'data_dir = "{tmp_path / "edge"}"\n[alerts]\nenabled = false\n{body}',
                 encoding="utf-8")
    return p


def test_the_default_source_is_the_mqtt_broker(tmp_path: Path) -> None:
    s = load_settings(EdgeSettings, _config(tmp_path, ""))
    assert s.source.kind == "mqtt" and not s.nats
    assert s.source_instance == s.instance == "edge-1"


def test_a_nats_source_is_checked_and_summarised(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARMEDGE_SOURCE_PARTITIONS", "8")
    path = _config(tmp_path, '[source]\nkind = "nats"\ninstance = "edge-b"\n'
                   'nats_urls = ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]\n')
    report, s, _ = check_edge(path)
    assert not report.errors and not report.warnings, report
    assert s is not None and s.nats and s.source.partitions == 8
    assert s.source_instance == "edge-b"
    [line] = [x for x in report.summary if x.startswith("source: NATS")]
    assert "8 partitions" in line and "as edge-b" in line


def test_a_wrong_source_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = _config(tmp_path, '[source]\nkind = "nats"\n\nlease_ttl_s = 1\n')
    report, s, _ = check_edge(path)
    assert s is None
    assert any(e.startswith(f"{path}:7: [source] lease_ttl_s") for e in report.errors), \
        report.errors


def test_a_wrong_source_variable_names_the_variable(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARMEDGE_SOURCE_KIND", "kafka")
    report, s, _ = check_edge(_config(tmp_path, ""))
    assert s is None
    assert any("FARMEDGE_SOURCE_KIND" in e and "[source] kind" in e for e in report.errors), \
        report.errors


def test_one_url_for_three_replicas_is_a_warning(tmp_path: Path) -> None:
    path = _config(tmp_path, '[source]\nkind = "nats"\nnats_urls = ["nats://n1:4222"]\n')
    report, _, _ = check_edge(path)
    assert not report.errors
    assert any(f"{path}:6: [source] nats_urls lists 1 node" in w for w in report.warnings)


@pytest.mark.parametrize(("source", "says"), [
    ("", "MQTT 5 to mqtt://broker.example.org:1883"),
    ('[source]\nkind = "nats"\nnats_urls = ["nats://n1:4222", "nats://n2:4222", '
     '"nats://n3:4222"]\n', "over the edge's NATS connection"),
])
def test_check_config_says_where_alert_events_go(tmp_path: Path, source: str,
                                                 says: str) -> None:
    p = tmp_path / "edge.toml"
    p.write_text(f'data_dir = "{tmp_path / "edge"}"\n'
                 f'[mqtt]\nurl = "mqtt://broker.example.org:1883"\n{source}', encoding="utf-8")
    report, _, _ = check_edge(p)
    assert not report.errors, report.errors
    [line] = [x for x in report.summary if x.startswith("alert events on farm/v1/")]
    assert says in line, line


def test_a_missing_or_empty_nats_ca_file_is_an_error_at_check_config(tmp_path: Path) -> None:
    """A CA mount forgotten (compose with TLS) was "configuration OK" and
    failed only when the edge connected."""
    urls = 'nats_urls = ["tls://n1:4222", "tls://n2:4222", "tls://n3:4222"]\n'
    path = _config(tmp_path, f'[source]\nkind = "nats"\n{urls}'
                   f'nats_ca_file = "{tmp_path / "none.crt"}"\n')
    report, _, _ = check_edge(path)
    assert any("[source] nats_ca_file" in e and "no such file" in e for e in report.errors), \
        report.errors
    empty = tmp_path / "empty.crt"
    empty.write_text("not a certificate\n")
    path = _config(tmp_path, f'[source]\nkind = "nats"\n{urls}nats_ca_file = "{empty}"\n')
    report, _, _ = check_edge(path)
    assert any("[source] nats_ca_file" in e and "holds no CA" in e for e in report.errors), \
        report.errors
