"""``farmedge provision nats-cluster``: the configuration files of a NATS
cluster's nodes (docs/scaling.md, "The NATS cluster").

Writes one ``<host>.conf`` per node into ``--out`` (default deploy/nats, the
folder docker-compose.cluster.yml mounts), made by the generator the test
cluster uses too (farmedge.transport.nats_conf), so that what is deployed is
what is tested. With ``--check`` it writes nothing and fails when the files
differ from what it would write (the tests run it on the committed files).

Each node listens on every interface with the standard ports (clients 4222,
routes 6222, MQTT 1883, monitoring 8222), keeps JetStream's store in
/data/jetstream, and includes ``auth.conf`` from its own folder: the users,
their permissions and the partition mapping, which ``farmedge provision
nats`` writes (docs/scaling.md, "Trust on NATS"); a node does not start
without it. ``--hosts`` names the nodes as the others reach them: the
compose services by default, or a site's own machines. ``--tls-dir`` adds
TLS to the client, MQTT and route listeners, with each node's certificate
``<host>.crt`` and key ``<host>.key`` and the site's ``ca.crt`` in that
folder as the node sees it (``farmedge provision nats-certs`` makes them);
deploy/nats/tls holds the files of docker-compose.cluster-tls.yml, written
with ``--tls-dir /etc/nats/certs --auth-include ../auth.conf --out
deploy/nats/tls``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from farmedge.transport.nats_conf import NodeConf, NodeTls, node_conf

__all__ = ["AUTH_INCLUDE", "DEFAULT_HOSTS", "DEFAULT_OUT", "PORTS", "STORE_DIR", "add_parser",
           "files", "main"]

DEFAULT_OUT = Path("deploy/nats")
DEFAULT_HOSTS = ("nats-1", "nats-2", "nats-3")
#: The ports every node listens on (the image's defaults; MQTT's standard one).
PORTS = {"client": 4222, "cluster": 6222, "mqtt": 1883, "http": 8222}
STORE_DIR = "/data/jetstream"
#: The users' file (farmedge provision nats), beside each node's file.
AUTH_INCLUDE = "auth.conf"
_COMMAND = "farmedge provision nats-cluster"


def files(out: Path, hosts: Iterable[str] = DEFAULT_HOSTS, *, tls_dir: str | None = None,
          max_file_store: str = "64GB", max_memory_store: str = "1GB",
          cluster_name: str = "farmedge",
          auth_include: str = AUTH_INCLUDE) -> dict[Path, str]:
    """Path -> text of every node's configuration file."""
    names = list(hosts)
    if len(set(names)) != len(names) or not names:
        raise ValueError("give each node's host name once")
    head = (f"# Written by `{_COMMAND}`: do not edit, run it again with other options\n"
            f"# (`{_COMMAND} --check` says whether this file is current).\n"
            f"# Node {{i}} of {len(names)}; its routes go to the others. {auth_include}"
            + (", beside\n# it," if auth_include == AUTH_INCLUDE else "\n#")
            + " is written by `farmedge provision nats` (the users, their permissions\n"
            "# and the partition mapping).\n")
    out_files: dict[Path, str] = {}
    for i, host in enumerate(names):
        tls = None if tls_dir is None else NodeTls(
            cert_file=f"{tls_dir}/{host}.crt", key_file=f"{tls_dir}/{host}.key",
            ca_file=f"{tls_dir}/ca.crt")
        conf = NodeConf(
            name=host, listen=f"0.0.0.0:{PORTS['client']}",
            cluster_listen=f"0.0.0.0:{PORTS['cluster']}",
            mqtt_listen=f"0.0.0.0:{PORTS['mqtt']}", http_listen=f"0.0.0.0:{PORTS['http']}",
            store_dir=STORE_DIR,
            routes=[f"{h}:{PORTS['cluster']}" for h in names if h != host],
            cluster_name=cluster_name, mqtt_replicas=min(3, len(names)),
            max_file_store=max_file_store, max_memory_store=max_memory_store,
            tls=tls, auth_include=auth_include)
        out_files[out / f"{host}.conf"] = head.format(i=i + 1) + node_conf(conf)
    return out_files


def _arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"folder of the nodes' files (default {DEFAULT_OUT})")
    ap.add_argument("--hosts", default=",".join(DEFAULT_HOSTS),
                    help="the nodes' host names, comma-separated, as the other nodes reach "
                         f"them (default {','.join(DEFAULT_HOSTS)}, the compose services)")
    ap.add_argument("--tls-dir",
                    help="TLS on the client, MQTT and route listeners, with HOST.crt, "
                         "HOST.key and ca.crt in this folder as the nodes see it "
                         "(e.g. /etc/nats/certs)")
    ap.add_argument("--auth-include", default=AUTH_INCLUDE,
                    help=f"the users' file as the nodes include it, relative to their own "
                         f"files (default {AUTH_INCLUDE}, beside them; ../{AUTH_INCLUDE} for "
                         "the TLS files of deploy/nats/tls)")
    ap.add_argument("--max-file-store", default="64GB",
                    help="JetStream's disk limit per node (default 64GB)")
    ap.add_argument("--max-memory-store", default="1GB",
                    help="JetStream's memory limit per node (default 1GB)")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 when the files differ from what would be "
                         "written")


def _run(args: argparse.Namespace) -> int:
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    try:
        wanted = files(args.out, hosts, tls_dir=args.tls_dir,
                       max_file_store=args.max_file_store,
                       max_memory_store=args.max_memory_store,
                       auth_include=args.auth_include)
    except ValueError as exc:
        print(f"{_COMMAND}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = [str(p) for p, text in wanted.items()
                 if not p.exists() or p.read_text(encoding="utf-8") != text]
        extra = sorted(str(p) for p in args.out.glob("*.conf")
                       if p not in wanted and p.name != AUTH_INCLUDE)
        if stale or extra:
            what = ", ".join(stale) + (f" (not written by it: {', '.join(extra)})"
                                       if extra else "")
            print(f"out of date (run {_COMMAND}): {what}", file=sys.stderr)
            return 1
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for p, text in wanted.items():
        p.write_text(text, encoding="utf-8")
        print(p)
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    from farmedge.cli import plain

    ap = argparse.ArgumentParser(prog=_COMMAND, description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(ap)
    return _run(ap.parse_args(list(argv) if argv is not None else None))


def add_parser(psub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from farmedge.cli import plain

    p = psub.add_parser(
        "nats-cluster", help="write the NATS cluster nodes' configuration files",
        description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  farmedge provision nats-cluster\n"
               "  farmedge provision nats-cluster --check\n"
               "  farmedge provision nats-cluster --hosts nats-a.example.org,"
               "nats-b.example.org,nats-c.example.org --tls-dir /etc/nats/certs "
               "--out site/nats\n"
               "  farmedge provision nats-cluster --tls-dir /etc/nats/certs "
               "--auth-include ../auth.conf --out deploy/nats/tls   (the compose TLS files)")
    _arguments(p)
    p.set_defaults(func=_run)
