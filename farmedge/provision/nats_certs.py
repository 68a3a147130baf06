"""``farmedge provision nats-certs``: a site's own CA and a certificate for
each NATS node (docs/scaling.md, "Trust on NATS").

Writes into ``--out`` (default deploy/nats/certs, which the nodes of
docker-compose.cluster.yml see as /etc/nats/certs):

* ``ca.crt`` and ``ca.key``: the site's CA. The gateways (``[mqtt]
  ca_file``) and the edges (``[source] nats_ca_file``) get ``ca.crt``;
  ``ca.key`` stays here (keep a copy offline: it signs every node).
* ``<host>.crt`` and ``<host>.key`` for each of ``--hosts``, signed by the
  CA, valid for the host name (and for localhost and 127.0.0.1, where the
  compose file publishes the ports, unless ``--no-localhost``, and for
  ``--extra-names``, such as the compose host's address), for servers
  and clients alike: on their routes the nodes present them to each other.

Keys are mode 600. An existing CA is kept (the nodes' certificates are
signed by it, so gateways and edges keep trusting the nodes): run the
command again to renew the nodes' certificates or to add a node. ``--force``
makes a new CA, which every gateway and edge must then be given. Made with
the ``openssl`` command.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import ProvisionError

__all__ = ["DEFAULT_OUT", "add_parser", "main", "make_site_certs"]

DEFAULT_OUT = Path("deploy/nats/certs")
_COMMAND = "farmedge provision nats-certs"
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_NODE_EXT = ("basicConstraints=critical,CA:FALSE\n"
             "keyUsage=critical,digitalSignature,keyEncipherment\n"
             "extendedKeyUsage=serverAuth,clientAuth\n"
             "subjectKeyIdentifier=hash\n"
             "authorityKeyIdentifier=keyid,issuer\n"
             "subjectAltName={sans}\n")


def _san(name: str) -> str:
    try:
        return f"IP:{ipaddress.ip_address(name)}"
    except ValueError:
        return f"DNS:{name}"


def sans(host: str, *, localhost: bool = True, extra: Iterable[str] = ()) -> list[str]:
    """The subjectAltName entries of ``host``'s certificate."""
    out = [_san(host)]
    for s in [*(_san(e) for e in extra),
              *(("DNS:localhost", "IP:127.0.0.1") if localhost else ())]:
        if s not in out:
            out.append(s)
    return out


def _openssl() -> str:
    tool = shutil.which("openssl")
    if tool is None:
        raise ProvisionError("the openssl command is not installed: install it (Debian, "
                             "Ubuntu: apt-get install openssl) and run this again")
    return tool


def make_site_certs(out: Path, hosts: Iterable[str], *, days: int = 825,
                    ca_days: int = 3650, force: bool = False, localhost: bool = True,
                    extra_names: Iterable[str] = ()) -> list[Path]:
    """Make (or keep) the CA and make each host's certificate in ``out``;
    returns the files written."""
    names, extra = list(hosts), list(extra_names)
    if not names or len(set(names)) != len(names):
        raise ProvisionError("give each node's host name once (--hosts nats-1,nats-2,nats-3)")
    for h in [*names, *extra]:
        if h in ("ca", "") or not (_HOST.match(h) or _is_ip(h)):
            raise ProvisionError(f"{h!r} is not a host name")
    if days < 1 or ca_days < 1:
        raise ProvisionError("--days and --ca-days must be at least 1")
    tool = _openssl()
    ca_crt, ca_key = out / "ca.crt", out / "ca.key"
    have_ca = ca_crt.exists() or ca_key.exists()
    if have_ca and not force and not (ca_crt.exists() and ca_key.exists()):
        missing = ca_key if ca_crt.exists() else ca_crt
        raise ProvisionError(f"{missing} is missing, so the CA cannot sign: put it back, or "
                             "make a new CA with --force (every gateway and edge then needs "
                             "the new ca.crt)")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    # Everything is made in a private folder beside the files and moved into
    # place at the end: a failure leaves the old files as they were.
    with tempfile.TemporaryDirectory(dir=out, prefix=".nats-certs.") as tmp_name:
        tmp = Path(tmp_name)

        def run(*args: str) -> None:
            try:
                subprocess.run([tool, *args], cwd=tmp, check=True, capture_output=True,
                               text=True, timeout=120)
            except subprocess.CalledProcessError as exc:
                raise ProvisionError(f"openssl {args[0]} failed: "
                                     f"{(exc.stderr or exc.stdout).strip()}") from None

        if not have_ca or force:
            run("req", "-x509", "-newkey", "rsa:3072", "-nodes", "-sha256",
                "-days", str(ca_days), "-subj", "/O=farmedge/CN=farmedge site CA",
                "-config", os.devnull, "-addext",
                "basicConstraints=critical,CA:TRUE", "-addext",
                "keyUsage=critical,keyCertSign,cRLSign", "-addext",
                "subjectKeyIdentifier=hash",
                "-keyout", "ca.key", "-out", "ca.crt")
            signer_crt, signer_key = tmp / "ca.crt", tmp / "ca.key"
        else:
            signer_crt, signer_key = ca_crt.resolve(), ca_key.resolve()
        for h in names:
            (tmp / f"{h}.ext").write_text(
                _NODE_EXT.format(sans=",".join(sans(h, localhost=localhost, extra=extra))))
            run("req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-config", os.devnull,
                "-subj", f"/O=farmedge/CN={h}", "-keyout", f"{h}.key", "-out", f"{h}.csr")
            run("x509", "-req", "-in", f"{h}.csr", "-CA", str(signer_crt),
                "-CAkey", str(signer_key), "-set_serial", "0x" + os.urandom(16).hex(),
                "-sha256", "-days", str(days), "-extfile", f"{h}.ext", "-out", f"{h}.crt")
        made = (["ca.crt", "ca.key"] if not have_ca or force else []) + [
            f"{h}.{ext}" for h in names for ext in ("crt", "key")]
        for name in made:
            (tmp / name).chmod(0o600 if name.endswith(".key") else 0o644)
            os.replace(tmp / name, out / name)
            written.append(out / name)
    return written


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"folder of the certificates (default {DEFAULT_OUT})")
    ap.add_argument("--hosts", default="nats-1,nats-2,nats-3",
                    help="the nodes' host names, comma-separated, as clients and the other "
                         "nodes reach them (default nats-1,nats-2,nats-3, the compose "
                         "services); the same as `provision nats-cluster --hosts`")
    ap.add_argument("--days", type=int, default=825,
                    help="how long the nodes' certificates are valid (default 825 days); "
                         "run the command again before they expire")
    ap.add_argument("--ca-days", type=int, default=3650,
                    help="how long a new CA is valid (default 3650 days)")
    ap.add_argument("--no-localhost", dest="localhost", action="store_false",
                    help="leave localhost and 127.0.0.1 out of the nodes' certificates "
                         "(needed only where clients reach a node on this machine)")
    ap.add_argument("--extra-names", default="",
                    help="names or addresses every node's certificate is valid for too, "
                         "comma-separated: in compose the host's, as the gateways reach "
                         "its published ports (e.g. 192.168.1.10,center.example.org)")
    ap.add_argument("--force", action="store_true",
                    help="make a new CA even if there is one (every gateway and edge then "
                         "needs the new ca.crt)")


def _run(args: argparse.Namespace) -> int:
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    try:
        had_ca = (args.out / "ca.crt").exists() and not args.force
        written = make_site_certs(args.out, hosts, days=args.days, ca_days=args.ca_days,
                                  force=args.force, localhost=args.localhost,
                                  extra_names=[e.strip() for e in args.extra_names.split(",")
                                               if e.strip()])
    except ProvisionError as exc:
        print(f"{_COMMAND}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{_COMMAND}: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    if had_ca:
        print(f"kept the CA {args.out / 'ca.crt'} (--force makes a new one)", file=sys.stderr)
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
        "nats-certs", help="make the site's CA and the NATS nodes' TLS certificates",
        description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  farmedge provision nats-certs\n"
               "  farmedge provision nats-certs --hosts nats-a.example.org,"
               "nats-b.example.org,nats-c.example.org --no-localhost --out site/certs")
    _arguments(p)
    p.set_defaults(func=_run)
