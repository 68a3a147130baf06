"""farmedge provision: take gateways and service accounts in and out of the
broker (Mosquitto's dynamic security plugin) and the registry.

  farmedge provision gateway --county suihua --farm wang-12 --gateway gw-0007 \\
      --mqtt-url mqtts://mqtt.example.org:8883 --output gw-0007.toml
  farmedge provision gateway --county suihua --farm wang-12 --gateway gw-0007 \\
      --cluster-url mqtts://nats-1.example.org:8883 \\
      --cluster-url mqtts://nats-2.example.org:8883 \\
      --cluster-url mqtts://nats-3.example.org:8883 --output gw-0007.toml
  farmedge provision edge --env-file .env
  farmedge provision simulator --env-file .env
  farmedge provision revoke --county suihua --farm wang-12 --gateway gw-0007
  farmedge provision revoke --user edge
  farmedge provision import-passwd --passwd passwd --acl acl
  farmedge provision init
  farmedge provision nats WHAT ...   (the users of a NATS cluster: gateway, edge, admin,
      revoke, config, sessions)
  farmedge provision influx [--env-file FILE]
  farmedge provision dashboards [--check]
  farmedge provision nats-cluster [--check]
  farmedge provision nats-certs [--hosts nats-1,nats-2,nats-3]

With the broker running, changes are sent to it over MQTT as the plugin's
administrator and apply at once: nobody else is disconnected, no reload.
With no broker at the admin URL (before the first start), the plugin's file
dynamic-security.json in --broker-dir is written instead; the broker reads
it when it starts. The admin credential is made with that file, beside the
folder: deploy/mosquitto-admin.toml for deploy/mosquitto (mode 600).
docs/stack.md explains it all.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dynsec import Backend, LiveBroker

__all__ = ["add_parser", "set_env"]

_PLACEHOLDER_URL = "mqtts://broker.example.org:8883"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("provision", help="add or revoke gateways and service accounts",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = p.add_subparsers(dest="provision_command", metavar="WHAT", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--broker-dir", type=Path,
                       default=Path(os.environ.get("FARMEDGE_BROKER_DIR", "deploy/mosquitto")),
                       help="folder of the broker's dynamic-security.json "
                            "(default: $FARMEDGE_BROKER_DIR or deploy/mosquitto)")
        q.add_argument("--admin-file", type=Path,
                       default=Path(os.environ["FARMEDGE_BROKER_ADMIN_FILE"])
                       if os.environ.get("FARMEDGE_BROKER_ADMIN_FILE") else None,
                       help="the admin credential (default: $FARMEDGE_BROKER_ADMIN_FILE or "
                            "BROKER_DIR-admin.toml beside the folder); "
                            "$FARMEDGE_BROKER_ADMIN_PASSWORD overrides "
                            "its password")
        q.add_argument("--admin-url",
                       help="the broker as provisioning reaches it (default: "
                            "$FARMEDGE_BROKER_ADMIN_URL, the admin file's url, or "
                            "mqtt://127.0.0.1:1883)")
        q.add_argument("--offline", action="store_true",
                       help="edit dynamic-security.json even if a broker answers (only with "
                            "the broker stopped: a running broker overwrites the file)")
        q.add_argument("--broker-user",
                       default=os.environ.get("FARMEDGE_BROKER_USER") or None,
                       help="user (name or uid) the broker runs as, who must own the file "
                            "when it is written here (default: the file's or the folder's "
                            "owner); only root can give files away")

    i = psub.add_parser("init", help="create the broker's dynamic security file and admin "
                                     "credential (done by any command when missing)",
                        description="Create BROKER_DIR/dynamic-security.json (the admin "
                                    "account only, nothing allowed by default) and the "
                                    "admin credential. Example: farmedge provision init "
                                    "--broker-dir /etc/mosquitto/farmedge --broker-user "
                                    "mosquitto")
    common(i)
    i.set_defaults(func=_cmd(_init))

    g = psub.add_parser("gateway", help="register a gateway and create its broker account",
                        description="Add the gateway to the registry, create its broker "
                                    "account (or give it a new password) and print its "
                                    "gateway.toml. Example: farmedge provision gateway "
                                    "--county suihua --farm wang-12 --gateway gw-0007 "
                                    "--mqtt-url mqtts://mqtt.example.org:8883 "
                                    "--output gw-0007.toml")
    _ids(g)
    common(g)
    g.add_argument("--registry", type=Path,
                   default=Path(os.environ.get("FARMEDGE_REGISTRY", "registry.yaml")),
                   help="the registry YAML (default: $FARMEDGE_REGISTRY or registry.yaml)")
    g.add_argument("--mqtt-url", default=_PLACEHOLDER_URL,
                   help="the broker as the gateway reaches it, written into its config "
                        "(default: a placeholder to replace)")
    g.add_argument("--output", "-o", type=Path,
                   help="write the gateway's config file here (mode 600) instead of printing it")
    c = g.add_argument_group(
        "a NATS cluster instead of the broker (docs/scaling.md, \"The NATS cluster\")")
    c.add_argument("--cluster-url", action="append", dest="cluster_urls", default=[],
                   metavar="URL",
                   help="a node's MQTT listener as the gateway reaches it (mqtts://host:8883), "
                        "once for every node: the gateway gets a NATS user (as with "
                        "`provision nats gateway`) instead of a broker account, and its "
                        "config [mqtt] urls and protocol = \"3.1.1\"")
    c.add_argument("--nats-dir", type=Path,
                   default=Path(os.environ.get("FARMEDGE_NATS_DIR", "deploy/nats")),
                   help="with --cluster-url: folder of the cluster's users.json and auth.conf "
                        "(default: $FARMEDGE_NATS_DIR or deploy/nats)")
    c.add_argument("--ca-file", help="with --cluster-url: the CA file's path on the gateway, "
                                     "written as [mqtt] ca_file")
    g.set_defaults(func=_cmd(_gateway))

    for role, what in (("edge", "an edge instance (reads farm/v1/#, publishes alerts)"),
                       ("simulator", "the demo's simulated farms (publish as any gateway)")):
        e = psub.add_parser(role, help=f"create the broker account of {what}",
                            description=f"Create (or give a new password to) the broker "
                                        f"account svc~NAME of {what}. Example: farmedge "
                                        f"provision {role} --env-file .env")
        e.add_argument("--name", default=role,
                       help=f"account name; the username is svc~NAME (default: {role})")
        common(e)
        e.add_argument("--env-file", type=Path,
                       help="set the username and password in this dotenv file (e.g. .env)")
        e.add_argument("--env-var", help="password variable in --env-file (default: "
                       f"{role.upper()}_MQTT_PASSWORD; the username goes into "
                       f"{role.upper()}_MQTT_USER)")
        e.set_defaults(func=_cmd(_service), role=role)

    r = psub.add_parser("revoke", help="take a gateway (or a service account) out",
                        description="Delete a broker account: the broker closes its "
                                    "connection at once and refuses it from then on. "
                                    "Examples: farmedge provision revoke --county suihua "
                                    "--farm wang-12 --gateway gw-0007; farmedge provision "
                                    "revoke --user edge-b")
    r.add_argument("--county", help="the gateway's county")
    r.add_argument("--farm", help="the gateway's farm")
    r.add_argument("--gateway", help="the gateway id")
    r.add_argument("--user", help="a service account (edge, svc~edge, or an imported name) "
                                  "instead of a gateway")
    common(r)
    r.add_argument("--registry", type=Path,
                   default=Path(os.environ.get("FARMEDGE_REGISTRY", "registry.yaml")),
                   help="the registry YAML (default: $FARMEDGE_REGISTRY or registry.yaml)")
    r.add_argument("--keep-registry", action="store_true",
                   help="delete the broker account but leave the registry entry")
    r.set_defaults(func=_cmd(_revoke))

    m = psub.add_parser("import-passwd",
                        help="import a Mosquitto password file and ACL (earlier farmedge "
                             "versions) into the dynamic security file",
                        description="Copy every account of a password file into "
                                    "dynamic-security.json with its hash, so that every "
                                    "gateway and service keeps its password. Run it before "
                                    "the broker starts with the plugin. Example: farmedge "
                                    "provision import-passwd --passwd deploy/mosquitto/passwd "
                                    "--acl deploy/mosquitto/acl")
    m.add_argument("--passwd", type=Path, required=True, help="the Mosquitto password file")
    m.add_argument("--acl", type=Path, help="its ACL file (tells edge and simulator accounts)")
    m.add_argument("--keep-service-names", action="store_true",
                   help="keep service usernames as they are (default: edge -> svc~edge)")
    common(m)
    m.set_defaults(func=_cmd(_import))

    from .dashboards import add_parser as add_dashboards_parser
    from .influx import add_parser as add_influx_parser
    from .nats_certs import add_parser as add_nats_certs_parser
    from .nats_cli import add_parser as add_nats_parser
    from .nats_cluster import add_parser as add_nats_cluster_parser

    add_influx_parser(psub)
    add_dashboards_parser(psub)
    add_nats_cluster_parser(psub)
    add_nats_certs_parser(psub)
    add_nats_parser(psub)


def _ids(q: argparse.ArgumentParser) -> None:
    q.add_argument("--county", required=True, help="county id, e.g. suihua")
    q.add_argument("--farm", required=True, help="farm id, e.g. wang-12")
    q.add_argument("--gateway", required=True, help="gateway id, e.g. gw-0007")


def _cmd(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from .errors import ProvisionError

        try:
            return fn(args)
        except ProvisionError as exc:
            print(f"farmedge provision: {exc}", file=sys.stderr)
            return 1
    return run


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


@contextlib.contextmanager
def _locked(admin_file: Path) -> Iterator[None]:
    """One provisioning run at a time per broker (a lock file beside the
    admin credential: the broker's folder may not be ours to write)."""
    admin_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(admin_file.with_name(f".{admin_file.name}.lock"), os.O_RDWR | os.O_CREAT,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _admin_file(args: argparse.Namespace) -> Path:
    from .dynsec import admin_file_for

    return Path(args.admin_file) if args.admin_file else admin_file_for(args.broker_dir)


@contextlib.contextmanager
def _broker(args: argparse.Namespace, *, offline_only: bool = False) -> Iterator[Backend]:
    """The running broker, or its file when no broker answers (or --offline);
    the file and the admin credential are created when missing."""
    from . import accounts
    from .dynsec import (
        DYNSEC_FILE,
        AdminCredential,
        BrokerUnreachable,
        DynsecFile,
        LiveBroker,
        closing,
        load_admin,
        new_password,
        write_admin,
    )
    from .errors import ProvisionError

    path = args.broker_dir / DYNSEC_FILE
    admin_file = _admin_file(args)
    backend: Backend
    args.broker_dir.mkdir(parents=True, exist_ok=True)
    with _locked(admin_file):
        if not path.exists():
            cred = load_admin(admin_file, url=args.admin_url)
            if cred is None:
                from .dynsec import DEFAULT_ADMIN_URL

                cred = AdminCredential(
                    url=args.admin_url or os.environ.get("FARMEDGE_BROKER_ADMIN_URL")
                    or DEFAULT_ADMIN_URL,
                    username="svc~admin", password=new_password())
                write_admin(admin_file, cred)
                _say(f"the broker's admin credential: {admin_file} (mode 600)")
            f = DynsecFile(path, owner=args.broker_user, admin_password=cred.password)
            for role, acls, what in accounts.SERVICE_ROLES.values():
                accounts.ensure_role(f, role, acls(), what)
            _say(f"created {path}: the broker loads it when it starts")
            backend = f
        elif args.offline or offline_only:
            _refuse_if_running(path)
            backend = DynsecFile(path, owner=args.broker_user)
        else:
            cred = load_admin(admin_file, url=args.admin_url)
            if cred is None:
                raise ProvisionError(
                    f"no admin credential: {admin_file} is missing and "
                    "FARMEDGE_BROKER_ADMIN_PASSWORD is unset (with the broker stopped, "
                    "--offline edits the file)")
            try:
                backend = LiveBroker(cred)
            except BrokerUnreachable:
                _refuse_if_running(path, cred.url)
                _say(f"no broker at {cred.url}: changing {path} directly, which the broker "
                     "loads when it starts (if a broker runs elsewhere, give --admin-url: "
                     "it would not see this change and would overwrite it)")
                backend = DynsecFile(path, owner=args.broker_user)
        with closing(backend) as b:
            yield b


def _refuse_if_running(path: Path, url: str | None = None) -> None:
    """A broker running this file would overwrite an edit of it on its next
    change: the gateway would be told it is provisioned and then refused."""
    from .dynsec import brokers_running
    from .errors import ProvisionError

    pids = brokers_running(path)
    if pids:
        how = (f"it does not answer at {url}: give the address it listens on "
               "(--admin-url)" if url else "use no --offline: changes go to it live")
        raise ProvisionError(
            f"a broker (pid {', '.join(map(str, pids))}) runs {path}, keeping it in memory "
            f"and rewriting it on its next change, which would lose this one; {how}, or "
            "stop the broker first")


def _init(args: argparse.Namespace) -> int:
    from .dynsec import DYNSEC_FILE

    path = args.broker_dir / DYNSEC_FILE
    existed = path.exists()
    with _broker(args) as b:
        if existed:
            _say(f"{path} already exists; the admin credential works with {b.where}")
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from . import accounts
    from .dynsec import new_password
    from .errors import ProvisionError
    from .gateway_config import gateway_config_toml
    from .registry_edit import add_gateway

    if args.cluster_urls:
        # The gateway of a NATS cluster: its user and config as `provision
        # nats gateway` makes them (one code path for both commands).
        from . import nats_cli

        if args.mqtt_url != _PLACEHOLDER_URL:
            raise ProvisionError("give --mqtt-url (one broker) or --cluster-url (each node of "
                                 "a cluster), not both")
        args.urls = args.cluster_urls
        return nats_cli.gateway(args)
    if args.ca_file:
        raise ProvisionError("--ca-file goes with --cluster-url (for one broker, set [mqtt] "
                             "ca_file in the gateway's config)")
    accounts.check_gateway_ids(args.county, args.farm, args.gateway)
    path = accounts.gateway_path(args.county, args.farm, args.gateway)
    added, kept = add_gateway(args.registry, args.county, args.farm, args.gateway)
    note = "added to" if added else "already in"
    _say(f"{path}: {note} {args.registry}"
         + ("" if kept else " (rewritten: its comments could not be kept)"))
    password = new_password()
    with _broker(args) as b:
        created = accounts.set_gateway(b, args.county, args.farm, args.gateway, password)
        where = b.where
    text = gateway_config_toml(county=args.county, farm=args.farm, gateway=args.gateway,
                               mqtt_url=args.mqtt_url, password=password)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _say(f"gateway config written to {args.output}")
    else:
        sys.stdout.write(text)
    _say(f"broker account {path} {'created' if created else 'given a new password'} "
         f"({where})")
    if args.mqtt_url == _PLACEHOLDER_URL:
        _say(f"note: the config's broker url is the placeholder {_PLACEHOLDER_URL}: "
             "give --mqtt-url or edit [mqtt] url")
    return 0


def _service(args: argparse.Namespace) -> int:
    from . import accounts
    from .dynsec import new_password

    user = accounts.service_username(args.name)
    password = new_password()
    with _broker(args) as b:
        created = accounts.set_service(b, args.role, user, password)
        where = b.where
    if args.env_file:
        var = args.env_var or f"{args.role.upper()}_MQTT_PASSWORD"
        user_var = f"{args.role.upper()}_MQTT_USER"
        set_env(args.env_file, user_var, user)
        set_env(args.env_file, var, password)
        _say(f"{user_var} and {var} set in {args.env_file}")
    else:
        print(f"username: {user}\npassword: {password}")
    _say(f"broker account {user} {'created' if created else 'given a new password'} ({where})")
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


def _admin_may_clear_status(b: LiveBroker) -> None:
    """Brokers provisioned by earlier versions: give the administrator's role
    the status topic. Changing that role makes the broker close this very
    connection, so it is sent last, without waiting for the answer."""
    from .dynsec import ADMIN_ROLE, ADMIN_STATUS_TOPIC

    res = b.one({"command": "getRole", "rolename": ADMIN_ROLE})
    acls = res.get("data", {}).get("role", {}).get("acls", [])
    if not any(a.get("topic") == ADMIN_STATUS_TOPIC for a in acls):
        b.send_last([{"command": "addRoleACL", "rolename": ADMIN_ROLE,
                      "acltype": "publishClientSend", "topic": ADMIN_STATUS_TOPIC,
                      "allow": True}])


def _revoke(args: argparse.Namespace) -> int:
    from farmedge.contract import status_topic

    from . import accounts
    from .dynsec import LiveBroker, clear_retained
    from .errors import ProvisionError
    from .registry_edit import remove_gateway

    if args.user:
        if any((args.county, args.farm, args.gateway)):
            raise ProvisionError("give either --user or --county/--farm/--gateway")
        names = [args.user]
        if not args.user.startswith(accounts.SERVICE_PREFIX):
            names.append(accounts.service_username(args.user))
        with _broker(args) as b:
            gone = next((n for n in names if accounts.remove_account(b, n)), None)
            where = b.where
        if gone is None:
            raise ProvisionError(f"no account {' or '.join(map(repr, names))} in {where}")
        _say(f"{gone}: revoked ({where})")
        return 0
    if not all((args.county, args.farm, args.gateway)):
        raise ProvisionError("revoke needs --county, --farm and --gateway (or --user)")
    path = accounts.gateway_path(args.county, args.farm, args.gateway)
    cred = None
    with _broker(args) as b:
        had = accounts.remove_gateway(b, args.county, args.farm, args.gateway)
        where = b.where
        if isinstance(b, LiveBroker):
            cred = b.cred
            _admin_may_clear_status(b)
    if cred is not None:
        topic = status_topic(args.county, args.farm, args.gateway)
        if not clear_retained(cred, topic):
            _say(f"warning: could not clear the gateway's retained status on {topic}: the "
                 "broker keeps its last one (\"online\") until it is cleared")
    removed = False
    if not args.keep_registry:
        removed, kept = remove_gateway(args.registry, args.county, args.farm, args.gateway)
        if removed and not kept:
            _say(f"{args.registry} rewritten: its comments could not be kept")
    if not had and not removed:
        raise ProvisionError(f"{path} is neither in {where} nor in {args.registry}")
    _say(f"{path}: revoked (broker account {'deleted' if had else 'absent'}, registry "
         f"{'entry removed' if removed else 'unchanged'}; {where})")
    return 0


def _import(args: argparse.Namespace) -> int:
    from .dynsec import DYNSEC_FILE, DynsecFile, LiveBroker, load_admin
    from .errors import ProvisionError
    from .migrate import import_passwd

    path = args.broker_dir / DYNSEC_FILE
    if path.exists() and not args.offline:
        # The plugin's commands take plain passwords only: hashes go into the
        # file, which a broker running it would overwrite.
        cred = load_admin(_admin_file(args), url=args.admin_url)
        if cred is not None:
            try:
                live = LiveBroker(cred, timeout=3)
                try:
                    live.run([{"command": "listClients"}])
                finally:
                    live.close()
            except ProvisionError:
                pass  # no broker, or one that is not running this file
            else:
                raise ProvisionError(
                    f"a broker runs {path} at {cred.url}: stop it for the import "
                    "(the plugin takes password hashes only from its file)")
    with _broker(args, offline_only=True) as b:
        assert isinstance(b, DynsecFile)
        rep = import_passwd(b, args.passwd, args.acl,
                            keep_service_names=args.keep_service_names)
    _say(f"imported into {path}: {len(rep.gateways)} gateways, {len(rep.services)} services")
    for old, new, kind in rep.services:
        _say(f"  {kind} {old}" + (f" is now {new}: set its username (e.g. "
                                  f"{kind.upper()}_MQTT_USER={new} in .env)" if old != new
                                  else ""))
    for user, why in rep.skipped:
        _say(f"  left out {user}: {why}")
    for cid, users in sorted(rep.shared_client_ids.items()):
        _say(f"  client id {cid!r} is shared by {', '.join(users)}: they take over each "
             "other's session until all but one are re-provisioned (provision gateway)")
    return 0
