"""Broker accounts in Mosquitto's dynamic security plugin.

The broker keeps its clients (accounts), roles and default access in one JSON
file (``dynamic-security.json``) that it loads at start and rewrites itself on
every change. Changes are made in one of two ways, with the same commands:

- :class:`LiveBroker`: the running broker, over MQTT, by publishing the
  plugin's commands (``createClient``, ``createRole``, ``deleteClient``, ...)
  on ``$CONTROL/dynamic-security/v1`` as the plugin's administrator. The
  broker applies them at once, with no reload and without touching any other
  connection, and saves the file itself (so it stays the broker's own).
- :class:`DynsecFile`: the file, while no broker runs (before the first start,
  or with the broker stopped): the same commands applied here, the result
  written atomically with the owner the broker runs as.

Trust rules kept by :mod:`farmedge.provision.accounts` (docs/stack.md).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import pwd
import queue
import secrets
import socket
import stat
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ProvisionError

if TYPE_CHECKING:
    from farmedge.transport.broker import Broker
    from farmedge.transport.publisher import Received

__all__ = [
    "ADMIN_USERNAME",
    "CONTROL_TOPIC",
    "DYNSEC_FILE",
    "AdminCredential",
    "Backend",
    "BrokerUnreachable",
    "DynsecFile",
    "LiveBroker",
    "admin_file_for",
    "hashed_password",
    "initial_config",
    "load_admin",
    "write_admin",
]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
#: The plugin's file, in the broker folder (``--broker-dir``).
DYNSEC_FILE = "dynamic-security.json"
#: The plugin's administrator: a service account (see accounts.SERVICE_PREFIX).
ADMIN_USERNAME = "svc~admin"
ADMIN_ROLE = "service:admin"

# PBKDF2-HMAC-SHA512 with a 12-byte salt: what the plugin (and mosquitto_passwd's
# "$7$" format) uses. 101 iterations is Mosquitto 2.0's default; passwords here
# are 192-bit random strings, which no iteration count would make safer.
_ITERATIONS = 101
_SALT_BYTES = 12


Command = dict[str, Any]
Response = dict[str, Any]


def hashed_password(password: str, *, salt: bytes | None = None,
                    iterations: int = _ITERATIONS) -> dict[str, Any]:
    """The ``password``/``salt``/``iterations`` fields of a client in the file."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {"password": base64.b64encode(digest).decode(),
            "salt": base64.b64encode(salt).decode(), "iterations": iterations}


def admin_file_for(broker_dir: Path) -> Path:
    """Where the admin credential is by default: beside the broker folder,
    not in it (deploy/mosquitto -> deploy/mosquitto-admin.toml). The folder
    is the broker's: compose's image makes all of it uid 1883's at start, and
    the broker need not read the credential."""
    d = broker_dir.absolute()
    return d.parent / f"{d.name}-admin.toml"


#: What the administrator may publish besides the plugin's commands: a
#: gateway's status topic, to clear the retained status a revoked gateway
#: leaves behind (the broker publishes no will when it closes the session of
#: a deleted account, so that status would say "online" forever).
ADMIN_STATUS_TOPIC = "farm/v1/+/+/+/status"


def admin_acls() -> list[dict[str, Any]]:
    return [*({"acltype": t, "topic": "$CONTROL/dynamic-security/#", "allow": True}
              for t in ("publishClientSend", "publishClientReceive", "subscribePattern")),
            {"acltype": "publishClientSend", "topic": ADMIN_STATUS_TOPIC, "allow": True}]


def initial_config(admin_password: str) -> dict[str, Any]:
    """A new file: the administrator only, and nothing allowed by default
    (no publish, no subscribe, no delivery) unless a role grants it."""
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": [{"username": ADMIN_USERNAME, "textName": "farmedge provisioning",
                     "roles": [{"rolename": ADMIN_ROLE}], **hashed_password(admin_password)}],
        "roles": [{"rolename": ADMIN_ROLE, "textName": "administers dynamic security",
                   "acls": admin_acls()}],
        "groups": [],
    }


class Backend:
    """Runs dynamic-security commands; each answer is a dict with ``command``
    and, on failure, ``error`` (the plugin's own messages), or ``data``."""

    #: For messages: where the change goes.
    where: str = ""

    def run(self, commands: list[Command]) -> list[Response]:
        raise NotImplementedError

    def one(self, command: Command) -> Response:
        return self.run([command])[0]

    def close(self) -> None:
        """Finish: a file is written here; a connection is closed."""


# -- the file -----------------------------------------------------------------

def _owner_of(spec: str) -> tuple[int, int]:
    """(uid, gid) of a user name or a numeric uid (e.g. 1883, the container's)."""
    try:
        if spec.isdigit():
            uid = int(spec)
            try:
                return uid, pwd.getpwuid(uid).pw_gid
            except KeyError:
                return uid, uid
        p = pwd.getpwnam(spec)
        return p.pw_uid, p.pw_gid
    except KeyError:
        raise ProvisionError(f"--broker-user {spec!r}: no such user") from None


class DynsecFile(Backend):
    """The plugin's JSON file, edited while no broker is running. The result is
    written atomically (temporary file, then rename) with mode 0600, owned
    like the file it replaces, or (new file) like the folder it is in, or by
    ``owner`` (a user name or uid): the broker must be able to rewrite it."""

    def __init__(self, path: Path, *, owner: str | None = None,
                 admin_password: str | None = None) -> None:
        self.path = path
        self.where = str(path)
        self._owner = owner
        self.created = False
        self.changed = False
        try:
            self.data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if admin_password is None:
                raise ProvisionError(f"{path} does not exist") from None
            self.data = initial_config(admin_password)
            self.created = self.changed = True
        except (OSError, ValueError) as exc:
            raise ProvisionError(f"{path}: cannot read: {exc}") from None
        if not isinstance(self.data, dict):
            raise ProvisionError(f"{path}: not a dynamic security file (no JSON object)")
        self.data.setdefault("clients", [])
        self.data.setdefault("roles", [])
        self.data.setdefault("groups", [])

    # lookups
    def _client(self, username: str) -> dict[str, Any] | None:
        return next((c for c in self.data["clients"] if c.get("username") == username), None)

    def _role(self, rolename: str) -> dict[str, Any] | None:
        return next((r for r in self.data["roles"] if r.get("rolename") == rolename), None)

    def client_records(self) -> list[dict[str, Any]]:
        return list(self.data["clients"])

    def add_hashed_client(self, record: dict[str, Any]) -> None:
        """A client with a ready password hash (imported from a password
        file: the plugin's command API takes plaintext passwords only)."""
        if self._client(record["username"]) is not None:
            raise ProvisionError(f"client {record['username']!r} already exists")
        self.data["clients"].append(record)
        self.changed = True

    def run(self, commands: list[Command]) -> list[Response]:
        out = []
        for cmd in commands:
            res: Response = {"command": cmd.get("command")}
            try:
                data = self._apply(cmd)
                if data is not None:
                    res["data"] = data
            except _CommandError as exc:
                res["error"] = str(exc)
            out.append(res)
        return out

    def _apply(self, cmd: Command) -> dict[str, Any] | None:
        name = cmd.get("command")
        if name == "getClient":
            c = self._client(cmd["username"])
            if c is None:
                raise _CommandError("Client not found")
            shown = {k: v for k, v in c.items() if k not in {"password", "salt", "iterations"}}
            return {"client": copy.deepcopy(shown)}
        if name == "getRole":
            r = self._role(cmd["rolename"])
            if r is None:
                raise _CommandError("Role not found")
            return {"role": copy.deepcopy(r)}
        if name == "listClients":
            return {"clients": [c["username"] for c in self.data["clients"]]}
        self.changed = True
        if name == "createRole":
            if self._role(cmd["rolename"]) is not None:
                raise _CommandError("Role already exists")
            role: dict[str, Any] = {"rolename": cmd["rolename"]}
            if cmd.get("textname"):
                role["textName"] = cmd["textname"]
            role["acls"] = [dict(a) for a in cmd.get("acls", [])]
            self.data["roles"].append(role)
        elif name == "deleteRole":
            if self._role(cmd["rolename"]) is None:
                raise _CommandError("Role not found")
            self.data["roles"] = [r for r in self.data["roles"]
                                  if r.get("rolename") != cmd["rolename"]]
            for c in self.data["clients"]:
                c["roles"] = [r for r in c.get("roles", []) if r["rolename"] != cmd["rolename"]]
        elif name in {"addRoleACL", "removeRoleACL"}:
            r = self._role(cmd["rolename"])
            if r is None:
                raise _CommandError("Role not found")
            acls = r.setdefault("acls", [])
            key = (cmd["acltype"], cmd["topic"])
            kept = [a for a in acls if (a["acltype"], a["topic"]) != key]
            if name == "addRoleACL":
                if len(kept) != len(acls):
                    raise _CommandError("ACL with this topic already exists")
                kept.append({k: cmd[k] for k in ("acltype", "topic", "allow", "priority")
                             if k in cmd})
            r["acls"] = kept
        elif name == "createClient":
            if self._client(cmd["username"]) is not None:
                raise _CommandError("Client already exists")
            for rr in cmd.get("roles", []):
                if self._role(rr["rolename"]) is None:
                    raise _CommandError("Role not found")
            c = {"username": cmd["username"]}
            if cmd.get("clientid"):
                c["clientid"] = cmd["clientid"]
            if cmd.get("textname"):
                c["textName"] = cmd["textname"]
            c["roles"] = [dict(rr) for rr in cmd.get("roles", [])]
            if cmd.get("password"):
                c.update(hashed_password(cmd["password"]))
            self.data["clients"].append(c)
        elif name == "deleteClient":
            if self._client(cmd["username"]) is None:
                raise _CommandError("Client not found")
            self.data["clients"] = [c for c in self.data["clients"]
                                    if c.get("username") != cmd["username"]]
        elif name == "setClientPassword":
            c = self._need_client(cmd["username"])
            c.update(hashed_password(cmd["password"]))
        elif name == "setClientId":
            c = self._need_client(cmd["username"])
            if cmd.get("clientid"):
                c["clientid"] = cmd["clientid"]
            else:
                c.pop("clientid", None)
        elif name == "addClientRole":
            c = self._need_client(cmd["username"])
            if self._role(cmd["rolename"]) is None:
                raise _CommandError("Role not found")
            if all(r["rolename"] != cmd["rolename"] for r in c.setdefault("roles", [])):
                c["roles"].append({"rolename": cmd["rolename"]})
        else:
            raise ProvisionError(f"internal: command {name!r} is not supported offline")
        return None

    def _need_client(self, username: str) -> dict[str, Any]:
        c = self._client(username)
        if c is None:
            raise _CommandError("Client not found")
        return c

    def close(self) -> None:
        if self.changed:
            write_private(self.path, json.dumps(self.data, indent=2, ensure_ascii=False) + "\n",
                          owner=self._owner)
            self.changed = False
            if self.path.stat().st_uid == 0 and self._owner is None:
                print(f"warning: {self.path} belongs to root, mode 600: a broker running as "
                      f"another user (Debian's runs as mosquitto) cannot load it. Make "
                      f"{self.path.parent} the broker user's (sudo chown mosquitto: "
                      f"{self.path.parent}), or give --broker-user; compose's image does it "
                      "for deploy/mosquitto at start.", file=sys.stderr)


class _CommandError(Exception):
    pass


def write_private(path: Path, text: str, *, owner: str | None = None) -> None:
    """Write ``path`` atomically, mode 0600. When run as root, the file gets
    ``owner`` (user name or uid), else the owner of the file it replaces,
    else the owner of its folder: whoever the broker runs as must own it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    uid_gid: tuple[int, int] | None = None
    if owner is not None:
        uid_gid = _owner_of(owner)
    else:
        ref = path if path.exists() else path.parent
        st = ref.stat()
        uid_gid = (st.st_uid, st.st_gid)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        if os.geteuid() == 0 and uid_gid is not None:
            os.chown(tmp, *uid_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the admin credential -----------------------------------------------------

@dataclass(frozen=True)
class AdminCredential:
    url: str
    username: str
    password: str
    ca_file: str | None = None


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def write_admin(path: Path, cred: AdminCredential) -> None:
    """The admin credential file: mode 0600, owned by whoever provisions
    (never the broker: it does not need it)."""
    text = (
        "## farmedge provisioning's administrator of the broker's dynamic security\n"
        "## plugin. Whoever reads this file can create and delete every broker\n"
        "## account: keep it mode 0600, readable by the operator only.\n"
        "## FARMEDGE_BROKER_ADMIN_PASSWORD and FARMEDGE_BROKER_ADMIN_URL override it.\n"
        f"url = {_toml_str(cred.url)}\n"
        f"username = {_toml_str(cred.username)}\n"
        f"password = {_toml_str(cred.password)}\n"
        + (f"ca_file = {_toml_str(cred.ca_file)}\n" if cred.ca_file else
           "## CA bundle for an mqtts:// url (default: the system's).\n# ca_file = \"\"\n")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_admin(path: Path, *, url: str | None = None) -> AdminCredential | None:
    """The admin credential from ``path`` (refused when others may read it)
    and the environment; None when neither has a password."""
    env_pw = os.environ.get("FARMEDGE_BROKER_ADMIN_PASSWORD") or None
    env_url = os.environ.get("FARMEDGE_BROKER_ADMIN_URL") or None
    doc: dict[str, Any] = {}
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None:
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ProvisionError(f"{path} holds the broker's admin password but others may "
                                 f"read it (mode {stat.S_IMODE(st.st_mode):o}): chmod 600 {path}")
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ProvisionError(f"{path}: {exc}") from None
    password = env_pw or doc.get("password")
    if not password:
        return None
    return AdminCredential(url=url or env_url or str(doc.get("url") or DEFAULT_ADMIN_URL),
                           username=str(doc.get("username") or ADMIN_USERNAME),
                           password=str(password),
                           ca_file=str(doc["ca_file"]) if doc.get("ca_file") else None)


DEFAULT_ADMIN_URL = "mqtt://127.0.0.1:1883"


def new_password() -> str:
    """A random password: 32 URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


# -- the running broker -------------------------------------------------------

def _conf_files(root: Path, cwd: Path, conf: str) -> list[Path]:
    """A mosquitto.conf and the files its ``include_dir`` lines name, as seen
    from this host (``root`` is the process's /proc/PID/root)."""
    def inside(p: str, base: Path) -> Path:
        return root / p.lstrip("/") if p.startswith("/") else base / p
    first = inside(conf, cwd)
    out: list[Path] = []
    todo = [first]
    while todo and len(out) < 64:
        f = todo.pop()
        out.append(f)
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split(None, 1)
            if len(words) == 2 and words[0] == "include_dir":
                with contextlib.suppress(OSError):
                    todo.extend(sorted(inside(words[1].strip(), cwd).glob("*.conf")))
    return out


def brokers_running(path: Path) -> list[int]:
    """Process ids of the Mosquitto brokers on this host (in containers too)
    whose dynamic security plugin runs ``path``: the same file, compared by
    device and inode through each process's view of its file system. A
    broker keeps the plugin's data in memory and rewrites the file on its
    next change, so editing the file under it loses the edit."""
    try:
        want = path.stat()
    except OSError:
        return []
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "mosquitto":
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        confs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in {"-c", "--config-file"}]
        root, cwd = proc / "root", proc / "cwd"
        for conf in confs:
            for f in _conf_files(root, cwd, conf):
                try:
                    lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
                except OSError:
                    continue
                for line in lines:
                    words = line.split(None, 1)
                    if len(words) != 2 or words[0] != "plugin_opt_config_file":
                        continue
                    name = words[1].strip()
                    target = root / name.lstrip("/") if name.startswith("/") else cwd / name
                    try:
                        st = target.stat()
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                        found.append(int(proc.name))
    return sorted(set(found))


class BrokerUnreachable(ProvisionError):
    """Nothing listens at the admin URL: no broker is running there."""


def _host_port(url: str) -> tuple[str, int, bool]:
    from farmedge.transport.broker import parse_broker_url
    from farmedge.transport.errors import BrokerUrlError

    try:
        b = parse_broker_url(url)
    except BrokerUrlError as exc:
        raise ProvisionError(f"admin url: {exc}") from None
    return b.host, b.port, b.tls


def listening(url: str, timeout: float = 2.0) -> bool:
    """Whether something accepts a TCP connection at ``url``."""
    host, port, _ = _host_port(url)
    try:
        with socket.create_connection((host, port), timeout):
            return True
    except OSError:
        return False


def _admin_broker(cred: AdminCredential) -> Broker:
    """The admin URL as every farmedge client reads it; the credential
    file's password, its user unless the URL names one."""
    from dataclasses import replace

    from farmedge.transport.broker import parse_broker_url
    from farmedge.transport.errors import BrokerUrlError

    try:
        b = parse_broker_url(cred.url, password=cred.password, ca_file=cred.ca_file)
    except BrokerUrlError as exc:
        raise ProvisionError(f"admin url: {exc}") from None
    return replace(b, username=b.username or cred.username)


def _admin_id() -> str:
    # An id of our own: two provisioning runs at once must not take over
    # each other's session.
    return f"{ADMIN_USERNAME}-{os.getpid()}-{secrets.token_hex(3)}"


class LiveBroker(Backend):
    """The running broker's plugin, over MQTT 5 with the admin credential
    (the transport's Publisher). Passwords travel inside the MQTT session
    (use mqtts:// when the broker is not on this host), never on a command
    line."""

    def __init__(self, cred: AdminCredential, *, timeout: float = 10.0) -> None:
        from farmedge.transport.errors import BrokerUnreachable as Unreachable
        from farmedge.transport.errors import ConnectRefused, NoConnack, TransportError
        from farmedge.transport.publisher import Publisher

        self.url = cred.url
        self.cred = cred
        self.where = f"the broker at {cred.url}"
        self._timeout = timeout
        broker = _admin_broker(cred)
        user = broker.username
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._c = Publisher(broker, client_id=_admin_id(), keepalive_s=30,
                            on_message=self._on_message)
        try:
            self._c.connect(timeout)
        except NoConnack:
            self._stop()
            raise ProvisionError(f"no answer (CONNACK) from the broker at {cred.url}") from None
        except ConnectRefused as exc:
            self._stop()
            raise ProvisionError(
                f"the broker at {cred.url} refused the admin credential {user!r} (reason "
                f"{exc.code}): is it running with the dynamic security file this admin "
                "credential belongs to (plugin lines of mosquitto.conf)? A broker that "
                "cannot read its file starts with no accounts at all and logs \"Error "
                "loading Dynamic security plugin config\": the file must be readable by "
                "the user the broker runs as.") from None
        except Unreachable as exc:  # nothing listens there
            self._stop()
            raise BrokerUnreachable(f"no broker at {cred.url}: {exc}") from None
        except TransportError as exc:  # TLS files that cannot be read
            self._stop()
            raise ProvisionError(f"cannot connect to {cred.url}: {exc}") from None
        try:
            granted = self._c.subscribe([RESPONSE_TOPIC], qos=1, timeout=timeout)
        except TransportError:
            self._stop()
            raise ProvisionError(f"no SUBACK from the broker at {cred.url}") from None
        if granted and granted[0] >= 128:
            self._stop()
            raise ProvisionError(
                f"the broker at {cred.url} does not let {user!r} read {RESPONSE_TOPIC}: "
                "is it the dynamic security plugin's administrator?")

    def _on_message(self, msg: Received) -> None:
        with contextlib.suppress(ValueError):
            doc = json.loads(msg.payload)
            if isinstance(doc, dict):
                self._answers.put(doc)

    def _send(self, commands: list[Command]) -> None:
        from farmedge.transport.publisher import Message

        self._c.publish_wait(Message(CONTROL_TOPIC, json.dumps({"commands": commands}).encode(),
                                     qos=1), self._timeout)

    def run(self, commands: list[Command]) -> list[Response]:
        if not commands:
            return []
        tag = secrets.token_hex(6)
        sent = [dict(cmd, correlationData=f"{tag}-{i}") for i, cmd in enumerate(commands)]
        with self._lock:
            self._send(sent)
            got: dict[str, Response] = {}
            deadline = time.monotonic() + self._timeout
            while len(got) < len(sent):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProvisionError(
                        f"no answer from the dynamic security plugin at {self.url}: is "
                        "the broker running farmedge's mosquitto.conf (its plugin lines)?")
                try:
                    doc = self._answers.get(timeout=left)
                except queue.Empty:
                    continue
                for res in doc.get("responses", []):
                    cd = res.get("correlationData")
                    if isinstance(cd, str) and cd.startswith(tag + "-"):
                        got[cd] = res
        return [got[c["correlationData"]] for c in sent]

    def send_last(self, commands: list[Command]) -> None:
        """Send commands whose answer may never come back: those that make
        the broker close this connection (a change of the administrator's
        own role). Waits for the broker to take them (PUBACK) only."""
        with self._lock:
            self._send(commands)

    def _stop(self) -> None:
        self._c.close()

    def close(self) -> None:
        self._stop()


def clear_retained(cred: AdminCredential, topic: str, *, timeout: float = 10.0) -> bool:
    """Publish an empty retained message on ``topic`` as the administrator,
    on a connection of its own (Mosquitto 2.0 closes an MQTT 5 connection
    whose publish its ACL denies). True when the broker took it."""
    from farmedge.transport.errors import TransportError
    from farmedge.transport.publisher import Publisher

    acked: queue.Queue[int] = queue.Queue()
    c = Publisher(_admin_broker(cred), client_id=_admin_id(), keepalive_s=30,
                  on_ack=lambda mid, code: acked.put(code), on_lost=lambda reason: acked.put(-1))
    try:
        c.connect(timeout)
        c.publish(topic, b"", qos=1, retain=True)
        # 0 or 16 ("no matching subscribers"): taken; -1: connection closed.
        return 0 <= acked.get(timeout=timeout) < 128
    except (TransportError, queue.Empty):
        return False
    finally:
        c.close()


@contextlib.contextmanager
def closing(backend: Backend) -> Iterator[Backend]:
    """Close (write or disconnect) only when the block succeeded; a failed
    offline run leaves the file as it was."""
    try:
        yield backend
    except BaseException:
        if isinstance(backend, LiveBroker):
            backend.close()
        raise
    backend.close()
