"""``farmedge provision influx``: set up InfluxDB 1.x for farmedge over its
HTTP API (``POST /query``), the way ``v1-setup.iql`` describes it.

It creates the first admin user when the server has none (InfluxDB 1.x with
``auth-enabled = true`` accepts exactly that one statement without
credentials), then the database, the retention policies, the hourly
continuous queries and the least-privilege users of the edge (WRITE) and of
Grafana (READ). What is already in place is left alone, so a second run
changes nothing and says so. Passwords come from the environment, from
``*_FILE`` files or from a dotenv file; missing ones are generated into that
file. They never appear on a command line or in the output.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ProvisionError

__all__ = [
    "SETUP_IQL",
    "Credentials",
    "add_parser",
    "parse_iql",
    "provision_influx",
    "read_dotenv",
    "substitute",
]

#: The statements, shipped with the package (deploy/influxdb/v1-setup.iql
#: links to it).
SETUP_IQL = Path(__file__).with_name("v1-setup.iql")

#: Variables the statements use, with their defaults (None: a password).
VARIABLES: dict[str, str | None] = {
    "INFLUX_DATABASE": "farmedge",
    "INFLUX_ADMIN_USER": "admin",
    "INFLUX_ADMIN_PASSWORD": None,
    "INFLUX_EDGE_USER": "farmedge-edge",
    "INFLUX_EDGE_PASSWORD": None,
    "INFLUX_GRAFANA_USER": "farmedge-grafana",
    "INFLUX_GRAFANA_PASSWORD": None,
}
_PLACEHOLDERS = {"change-me", "changeme", "unset", "..."}


# -- the statements file -----------------------------------------------------


def parse_iql(text: str) -> list[str]:
    """Split InfluxQL text into statements: ``--`` comments dropped, split on
    ``;`` outside quotes, whitespace collapsed. A last statement without
    ``;`` counts too."""
    out: list[str] = []
    cur: list[str] = []
    i, n = 0, len(text)
    quote = ""
    while i < n:
        ch = text[i]
        if quote:
            cur.append(ch)
            if ch == "\\" and i + 1 < n:
                cur.append(text[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch == "-" and text.startswith("--", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif ch == ";":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    if quote:
        raise ProvisionError("unterminated quote in the InfluxQL statements")
    out.append("".join(cur))
    return [s for s in (" ".join(part.split()) for part in out) if s]


def substitute(statement: str, values: Mapping[str, str]) -> str:
    """``${NAME}`` becomes the value (as envsubst does); inside '...' it is
    escaped for InfluxQL. An unknown name is an error, not an empty string."""
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise ProvisionError(f"the statements use ${{{name}}}, which is not set")
        return values[name]

    parts = re.split(r"('(?:[^'\\]|\\.)*')", statement)
    for k, part in enumerate(parts):
        if k % 2:  # a string literal
            parts[k] = re.sub(r"\$\{(\w+)\}", lambda m: repl(m).replace("\\", "\\\\")
                              .replace("'", "\\'"), part)
        else:
            parts[k] = re.sub(r"\$\{(\w+)\}", repl, part)
    return "".join(parts)


def redact(statement: str) -> str:
    """The statement with its password literals hidden (for messages)."""
    return re.sub(r"(PASSWORD\s*=?\s*)'(?:[^'\\]|\\.)*'", r"\1'***'", statement, flags=re.I)


# -- credentials -------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    database: str
    admin: tuple[str, str]
    edge: tuple[str, str]
    grafana: tuple[str, str]

    def values(self) -> dict[str, str]:
        return {"INFLUX_DATABASE": self.database,
                "INFLUX_ADMIN_USER": self.admin[0], "INFLUX_ADMIN_PASSWORD": self.admin[1],
                "INFLUX_EDGE_USER": self.edge[0], "INFLUX_EDGE_PASSWORD": self.edge[1],
                "INFLUX_GRAFANA_USER": self.grafana[0],
                "INFLUX_GRAFANA_PASSWORD": self.grafana[1]}


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file (comments and blank lines skipped,
    one level of surrounding quotes removed)."""
    out: dict[str, str] = {}
    for ln in path.read_text(encoding="utf-8").splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("#") or "=" not in ln:
            continue
        key, value = ln.split("=", 1)
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def set_dotenv(path: Path, updates: Mapping[str, str]) -> bool:
    """Set ``KEY=value`` lines in a dotenv file (mode 600), keeping the
    others; return whether the file changed."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    todo = dict(updates)
    out = []
    for ln in lines:
        key = ln.split("=", 1)[0].strip().removeprefix("export ").strip()
        if "=" in ln and not ln.lstrip().startswith("#") and key in todo:
            out.append(f"{key}={todo.pop(key)}")
        else:
            out.append(ln)
    out += [f"{k}={v}" for k, v in todo.items()]
    text = "\n".join(out) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # it holds passwords
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def resolve_credentials(env: Mapping[str, str], env_file: Path | None,
                        say: Callable[[str], None]) -> Credentials:
    """Each variable from the environment, else ``NAME_FILE`` (a file holding
    the value), else ``env_file``, else its default. A missing password is
    generated and saved in ``env_file`` (an error without one)."""
    from_file = read_dotenv(env_file) if env_file is not None and env_file.exists() else {}
    got: dict[str, str] = {}
    generated: dict[str, str] = {}
    for name, default in VARIABLES.items():
        value = env.get(name, "")
        where = f"${name}"
        if not value and env.get(f"{name}_FILE"):
            secret = Path(env[f"{name}_FILE"])
            try:
                value = secret.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ProvisionError(f"{name}_FILE={secret}: {exc.strerror}") from None
            where = str(secret)
        if not value and name in from_file:
            value, where = from_file[name], f"{name} in {env_file}"
        if value.lower() in _PLACEHOLDERS:
            raise ProvisionError(f"{where} is the placeholder {value!r}: set a real value "
                                 "(or remove it from the env file to have one generated)")
        if not value:
            if default is not None:
                value = default
            elif env_file is None:
                raise ProvisionError(f"no {name}: set it in the environment, in {name}_FILE, "
                                     "or give --env-file FILE to have one generated there")
            else:
                value = generated[name] = secrets.token_urlsafe(24)
        got[name] = value
    if generated and env_file is not None:
        # Saved before InfluxDB knows them: an interrupted run loses nothing.
        set_dotenv(env_file, generated)
        say(f"generated {', '.join(generated)} into {env_file}")
    return Credentials(got["INFLUX_DATABASE"],
                       (got["INFLUX_ADMIN_USER"], got["INFLUX_ADMIN_PASSWORD"]),
                       (got["INFLUX_EDGE_USER"], got["INFLUX_EDGE_PASSWORD"]),
                       (got["INFLUX_GRAFANA_USER"], got["INFLUX_GRAFANA_PASSWORD"]))


# -- the v1 HTTP API ---------------------------------------------------------


class _Http:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, q: str, *, auth: tuple[str, str] | None,
              db: str | None = None) -> tuple[int, dict[str, Any]]:
        params = {"q": q, **({"db": db} if db else {})}
        req = urllib.request.Request(f"{self.url}/query",
                                     data=urllib.parse.urlencode(params).encode(),
                                     method="POST")
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ProvisionError(f"cannot reach InfluxDB at {self.url}: {reason}") from None
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"error": raw.decode("utf-8", "replace")[:200]}
        return status, doc if isinstance(doc, dict) else {}


    def wait_ready(self, seconds: float, say: Callable[[str], None]) -> None:
        """Wait up to ``seconds`` for ``/ping`` to answer (a server that was
        just started needs a moment)."""
        deadline = time.monotonic() + seconds
        told = False
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=5) as r:
                    r.read()
                return
            except urllib.error.HTTPError:
                return  # it answers; the queries will say what is wrong
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() >= deadline:
                    reason = getattr(exc, "reason", exc)
                    raise ProvisionError(f"cannot reach InfluxDB at {self.url}: {reason}"
                                         ) from None
                if not told:
                    say(f"waiting up to {seconds:.0f} s for InfluxDB at {self.url}")
                    told = True
                time.sleep(0.5)


def _error(status: int, doc: dict[str, Any]) -> str | None:
    if doc.get("error"):
        return str(doc["error"])
    for res in doc.get("results", []):
        if res.get("error"):
            return str(res["error"])
    return None if status < 300 else f"HTTP {status}"


def _rows(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(series name, row as a dict) of every row in a query answer."""
    out = []
    for res in doc.get("results", []):
        for s in res.get("series", []):
            for v in s.get("values", []):
                out.append((str(s.get("name", "")), dict(zip(s["columns"], v, strict=False))))
    return out


_IDENT = r'"(?:[^"\\]|\\.)*"|[A-Za-z_][\w]*'
_DURATION_UNITS = {"ns": 1e-9, "u": 1e-6, "µ": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600,
                   "d": 86400, "w": 604800}


def _unquote(ident: str) -> str:
    if ident.startswith('"'):
        return re.sub(r"\\(.)", r"\1", ident[1:-1])
    return ident


def _seconds(text: str) -> float:
    """An InfluxQL duration (400d, 52w) or InfluxDB's answer (9600h0m0s)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|ms|u|µ|s|m|h|d|w)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ProvisionError(f"cannot read the duration {text!r}")
    return sum(float(a) * _DURATION_UNITS[b] for a, b in parts)


def _norm_cq(text: str) -> str:
    return " ".join(text.replace('"', "").split())


class _Setup:
    def __init__(self, http: _Http, creds: Credentials, say: Callable[[str], None]) -> None:
        self.http = http
        self.creds = creds
        self.say = say
        self.auth: tuple[str, str] | None = creds.admin
        self.changes: list[str] = []

    def run(self, q: str, what: str, db: str | None = None) -> None:
        status, doc = self.http.query(q, auth=self.auth, db=db)
        err = _error(status, doc)
        if err:
            raise ProvisionError(f"{what}: InfluxDB answered {err!r} to: {redact(q)}")
        self.changes.append(what)
        self.say(what)

    def ask(self, q: str) -> list[tuple[str, dict[str, Any]]]:
        status, doc = self.http.query(q, auth=self.auth)
        err = _error(status, doc)
        if err:
            raise ProvisionError(f"InfluxDB answered {err!r} to: {q}")
        return _rows(doc)

    def admin(self) -> None:
        user, password = self.creds.admin
        status, doc = self.http.query("SHOW USERS", auth=None)
        err = _error(status, doc) or ""
        if status == 200 and not err:
            self.say(f"warning: InfluxDB at {self.http.url} does not check credentials "
                     "(its [http] auth-enabled is false): the users below are created but "
                     "anyone can read and write; turn authentication on (docs/install.md)")
            if not any(r.get("user") == user for _, r in _rows(doc)):
                self.run(f"CREATE USER {_quote(user)} WITH PASSWORD {_literal(password)} "
                         "WITH ALL PRIVILEGES", f"created admin user {user!r}")
            return
        if status == 403 and "create admin user first" in err:
            self.auth = None
            self.run(f"CREATE USER {_quote(user)} WITH PASSWORD {_literal(password)} "
                     "WITH ALL PRIVILEGES", f"created admin user {user!r} (the first user)")
            self.auth = self.creds.admin
            return
        status, doc = self.http.query("SHOW USERS", auth=self.creds.admin)
        err = _error(status, doc) or ""
        if status == 401:
            raise ProvisionError(
                f"InfluxDB refused the admin user {user!r} ({err}): INFLUX_ADMIN_PASSWORD is "
                "not that user's password, or the user does not exist")
        if err:
            raise ProvisionError(f"{user!r} cannot manage InfluxDB ({err}): INFLUX_ADMIN_USER "
                                 "must be an admin user")

    def statement(self, stmt: str) -> None:
        m = re.fullmatch(rf"CREATE DATABASE ({_IDENT})(.*)", stmt, re.I)
        if m:
            db = _unquote(m.group(1))
            if not any(r.get("name") == db for _, r in self.ask("SHOW DATABASES")):
                self.run(stmt, f"created database {db!r}")
            return
        m = re.fullmatch(rf"CREATE RETENTION POLICY ({_IDENT}) ON ({_IDENT}) DURATION (\S+)"
                         rf" REPLICATION (\d+)(?: SHARD DURATION (\S+))?( DEFAULT)?", stmt, re.I)
        if m:
            self._retention_policy(stmt, m)
            return
        m = re.fullmatch(rf"CREATE CONTINUOUS QUERY ({_IDENT}) ON ({_IDENT}) .*", stmt, re.I)
        if m:
            name, db = _unquote(m.group(1)), _unquote(m.group(2))
            have = [r for s, r in self.ask("SHOW CONTINUOUS QUERIES")
                    if s == db and r.get("name") == name]
            if have and _norm_cq(str(have[0].get("query", ""))) == _norm_cq(stmt):
                return
            if have:
                self.run(f"DROP CONTINUOUS QUERY {_quote(name)} ON {_quote(db)}",
                         f"dropped continuous query {name!r} (its definition changed)")
            self.run(stmt, f"created continuous query {name!r} on {db!r}")
            return
        m = re.fullmatch(rf"CREATE USER ({_IDENT}) WITH PASSWORD ('(?:[^'\\]|\\.)*')"
                         r"( WITH ALL PRIVILEGES)?", stmt, re.I)
        if m:
            self._user(stmt, _unquote(m.group(1)), m.group(2), admin=bool(m.group(3)))
            return
        m = re.fullmatch(rf"GRANT (READ|WRITE|ALL(?: PRIVILEGES)?) ON ({_IDENT}) TO ({_IDENT})",
                         stmt, re.I)
        if m:
            want = "ALL PRIVILEGES" if m.group(1).upper().startswith("ALL") else \
                m.group(1).upper()
            db, user = _unquote(m.group(2)), _unquote(m.group(3))
            grants = {r.get("database"): r.get("privilege")
                      for _, r in self.ask(f"SHOW GRANTS FOR {_quote(user)}")}
            if grants.get(db) != want:
                self.run(stmt, f"granted {want} on {db!r} to {user!r}"
                         + (f" (was {grants[db]})" if grants.get(db) else ""))
            return
        # Anything else: run it every time (InfluxQL's CREATE and GRANT
        # statements above are the ones that can be checked first).
        self.run(stmt, f"ran: {redact(stmt)}")

    def _retention_policy(self, stmt: str, m: re.Match[str]) -> None:
        name, db = _unquote(m.group(1)), _unquote(m.group(2))
        rows = [r for _, r in self.ask(f"SHOW RETENTION POLICIES ON {_quote(db)}")]
        have = next((r for r in rows if r.get("name") == name), None)
        if have is None:
            self.run(stmt, f"created retention policy {name!r} on {db!r}")
            return
        same = (_seconds(str(have["duration"])) == _seconds(m.group(3))
                and int(have.get("replicaN", 1)) == int(m.group(4))
                and (not m.group(5)
                     or _seconds(str(have["shardGroupDuration"])) == _seconds(m.group(5)))
                and (not m.group(6) or have.get("default") is True))
        if not same:
            self.run("ALTER" + stmt[len("CREATE"):],
                     f"changed retention policy {name!r} on {db!r} to the shipped one")

    def _user(self, stmt: str, user: str, literal: str, *, admin: bool) -> None:
        users = {r.get("user"): r.get("admin") for _, r in self.ask("SHOW USERS")}
        if user not in users:
            self.run(stmt, f"created user {user!r}")
            return
        password = re.sub(r"\\(.)", r"\1", literal[1:-1])
        status, _ = self.http.query("SHOW DATABASES", auth=(user, password))
        if status == 401:
            self.run(f"SET PASSWORD FOR {_quote(user)} = {literal}",
                     f"set the password of {user!r} (it differed)")
        if bool(users[user]) != admin:
            if admin:
                self.run(f"GRANT ALL PRIVILEGES TO {_quote(user)}",
                         f"made {user!r} an admin")
            else:
                self.run(f"REVOKE ALL PRIVILEGES FROM {_quote(user)}",
                         f"took admin rights from {user!r}")


def _quote(ident: str) -> str:
    return '"' + ident.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def provision_influx(url: str, creds: Credentials, *, iql: str | None = None,
                     say: Callable[[str], None] = print, timeout: float = 30.0,
                     wait_s: float = 0.0) -> list[str]:
    """Bring the InfluxDB 1.x server at ``url`` to what ``iql`` (default: the
    shipped v1-setup.iql) describes; return the changes made (empty: it was
    all there)."""
    text = SETUP_IQL.read_text(encoding="utf-8") if iql is None else iql
    statements = [substitute(s, creds.values()) for s in parse_iql(text)]
    http = _Http(url, timeout)
    http.wait_ready(wait_s, say)
    setup = _Setup(http, creds, say)
    setup.admin()
    for stmt in statements:
        setup.statement(stmt)
    return setup.changes


# -- command line -------------------------------------------------------------


def add_parser(psub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from farmedge.cli import plain

    p = psub.add_parser(
        "influx", help="set up InfluxDB 1.x: first admin, database, retention, users",
        description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="variables (environment, NAME_FILE, or --env-file): " + ", ".join(
            f"{k} (default {v})" if v else k for k, v in VARIABLES.items())
        + "\n\nexample:\n  farmedge provision influx --env-file /etc/farmedge/influx.env "
          "--edge-env-file /etc/farmedge/edge.env")
    p.add_argument("--url", default=os.environ.get("FARMEDGE_INFLUX_URL",
                                                   "http://127.0.0.1:8086"),
                   help="InfluxDB's HTTP API (default: $FARMEDGE_INFLUX_URL or "
                        "http://127.0.0.1:8086)")
    p.add_argument("--env-file", type=Path,
                   help="dotenv file with the INFLUX_* variables; passwords missing there "
                        "are generated and saved in it (mode 600)")
    p.add_argument("--edge-env-file", type=Path,
                   help="also set FARMEDGE_INFLUX_USERNAME and FARMEDGE_INFLUX_PASSWORD "
                        "(the edge's write-only user) in this dotenv file")
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="wait this long for InfluxDB to answer, e.g. right after it "
                        "started (default 30)")
    p.add_argument("--file", type=Path, default=None,
                   help="InfluxQL statements to apply (default: the shipped v1-setup.iql)")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    def say(text: str) -> None:
        print(f"farmedge provision influx: {text}", file=sys.stderr)

    try:
        creds = resolve_credentials(os.environ, args.env_file, say)
        iql = args.file.read_text(encoding="utf-8") if args.file else None
        changes = provision_influx(args.url, creds, iql=iql, say=say, wait_s=args.wait)
        if args.edge_env_file is not None and set_dotenv(
                args.edge_env_file, {"FARMEDGE_INFLUX_USERNAME": creds.edge[0],
                                     "FARMEDGE_INFLUX_PASSWORD": creds.edge[1]}):
            changes.append("edge env file")
            say(f"FARMEDGE_INFLUX_USERNAME and FARMEDGE_INFLUX_PASSWORD set in "
                f"{args.edge_env_file}")
    except ProvisionError as exc:
        say(str(exc))
        return 1
    except OSError as exc:
        say(f"{exc.filename}: {exc.strerror}")
        return 1
    if changes:
        say(f"{args.url}: done ({len(changes)} changes)")
    else:
        say(f"{args.url}: already set up, nothing to do")
    return 0
