"""``farmedge provision``: take gateways and edge instances in and out.

    farmedge provision gateway --county C --farm F --gateway G
    farmedge provision edge [--name edge]
    farmedge provision simulator [--name simulator]
    farmedge provision revoke --county C --farm F --gateway G
    farmedge provision revoke --user NAME
    farmedge provision influx [--env-file FILE]

Each changes the broker's password file and ACL in ``--broker-dir``
(deploy/mosquitto by default) and, for gateways, the registry YAML. The
broker reads both files again on SIGHUP.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_parser"]

_RELOAD_HINT = ("reload the broker to apply: docker compose kill -s HUP mosquitto "
                "(or: kill -HUP $(pidof mosquitto))")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("provision", help="add or revoke gateways and edge credentials",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = p.add_subparsers(dest="provision_command", metavar="WHAT", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--broker-dir", type=Path,
                       default=Path(os.environ.get("FARMEDGE_BROKER_DIR", "deploy/mosquitto")),
                       help="folder with the broker's passwd and acl files "
                            "(default: $FARMEDGE_BROKER_DIR or deploy/mosquitto)")

    g = psub.add_parser("gateway", help="register a gateway and create its broker credential")
    _ids(g)
    common(g)
    g.add_argument("--registry", type=Path,
                   default=Path(os.environ.get("FARMEDGE_REGISTRY", "registry.yaml")),
                   help="the registry YAML (default: $FARMEDGE_REGISTRY or registry.yaml)")
    g.add_argument("--mqtt-url", default="mqtts://broker.example.org:8883",
                   help="the broker as the gateway reaches it (goes into its config file)")
    g.add_argument("--output", "-o", type=Path,
                   help="write the gateway's config file here instead of printing it")
    g.set_defaults(func=_cmd_gateway)

    for role, default, what in (("edge", "edge", "an edge instance (reads all, writes alerts)"),
                                ("simulator", "simulator",
                                 "simulated farms for the demo (publishes as any gateway)")):
        e = psub.add_parser(role, help=f"create the broker credential of {what}")
        e.add_argument("--name", default=default, help=f"broker username (default: {default})")
        common(e)
        e.add_argument("--env-file", type=Path,
                       help="also set the password in this dotenv file (e.g. .env)")
        e.add_argument("--env-var", help="variable name in --env-file (default: "
                       f"{role.upper()}_MQTT_PASSWORD)")
        e.set_defaults(func=_cmd_service, role=role)

    r = psub.add_parser("revoke", help="take a gateway (or a service user) out")
    r.add_argument("--county")
    r.add_argument("--farm")
    r.add_argument("--gateway")
    r.add_argument("--user", help="a service username (edge, simulator) instead of a gateway")
    common(r)
    r.add_argument("--registry", type=Path,
                   default=Path(os.environ.get("FARMEDGE_REGISTRY", "registry.yaml")))
    r.add_argument("--keep-registry", action="store_true",
                   help="revoke the credential but leave the registry entry")
    r.set_defaults(func=_cmd_revoke)

    from .influx import add_parser as add_influx_parser

    add_influx_parser(psub)


def _ids(q: argparse.ArgumentParser) -> None:
    q.add_argument("--county", required=True)
    q.add_argument("--farm", required=True)
    q.add_argument("--gateway", required=True)


def _check_ids(args: argparse.Namespace) -> None:
    from farmedge.contract.ids import InvalidId, check_id

    from .errors import ProvisionError

    try:
        for what in ("county", "farm", "gateway"):
            check_id(getattr(args, what), what=what)
    except InvalidId as exc:
        raise ProvisionError(str(exc)) from None


def _run(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    from .errors import ProvisionError

    try:
        return fn(args)
    except ProvisionError as exc:
        print(f"farmedge provision: {exc}", file=sys.stderr)
        return 1


def _cmd_gateway(args: argparse.Namespace) -> int:
    return _run(_gateway, args)


def _gateway(args: argparse.Namespace) -> int:
    from . import broker
    from .gateway_config import gateway_config_toml, gateway_username
    from .registry_edit import add_gateway

    _check_ids(args)
    passwd, acl = args.broker_dir / "passwd", args.broker_dir / "acl"
    broker.ensure_acl(acl)
    added, kept = add_gateway(args.registry, args.county, args.farm, args.gateway)
    note = "added to" if added else "already in"
    print(f"{args.county}/{args.farm}/{args.gateway}: {note} {args.registry}"
          + ("" if kept else " (rewritten: its comments could not be kept)"), file=sys.stderr)
    password = broker.new_password()
    broker.passwd_set(passwd, gateway_username(args.county, args.farm, args.gateway), password)
    text = gateway_config_toml(county=args.county, farm=args.farm, gateway=args.gateway,
                               mqtt_url=args.mqtt_url, password=password)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"gateway config written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    print(f"broker credential set in {passwd}; {_RELOAD_HINT}", file=sys.stderr)
    return 0


def _cmd_service(args: argparse.Namespace) -> int:
    return _run(_service, args)


def _service(args: argparse.Namespace) -> int:
    from farmedge.contract.ids import is_valid_id

    from . import broker
    from .errors import ProvisionError

    if not is_valid_id(args.name):
        raise ProvisionError(f"--name {args.name!r}: use letters, digits, '-', '_' or '.'")
    passwd, acl = args.broker_dir / "passwd", args.broker_dir / "acl"
    if args.role == "edge":
        broker.acl_add_edge(acl, args.name)
    else:
        broker.acl_add_publisher(acl, args.name)
    password = broker.new_password()
    broker.passwd_set(passwd, args.name, password)
    if args.env_file:
        var = args.env_var or f"{args.role.upper()}_MQTT_PASSWORD"
        set_env(args.env_file, var, password)
        print(f"{var} set in {args.env_file}", file=sys.stderr)
    else:
        print(f"username: {args.name}\npassword: {password}")
    print(f"broker credential set in {passwd}; {_RELOAD_HINT}", file=sys.stderr)
    return 0


def set_env(path: Path, var: str, value: str) -> None:
    """Set ``var=value`` in a dotenv file, keeping its other lines."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    out, done = [], False
    for ln in lines:
        if ln.split("=", 1)[0].strip() == var:
            out.append(f"{var}={value}")
            done = True
        else:
            out.append(ln)
    if not done:
        out.append(f"{var}={value}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # it holds passwords
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def _cmd_revoke(args: argparse.Namespace) -> int:
    return _run(_revoke, args)


def _revoke(args: argparse.Namespace) -> int:
    from . import broker
    from .errors import ProvisionError
    from .gateway_config import gateway_username
    from .registry_edit import remove_gateway

    passwd, acl = args.broker_dir / "passwd", args.broker_dir / "acl"
    if args.user:
        if any((args.county, args.farm, args.gateway)):
            raise ProvisionError("give either --user or --county/--farm/--gateway")
        gone = broker.passwd_remove(passwd, args.user)
        gone = broker.acl_remove_user(acl, args.user) or gone
        if not gone:
            raise ProvisionError(f"no user {args.user!r} in {passwd} or {acl}")
        print(f"{args.user}: revoked; {_RELOAD_HINT}", file=sys.stderr)
        return 0
    if not all((args.county, args.farm, args.gateway)):
        raise ProvisionError("revoke needs --county, --farm and --gateway (or --user)")
    _check_ids(args)
    user = gateway_username(args.county, args.farm, args.gateway)
    had = broker.passwd_remove(passwd, user)
    removed = False
    if not args.keep_registry:
        removed, kept = remove_gateway(args.registry, args.county, args.farm, args.gateway)
        if removed and not kept:
            print(f"{args.registry} rewritten: its comments could not be kept", file=sys.stderr)
    if not had and not removed:
        raise ProvisionError(f"{user} is neither in {passwd} nor in {args.registry}")
    print(f"{user}: revoked (credential {'removed' if had else 'absent'}, registry "
          f"{'entry removed' if removed else 'unchanged'}); {_RELOAD_HINT}", file=sys.stderr)
    return 0
