"""farmedge.config: errors name the file, the line and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from farmedge.config import ConfigError, load_yaml_model, toml_line
from farmedge_dev.devservers import InfluxServer, MosquittoServer

ROOT = Path(__file__).resolve().parents[2]

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


# -- environment and paths ---------------------------------------------------

def _check_config(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farmedge", "edge", "check-config", *args],
                          capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env})


def test_a_misspelt_variable_is_reported_with_the_nearest_valid_name() -> None:
    from farmedge.config import unknown_env
    from farmedge.edge.settings import EdgeSettings

    assert unknown_env(EdgeSettings, {"FARMEDGE_INFLX_TOKEN": "t", "FARMEDGE_MQTT_URL": "x",
                                      "FARMEDGE_CONFIG": "c", "HOME": "/"}) == [
        "environment variable FARMEDGE_INFLX_TOKEN is not a setting and is ignored "
        "(did you mean FARMEDGE_INFLUX_TOKEN?)"]
    r = _check_config({"FARMEDGE_INFLX_TOKEN": "t"})
    assert r.returncode == 0, "a warning: the edge still starts"
    assert "warning: environment variable FARMEDGE_INFLX_TOKEN is not a setting and is " \
           "ignored (did you mean FARMEDGE_INFLUX_TOKEN?)" in r.stderr
    r = _check_config({"FARMEDGE_INFLX_TOKEN": "t"}, "--strict")
    assert r.returncode == 1


def test_a_bad_json_value_names_the_variable_in_one_line() -> None:
    r = _check_config({"FARMEDGE_MQTT_TOPICS": "farm/v1/#"})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "farmedge edge: configuration error",
        'environment variable FARMEDGE_MQTT_TOPICS: [mqtt] topics: not valid JSON (Expecting '
        'value); write a JSON value, e.g. ["farm/v1/+/+/+/telemetry"]']


def test_a_data_dir_that_is_a_file_names_the_key(tmp_path: Path) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("")
    r = _check_config({"FARMEDGE_DATA_DIR": str(f)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"environment variable FARMEDGE_DATA_DIR: data_dir: Value error, {f} exists and " \
           "is not a folder" in r.stderr
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'instance = "e"\ndata_dir = "{f}/spool"\n')
    r = _check_config({}, "--config", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{cfg}:2: data_dir: Value error, {f} is a file" in r.stderr


# -- secrets in log lines ----------------------------------------------------

def test_url_userinfo_is_redacted_in_every_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from farmedge.logs import get_logger, setup_logging

    root = logging.getLogger()
    handlers = list(root.handlers)
    for h in handlers:
        root.removeHandler(h)
    try:
        setup_logging("info", "json")
        _log_secrets(get_logger("t"))
        err = capsys.readouterr().err
    finally:
        # setup_logging bound both to pytest's captured stderr: undo it.
        import structlog

        structlog.reset_defaults()
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
    assert "SECRET" not in err
    assert "http://admin:***@127.0.0.1:8086" in err and "mqtt://edge:***@broker:1883" in err
    assert "https://***@example.org/x" in err and "http://example.org/a@b" in err


def _log_secrets(log: Any) -> None:
    import logging

    log.info("edge.starting", influx="http://admin:SECRET1@127.0.0.1:8086",
             nested={"urls": ["mqtt://edge:SECRET2@broker:1883"]},
             note="token in https://SECRET3@example.org/x", harmless="http://example.org/a@b")
    try:
        raise ConnectionError("cannot reach http://admin:SECRET4@db:8086/write")
    except ConnectionError:
        log.exception("influx.failed")
    logging.getLogger("aiohttp.client").error("GET %s failed", "http://u:SECRET5@h/")


@pytest.mark.servers
def test_the_influx_password_in_its_url_never_reaches_the_log(
        mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str, county: str,
        tmp_path: Path) -> None:
    from tests.edgeproc import EdgeProcess

    url = influxdb.url.replace("http://", "http://admin:SECRET-PW@")
    e = EdgeProcess(mqtt_url=mosquitto.url, influx_url=url, database=influx_db,
                    data_dir=tmp_path / "edge", county=county).start()
    e.stop()
    log = e.log_path.read_text()
    assert "edge.starting" in log and "admin:***@" in log
    assert "SECRET-PW" not in log


def test_an_influx_url_with_a_query_is_refused_and_its_password_kept_out(
        tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text('instance = "e"\n[influx]\nurl = "http://127.0.0.1:8086/?u=admin&p=SECRET"\n')
    r = _check_config({}, "--config", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{cfg}:3: [influx] url:" in r.stderr and "must not have a query" in r.stderr
    assert "SECRET" not in r.stderr + r.stdout


def test_a_missing_registry_names_the_setting(tmp_path: Path) -> None:
    r = _check_config({"FARMEDGE_REGISTRY": str(tmp_path / "nope.yaml")})
    assert r.returncode == 2
    assert f"environment variable FARMEDGE_REGISTRY: registry: {tmp_path}/nope.yaml: cannot " \
           "read" in r.stderr
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'instance = "e"\nregistry = "{tmp_path}/nope.yaml"\n')
    r = _check_config({}, "--config", str(cfg))
    assert f"{cfg}:2: registry: {tmp_path}/nope.yaml: cannot read" in r.stderr


def test_the_gateway_check_names_a_data_dir_that_is_a_file_and_unknown_variables(
        tmp_path: Path) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("")
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'county = "c1"\nfarm = "f1"\ngateway = "gw-1"\ndata_dir = "{f}"\n')
    r = subprocess.run([sys.executable, "-m", "farmedge", "gateway", "check-config",
                        "--config", str(cfg)], capture_output=True, text=True, check=False,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                            "FARMEDGE_MQT_URL": "mqtt://x"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{cfg}:4: data_dir: {f} exists and is not a folder" in r.stderr
    assert "environment variable FARMEDGE_MQT_URL is not a setting and is ignored (did you " \
           "mean FARMEDGE_MQTT_URL?)" in r.stderr
