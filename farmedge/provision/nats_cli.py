"""farmedge provision nats: the NATS cluster's users and their permissions.

  farmedge provision nats gateway --county suihua --farm wang-12 --gateway gw-0007 \\
      --url mqtts://nats-1.example.org:8883 --url mqtts://nats-2.example.org:8883 \\
      --url mqtts://nats-3.example.org:8883 --output gw-0007.toml
  farmedge provision nats edge --name edge-a --env-file .env
  farmedge provision nats admin
  farmedge provision nats revoke --county suihua --farm wang-12 --gateway gw-0007
  farmedge provision nats revoke --user edge-a
  farmedge provision nats config [--partitions 16] [--bucket farmedge_leases ...]
  farmedge provision nats sessions --monitor http://nats-1:8222 --monitor ...

Credentials are kept as bcrypt hashes in NATS_DIR/users.json (mode 600);
every command writes NATS_DIR/auth.conf from it and the registry, which
every node includes. Reload the nodes afterwards (nats-server --signal
reload, or SIGHUP): they apply it without dropping anyone else's connection,
and close those of users no longer listed. Passwords are printed (or written
to the file given) once, never logged. docs/scaling.md, "Trust on NATS".
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .nats_auth import UserStore

__all__ = ["add_parser", "gateway"]


def add_parser(psub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = psub.add_parser("nats", help="the NATS cluster's users and permissions",
                        description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="nats_command", metavar="WHAT", required=True)
    from farmedge.cli import ParagraphHelpFormatter

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=ParagraphHelpFormatter, **kw)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--nats-dir", type=Path,
                       default=Path(os.environ.get("FARMEDGE_NATS_DIR", "deploy/nats")),
                       help="folder of users.json and auth.conf "
                            "(default: $FARMEDGE_NATS_DIR or deploy/nats)")
        q.add_argument("--registry", type=Path,
                       default=Path(os.environ.get("FARMEDGE_REGISTRY", "registry.yaml")),
                       help="the registry YAML (default: $FARMEDGE_REGISTRY or registry.yaml)")

    g = add("gateway", help="register a gateway and give it a NATS user",
                       epilog="example:\n  farmedge provision nats gateway --county suihua "
                              "--farm wang-12 "
                              "--gateway gw-0007 --url mqtts://nats-1.example.org:8883 "
                              "--url mqtts://nats-2.example.org:8883 "
                              "--url mqtts://nats-3.example.org:8883 "
                              "--ca-file /etc/farmedge/ca.crt -o gw-0007.toml",
                       description="Add the gateway to the registry, give it a NATS user "
                                   "(or a new password), write auth.conf and print the "
                                   "gateway's gateway.toml.")
    g.add_argument("--county", required=True, help="county id, e.g. suihua")
    g.add_argument("--farm", required=True, help="farm id, e.g. wang-12")
    g.add_argument("--gateway", required=True, help="gateway id, e.g. gw-0007")
    g.add_argument("--url", action="append", dest="urls", default=[],
                   help="a node's MQTT listener as the gateway reaches it "
                        "(mqtts://host:8883; give every node)")
    g.add_argument("--ca-file", help="the CA file's path on the gateway, written as "
                                     "[mqtt] ca_file")
    g.add_argument("--output", "-o", type=Path,
                   help="write the gateway's config here (mode 600) instead of printing it")
    common(g)
    g.set_defaults(func=_run(gateway))

    for kind, what in (("edge", "an edge instance (reads the stream, its key-value "
                                "buckets; publishes alerts)"),
                       ("admin", "operators' tools (anything in the account)")):
        e = add(kind, help=f"a NATS user for {what}",
                           epilog=f"example:\n  farmedge provision nats {kind} --name "
                                  f"{'edge-a --env-file .env' if kind == 'edge' else 'admin'}",
                           description=f"Create (or give a new password to) the NATS user "
                                       f"svc~NAME for {what}, and write auth.conf.")
        e.add_argument("--name", default=kind, help=f"the user is svc~NAME (default: {kind})")
        e.add_argument("--env-file", type=Path,
                       help="set the user and password in this dotenv file instead of "
                            "printing them")
        common(e)
        e.set_defaults(func=_run(_service), kind=kind)

    r = add("revoke", help="take a gateway's or a service's NATS user out",
                       epilog="examples:\n  farmedge provision nats revoke --county suihua "
                              "--farm wang-12 "
                              "--gateway gw-0007\n  farmedge provision nats revoke --user edge-a",
                       description="Remove the user and write auth.conf; after the "
                                   "reload the nodes close its connections and refuse it.")
    r.add_argument("--county", help="the gateway's county id")
    r.add_argument("--farm", help="the gateway's farm id")
    r.add_argument("--gateway", help="the gateway id")
    r.add_argument("--user", help="a service (edge-a or svc~edge-a) instead of a gateway")
    common(r)
    r.add_argument("--keep-registry", action="store_true",
                   help="remove the gateway's NATS user but leave its registry entry")
    r.set_defaults(func=_run(_revoke))

    c = add("config", help="write auth.conf again (after registry edits, or with "
                                      "new settings)",
                       epilog="examples:\n  farmedge provision nats config\n"
                              "  farmedge provision nats config --partitions 32",
                       description="Write NATS_DIR/auth.conf from users.json and the "
                                   "registry. The settings given are kept in users.json.")
    c.add_argument("--partitions", type=int,
                   help="[source] partitions of the edges (kept; default 16)")
    c.add_argument("--stream", help="[source] stream of the edges (kept; default $MQTT_msgs)")
    c.add_argument("--bucket", action="append", dest="buckets",
                   help="a key-value bucket the edges use, repeated for each (kept; default "
                        "farmedge_leases and farmedge_alerts)")
    common(c)
    c.set_defaults(func=_run(_config))

    w = add("sessions", help="find MQTT sessions held by another user than their own",
                       epilog="example:\n  farmedge provision nats sessions "
                              "--monitor http://nats-1:8222 "
                              "--monitor http://nats-2:8222 --monitor http://nats-3:8222",
                       description="Ask each node's monitoring endpoint for its MQTT "
                                   "connections and list those whose client id is not their "
                                   "user's (NATS binds no client id to a user: one gateway's "
                                   "credential can take another's session). Exit status 1 "
                                   "when there is one, for a monitoring check.")
    w.add_argument("--monitor", action="append", required=True,
                   help="a node's monitoring URL, e.g. http://nats-1:8222 (repeat for each)")
    w.set_defaults(func=_run(_sessions))


def _run(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from .errors import ProvisionError

        try:
            return fn(args)
        except ProvisionError as exc:
            print(f"farmedge provision nats: {exc}", file=sys.stderr)
            return 1
    return run


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def _store(args: argparse.Namespace) -> UserStore:
    from .nats_auth import USERS_FILE, UserStore

    return UserStore.load(args.nats_dir / USERS_FILE)


def _write(args: argparse.Namespace, store: UserStore) -> None:
    """Save the store and write auth.conf from it and the registry."""
    from farmedge.registry import load_registry

    from .errors import ProvisionError
    from .nats_auth import AUTH_FILE, _write_private, render_auth_conf

    gateways: list[tuple[str, str, str]] = []
    if args.registry.exists():
        try:
            reg = load_registry(args.registry)
        except Exception as exc:  # the loader's errors name file:line and key
            raise ProvisionError(f"{args.registry}: {exc}") from None
        gateways = list(reg.index())
    text, rep = render_auth_conf(store, gateways)
    store.save()
    out = args.nats_dir / AUTH_FILE
    _write_private(out, text)
    _say(f"{out}: {rep.gateways} gateways, {rep.services} services; reload every node "
         "(nats-server --signal reload) to apply it")
    if rep.missing:
        shown = ", ".join(rep.missing[:10]) + (" ..." if len(rep.missing) > 10 else "")
        _say(f"  {len(rep.missing)} registry gateways have no NATS user yet (provision nats "
             f"gateway): {shown}")
    if rep.stale:
        _say(f"  left out {len(rep.stale)} gateway users no longer in {args.registry}: "
             + ", ".join(rep.stale[:10]))


def gateway(args: argparse.Namespace) -> int:
    """``provision nats gateway`` (and ``provision gateway --cluster-url``):
    ``args`` has county, farm, gateway, urls, ca_file, output, nats_dir and
    registry."""
    from farmedge.transport.broker import parse_broker_urls
    from farmedge.transport.errors import BrokerUrlError

    from .accounts import check_gateway_ids, gateway_path
    from .dynsec import new_password
    from .errors import ProvisionError
    from .nats_auth import gateway_toml
    from .registry_edit import add_gateway

    check_gateway_ids(args.county, args.farm, args.gateway)
    if args.urls:
        try:  # what the agent would refuse at start, refused here
            parse_broker_urls(args.urls)
        except BrokerUrlError as exc:
            raise ProvisionError(f"the nodes' URLs: {exc}") from None
    path = gateway_path(args.county, args.farm, args.gateway)
    added, kept = add_gateway(args.registry, args.county, args.farm, args.gateway)
    _say(f"{path}: {'added to' if added else 'already in'} {args.registry}"
         + ("" if kept else " (rewritten: its comments could not be kept)"))
    password = new_password()
    store = _store(args)
    new = store.set(path, "gateway", password)
    _write(args, store)
    urls = args.urls or ["mqtts://nats-1.example.org:8883", "mqtts://nats-2.example.org:8883",
                         "mqtts://nats-3.example.org:8883"]
    text = gateway_toml(county=args.county, farm=args.farm, gateway=args.gateway, urls=urls,
                        password=password, ca_file=args.ca_file)
    if args.output:
        from .nats_auth import _write_private

        _write_private(args.output, text)
        _say(f"gateway config written to {args.output}")
    else:
        sys.stdout.write(text)
    _say(f"NATS user {path} {'created' if new else 'given a new password'}")
    if not args.urls:
        _say("note: the config's urls are placeholders: give --url for every node, or "
             "edit [mqtt] urls")
    return 0


def _service(args: argparse.Namespace) -> int:
    from .cli import set_env
    from .dynsec import new_password
    from .nats_auth import service_user

    user = service_user(args.name)
    password = new_password()
    store = _store(args)
    new = store.set(user, args.kind, password)
    _write(args, store)
    if args.env_file:
        u_var, p_var = (("EDGE_NATS_USER", "EDGE_NATS_PASSWORD") if args.kind == "edge"
                        else ("NATS_ADMIN_USER", "NATS_ADMIN_PASSWORD"))
        set_env(args.env_file, u_var, user)
        set_env(args.env_file, p_var, password)
        _say(f"{u_var} and {p_var} set in {args.env_file}")
    else:
        print(f"user: {user}\npassword: {password}")
    _say(f"NATS user {user} {'created' if new else 'given a new password'}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from .accounts import gateway_path
    from .errors import ProvisionError
    from .nats_auth import service_user
    from .registry_edit import remove_gateway

    ids = (args.county, args.farm, args.gateway)
    if args.user:
        if any(ids):
            raise ProvisionError("give either --user or --county/--farm/--gateway")
        user = service_user(args.user)
    elif all(ids):
        user = gateway_path(*ids)
    else:
        raise ProvisionError("revoke needs --county, --farm and --gateway (or --user)")
    store = _store(args)
    had = store.remove(user)
    removed = False
    if not args.user and not args.keep_registry:
        removed, kept = remove_gateway(args.registry, *ids)
        if removed and not kept:
            _say(f"{args.registry} rewritten: its comments could not be kept")
    if not had and not removed:
        raise ProvisionError(f"no NATS user {user!r} in {store.path}"
                             + ("" if args.user else f", nor in {args.registry}"))
    _write(args, store)
    _say(f"NATS user {user} {'revoked' if had else 'absent'}"
         + ("" if args.user else f", registry {'entry removed' if removed else 'unchanged'}"))
    return 0

def _config(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from farmedge.transport.nats_settings import MQTT_STREAM, NAME_RE

    from .errors import ProvisionError

    store = _store(args)
    if args.partitions is not None:
        if not 1 <= args.partitions <= 1024:
            raise ProvisionError("--partitions: 1 to 1024, as [source] partitions")
        store.partitions = args.partitions
    for name in [*([args.stream] if args.stream else []), *(args.buckets or [])]:
        if name != MQTT_STREAM and not NAME_RE.fullmatch(name):
            raise ProvisionError(f"{name!r}: a stream or bucket is 1-64 letters, digits, '-' "
                                 "or '_'")
    if args.stream:
        store.scope = replace(store.scope, stream=args.stream)
    if args.buckets:
        store.scope = replace(store.scope, buckets=tuple(args.buckets))
    _write(args, store)
    return 0


def _sessions(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.request

    from .errors import ProvisionError
    from .nats_auth import intruders

    found = []
    for base in args.monitor:
        offset, total = 0, None
        while total is None or offset < total:
            url = f"{base.rstrip('/')}/connz?auth=true&limit=1024&offset={offset}"
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    doc = json.loads(r.read())
            except (OSError, ValueError) as exc:
                raise ProvisionError(f"{base}: {exc}") from None
            conns = doc.get("connections") or []
            total = int(doc.get("total", len(conns)))
            found += intruders(doc, node=str(doc.get("server_name") or base))
            if not conns:
                break
            offset += len(conns)
    for i in found:
        print(i)
    _say(f"{len(found)} MQTT connections hold a client id not their user's")
    return 1 if found else 0
