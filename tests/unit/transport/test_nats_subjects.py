"""The NATS adapter's subjects, partitions and [source] section, without a
server (the integration tests check the same against a real cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farmedge.config import ConfigError, FileSettings, load_settings
from farmedge.contract import is_valid_id
from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection

ids = st.text(st.sampled_from("ab-_.1黑龙江农场"), min_size=1, max_size=12).filter(is_valid_id)


@given(ids, ids, ids)
def test_an_id_is_one_subject_token_and_comes_back(county: str, farm: str, gw: str) -> None:
    subject = tn.gateway_subject(county, farm, gw, "telemetry")
    tokens = subject.split(".")
    assert len(tokens) == 6
    p = tn.partition_of(county, farm, 8)
    stored = ".".join(["farmp", "v1", str(p), *tokens[2:]])
    where = tn.parse_stored_subject(tn.MQTT_STREAM_PREFIX + stored)
    assert (where.partition, where.county, where.farm, where.gateway, where.channel) == (
        p, county, farm, gw, "telemetry")
    assert tn.parse_stored_subject(stored) == where


def test_ids_map_as_the_servers_mqtt_listener_maps_them() -> None:
    assert tn.gateway_subject("黑龙江", "farm.7", "gw-1", "status") == \
        "farm.v1.黑龙江.farm//7.gw-1.status"


def test_a_farms_alerts_subject_is_its_alerts_topic_as_the_listener_maps_it() -> None:
    assert tn.alerts_subject("黑龙江", "farm.7") == "farm.v1.黑龙江.farm//7.alerts"
    # four levels under farm.v1: not a gateway subject, so not partitioned
    assert len(tn.alerts_subject("c", "f").split(".")) == 5


def test_the_partition_hash_is_fnv1a_of_the_two_tokens() -> None:
    # FNV-1a 32 of b"" is the offset basis; of "a" it is 0xE40C292C.
    assert tn.partition_of("a", "", 2**32) == 0xE40C292C
    # The server hashes the tokens as the subject has them ("." is "//").
    assert tn.partition_of("c.1", "f", 1000) == tn.partition_of("c//1", "f", 1000)


@pytest.mark.parametrize("subject", [
    "farm.v1.c.f.g.telemetry", "farmp.v1.x.c.f.g.telemetry", "farmp.v1.1.c.f.g.alerts",
    "farmp.v2.1.c.f.g.status", "$MQTT.msgs.farmp.v1.1.c.f.telemetry",
])
def test_other_subjects_are_refused(subject: str) -> None:
    with pytest.raises(tn.NatsTransportError):
        tn.parse_stored_subject(subject)


def test_the_server_mapping_block_names_the_partition_count() -> None:
    conf = tn.server_mapping_conf(16)
    assert '"farm.v1.*.*.*.*": "farmp.v1.{{partition(16,1,2)}}.{{wildcard(1)}}' in conf
    assert conf.startswith("mappings {")


def test_consumers_filter_their_partition_of_the_mqtt_stream() -> None:
    cfg = SourceSection(kind="nats", partitions=4)
    cc = tn.consumer_config(cfg, 3)
    assert cc.durable_name == "farmedge-p3"
    assert cc.filter_subject == "$MQTT.msgs.farmp.v1.3.>"
    own = SourceSection(kind="nats", stream="FARM")
    assert tn.consumer_config(own, 0).filter_subject == "farmp.v1.0.>"
    assert tn.stream_config(own).subjects == ["farmp.v1.*.*.*.*.telemetry",
                                              "farmp.v1.*.*.*.*.status"]


class _Settings(FileSettings):
    source: SourceSection = SourceSection()


@pytest.mark.parametrize(("text", "says"), [
    ('[source]\nkind = "kafka"\n', "[source] kind"),
    ('[source]\nnats_urls = ["http://x:4222"]\n', "[source] nats_urls"),
    ('[source]\nnats_urls = []\n', "[source] nats_urls"),
    ('[source]\npartitions = 0\n', "[source] partitions"),
    ('[source]\nstream = "a.b"\n', "[source] stream"),
    ('[source]\nlease_bucket = "a b"\n', "[source] lease_bucket"),
    ('[source]\nlease_ttl_s = 1\n', "[source] lease_ttl_s"),
    ('[source]\nconsumer_prefix = "x*"\n', "[source] consumer_prefix"),
    ('[source]\nalert_bucket = "a.b"\n', "[source] alert_bucket"),
])
def test_a_wrong_source_key_is_named_with_its_line(tmp_path: Path, text: str, says: str) -> None:
    f = tmp_path / "edge.toml"
    f.write_text("# edge\n" + text)
    with pytest.raises(ConfigError) as e:
        load_settings(_Settings, f)
    assert f"{f}:3: {says}" in str(e.value) or f"{f}:2: {says}" in str(e.value), str(e.value)


def test_the_alert_bucket_must_differ_from_the_lease_bucket(tmp_path: Path) -> None:
    f = tmp_path / "edge.toml"
    f.write_text('[source]\nlease_bucket = "b"\nalert_bucket = "b"\n')
    with pytest.raises(ConfigError) as e:
        load_settings(_Settings, f)
    assert "alert_bucket must differ from lease_bucket" in str(e.value), str(e.value)


def test_the_source_section_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARMEDGE_SOURCE_KIND", "nats")
    monkeypatch.setenv("FARMEDGE_SOURCE_PARTITIONS", "32")
    monkeypatch.setenv("FARMEDGE_SOURCE_ALERT_BUCKET", "county_alerts")
    s = load_settings(_Settings, None)
    assert s.source.alert_bucket == "county_alerts"
    assert (s.source.kind, s.source.partitions, s.source.stream) == ("nats", 32, "$MQTT_msgs")
    assert s.source.takeover_bound_s == 20.0


@pytest.mark.parametrize("url", ["nats://edge:s3cret@h:99999", "nats://edge:s3cret@h:port",
                                 "http://edge:s3cret@h:4222", "nats://edge:s3cret@:4222"])
def test_a_wrong_nats_url_is_reported_without_its_password(tmp_path: Path, url: str) -> None:
    f = tmp_path / "edge.toml"
    f.write_text(f'[source]\nnats_urls = ["{url}"]\n')
    with pytest.raises(ConfigError) as e:
        load_settings(_Settings, f)
    assert f"{f}:2: [source] nats_urls" in str(e.value), str(e.value)
    assert "s3cret" not in str(e.value)
