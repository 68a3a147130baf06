"""``farmedge provision nats-cluster``: the configuration files of a NATS
cluster's nodes (docs/scaling.md, "The NATS cluster").

Writes one ``<host>.conf`` per node into ``--out`` (default deploy/nats, what
docker-compose.cluster.yml mounts), made by the generator the test cluster
uses too (farmedge.transport.nats_conf), so that what is deployed is what is
tested. With ``--check`` it writes nothing and fails when the files differ
from what it would write (the tests run it on the committed files).

Each node listens on every interface with the standard ports (clients 4222,
routes 6222, MQTT 1883, monitoring 8222) and keeps JetStream's store in
/data/jetstream. ``--hosts`` names the nodes as the others reach them: the
compose services by default, or a site's own machines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from farmedge.transport.nats_conf import NodeConf, node_conf
from farmedge.transport.nats_settings import SourceSection

__all__ = ["DEFAULT_HOSTS", "DEFAULT_OUT", "PORTS", "STORE_DIR", "add_parser", "files", "main"]

DEFAULT_OUT = Path("deploy/nats")
DEFAULT_HOSTS = ("nats-1", "nats-2", "nats-3")
#: The ports every node listens on (the image's defaults; MQTT's standard one).
PORTS = {"client": 4222, "cluster": 6222, "mqtt": 1883, "http": 8222}
STORE_DIR = "/data/jetstream"
_COMMAND = "farmedge provision nats-cluster"
_DEFAULT_PARTITIONS: int = SourceSection.model_fields["partitions"].default


def files(out: Path, hosts: Iterable[str] = DEFAULT_HOSTS, *,
          partitions: int = _DEFAULT_PARTITIONS, max_file_store: str = "64GB",
          max_memory_store: str = "1GB", cluster_name: str = "farmedge") -> dict[Path, str]:
    """Path -> text of every node's configuration file."""
    names = list(hosts)
    if len(set(names)) != len(names) or not names:
        raise ValueError("give each node's host name once")
    head = (f"# Written by `{_COMMAND}`: do not edit, run it again with other options\n"
            f"# (`{_COMMAND} --check` says whether this file is current).\n"
            f"# Node {{i}} of {len(names)}; its routes go to the others.\n")
    out_files: dict[Path, str] = {}
    for i, host in enumerate(names):
        conf = NodeConf(
            name=host, listen=f"0.0.0.0:{PORTS['client']}",
            cluster_listen=f"0.0.0.0:{PORTS['cluster']}",
            mqtt_listen=f"0.0.0.0:{PORTS['mqtt']}", http_listen=f"0.0.0.0:{PORTS['http']}",
            store_dir=STORE_DIR,
            routes=[f"{h}:{PORTS['cluster']}" for h in names if h != host],
            cluster_name=cluster_name, partitions=partitions,
            mqtt_replicas=min(3, len(names)), max_file_store=max_file_store,
            max_memory_store=max_memory_store)
        out_files[out / f"{host}.conf"] = head.format(i=i + 1) + node_conf(conf)
    return out_files


def _arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"folder of the nodes' files (default {DEFAULT_OUT})")
    ap.add_argument("--hosts", default=",".join(DEFAULT_HOSTS),
                    help="the nodes' host names, comma-separated, as the other nodes reach "
                         f"them (default {','.join(DEFAULT_HOSTS)}, the compose services)")
    ap.add_argument("--partitions", type=int, default=_DEFAULT_PARTITIONS,
                    help="partitions of the farms: the edges' [source] partitions "
                         f"(default {_DEFAULT_PARTITIONS})")
    ap.add_argument("--max-file-store", default="64GB",
                    help="JetStream's disk limit per node (default 64GB)")
    ap.add_argument("--max-memory-store", default="1GB",
                    help="JetStream's memory limit per node (default 1GB)")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 when the files differ from what would be "
                         "written")


def _run(args: argparse.Namespace) -> int:
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if args.partitions < 1:
        print(f"{_COMMAND}: --partitions must be at least 1", file=sys.stderr)
        return 2
    try:
        wanted = files(args.out, hosts, partitions=args.partitions,
                       max_file_store=args.max_file_store,
                       max_memory_store=args.max_memory_store)
    except ValueError as exc:
        print(f"{_COMMAND}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = [str(p) for p, text in wanted.items()
                 if not p.exists() or p.read_text(encoding="utf-8") != text]
        extra = sorted(str(p) for p in args.out.glob("*.conf") if p not in wanted)
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
    ap = argparse.ArgumentParser(prog=_COMMAND, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(ap)
    return _run(ap.parse_args(list(argv) if argv is not None else None))


def add_parser(psub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = psub.add_parser(
        "nats-cluster", help="write the NATS cluster nodes' configuration files",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  farmedge provision nats-cluster\n"
               "  farmedge provision nats-cluster --check\n"
               "  farmedge provision nats-cluster --hosts nats-a.example.org,"
               "nats-b.example.org,nats-c.example.org --out /etc/nats")
    _arguments(p)
    p.set_defaults(func=_run)
