"""Helpers for the service-center stack tests: a Mosquitto broker running the
shipped configuration (deploy/mosquitto/) and small MQTT clients that report
what the broker answered."""

from __future__ import annotations

import base64
import json
import os
import pwd
import queue
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from farmedge.contract import encode_json, encode_status
from farmedge.provision.dynsec import (
    AdminCredential,
    LiveBroker,
    admin_file_for,
    load_admin,
    new_password,
)
from farmedge_dev.devservers import (
    InfluxServer,
    MosquittoServer,
    broker_user,
    dynsec_plugin_path,
    free_port,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
#: Client.publish's answer when the broker closed the connection instead of a PUBACK.
DROPPED = -1


@dataclass
class ShippedBroker(MosquittoServer):
    """Mosquitto started with deploy/mosquitto/mosquitto.conf, only its paths,
    listener and plugin path (this host's) changed. Started as root, it runs
    as an unprivileged user (devservers.broker_user: "mosquitto"), as
    Debian's package runs it; its folder ``config_dir`` (the dynamic
    security file, what ``farmedge provision --broker-dir`` is given) and its
    persistence are that user's, in a folder of their own under /tmp, since
    that user cannot enter pytest's temporary folders. The dynamic security
    file and admin credential are made on first start by ``provision init``
    (unless a test wrote them before)."""

    #: Also enable the shipped (commented) TLS listener on this port, with
    #: certificates from ``workdir``/certs (copied for the broker's user).
    tls_port: int = 0
    state_dir: Path | None = None

    @property
    def run_as(self) -> str:
        return broker_user()

    @property
    def config_dir(self) -> Path:
        if self.state_dir is None:
            if os.geteuid() == 0:
                self.state_dir = Path(tempfile.mkdtemp(prefix="farmedge-broker-"))
                os.chmod(self.state_dir, 0o755)
                weakref.finalize(self, shutil.rmtree, self.state_dir, True)
            else:
                self.state_dir = self.workdir / "state"
            self.state_dir.mkdir(parents=True, exist_ok=True)
            for d in (self.state_dir / "config", self.state_dir / "data"):
                d.mkdir(exist_ok=True)
                if os.geteuid() == 0:
                    u = pwd.getpwnam(self.run_as)
                    os.chown(d, u.pw_uid, u.pw_gid)
        return self.state_dir / "config"

    @property
    def dynsec_file(self) -> Path:
        return self.config_dir / "dynamic-security.json"

    def conf_text(self) -> str:
        text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
        data = self.config_dir.parent / "data"
        lines = []
        for line in text.splitlines():
            if line.strip() == "listener 1883":
                line = f"listener {self.port} 127.0.0.1"
            if self.tls_port and line.startswith("# ") and any(
                    line[2:].startswith(k) for k in ("listener 8883", "certfile", "keyfile",
                                                     "cafile", "tls_version")):
                line = line[2:].replace("listener 8883", f"listener {self.tls_port} 127.0.0.1")
            if line.startswith("plugin /usr/lib/mosquitto_dynamic_security.so"):
                line = f"plugin {dynsec_plugin_path()}"
            lines.append(line.replace("/mosquitto/config/", f"{self.config_dir}/")
                         .replace("/mosquitto/data/", f"{data}/")
                         .replace("/mosquitto/certs/", f"{self.config_dir.parent}/certs/"))
        return "\n".join(lines) + f"\nuser {self.run_as}\n" + self.extra_conf

    def start(self, timeout: float = 15.0) -> ShippedBroker:
        if not self.port:
            self.port = free_port()
        certs = self.workdir / "certs"
        if certs.is_dir():  # the broker reads them as its own user
            dst = self.config_dir.parent / "certs"
            shutil.copytree(certs, dst, dirs_exist_ok=True)
            if os.geteuid() == 0:
                u = pwd.getpwnam(self.run_as)
                for f in (dst, *dst.iterdir()):
                    os.chown(f, u.pw_uid, u.pw_gid)
        if not self.dynsec_file.exists():
            from farmedge.cli import main

            assert main(["provision", "init", "--broker-dir", str(self.config_dir),
                         "--admin-url", self.url, "--broker-user", self.run_as]) == 0
        super().start(timeout)
        return self

    @property
    def admin(self) -> AdminCredential:
        cred = load_admin(admin_file_for(self.config_dir), url=self.url)
        assert cred is not None
        return cred

    def live(self) -> LiveBroker:
        """The running broker's dynamic security plugin, as its administrator."""
        return LiveBroker(self.admin)

    def service(self, kind: str, name: str | None = None) -> tuple[str, str]:
        """Create a service account (edge, simulator) on the running broker:
        (username, password)."""
        from farmedge.provision import accounts

        user = accounts.service_username(name or kind)
        pw = new_password()
        b = self.live()
        try:
            accounts.set_service(b, kind, user, pw)
        finally:
            b.close()
        return user, pw

    def gateway(self, county: str, farm: str, gateway: str) -> tuple[str, str, str]:
        """Create a gateway account on the running broker: (username,
        password, client id)."""
        from farmedge.provision import accounts

        pw = new_password()
        b = self.live()
        try:
            accounts.set_gateway(b, county, farm, gateway, pw)
        finally:
            b.close()
        path = accounts.gateway_path(county, farm, gateway)
        return path, pw, path


class Client:
    """A paho MQTT 5 client that records the CONNACK, SUBACK and messages."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None,
                 *, client_id: str = "") -> None:
        self.port = port
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.connack: queue.Queue[int] = queue.Queue()
        self.suback: queue.Queue[list[int]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.puback: dict[int, int] = {}
        self.dropped = threading.Event()
        self._lock = threading.Lock()
        self.c.on_connect = lambda c, u, f, rc, p=None: self.connack.put(rc.value)
        self.c.on_subscribe = lambda c, u, mid, rcs, p=None: self.suback.put(
            [r.value for r in rcs])
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_disconnect = lambda *a: self.dropped.set()

        def on_publish(c: object, u: object, mid: int, rc: object, p: object = None) -> None:
            with self._lock:
                self.puback[mid] = getattr(rc, "value", 0)

        self.c.on_publish = on_publish

    def connect(self, timeout: float = 10.0) -> int:
        """Connect; return the CONNACK reason code (0 = accepted)."""
        self.c.connect("127.0.0.1", self.port)
        self.c.loop_start()
        try:
            return self.connack.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no CONNACK from the broker") from None

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        self.c.subscribe(topic, qos)
        return self.suback.get(timeout=30)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> int:
        """Publish and wait for the PUBACK; return its reason code, or
        DROPPED when the broker closed the connection instead (Mosquitto 2.0
        does that for an MQTT 5 publish the ACL denies)."""
        info = self.c.publish(topic, payload, qos=qos)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self._lock:
                if info.mid in self.puback:
                    return self.puback[info.mid]
            if self.dropped.is_set():
                return DROPPED
            time.sleep(0.01)
        raise AssertionError(f"no PUBACK for {topic}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# -- simulated farms for the dashboard tests ------------------------------------

HOUR_MS = 3_600_000


@dataclass
class Scenario:
    """Simulated farms of one county over the last ``hours``, as MQTT messages
    (topic, payload) in publishing order, plus what the registry says."""

    county: str
    start_ms: int
    end_ms: int
    messages: list[tuple[str, bytes]]
    registry_yaml: str
    sick_animal: str
    farms: list[str]


def make_scenario(county: str, *, now_ms: int | None = None, hours: int = 6,
                  interval_min: int = 10, farms: int = 3) -> Scenario:
    """Three farms with one gateway each reading every contract kind every
    ``interval_min`` minutes (farmedge.simdata), some bad values, one gap in
    a gateway's sequence numbers, one sick cow, status messages with one
    gateway gone offline at the end."""

    from farmedge.simdata import make_farms

    now = now_ms if now_ms is not None else int(time.time() * 1000)
    start = now - hours * HOUR_MS
    sims = make_farms(seed=7, county=county, farms=farms, sensors=11, fever_rate=0.0)
    step = interval_min * 60_000
    messages: list[tuple[str, bytes]] = []
    reg_farms = []
    sick = ""
    for fi, f in enumerate(sims):
        gw = f.gateways[0]
        sensors: dict[str, dict[str, object]] = {}
        for s in gw.sensors:
            if s.kind.startswith("soil_"):
                sensors[s.sensor] = {"plot": f"field-{s.sensor.rsplit('-', 1)[1]}",
                                     "crop": "maize"}
        reg_farms.append({"county": county, "farm": f.farm,
                          "plots": {p["plot"]: {"crop": "maize", "field_capacity": 36,
                                                "wilting_point": 19}
                                    for p in sensors.values()},
                          "gateways": {gw.gateway: {"interval_s": interval_min * 60,
                                                    "sensors": sensors}}})
        seq = 0
        t = start
        while t <= now - 60_000:
            readings = [r.to_wire() for r in gw.round(t, interval_ms=step,
                                                       bad_rate=0.03)]
            if fi == 0 and not sick:
                sick = next(r["animal"] for r in readings if r.get("animal"))
            if fi == 0 and t + step > now - 60_000:
                # A sick cow: the last bolus reading of the first farm is a fever.
                readings.append({"sensor": "bolus-1", "kind": "animal_body_temperature",
                                 "ts": t + 1, "value": 40.3, "unit": "degC", "animal": sick})
            seq += 2 if (fi == 0 and t == start + 5 * step) else 1  # one message missing
            messages.append((gw.topic, encode_json(
                gateway=gw.gateway, seq=seq, sent=t + 2000, clock="synced",
                readings=readings)))
            t += step
        status_topic = gw.topic.rsplit("/", 1)[0] + "/status"
        for k in range(3):
            online = not (fi == farms - 1 and k == 2)
            messages.append((status_topic, encode_status(
                gateway=gw.gateway, online=online, ts=now - (2 - k) * 60_000,
                **({"uptime_s": 3600.0 * (k + 1), "version": "0.1.0",
                    "outbox_depth": 10 * fi + k, "outbox_oldest_age_s": 30.0 * (fi + k),
                    "dropped": fi, "clock": "synced" if fi != 1 else "unsynced",
                    "cpu_temperature": 48.5 + fi, "disk_free_mb": 1200.0 - k}
                   if online else {}))))
    import yaml

    return Scenario(county, start, now, messages,
                    yaml.safe_dump({"farms": reg_farms}, allow_unicode=True, sort_keys=False),
                    sick, [f.farm for f in sims])


def alert_lines(county: str, farm: str, now_ms: int, *, other_farm: str) -> list[str]:
    """Alert events shaped like the alert engine's InfluxDB records
    (measurement ``alerts``, tags county/farm/event/rule/family/severity/
    scope/scope_id; docs/alerts.md). Firing at the end: two critical (a
    fever; a dry plot that worsened to severe drought), one warning (a dry
    plot on ``other_farm``), one info (an unsynced clock); one dry plot
    raised and cleared."""
    def ev(ts: int, event: str, rule: str, family: str, severity: str, scope: str,
           scope_id: str, text: str, on: str = farm) -> str:
        return (f"alerts,county={county},farm={on},event={event},rule={rule},"
                f"family={family},severity={severity},scope={scope},scope_id={scope_id} "
                f'group="{scope_id}",count=1i,title="{event} {rule}",text="{text}" {ts}')
    h = HOUR_MS
    return [
        ev(now_ms - 3 * h, "raise", "maize-blacksoil/dry", "drought", "warning", "plot",
           "field-1", "1号地土壤偏干"),
        ev(now_ms - 3 * h + 5, "delivered", "maize-blacksoil/dry", "drought", "warning",
           "plot", "field-1", "sent"),
        ev(now_ms - 2 * h, "clear", "maize-blacksoil/dry", "drought", "warning", "plot",
           "field-1", "1号地土壤恢复"),
        ev(now_ms - h, "raise", "cattle/fever", "fever", "critical", "animal", "cow-17",
           "17号牛发烧"),
        ev(now_ms - 50 * 60_000, "raise", "maize-blacksoil/dry", "drought", "warning", "plot",
           "field-2", "2号地土壤偏干"),
        ev(now_ms - 40 * 60_000, "worse", "maize-blacksoil/severe-drought", "drought",
           "critical", "plot", "field-2", "2号地严重干旱"),
        ev(now_ms - 30 * 60_000, "raise", "device/clock-unsynced", "device", "info", "gateway",
           "gw-001-1", "网关时钟未同步"),
        ev(now_ms - 20 * 60_000, "raise", "maize-blacksoil/dry", "drought", "warning", "plot",
           "field-1", "1号地土壤偏干", on=other_farm),
    ]


def write_lines(url: str, db: str, lines: list[str],
                user: tuple[str, str] | None = None) -> None:
    """Write line protocol (ms precision), retrying the 500s Debian's
    InfluxDB 1.6 answers now and then under concurrent writes."""
    body = "\n".join(lines).encode()
    for attempt in range(20):
        req = urllib.request.Request(f"{url}/write?db={db}&precision=ms", data=body,
                                     method="POST")
        if user:
            token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status == 204
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == 19:
                raise
        time.sleep(0.1 * (attempt + 1))


# -- InfluxDB 1.x with authentication and deploy/influxdb/v1-setup.iql --------

ENV = {"INFLUX_DATABASE": "farmedge", "INFLUX_EDGE_USER": "farmedge-edge",
       "INFLUX_EDGE_PASSWORD": "edge-pw-1", "INFLUX_GRAFANA_USER": "farmedge-grafana",
       "INFLUX_GRAFANA_PASSWORD": "grafana-pw-1"}
ADMIN = ("admin", "admin-pw-1")


@dataclass
class AuthInflux(InfluxServer):
    def conf_text(self) -> str:
        return super().conf_text().replace("auth-enabled = false", "auth-enabled = true")


def _request(url: str, path: str, *, user: tuple[str, str] | None, data: dict[str, str] | None
             = None, body: bytes | None = None) -> tuple[int, Any]:
    if data is not None:
        body = urllib.parse.urlencode(data).encode()
    req = urllib.request.Request(url + path, data=body, method="POST")
    if user:
        token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def query(url: str, q: str, user: tuple[str, str], db: str = "farmedge") -> list[dict[str, Any]]:
    status, doc = _request(url, "/query", user=user, data={"q": q, "db": db, "epoch": "ms"})
    assert status == 200, (status, doc)
    out: list[dict[str, Any]] = []
    for res in doc["results"]:
        assert "error" not in res, res["error"]
        out.extend(res.get("series", []))
    return out


def envsubst(text: str, env: dict[str, str]) -> str:
    """What GNU envsubst does: $NAME and ${NAME} become the variable's value
    (empty when unset); every other "$" stays."""
    return re.sub(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)",
                  lambda m: env.get(m.group(1) or m.group(2), ""), text)


def statements() -> list[str]:
    """v1-setup.iql's statements, as ``envsubst`` would fill them in."""
    from farmedge.provision.influx import parse_iql

    return parse_iql(envsubst((DEPLOY / "influxdb" / "v1-setup.iql").read_text(), ENV))


def setup_v1(server: AuthInflux) -> AuthInflux:
    """Create the admin user, then run v1-setup.iql as the admin."""
    # The first user may be created without credentials; it must be an admin.
    status, doc = _request(server.url, "/query", user=None, data={
        "q": f"CREATE USER {ADMIN[0]} WITH PASSWORD '{ADMIN[1]}' WITH ALL PRIVILEGES"})
    assert status == 200, doc
    for stmt in statements():
        query(server.url, stmt, ADMIN)
    return server


EDGE_USER = (ENV["INFLUX_EDGE_USER"], ENV["INFLUX_EDGE_PASSWORD"])
GRAFANA_USER = (ENV["INFLUX_GRAFANA_USER"], ENV["INFLUX_GRAFANA_PASSWORD"])


# -- the real pipeline: simulated gateways → Mosquitto → edge → InfluxDB ------

@dataclass
class Pipeline:
    """Servers and credentials of one run of the whole pipeline, as the
    service center runs it: the shipped broker config with provisioned
    credentials, InfluxDB with authentication and v1-setup.iql's users (the
    edge writes with the write-only one), the edge with the registry."""

    broker: ShippedBroker
    influx: AuthInflux
    edge: Any  # tests.edgeproc.EdgeProcess
    edge_started_ms: int
    simulator_user: str
    simulator_password: str

    def stop(self) -> None:
        self.edge.stop()
        self.broker.stop()
        self.influx.stop()


def start_pipeline(root: Path, registry_yaml: str, *, county: str,
                   alerts: bool = False) -> Pipeline:
    from .edgeproc import EdgeProcess

    influx = setup_v1(AuthInflux(root / "influxdb").start())
    broker = ShippedBroker(root / "broker").start()
    edge_user, edge_pw = broker.service("edge")
    sim_user, sim_pw = broker.service("simulator")
    reg = root / "registry.yaml"
    reg.write_text(registry_yaml)
    started = int(time.time() * 1000)
    edge = EdgeProcess(
        mqtt_url=f"mqtt://127.0.0.1:{broker.port}", influx_url=influx.url,
        database=ENV["INFLUX_DATABASE"], data_dir=root / "edge", county=county,
        extra_env={"FARMEDGE_MQTT_USERNAME": edge_user, "FARMEDGE_MQTT_PASSWORD": edge_pw,
                   "FARMEDGE_INFLUX_USERNAME": EDGE_USER[0],
                   "FARMEDGE_INFLUX_PASSWORD": EDGE_USER[1],
                   "FARMEDGE_INFLUX_CREATE_DATABASE": "false",
                   "FARMEDGE_REGISTRY": str(reg), "FARMEDGE_INSTANCE": "edge-1",
                   # Off by default: the dashboard tests write their own alert
                   # records (alert_lines); the engine's would change the counts.
                   "FARMEDGE_ALERTS_ENABLED": "true" if alerts else "false",
                   # The scenario's offline gateway: believed at once, not
                   # after the last will's grace and the reconnect grace
                   # (docs/alerts.md, "Farm-side versus center-side").
                   "FARMEDGE_ALERTS_OFFLINE_WILL_GRACE_S": "0",
                   "FARMEDGE_ALERTS_RECONNECT_GRACE_S": "0",
                   "FARMEDGE_ALERTS_RECONNECT_GRACE_INTERVALS": "0"}).start()
    return Pipeline(broker, influx, edge, started, sim_user, sim_pw)


def publish_scenario(p: Pipeline, sc: Scenario) -> int:
    """Publish the scenario's messages as the gateways would (status
    retained), each acknowledged by the broker; return the number of valid
    readings sent."""
    import json

    from farmedge.contract import parse_telemetry

    c = Client(p.broker.port, p.simulator_user, p.simulator_password)
    assert c.connect() == 0
    readings = 0
    try:
        for topic, payload in sc.messages:
            if topic.endswith("/status"):
                info = c.c.publish(topic, payload, qos=1, retain=True)
                info.wait_for_publish(10)
                assert json.loads(payload)["gateway"]
                continue
            assert c.publish(topic, payload) in {0, 16}
            readings += len(parse_telemetry(payload).readings)
    finally:
        c.close()
    return readings
