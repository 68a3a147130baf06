"""Running systemd units where no systemd runs: this project's test machines
have systemd's tools (systemd-analyze) but no running systemd.

:class:`Unit` reads a unit file; :class:`Service` runs its ExecStartPre= and
ExecStart= lines the way systemd would: as its User= and Group= with the
user's groups plus SupplementaryGroups= (a group the host lacks fails, as
systemd's 216/GROUP does), with systemd's environment, Environment= and
EnvironmentFile= (read as root), and its StateDirectory= created and owned
by the user. Stopping sends KillSignal= and waits TimeoutStopSec=. Sandboxing
(ProtectSystem= and the like) is not applied; tests check it statically.

``python -m tests.units_support systemctl|journalctl|apt-get|sudo ...`` is
the stand-in the install-guide test puts first on PATH, so that the guide's
commands run unchanged (tests/integration/test_install_guide.py): units are looked up in
the test's root folder and then in /lib/systemd/system (Debian's own
mosquitto and influxdb units), with the test's path substitutions applied.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Unit:
    name: str
    text: str
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, text: str) -> Unit:
        u = cls(name, text)
        section = ""
        pending = ""
        for raw in text.splitlines():
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                u.sections.setdefault(section, [])
                continue
            key, _, value = line.partition("=")
            u.sections.setdefault(section, []).append((key.strip(), value.strip()))
        return u

    @classmethod
    def load(cls, path: Path, subst: Callable[[str], str] = lambda s: s) -> Unit:
        return cls.parse(path.name, subst(path.read_text()))

    def all(self, key: str, section: str = "Service") -> list[str]:
        """Every value of ``key``; an empty assignment resets the list."""
        out: list[str] = []
        for k, v in self.sections.get(section, []):
            if k == key:
                if v == "":
                    out = []
                else:
                    out.append(v)
        return out

    def get(self, key: str, default: str = "", section: str = "Service") -> str:
        values = self.all(key, section)
        return values[-1] if values else default


def _expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """systemd's variable expansion in Exec lines: a word ``$NAME`` becomes the
    value split on whitespace; ``${NAME}`` inside a word becomes the value."""
    out: list[str] = []
    for word in argv:
        m = re.fullmatch(r"\$(\w+)", word)
        if m:
            out.extend(env.get(m.group(1), "").split())
            continue
        out.append(re.sub(r"\$\{(\w+)\}", lambda x: env.get(x.group(1), ""), word))
    return out


def exec_lines(unit: Unit, key: str) -> list[tuple[list[str], bool]]:
    """(argv, failure ignored) for each ``key`` line (prefixes -, @, +, !, :)."""
    out = []
    for value in unit.all(key):
        ignore = False
        while value and value[0] in "-@+!:":
            ignore = ignore or value[0] == "-"
            value = value[1:]
        out.append((shlex.split(value), ignore))
    return out


def _seconds(text: str, default: float) -> float:
    if not text:
        return default
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?", text)
    if not m:
        return default
    mult = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}[m.group(2) or "s"]
    return float(m.group(1)) * mult


class UnitError(RuntimeError):
    pass


@dataclass
class Service:
    unit: Unit
    #: Maps the unit's absolute paths to where they live in the test.
    subst: Callable[[str], str] = lambda s: s
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    # -- what systemd would set up --------------------------------------------
    def credentials(self) -> tuple[int, int, list[int]]:
        user = self.unit.get("User", "root")
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise UnitError(f"{self.unit.name}: User={user} does not exist "
                            "(systemd: 217/USER)") from None
        group = self.unit.get("Group")
        try:
            gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
        except KeyError:
            raise UnitError(f"{self.unit.name}: Group={group} does not exist "
                            "(systemd: 216/GROUP)") from None
        groups = set(os.getgrouplist(user, gid))
        for value in self.unit.all("SupplementaryGroups"):
            for name in value.split():
                try:
                    groups.add(grp.getgrnam(name).gr_gid)
                except KeyError:
                    raise UnitError(f"{self.unit.name}: SupplementaryGroups= names {name!r}, "
                                    "which this host lacks (systemd: 216/GROUP)") from None
        return pw.pw_uid, gid, sorted(groups)

    def environment(self) -> dict[str, str]:
        user = self.unit.get("User", "root")
        pw = pwd.getpwnam(user)
        env = {"PATH": BASE_PATH, "LANG": "C.UTF-8", "USER": user, "LOGNAME": user,
               "HOME": pw.pw_dir, "SHELL": pw.pw_shell}
        for value in self.unit.all("EnvironmentFile"):
            optional = value.startswith("-")
            path = Path(value.lstrip("-"))
            if not path.exists():
                if optional:
                    continue
                raise UnitError(f"{self.unit.name}: EnvironmentFile={path} is missing")
            for ln in path.read_text().splitlines():
                ln = ln.strip()
                if ln and not ln.startswith(("#", ";")) and "=" in ln:
                    k, v = ln.split("=", 1)
                    v = v.strip()
                    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
                        v = v[1:-1]
                    env[k.strip()] = v
        for value in self.unit.all("Environment"):
            for word in shlex.split(value):
                k, _, v = word.partition("=")
                env[k] = v
        dirs = self.state_directories()
        if dirs:
            env["STATE_DIRECTORY"] = ":".join(str(d) for d in dirs)
        return env

    def state_directories(self) -> list[Path]:
        return [Path(self.subst(f"/var/lib/{name}"))
                for value in self.unit.all("StateDirectory") for name in value.split()]

    def prepare(self) -> None:
        uid, gid, _ = self.credentials()
        mode = int(self.unit.get("StateDirectoryMode", "0755"), 8)
        for d in self.state_directories():
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, uid, gid)
            d.chmod(mode)

    # -- running ----------------------------------------------------------------
    def _popen(self, argv: list[str], env: dict[str, str], *, wait: bool
               ) -> subprocess.Popen[bytes]:
        uid, gid, groups = self.credentials()
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        umask = int(self.unit.get("UMask", "0022"), 8)
        try:
            return subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=not wait, cwd="/", umask=umask,
                **({"user": uid, "group": gid, "extra_groups": groups}
                   if os.geteuid() == 0 else {}))
        finally:
            if self.log and not isinstance(out, int):
                out.close()

    def start(self) -> subprocess.Popen[bytes]:
        self.prepare()
        env = self.environment()
        for argv, ignore in exec_lines(self.unit, "ExecStartPre"):
            rc = self._popen(_expand(argv, env), env, wait=True).wait(120)
            if rc and not ignore:
                raise UnitError(f"{self.unit.name}: ExecStartPre {argv[0]} exited {rc}"
                                + self._tail())
        [(argv, _)] = exec_lines(self.unit, "ExecStart")
        self.proc = self._popen(_expand(argv, env), env, wait=False)
        return self.proc

    def _tail(self) -> str:
        if self.log and self.log.exists():
            return ":\n" + self.log.read_text(errors="replace")[-3000:]
        return ""

    def kill_signal(self) -> int:
        name = self.unit.get("KillSignal", "SIGTERM")
        return int(getattr(signal, name if name.startswith("SIG") else f"SIG{name}"))

    def stop_timeout(self) -> float:
        return _seconds(self.unit.get("TimeoutStopSec"), 90.0)


def stop_pid(pid: int, sig: int, timeout: float) -> None:
    """Send ``sig`` to the process group of ``pid`` (its session, as started)
    and wait for ``pid`` to go; SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            break
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- the stand-ins for systemctl, journalctl, apt-get and sudo -----------------


class Sandbox:
    """The install-guide test's root folder: substitutions.json (ordered
    [from, to] pairs), units it was given, pid files and logs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pairs: list[tuple[str, str]] = [
            (a, b) for a, b in json.loads((root / "substitutions.json").read_text())]
        paths = sorted((p for p in self.pairs if p[0].startswith("/")), key=lambda p: -len(p[0]))
        self._paths = dict(paths)
        self._path_re = re.compile(r"(?<![\w./])(" + "|".join(re.escape(a) for a, _ in paths)
                                   + r")(?![\w.-])") if paths else None
        ports = [p for p in self.pairs if p[0].isdigit()]
        self._ports = dict(ports)
        self._port_re = re.compile(r"(?<!\d)(" + "|".join(a for a, _ in ports) + r")(?!\d)") \
            if ports else None

    def subst(self, text: str) -> str:
        """Paths and ports of the guide replaced by the test's, in one pass."""
        if self._path_re is not None:
            text = self._path_re.sub(lambda m: self._paths[m.group(1)], text)
        if self._port_re is not None:
            text = self._port_re.sub(lambda m: self._ports[m.group(1)], text)
        return text

    def unit_path(self, name: str) -> Path:
        if not name.endswith(".service"):
            name += ".service"
        for d in (Path(self.subst("/etc/systemd/system")), Path("/lib/systemd/system"),
                  Path("/usr/lib/systemd/system")):
            if (d / name).exists():
                return d / name
        raise UnitError(f"Unit {name} not found.")

    def service(self, name: str) -> Service:
        unit = Unit.load(self.unit_path(name), self.subst)
        logs = self.root / "journal"
        logs.mkdir(exist_ok=True)
        return Service(unit, self.subst, logs / f"{unit.name}.log")

    def pid_file(self, name: str) -> Path:
        (self.root / "pids").mkdir(exist_ok=True)
        return self.root / "pids" / f"{name.removesuffix('.service')}.pid"

    def running_pid(self, name: str) -> int | None:
        p = self.pid_file(name)
        if not p.exists():
            return None
        pid = int(p.read_text())
        return pid if _alive(pid) else None

    def start(self, name: str) -> None:
        if self.running_pid(name):
            return
        svc = self.service(name)
        proc = svc.start()
        self.pid_file(name).write_text(str(proc.pid))
        # A service that dies at once failed to start.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise UnitError(f"{name}: exited with {proc.returncode} at start"
                                + svc._tail())
            time.sleep(0.05)

    def stop(self, name: str) -> None:
        pid = self.running_pid(name)
        if pid is None:
            return
        svc = self.service(name)
        stop_pid(pid, svc.kill_signal(), svc.stop_timeout())

    def reload(self, name: str) -> None:
        pid = self.running_pid(name)
        if pid is None:
            raise UnitError(f"{name} is not active, cannot reload.")
        svc = self.service(name)
        env = {**svc.environment(), "MAINPID": str(pid)}
        lines = exec_lines(svc.unit, "ExecReload")
        if not lines:
            raise UnitError(f"{name}: no ExecReload=")
        for argv, ignore in lines:
            rc = subprocess.run(_expand(argv, env), check=False).returncode
            if rc and not ignore:
                raise UnitError(f"{name}: ExecReload exited {rc}")

    def stop_all(self) -> None:
        d = self.root / "pids"
        for p in sorted(d.glob("*.pid")) if d.exists() else []:
            with contextlib.suppress(UnitError, OSError, ValueError):
                pid = int(p.read_text())
                if _alive(pid):
                    stop_pid(pid, signal.SIGTERM, 30)


def _systemctl(sb: Sandbox, args: list[str]) -> int:
    flags = {a for a in args if a.startswith("-")}
    words = [a for a in args if not a.startswith("-")]
    if not words:
        raise UnitError("systemctl: no verb")
    verb, names = words[0], words[1:]
    if verb == "daemon-reload":
        return 0
    if verb in {"enable", "disable"}:
        if "--now" in flags:
            for n in names:
                (sb.start if verb == "enable" else sb.stop)(n)
        return 0
    actions: dict[str, Callable[[str], None]] = {
        "start": sb.start, "stop": sb.stop, "reload": sb.reload,
        "restart": lambda n: (sb.stop(n), sb.start(n))[-1]}
    if verb in actions:
        for n in names:
            actions[verb](n)
        return 0
    if verb == "kill":
        # systemctl kill --signal=NAME UNIT: the signal to the unit's processes,
        # as a power cut would end them with SIGKILL.
        sig = next((a.split("=", 1)[1] for a in args if a.startswith("--signal=")), "TERM")
        for n in names:
            pid = sb.running_pid(n)
            if pid is not None:
                stop_pid(pid, getattr(signal, "SIG" + sig.removeprefix("SIG")), 10)
        return 0
    if verb in {"is-active", "status"}:
        active = all(sb.running_pid(n) for n in names)
        for n in names:
            print(f"{n}: {'active (running)' if sb.running_pid(n) else 'inactive (dead)'}")
        return 0 if active else 3
    raise UnitError(f"systemctl {verb}: not available in this test")


def _journalctl(sb: Sandbox, args: list[str]) -> int:
    name = args[args.index("-u") + 1] if "-u" in args else ""
    n = int(args[args.index("-n") + 1]) if "-n" in args else 10
    log = sb.root / "journal" / f"{name.removesuffix('.service')}.service.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    print("\n".join(lines[-n:]))
    return 0


def _apt_get(args: list[str]) -> int:
    """``update`` does nothing; ``install`` installs only what is missing
    (usually nothing: scripts/bootstrap installed it)."""
    words = [a for a in args if not a.startswith("-")]
    if not words or words[0] != "install":
        return 0
    missing = [p for p in words[1:] if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True,
        check=False).stdout.split()[-1:] != ["installed"]]
    if not missing:
        return 0
    real = ["/usr/bin/apt-get"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*real, "update", "-qq"], check=False, env=env)
    return subprocess.run([*real, "install", "-y", "-qq", *missing], check=False,
                          env=env).returncode


def _sudo(args: list[str]) -> int:
    """Already root: run the command, as ``-u USER`` when given."""
    user = None
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt == "-u":
            user = args.pop(0)
        elif opt == "--":
            break
    argv = ["runuser", "-u", user, "--", *args] if user else args
    os.execvp(argv[0], argv)


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "sudo":
        return _sudo(args)
    if cmd == "apt-get":
        return _apt_get(args)
    sb = Sandbox(Path(os.environ["FARMEDGE_INSTALL_TEST_ROOT"]))
    try:
        if cmd == "systemctl":
            return _systemctl(sb, args)
        if cmd == "journalctl":
            return _journalctl(sb, args)
    except UnitError as exc:
        print(f"{cmd}: {exc}", file=sys.stderr)
        return 1
    raise SystemExit(f"units_support: unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
